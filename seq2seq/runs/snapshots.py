"""Checkpoint averaging: the mean of the weights of several snapshots of one run.

Averaging the last few checkpoints (Vaswani et al. 2017) or the best few by
validation BLEU usually gains a few tenths of BLEU for free. Snapshots are
weights-only safetensors files in `checkpoints/weights/`, written at each
validation, with their step and validation BLEU in the file's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, RunDirError, field_error
from ..files.run_layout import CHECKPOINTS_DIR, SNAPSHOTS_DIR, TRAINING_AVERAGE_FILE, WEIGHTS_FILE
from ..model.performer import RANDOM_FEATURES_BUFFER
from .run_dir import open_run
from .weights import read_metadata, read_tensors, save_tensors, save_weights


@dataclass
class Snapshot:
    path: Path
    step: int
    valid_bleu: float | None  # None when the run had no validation set


def snapshot_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / SNAPSHOTS_DIR


def save_snapshot(model: torch.nn.Module, run_dir: Path, step: int, valid_bleu: float | None) -> None:
    folder = snapshot_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"step": str(step)}
    if valid_bleu is not None:
        metadata["valid_bleu"] = repr(valid_bleu)
    save_weights(model, folder / f"step_{step:08d}.safetensors", metadata=metadata)


def list_snapshots(run_dir: Path | str) -> list[Snapshot]:
    """The run's snapshots, oldest first."""
    snapshots = []
    for path in sorted(snapshot_dir(run_dir).glob("step_*.safetensors")):
        metadata = read_metadata(path)
        bleu = metadata.get("valid_bleu")
        snapshots.append(Snapshot(path, int(metadata.get("step", 0)), None if bleu is None else float(bleu)))
    return snapshots


def select_snapshots(snapshots: list[Snapshot], last: int = 0, best: int = 0) -> list[Snapshot]:
    """The `last` newest snapshots, or the `best` ones by validation BLEU (exactly one of the two)."""
    if (last > 0) == (best > 0):
        raise ConfigError("choose the snapshots to average with exactly one of {last} K or {best} K", ("last", "best"))
    if best and any(s.valid_bleu is None for s in snapshots):
        raise field_error("best", "needs validation BLEU, but this run was trained without a validation set")
    wanted = last or best
    if len(snapshots) < wanted:
        raise ConfigError(f"asked to average {wanted} snapshots, but the run has {len(snapshots)}")
    if last:
        return snapshots[-last:]
    return sorted(snapshots, key=lambda s: s.valid_bleu, reverse=True)[:best]


def prune_snapshots(run_dir: Path, keep: int) -> None:
    """Keep the `keep` newest snapshots and the `keep` best ones; delete the rest."""
    snapshots = list_snapshots(run_dir)
    kept = {s.path for s in snapshots[-keep:]}
    if all(s.valid_bleu is not None for s in snapshots):
        kept |= {s.path for s in sorted(snapshots, key=lambda s: s.valid_bleu, reverse=True)[:keep]}
    for s in snapshots:
        if s.path not in kept:
            s.path.unlink(missing_ok=True)


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the tensors in `paths`, accumulated in float32, one file at a time.

    FAVOR+ random features are draws, not weights: their mean would be a
    projection no layer was ever trained with, so they are copied from the
    last file in `paths` instead.
    """
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    copied: dict[str, torch.Tensor] = {}
    for path in paths:
        tensors = read_tensors(path)
        if (total or copied) and tensors.keys() != total.keys() | copied.keys():
            raise RunDirError(f"{path}: holds other tensors than {paths[0]}; snapshots of different models")
        for name, tensor in tensors.items():
            if name.endswith(RANDOM_FEATURES_BUFFER):
                copied[name] = tensor
            else:
                dtypes[name] = tensor.dtype
                total[name] = total.get(name, 0) + tensor.float()
    return {**{name: (value / len(paths)).to(dtypes[name]) for name, value in total.items()}, **copied}


def average_output(run_dir: Path | str, name: str | None, last: int = 0, best: int = 0) -> Path:
    """Where `s2s average` writes: `name` (by default named for what is averaged) in the run directory.

    The run directory belongs to its trainer: `s2s average` may add a new
    `.safetensors` file there, or replace an earlier average of its own, but
    never the model, the trainer's average, or any other file of the run.
    The run is opened first, as every command that reads a run opens it
    (`seq2seq.runs.run_dir.open_run`): an average is added only to a run that checks itself.
    """
    run_dir = Path(run_dir)
    open_run(run_dir, need_weights=False)
    if name is None:
        name = f"average-last-{last}.safetensors" if last else f"average-best-{best}.safetensors"
    if Path(name).name != name or name.startswith(".") or not name.endswith(".safetensors"):
        raise field_error("output", "must be a file name ending in .safetensors, written inside the run "
                                    f"directory, got {name!r}")
    if name in (WEIGHTS_FILE, TRAINING_AVERAGE_FILE):
        raise field_error("output", f"{name} is a file the trainer writes in {run_dir}; choose another name")
    path = run_dir / name
    if path.is_symlink() or path.exists() and not _is_average(path):
        raise field_error("output", f"{path} exists and is not an average written by s2s average; "
                                    "refusing to write over it")
    return path


def _is_average(path: Path) -> bool:
    try:
        return "averaged_steps" in read_metadata(path)
    except RunDirError:
        return False


def write_average(paths: list[Path], output: Path, metadata: dict[str, str]) -> None:
    save_tensors(average_weights(paths), output, metadata)
