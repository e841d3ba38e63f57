"""`train()`: one training run, from its configs to its run directory.

It checks what it is given before any work (a resumed run's config, a run
directory over its own inputs, the TensorBoard folder), holds the run's lock,
starts a new run, starts over one stopped before its first checkpoint, or
resumes one; prepares the data, makes the `Trainer` (seq2seq.training.trainer)
on it, gives it the weights it starts from and runs it. It reports progress
by calling `on_event` with plain dicts, so the CLI can draw them and tests
can read them; the records among them go to `metrics.jsonl` too
(seq2seq.training.events).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import RESUME_BUDGET_FIELDS, ModelConfig, RunConfig, TrainConfig
from ..device import precision_policy
from ..errors import ConfigError, RunDirError
from ..files.atomic import atomic_write_text
from ..files.outputs import new_folder
from ..files.run_layout import CONFIG_FILE, Event
from ..files.run_lock import RunLock
from ..inspection.tensorboard import TensorBoardSink, refuse_tensorboard_folder, require_tensorboard, tensorboard_folder
from ..runs.checkpoint import files_to_start_over, has_trainer_state, read_trainer_state, remove_unfinished_writes
from ..runs.run_dir import open_run
from ..runs.weights import shape_of
from .distributed import is_main_process, lost_processes_as_errors
from .events import RunEvents
from .init_from import load_init_weights
from .inputs import refuse_run_over_inputs, training_reads, with_resolved_paths
from .prepare import fit_to_tokenizers, prepare_data
from .trainer import Trainer, TrainResult


def train(run_dir: Path | str, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
          *, resume: bool = False, on_event: Callable[[Event], None] = lambda event: None,
          tensorboard: Path | str | None = None) -> TrainResult:
    """Train a model into `run_dir`, or continue the run there with `resume=True`.

    On resume, `model_cfg` and `train_cfg` must equal the saved configs except
    for the stopping budget (epochs, max_steps, max_time, patience); see
    `check_resume_config`. A run stopped before its first checkpoint starts
    again from step 0. The run resumed is opened as every command opens a run
    (`seq2seq.runs.run_dir.open_run`) before any work.

    Without `resume`, `run_dir` must not hold a run, unless that run stopped
    before its first checkpoint: a new run then starts over it
    (`seq2seq.runs.checkpoint.files_to_start_over`). A new run with an
    init_from run takes the configs `seq2seq.training.init_from.new_run_configs`
    makes, which opened and checked that run; training loads its weights.

    `tensorboard` is a folder to write TensorBoard event files to as well
    (seq2seq.inspection.tensorboard); None writes none, except that a resumed run that
    has RUN/tensorboard goes on writing there. It is how the run is watched,
    not what it computes, so it is an argument here and not a TrainConfig
    field (those are compared on resume).
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    train_cfg = with_resolved_paths(train_cfg)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no {CONFIG_FILE})")
        saved = open_run(run_dir, need_weights=False).config
        check_resume_config(run_dir, saved, model_cfg, train_cfg)
        model_cfg = saved.model
    refuse_run_over_inputs(run_dir, train_cfg)
    tensorboard = tensorboard_folder(run_dir, tensorboard, resume)
    if tensorboard is not None:  # before any work: a wrong folder or a missing extra is one error line
        refuse_tensorboard_folder(tensorboard, run_dir, training_reads(train_cfg))
        require_tensorboard()
    is_main = is_main_process()
    # Rank 0 alone writes the run directory, so it alone holds the lock.
    with new_folder(run_dir, "run"), RunLock(run_dir) if is_main else contextlib.nullcontext():
        # Every rank looks, and refuses alike; rank 0's removals only ever leave fewer files to see.
        start_over = [] if resume or not (run_dir / CONFIG_FILE).exists() else files_to_start_over(run_dir)
        if is_main:
            remove_unfinished_writes(run_dir)
            for path in start_over:
                path.unlink(missing_ok=True)
            if start_over:
                on_event({"event": "start_over", "run_dir": str(run_dir)})
        # A run stopped before its first checkpoint has none: it starts again at step 0. One that has
        # one is checked before any work (data preparation can take long), under the lock.
        state = read_trainer_state(run_dir, shape_of(model_cfg)) if resume and has_trainer_state(run_dir) else None
        if is_main and resume:  # the new budget, so that config.json says what the run was last asked to do
            atomic_write_text(run_dir / CONFIG_FILE, dataclasses.replace(saved, train=train_cfg).to_json())
        with lost_processes_as_errors("data preparation"):
            trainer = make_trainer(run_dir, model_cfg, train_cfg, device, on_event, started)
        if state is not None:
            trainer.resume(state)
            del state  # the checkpoint's tensors: not held on the host for the whole run
        elif train_cfg.init_from:  # a checkpoint, when there is one, holds the weights to go on from
            load_init_weights(trainer.model, train_cfg.init_from)
        if not resume and trainer.is_main:
            tokenizers = trainer.data.tokenizers
            config = RunConfig(model=trainer.model_cfg, train=train_cfg, tokenizer_sha256={
                t.path.name: t.sha256 for t in (tokenizers.src, tokenizers.tgt)})
            atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
        if tensorboard is not None and trainer.is_main:
            # Resumed or started over: TensorBoard hides what the earlier run logged after this step.
            trainer.events.tensorboard = TensorBoardSink(
                tensorboard, purge_step=trainer.step + 1 if resume or start_over else None)
        # Closed however the run ends (a stop, an error, a signal), which flushes the events.
        with (contextlib.closing(trainer.events.tensorboard) if trainer.events.tensorboard
              else contextlib.nullcontext(),
              lost_processes_as_errors(f"training; the last complete checkpoint in {run_dir} is intact")):
            return trainer.run()


def make_trainer(run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
                 on_event: Callable[[Event], None] = lambda event: None, started: float | None = None) -> Trainer:
    """A Trainer for the run in `run_dir`, on data prepared first: the tokenizers and the encoded
    splits (seq2seq.training.prepare; under torchrun, every rank calls this). An unavailable
    precision is refused before any of that work. `started`: the time.monotonic() at which the
    command began, from which --max-time counts, data preparation included (None: now)."""
    started = time.monotonic() if started is None else started
    precision = precision_policy(device, cfg.precision)
    events = RunEvents(run_dir, on_event)
    data = prepare_data(run_dir, cfg, device, events.emit)
    model_cfg = fit_to_tokenizers(model_cfg, data.tokenizers)
    if cfg.max_len > model_cfg.max_positions:
        raise ConfigError(f"train.max_len ({cfg.max_len}) exceeds model.max_positions ({model_cfg.max_positions})")
    deadline = started + cfg.max_time if cfg.max_time else math.inf
    return Trainer(run_dir, model_cfg, cfg, device, data, precision, events, deadline)


def check_resume_config(run_dir: Path, saved: RunConfig, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """ConfigError, naming each field with its saved and given values, unless `model_cfg` and
    `train_cfg` equal the saved configs outside the stopping budget (RESUME_BUDGET_FIELDS).

    Paths are compared as the files they name: both sides go through `with_resolved_paths`.
    """
    saved_train, given_train = with_resolved_paths(saved.train), with_resolved_paths(train_cfg)
    changed = [f"{field.name} (saved {getattr(saved_section, field.name)!r}, given {getattr(given, field.name)!r})"
               for saved_section, given in ((saved.model, model_cfg), (saved_train, given_train))
               for field in dataclasses.fields(given)
               if field.name not in RESUME_BUDGET_FIELDS
               and getattr(saved_section, field.name) != getattr(given, field.name)]
    if changed:
        *others, last = RESUME_BUDGET_FIELDS
        raise ConfigError(f"{run_dir}: resuming with a config other than the saved one; only {', '.join(others)} "
                          f"and {last} may change, but these differ: {'; '.join(changed)}")
