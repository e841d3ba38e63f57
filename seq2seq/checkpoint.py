"""The run directory: safe loading, and trainer state for resume (file primitives: seq2seq.files).

```
runs/NAME/
  config.json          RunConfig: model + training config, format version, tokenizer sha256
  tokenizer.model      (or tokenizer.src.model + tokenizer.tgt.model)
  model.safetensors    the best weights so far: what `s2s translate` uses
  metrics.jsonl        one JSON record per log, validation or resume event
  .lock                held (flock) by the trainer writing to the run
  checkpoints/
    last.json          {"dir": "step_00001234"}: the newest complete trainer state
    step_00001234/     model.safetensors, trainer.safetensors (optimizer and RNG
                       tensors), trainer.json (step, epoch, data position, ...)
```

Nothing here is a pickle. Every file is written to a temporary name in the
same folder, flushed, fsync'd and renamed into place; a trainer state only
becomes "last" once `last.json` points at it, so a crash mid-write leaves the
previous state intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .config import RunConfig, read_json
from .errors import ConfigError, RunDirError, TokenizerError
from .files import FILE_MODE, LOCK_FILE, TMP_SUFFIX, atomic_write, atomic_write_text
from .model import Seq2SeqTransformer, build_model
from .tokenizer import TOKENIZER_FILES, TokenizerPair, load_tokenizers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What `s2s train --average-last` writes; `s2s average` names its own outputs otherwise.
TRAINING_AVERAGE_FILE = "average.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SNAPSHOTS_DIR = "weights"  # weights-only snapshots for averaging (seq2seq.average), under CHECKPOINTS_DIR
LAST_POINTER = "last.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
# The files training writes at the top of a run directory (and checkpoints/ below it).
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINING_AVERAGE_FILE, METRICS_FILE, LOCK_FILE, *TOKENIZER_FILES)


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


def save_weights(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors; tied tables are stored once."""
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: Path | str) -> None:
    """Load safetensors weights into `model`, with a RunDirError on any mismatch or corruption."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no such weights file")
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except (SafetensorError, OSError) as err:
        raise RunDirError(f"{path}: not a readable safetensors file ({err})") from None
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        first = str(err).strip().splitlines()[0][:300]
        raise RunDirError(f"{path}: weights do not match config.json ({first})") from None


class MetricsLog:
    """Appends one JSON record per line to metrics.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def write(self, record: dict[str, Any]) -> None:
        # One write() on an O_APPEND descriptor: a process killed at any moment
        # leaves whole records only, never half a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------
# Loading a run directory for translation


def read_run_config(run_dir: Path | str) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    try:
        return RunConfig.from_json_dict(read_json(path), str(path))
    except ConfigError as err:
        raise RunDirError(str(err)) from None


def load_run_tokenizers(run_dir: Path | str, config: RunConfig) -> TokenizerPair:
    """The run's tokenizers, checked against the hashes and vocabulary sizes in config.json."""
    run_dir = Path(run_dir)
    try:
        tokenizers = load_tokenizers(run_dir)
    except TokenizerError as err:
        raise RunDirError(str(err)) from None
    for tok in {t.path: t for t in (tokenizers.src, tokenizers.tgt)}.values():
        expected = config.tokenizer_sha256.get(tok.path.name)
        if expected is not None and expected != tok.sha256:
            raise RunDirError(f"{tok.path}: does not match the tokenizer this model was trained "
                              f"with (sha256 differs from config.json)")
    for side, tok, size in (("source", tokenizers.src, config.model.src_vocab_size),
                            ("target", tokenizers.tgt, config.model.tgt_vocab_size)):
        if tok.vocab_size != size:
            raise RunDirError(f"{tok.path}: {side} vocabulary has {tok.vocab_size} pieces but "
                              f"the model's embeddings have {size}")
    return tokenizers


def load_run(run_dir: Path | str, device: torch.device,
             weights: str = WEIGHTS_FILE) -> tuple[Seq2SeqTransformer, TokenizerPair, RunConfig]:
    """Model (in eval mode, on `device`), tokenizers and config from a run directory."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    tokenizers = load_run_tokenizers(run_dir, config)
    weights_path = run_dir / weights
    if not os.path.lexists(weights_path):
        raise RunDirError(f"{run_dir}: no {weights} (has training saved a model yet?)")
    try:  # say why a file that is there cannot be read: permissions, a symlink loop, a folder
        with open(weights_path, "rb"):
            pass
    except OSError as err:
        raise RunDirError(f"{weights_path}: cannot be read ({err.strerror or err})") from None
    model = build_model(config.model).to(device)
    load_weights(model, weights_path)
    return model.eval(), tokenizers, config


# ----------------------------------------------------------------------------
# Trainer state for exact resume


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
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def save_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       progress: dict[str, Any], keep: int = 1) -> Path:
    """Write a complete, resumable trainer state and point `last.json` at it.

    `progress` is JSON: step, epoch, position in the epoch, early-stopping
    state. Older states beyond the newest `keep` are removed afterwards.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(exist_ok=True)
    name = f"step_{progress['step']:08d}"
    folder = ckpt_root / name
    folder.mkdir(exist_ok=True)
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    save_weights(model, folder / WEIGHTS_FILE)
    atomic_write(folder / TRAINER_TENSORS,
                 lambda tmp: save_file({**optim_tensors, **rng_tensors()}, str(tmp)))
    atomic_write_text(folder / TRAINER_JSON, json.dumps({**progress, "optimizer": optim_meta}) + "\n")
    atomic_write_text(ckpt_root / LAST_POINTER, json.dumps({"dir": name}) + "\n")
    states = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in states[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_trainer_state(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS_DIR / LAST_POINTER).is_file()


def load_trainer_state(run_dir: Path, model: nn.Module,
                       optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from the last trainer state; return its progress record."""
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
    restore_rng(tensors)
    return progress
