"""Trainer state for exact resume: weights, optimizer, RNG and progress, saved and loaded.

```
runs/NAME/checkpoints/
  last.json          {"dir": "step_00001234"}: the newest complete trainer state
  step_00001234/     model.safetensors, trainer.safetensors (optimizer and RNG
                     tensors), trainer.json (step, epoch, data position, ...)
```

The rest of the run directory, and loading a run to translate with, is
seq2seq.rundir; file primitives are seq2seq.files. Nothing here is a pickle.
Every file is written to a temporary name in the same folder, flushed, fsync'd
and renamed into place; a trainer state only becomes "last" once `last.json`
points at it, so a crash mid-write leaves the previous state intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import RunDirError
from .files import TMP_SUFFIX, atomic_write, atomic_write_text
from .rundir import CHECKPOINTS_DIR, SNAPSHOTS_DIR, WEIGHTS_FILE, load_weights, save_weights

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
        return  # leave everything for load_trainer_state to report
    for folder in (run_dir / CHECKPOINTS_DIR).glob("step_*"):
        if folder.is_dir() and folder.name > last:
            shutil.rmtree(folder, ignore_errors=True)
    # Weight snapshots (seq2seq.average) from steps the resumed run will redo.
    for snapshot in (run_dir / CHECKPOINTS_DIR / SNAPSHOTS_DIR).glob("step_*.safetensors"):
        if snapshot.name.removesuffix(".safetensors") > last:
            snapshot.unlink(missing_ok=True)


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

    `progress` is JSON: step, epoch, position in the epoch, early-stopping
    state. `rank_rng` holds every rank's `rng_tensors()`, in rank order
    (this process's alone if not given): each rank's dropout resumes where
    it left off. Older states beyond the newest `keep` are removed afterwards.
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
    atomic_write(folder / TRAINER_TENSORS,
                 lambda tmp: save_file({**optim_tensors, **rng}, str(tmp)))
    atomic_write_text(folder / TRAINER_JSON, json.dumps({**progress, "optimizer": optim_meta}) + "\n")
    atomic_write_text(ckpt_root / LAST_POINTER, json.dumps({"dir": name}) + "\n")
    states = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in states[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_trainer_state(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS_DIR / LAST_POINTER).is_file()


def load_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       rank: int = 0) -> dict[str, Any]:
    """Restore model, optimizer and rank `rank`'s RNG from the last trainer state; return its
    progress record, with "rng_restored": False if the state holds no RNG for that rank."""
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = ckpt_root / LAST_POINTER
    if not pointer.is_file():
        raise RunDirError(f"{run_dir}: nothing to resume (no {CHECKPOINTS_DIR}/{LAST_POINTER})")
    try:
        folder = ckpt_root / json.loads(pointer.read_text(encoding="utf-8"))["dir"]
        progress = json.loads((folder / TRAINER_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TRAINER_TENSORS))
    except (OSError, KeyError, ValueError, SafetensorError) as err:
        raise RunDirError(f"{ckpt_root}: trainer state is unreadable ({err})") from None
    load_weights(model, folder / WEIGHTS_FILE)
    # load_state_dict moves each state tensor to its parameter's device itself.
    optimizer.load_state_dict(_unflatten_optimizer(tensors, progress.pop("optimizer")))
    return {**progress, "rng_restored": restore_rng(tensors, rank)}
