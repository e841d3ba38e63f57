"""Weights files that check themselves: safetensors whose header records the SHA-256 of their data.

Every weights file s2s writes (the model, averages, snapshots, checkpoints)
goes through `save_tensors`, and every one it reads through `read_tensors`,
which refuses a file whose data are not the bytes that were saved, or hold a
weight that is not finite. Nothing here is a pickle. Files are replaced only
through seq2seq.files.atomic, so a crash mid-write leaves the previous version
intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from ..config import ModelConfig
from ..errors import RunDirError, one_line
from ..files.atomic import atomic_write
from ..model.transformer import Seq2SeqTransformer, build_model

# The SHA-256 of a weights file's tensor data, in the file's own header (see `save_tensors`).
DATA_SHA256_KEY = "s2s_data_sha256"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header


def save_tensors(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as a safetensors file that checks itself when `read_tensors` reads it.

    The SHA-256 of the tensor data goes into the header's metadata
    (DATA_SHA256_KEY), not into a file beside it: it is written atomically
    with the data it describes, so no crash between two renames can leave a
    file and a hash that disagree, and it travels with the file when it is
    copied (an average kept as the model, a run moved elsewhere). The data are
    nearly all of the file; damage to the header shows as a header that does
    not parse, or as tensors that do not fit the model.

    The metadata keys are sorted: safetensors keeps them in a Rust HashMap,
    whose order is seeded afresh in every process, so the same tensors and
    metadata give the same bytes in any process. Python writes the bytes, as
    `read_tensors` reads them: safetensors takes only UTF-8 paths, and a
    POSIX path is bytes.
    """
    blob = safetensors.torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
                                  metadata=metadata)
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    data = memoryview(blob)[8 + length:]
    header["__metadata__"] = dict(sorted({**(header.get("__metadata__") or {}),
                                          DATA_SHA256_KEY: hashlib.sha256(data).hexdigest()}.items()))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw = raw.ljust(-(-len(raw) // 8) * 8)  # the tensor data stay 8-byte aligned, as safetensors keeps them

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.write(data)

    atomic_write(path, write)


def save_weights(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """`model`'s weights (its state dict) as a self-checking safetensors file (`save_tensors`).

    Tied tensors are stored once, under the first of their names; as
    safetensors' own `save_model` does, the metadata maps each other name to it.
    """
    metadata = dict(metadata or {})
    state = model.state_dict(keep_vars=True)
    tensors = {}
    for names in _tied_names(model).values():
        tensors[names[0]] = state[names[0]]
        metadata.update({alias: names[0] for alias in names[1:] if alias not in metadata})
    save_tensors(tensors, path, metadata)


def _tied_names(model: nn.Module) -> dict[int, list[str]]:
    """The names of each tensor of `model`'s state dict, sorted; several for tied tensors."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    return {key: sorted(group) for key, group in names.items()}


def _read_header(f: BinaryIO, path: Path) -> tuple[int, dict[str, Any]]:
    """The length and the parsed JSON of the header of the safetensors file open in `f`."""
    try:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= _MAX_HEADER_BYTES:
            raise ValueError("no header")
        raw = f.read(length)
        header = json.loads(raw) if len(raw) == length else None
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: not a readable safetensors file ({err})") from None
    return length, header


def _data_size(header: dict[str, Any], path: Path) -> int:
    """How many bytes of tensor data a safetensors header describes."""
    try:
        return max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                   default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise RunDirError(f"{path}: not a readable safetensors file (its header does not describe tensors)") from None


def read_metadata(path: Path | str) -> dict[str, str]:
    """The metadata in a safetensors file's header, read without its tensors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read_header(f, path)[1].get("__metadata__") or {}
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror or err})") from None


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU, checked: a RunDirError names the file if it
    cannot be read, if its tensor data are not those whose SHA-256 its header records, or if a
    floating-point tensor holds NaN or infinity, naming that tensor.

    Files written before s2s recorded the hash (`save_tensors`) carry none: they are read as they
    always were, checked for everything else.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()  # read once: what is checked is what is loaded
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror or err})") from None
    length, header = _read_header(io.BytesIO(blob), path)
    held, described = len(blob) - 8 - length, _data_size(header, path)
    if held != described:
        raise RunDirError(f"{path}: not a readable safetensors file (its header describes {described} bytes of "
                          f"tensor data, but it holds {held}: truncated?)")
    recorded = (header.get("__metadata__") or {}).get(DATA_SHA256_KEY)
    if recorded is not None and hashlib.sha256(memoryview(blob)[8 + length:]).hexdigest() != recorded:
        raise RunDirError(f"{path}: damaged: its tensor data do not match the SHA-256 recorded in it when it was "
                          "saved")
    try:
        tensors = safetensors.torch.load(blob)
    except SafetensorError as err:
        raise RunDirError(f"{path}: not a readable safetensors file ({one_line(err)})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunDirError(f"{path}: tensor {name} holds NaN or infinite values; these weights cannot be used")
    return tensors


def check_weights_fit(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """RunDirError unless `tensors` (read from `path`) are every tensor of `model`'s state dict, in its
    shape, tied tensors once under any of their names, and nothing else. `model` may live on the meta
    device: only shapes are compared."""
    state = model.state_dict(keep_vars=True)
    problems = [f"unexpected tensor {name}" for name in sorted(set(tensors) - set(state))]
    problems += [f"no tensor {names[0]}" for names in _tied_names(model).values()
                 if not any(name in tensors for name in names)]
    problems += [f"{name} has shape {tuple(tensors[name].shape)}, the model {tuple(state[name].shape)}"
                 for name in state if name in tensors and tensors[name].shape != state[name].shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise RunDirError(f"{path}: weights do not match the model config.json describes "
                          f"({'; '.join(problems[:3])}{more})")


def shape_of(model_cfg: ModelConfig) -> Seq2SeqTransformer:
    """The model `model_cfg` describes on the meta device, for `check_weights_fit`: its tensors' names
    and shapes, allocated nowhere."""
    with torch.device("meta"):
        return build_model(model_cfg)


def assign_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """Copy `tensors`, read from `path` by `read_tensors`, into `model`: a RunDirError unless they fit it."""
    check_weights_fit(model, tensors, path)
    # Not strict: a tied tensor comes under one of its names only; check_weights_fit saw to the rest.
    model.load_state_dict(tensors, strict=False)


def load_weights(model: nn.Module, path: Path | str) -> None:
    """Load safetensors weights into `model`, with a RunDirError on any mismatch, damage or
    non-finite weight (`read_tensors`, `check_weights_fit`)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise RunDirError(f"{path}: no such weights file")
    assign_weights(model, read_tensors(path), path)
