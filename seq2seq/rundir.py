"""The run directory: what its files are called, and loading a run to translate with.

```
runs/NAME/
  config.json          RunConfig: model + training config, format version, tokenizer sha256
  tokenizer.model      (or tokenizer.src.model + tokenizer.tgt.model)
  model.safetensors    the best weights so far: what `s2s translate` uses
  average.safetensors  the average of the last snapshots (`s2s train --average-last`)
  metrics.jsonl        one JSON record per log, validation or resume event
  tensorboard/         event files, with `s2s train --tensorboard` (seq2seq.tensorboard)
  .lock                held (flock) by the trainer writing to the run
  checkpoints/         trainer state for exact resume (seq2seq.checkpoint) and
    weights/           weight snapshots for averaging (seq2seq.average)
```

Nothing here is a pickle. Loading checks that the tokenizers are the ones the
model was trained with and that their vocabularies fit its embeddings. Files
are replaced only through seq2seq.files, so a crash mid-write leaves the
previous version intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from .config import RunConfig, read_json
from .errors import ConfigError, RunDirError, TokenizerError
from .files import FILE_MODE, LOCK_FILE, atomic_write
from .model import Seq2SeqTransformer, build_model
from .tokenizer import TOKENIZER_FILES, TokenizerPair, load_tokenizers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What `s2s train --average-last` writes; `s2s average` names its own outputs otherwise.
TRAINING_AVERAGE_FILE = "average.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SNAPSHOTS_DIR = "weights"  # weights-only snapshots for averaging (seq2seq.average), under CHECKPOINTS_DIR
# The files training writes at the top of a run directory (and checkpoints/ below it).
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINING_AVERAGE_FILE, METRICS_FILE, LOCK_FILE, *TOKENIZER_FILES)
# A record of training's progress: what `train(on_event=...)` receives, and a line of metrics.jsonl.
Event = dict[str, Any]


def save_weights(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors; tied tables are stored once. The same weights and metadata give
    the same bytes, in any process (see `sort_metadata`)."""
    def write(tmp: Path) -> None:
        save_model(model, str(tmp), metadata=metadata)
        sort_metadata(tmp)

    atomic_write(path, write)


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys in sorted order.

    safetensors keeps metadata in a Rust HashMap, whose order is seeded afresh
    in every process, so one model saved twice gave two different files. The
    header is 8 bytes of length, then JSON padded with spaces: sorting the keys
    only permutes its entries, so the length and every tensor offset stay as
    they were. Anything unexpected leaves the file as safetensors wrote it.
    """
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        raw = f.read(length)
        header = json.loads(raw)
        if len(header.get("__metadata__") or {}) < 2:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        rewritten = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(rewritten) > length or json.loads(rewritten) != json.loads(raw):
            return
        f.seek(8)
        f.write(rewritten.ljust(length, b" "))


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

    def write(self, record: Event) -> None:
        # One write() on an O_APPEND descriptor: a process killed at any moment
        # leaves whole records only, never half a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        finally:
            os.close(fd)


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
