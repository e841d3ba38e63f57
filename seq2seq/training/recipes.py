"""The recipe a GPU trains with when the command chooses none (issue 27, item 5).

The defaults of ModelConfig and TrainConfig suit any device, but on one GPU
their 4,096-token batches and inverse-sqrt schedule leave it mostly idle. So a
new run on CUDA whose command chose none of the settings below (no --config,
--preset or --init-from, and no flag for any field the recipe sets) trains
with the GPU's recipe (GPU_PRESET and GPU_TRAINING). A recipe is all or
nothing: give one of its settings, and the command has chosen its own, so
nothing of this one applies. Other flags (--positions, --dropout, --max-time,
the data) keep it. The CPU never takes it: the CPU demo's recipe is in the
Makefile, and the defaults are unchanged.

Status: the values are the first candidate that bench/gpu_session.sh's recipe
stage trains ("default", no flags: what a user gets), beside the alternatives
it lists; bench/RESULTS.md says which measurements chose them and which are
still to come.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import ModelConfig, TrainConfig
from ..presets import apply_preset, preset_values

# The transformers peer's small shape and batch scale (issue 27's peer: 37.3 test BLEU in 30 epochs),
# with the schedule the CPU recipe measured best: a cosine to 0 at the end of the run
# (--max-time when given), and the average of the last snapshots kept when it validates better.
GPU_PRESET = "small"
GPU_TRAINING: dict[str, Any] = {"max_tokens": 8192, "lr": 2e-3, "warmup_steps": 200, "lr_schedule": "cosine",
                                "average_last": 3}
# What a command may set that makes the recipe its own: the recipe's fields, the other half of the
# batch size, and the snapshots its average needs.
CHOSEN_BY_RECIPE_TRAIN = frozenset({*GPU_TRAINING, "accum_steps", "keep_snapshots"})
CHOSEN_BY_RECIPE_MODEL = frozenset(preset_values(GPU_PRESET))


def gpu_recipe_applies(device_type: str, train_cfg: TrainConfig, *, config_file: object, preset: str | None,
                       model_flags: set[str], train_flags: set[str]) -> bool:
    """Whether a new run on a device of `device_type` ("cuda", "cpu", "mps") takes the GPU's recipe:
    on CUDA, when its command gave no config file, preset or --init-from, and no flag
    (`model_flags`, `train_flags`: the names of the fields given) for a field the recipe sets.
    `train_cfg`, the configs from the command, must have an end (epochs, max_steps or max_time)
    for the recipe's cosine to decay to. (A resumed run keeps the configs it saved.)"""
    return (device_type == "cuda" and config_file is None and preset is None
            and "init_from" not in train_flags
            and not model_flags & CHOSEN_BY_RECIPE_MODEL and not train_flags & CHOSEN_BY_RECIPE_TRAIN
            and bool(train_cfg.epochs or train_cfg.max_steps or train_cfg.max_time))


def with_gpu_recipe(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The configs with the GPU's recipe (GPU_PRESET's shape, GPU_TRAINING) in place of the defaults."""
    return apply_preset(model_cfg, GPU_PRESET), dataclasses.replace(train_cfg, **GPU_TRAINING)


def gpu_recipe_flags() -> str:
    """The GPU's recipe as the flags that choose it, for the line a run prints when it takes it."""
    flags = [f"--preset {GPU_PRESET}"] + [f"--{name.replace('_', '-')} {value}" for name, value in GPU_TRAINING.items()]
    return " ".join(flags)
