"""Trainer state for exact resume: weights, optimizer, RNG and progress, saved and loaded.

```
runs/NAME/checkpoints/
  last.json          {"dir": "step_00001234"}: the newest complete trainer state
  step_00001234/     model.safetensors, trainer.safetensors (optimizer and RNG
                     tensors), trainer.json (step, epoch, data position, ...)
```

A run folder that holds no trainer state, and nothing else of value, may be
started over by a new run (`files_to_start_over`). The rest of the run
directory, and opening a run, is seq2seq.runs.run_dir; file primitives are
seq2seq.files.atomic. Nothing here is a pickle.
Every file is written to a temporary name in the same folder, flushed, fsync'd
and renamed into place; a trainer state only becomes "last" once `last.json`
points at it, so a crash mid-write leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunDirError
from ..files.atomic import TMP_SUFFIX, atomic_write_text
from ..files.run_layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SNAPSHOTS_DIR,
    TENSORBOARD_DIR,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
)
from .weights import assign_weights, check_weights_fit, read_tensors, save_tensors, save_weights

LAST_POINTER = "last.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"


def remove_unfinished_writes(run_dir: Path) -> None:
    """Delete what a killed trainer left half-written: temporary files, and
    trainer-state folders newer than the one `last.json` points at."""
    run_dir = Path(run_dir)
    for pattern in (f".*{TMP_SUFFIX}", f"{CHECKPOINTS_DIR}/*/.*{TMP_SUFFIX}", f"{CHECKPOINTS_DIR}/.*{TMP_SUFFIX}"):
        for stale in run_dir.glob(pattern):
            stale.unlink(missing_ok=True)
    pointer = run_dir / CHECKPOINTS_DIR / LAST_POINTER
    try:
        last = json.loads(pointer.read_text(encoding="utf-8"))["dir"] if pointer.exists() else ""
    except (OSError, ValueError, KeyError):
        return  # leave everything for read_trainer_state to report
    for folder in (run_dir / CHECKPOINTS_DIR).glob("step_*"):
        if folder.is_dir() and folder.name > last:
            shutil.rmtree(folder, ignore_errors=True)
    # Weight snapshots (seq2seq.runs.snapshots) from steps the resumed run will redo.
    for snapshot in (run_dir / CHECKPOINTS_DIR / SNAPSHOTS_DIR).glob("step_*.safetensors"):
        if snapshot.name.removesuffix(".safetensors") > last:
            snapshot.unlink(missing_ok=True)


def files_to_start_over(run_dir: Path) -> list[Path]:
    """What a run that stopped before its first checkpoint left in `run_dir`, for a new run to start
    over it: its config.json, tokenizer and metrics.jsonl, to be removed in this order (config.json
    last, so that a removal cut short leaves a folder that is still recognised as a run).

    Such a run saved nothing that a new one cannot make again, and a user who fixes what made it
    fail (too high a learning rate, a bad corpus) expects the same command to work. A RunDirError
    if the folder holds anything of value: a trainer state, weights, or a file training does not
    write. Its tensorboard/ folder is kept; the new run's events hide the old ones (purge_step).
    """
    run_dir = Path(run_dir)
    saved = [*run_dir.glob("*.safetensors"), *(run_dir / CHECKPOINTS_DIR).rglob("*")]
    if any(path.is_file() and not _unfinished(path) for path in saved):
        raise RunDirError(f"{run_dir}: already holds a run; pass {{resume}} to continue it "
                          "or choose another {run} directory", ("resume", "run"))
    rewritten = (METRICS_FILE, *TOKENIZER_FILES, CONFIG_FILE)
    written = (*rewritten, LOCK_FILE, CHECKPOINTS_DIR, TENSORBOARD_DIR)
    foreign = sorted(path.name for path in run_dir.iterdir() if path.name not in written and not _unfinished(path))
    if foreign:
        raise RunDirError(f"{run_dir}: already holds a run, and {', '.join(foreign)}, which training did not write; "
                          "pass {resume} to continue the run or choose another {run} directory", ("resume", "run"))
    return [run_dir / name for name in rewritten if os.path.lexists(run_dir / name)]


def _unfinished(path: Path) -> bool:
    """A temporary file a killed writer left (seq2seq.files.atomic), which `remove_unfinished_writes` deletes."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as named tensors plus a JSON-able remainder (param groups, scalars)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's random number generator states: the CPU one and each GPU's."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def _rank_prefix(rank: int) -> str:
    # Rank 0's names carry no prefix, so single-process checkpoints read as they always did.
    return f"rank{rank}." if rank else ""


def restore_rng(tensors: dict[str, torch.Tensor], rank: int = 0) -> bool:
    """Restore the RNG states that rank `rank` saved; False if the checkpoint holds none for it
    (it was saved by fewer processes), and the caller must seed that rank itself."""
    prefix = _rank_prefix(rank)
    if f"{prefix}rng.cpu" not in tensors:
        return False
    torch.set_rng_state(tensors[f"{prefix}rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(f"{prefix}rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return True


def save_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       progress: dict[str, Any], keep: int = 1,
                       rank_rng: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a complete, resumable trainer state and point `last.json` at it.

    `progress` is JSON: step, epoch (with the run's seed, it fixes the
    epoch's batch order and its subword segmentation, if sampled: see
    seq2seq.training.resampling), position in the epoch, early-stopping
    state, "training_seconds" (how long the run has trained across resumes,
    where a time-based lr schedule goes on from). `rank_rng` holds every
    rank's `rng_tensors()`, in rank order (this process's alone if not
    given): each rank's dropout resumes where it left off. Older states
    beyond the newest `keep` are removed afterwards.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(exist_ok=True)
    name = f"step_{progress['step']:08d}"
    folder = ckpt_root / name
    folder.mkdir(exist_ok=True)
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    rng = {f"{_rank_prefix(rank)}{name}": state
           for rank, states in enumerate(rank_rng or [rng_tensors()]) for name, state in states.items()}
    save_weights(model, folder / WEIGHTS_FILE)
    save_tensors({**optim_tensors, **rng}, folder / TRAINER_TENSORS)
    atomic_write_text(folder / TRAINER_JSON, json.dumps({**progress, "optimizer": optim_meta}) + "\n")
    atomic_write_text(ckpt_root / LAST_POINTER, json.dumps({"dir": name}) + "\n")
    states = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in states[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_trainer_state(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS_DIR / LAST_POINTER).is_file()


@dataclass
class TrainerState:
    """A run's last trainer state, read and checked by `read_trainer_state`."""

    folder: Path  # checkpoints/step_NNNNNNNN
    progress: dict[str, Any]  # trainer.json: step, epoch, data position, ... and the optimizer's param groups
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]  # the optimizer's state and every rank's RNG states


def read_trainer_state(run_dir: Path, model: nn.Module) -> TrainerState:
    """The last trainer state of the run in `run_dir`, checked before anything is restored from it:
    a RunDirError names the file that is unreadable, damaged or not finite (seq2seq.runs.weights.read_tensors),
    or weights that do not fit `model` (which may live on the meta device)."""
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = ckpt_root / LAST_POINTER
    if not pointer.is_file():
        raise RunDirError(f"{run_dir}: nothing to resume (no {CHECKPOINTS_DIR}/{LAST_POINTER})")
    try:
        folder = ckpt_root / json.loads(pointer.read_text(encoding="utf-8"))["dir"]
        progress = json.loads((folder / TRAINER_JSON).read_text(encoding="utf-8"))
    except (OSError, KeyError, ValueError) as err:
        raise RunDirError(f"{ckpt_root}: trainer state is unreadable ({err})") from None
    weights = read_tensors(folder / WEIGHTS_FILE)
    check_weights_fit(model, weights, folder / WEIGHTS_FILE)
    return TrainerState(folder, progress, weights, read_tensors(folder / TRAINER_TENSORS))


def restore_trainer_state(state: TrainerState, model: nn.Module, optimizer: torch.optim.Optimizer,
                          rank: int = 0) -> dict[str, Any]:
    """Restore model, optimizer and rank `rank`'s RNG from `state`; return its progress record, with
    "rng_restored": False if the state holds no RNG for that rank."""
    assign_weights(model, state.weights, state.folder / WEIGHTS_FILE)
    progress = dict(state.progress)
    # load_state_dict moves each state tensor to its parameter's device itself.
    optimizer.load_state_dict(_unflatten_optimizer(state.tensors, progress.pop("optimizer")))
    for group in optimizer.param_groups:  # a state saved by an unfused optimizer still trains fused
        group["fused"], group["foreach"] = True, None
    return {**progress, "rng_restored": restore_rng(state.tensors, rank)}


def load_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       rank: int = 0) -> dict[str, Any]:
    """`read_trainer_state`, then `restore_trainer_state`."""
    return restore_trainer_state(read_trainer_state(run_dir, model), model, optimizer, rank)
