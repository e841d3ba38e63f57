"""`s2s train`: a flag for every settable field of ModelConfig and TrainConfig.

The precedence is defaults, then --config, then --preset, then flags; with
--init-from, its run's model config takes the defaults' place
(seq2seq.training.init_from.new_run_configs). torch and the trainer are
imported in `run_training`, not here, so that `s2s --help` never loads them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from seq2seq.config import (
    DATA,
    DISTRIBUTED,
    MODEL,
    OPTIMISATION,
    RUN,
    VALIDATION,
    DistributedConfig,
    ModelConfig,
    TrainConfig,
)
from seq2seq.errors import ConfigError
from seq2seq.files.reads import refuse_stdout_clobbering
from seq2seq.presets import PRESETS
from seq2seq.training.init_from import new_run_configs

from .display import TrainDisplay
from .options import ConfigOptions, config_options

# The old names stay: the Makefile, the README, bench/ and users' scripts pass
# --heads, --src and --tgt; --valid-bleu-max is the name from before format version 2.
MODEL_OPTIONS = ConfigOptions(ModelConfig, aliases={"n_heads": ["--heads"]})
TRAIN_OPTIONS = ConfigOptions(TrainConfig, aliases={"src_lang": ["--src"], "tgt_lang": ["--tgt"],
                                                    "valid_bleu_sentences": ["--valid-bleu-max"]})
DISTRIBUTED_OPTIONS = ConfigOptions(DistributedConfig)


@config_options(panels=(RUN, DATA, MODEL, OPTIMISATION, VALIDATION, DISTRIBUTED),
                model_flags=MODEL_OPTIONS, train_flags=TRAIN_OPTIONS, distributed_flags=DISTRIBUTED_OPTIONS)
def train_command(
    model_flags: dict[str, Any],
    train_flags: dict[str, Any],
    distributed_flags: dict[str, Any],
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", rich_help_panel=RUN,
        help="JSON config {\"model\": {...}, \"train\": {...}}; a run's config.json works too.")] = None,
    run: Annotated[Optional[Path], typer.Option(
        "--run", "--run-dir", "-r", rich_help_panel=RUN, show_default="runs/SRC-TGT-TIME",
        help="Run directory to write. (--run-dir is the same; use it under torchrun, which takes --run "
             "for its own --run-path)")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=RUN,
                                         help="Continue the run in --run from its last checkpoint.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=RUN)] = "auto",
    # Two options, not one with an optional value: Typer 0.29 ignores click's is_flag=False/flag_value
    # (it warns that they are unsupported), so `--tensorboard` alone would demand a value.
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", rich_help_panel=RUN,
        help="Also write TensorBoard event files, into RUN/tensorboard (needs the tensorboard extra). "
             "A resumed run that has RUN/tensorboard goes on writing there without it.")] = False,
    tensorboard_dir: Annotated[Optional[Path], typer.Option(
        "--tensorboard-dir", metavar="DIR", rich_help_panel=RUN,
        help="Write the TensorBoard event files into DIR instead of RUN/tensorboard (implies --tensorboard).")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"Architecture preset: {', '.join(PRESETS)}.",
                                                  rich_help_panel=MODEL)] = None,
) -> None:
    """Train a Transformer. With no options: English to German on the bundled Multi30k, into runs/."""
    distributed = DistributedConfig(**distributed_flags)
    if resume:
        model_cfg, train_cfg = resumed_configs(run, config, preset, model_flags, train_flags)
    else:
        model_cfg, train_cfg = new_run_configs(config, preset, model_flags, train_flags)
        model_cfg, train_cfg = device_recipe(device, config, preset, model_flags, train_flags, model_cfg, train_cfg)
    if run is None:
        run = Path("runs") / f"{train_cfg.src_lang}-{train_cfg.tgt_lang}-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_stdout_over_inputs(train_cfg, config, run if resume else None)
    if tensorboard and tensorboard_dir is None:
        from seq2seq.files.run_layout import TENSORBOARD_DIR

        tensorboard_dir = run / TENSORBOARD_DIR
    run_training(run, model_cfg, train_cfg, device, resume=resume, tensorboard=tensorboard_dir,
                 distributed=distributed)


def device_recipe(device: str, config: Path | None, preset: str | None, model_flags: dict[str, Any],
                  train_flags: dict[str, Any], model_cfg: ModelConfig,
                  train_cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run, with the GPU's recipe if the device is CUDA and the command chose
    none of its settings (seq2seq.training.recipes); a line on stderr says when it is taken (once,
    under torchrun: by the process of rank 0, which has not joined its group yet)."""
    import os

    from seq2seq.device import resolve_device
    from seq2seq.training.recipes import gpu_recipe_applies, gpu_recipe_flags, with_gpu_recipe

    if not gpu_recipe_applies(resolve_device(device).type, train_cfg, config_file=config, preset=preset,
                              model_flags=set(model_flags), train_flags=set(train_flags)):
        return model_cfg, train_cfg
    from .display import stderr

    if os.environ.get("RANK", "0") == "0":
        stderr.print(f"recipe: the GPU's ({gpu_recipe_flags()}), since no model, batch or schedule setting "
                     "was given; give any of them to choose your own")
    return with_gpu_recipe(model_cfg, train_cfg)


def refuse_stdout_over_inputs(train_cfg: TrainConfig, config: Path | None, resumed: Path | None) -> None:
    """ConfigError if stdout is a file training reads: a corpus, the tokenizer, the --config file, the
    --init-from run, or a file of the run it resumes (but not a log of its own kept beside them)."""
    from seq2seq.files.run_layout import CHECKPOINTS_DIR, RUN_FILES
    from seq2seq.training.inputs import training_reads

    reads = training_reads(train_cfg).file("the {config} file", config)
    if resumed is not None:
        for name in RUN_FILES:
            reads.file("the resumed run's", resumed / name)
        reads.folder("the resumed run's checkpoints folder", resumed / CHECKPOINTS_DIR)
    refuse_stdout_clobbering(reads)


def resumed_configs(run: Path | None, config: Path | None, preset: str | None, model_flags: dict[str, Any],
                    train_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The saved configs of the run in `run`, with the flags given on top.

    The same command plus --resume must work: flags may repeat saved values
    (paths are compared as the files they name), and only the stopping budget may change.
    """
    if run is None:
        raise ConfigError("--resume needs --run DIR, the run directory to continue")
    if preset or config:
        raise ConfigError("--resume continues a run with its saved config; drop --config and --preset")
    from seq2seq.runs.run_dir import read_run_config

    # The flags go onto the saved configs as they are; seq2seq.training.run.train() refuses any
    # change outside the stopping budget, naming each field with its saved and given values.
    saved = read_run_config(run)
    return dataclasses.replace(saved.model, **model_flags), dataclasses.replace(saved.train, **train_flags)


def run_training(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, device: str, resume: bool,
                 tensorboard: Path | None = None, distributed: DistributedConfig | None = None) -> None:
    """Train with the library, drawing its events; under torchrun, one process of the group.
    `tensorboard`: the folder for TensorBoard event files, if any (seq2seq.training.run.train);
    `distributed`: the timeouts of the process groups."""
    import datasets

    from seq2seq.training.distributed import join_process_group, leave_process_group, rank_zeros_object
    from seq2seq.training.malloc_tuning import keep_freed_memory
    from seq2seq.training.run import train

    # s2s draws its own progress; datasets' bars would interleave with it and with error lines.
    datasets.disable_progress_bars()
    keep_freed_memory()  # on glibc: no page faults for the same tensors every update (seq2seq.training.malloc_tuning)
    torch_device = join_process_group(device, distributed)
    # A default run directory is named after each process's clock, and ranks that straddle a
    # second would disagree: every rank takes rank 0's (and the TensorBoard folder inside it).
    run_dir, tensorboard = rank_zeros_object((run_dir, tensorboard))
    display = TrainDisplay()
    try:
        train(run_dir, model_cfg, train_cfg, torch_device, resume=resume, on_event=display, tensorboard=tensorboard)
    finally:
        display.close()
        leave_process_group()
