"""Choosing the torch device from a user's `--device` option."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available.

    `cuda:N` selects one GPU (torchrun sets N from LOCAL_RANK).
    """
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available "
                          "(torch.cuda.is_available() is False); use --device cpu or auto")
    if kind == "mps" and not mps_ok:
        raise ConfigError("--device mps was asked for, but Apple's MPS backend is not available")
    return torch.device(name)


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, where it is fast and needs no loss scaling; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
