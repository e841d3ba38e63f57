"""Choosing the torch device from a user's `--device` option, the precision it computes in, and the
kernels that compute its attention."""

from __future__ import annotations

import contextlib
import typing
from dataclasses import dataclass

import torch

from .config import PrecisionChoice
from .errors import ConfigError, field_error

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available.

    `cuda:N` selects one GPU (torchrun sets N from LOCAL_RANK).
    """
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise field_error("device", f"must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{device} cuda was asked for, but no CUDA GPU is available "
                          "(torch.cuda.is_available() is False); use {device} cpu or auto", ("device",))
    if kind == "mps" and not mps_ok:
        raise ConfigError("{device} mps was asked for, but Apple's MPS backend is not available", ("device",))
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How a device computes: autocast to a 16-bit type, or float32, whether float32 matmuls use TF32,
    and which kernels s2s lets compute attention."""

    autocast_dtype: torch.dtype | None  # None: no autocast, everything in float32
    tf32: bool
    numbers: str  # what its arithmetic is done in
    attention: str | None = None  # the attention kernels s2s chose; None: torch's own choice

    @property
    def description(self) -> str:
        """What training and translation say they run in, on their first line."""
        return self.numbers if self.attention is None else f"{self.numbers}; {self.attention}"


# torch sends a masked scaled_dot_product_attention on a recent GPU (Hopper, with torch 2.11) to cuDNN
# first, which builds an execution plan for every new (batch, length) shape, forward and backward:
# the run stalls at each new shape (bench/RESULTS.md, issue 27). The flash and memory-efficient
# kernels need no plan. So cuDNN attention is left out everywhere s2s computes on CUDA, until a
# measurement on s2s's own shapes shows that it pays.
CUDA_ATTENTION = "attention by SDPA without cuDNN (flash, memory-efficient or math kernels)"


def attention_kernels(device: torch.device) -> str | None:
    """The attention kernels s2s chooses on `device`: CUDA_ATTENTION on CUDA; None elsewhere, where torch chooses."""
    return CUDA_ATTENTION if device.type == "cuda" else None


def use_attention_kernels(device: torch.device) -> None:
    """Put `attention_kernels(device)` in force, for the whole process."""
    if attention_kernels(device) == CUDA_ATTENTION:
        torch.backends.cuda.enable_cudnn_sdp(False)


PRECISION_CHOICES: tuple[str, ...] = typing.get_args(PrecisionChoice)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), as oneDNN sees it.
    Without them, bf16 is emulated and many times slower than float32."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN's query
        return False


def precision_policy(device: torch.device, requested: str = "auto") -> Precision:
    """The precision s2s trains and translates in on `device` (`requested`: one of PRECISION_CHOICES).

    auto:
    - CUDA from Ampere on (compute capability 8.0+): bf16 autocast, which has
      float32's range and needs no loss scaling; the parts autocast leaves in
      float32 use TF32 tensor cores.
    - CUDA before Ampere (V100, T4): no bf16 and no TF32 in hardware. fp16
      autocast would need a GradScaler, which s2s does not run yet, so these
      train in plain float32: exact, and slower.
    - The CPU and MPS: float32.

    bf16 asks for bf16 autocast where the hardware has it: Ampere+ GPUs, and
    CPUs with AVX512-BF16 or AMX (`cpu_has_bf16`), where its matrix products
    run several times faster than float32's. Elsewhere it is refused, not emulated.
    float32 turns autocast and TF32 off.
    """
    if requested not in PRECISION_CHOICES:
        raise field_error("precision", f"must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    attention = attention_kernels(device)
    if requested == "float32":
        return Precision(None, False, "float32, as asked", attention)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return Precision(torch.bfloat16, True, "bf16 autocast, float32 matmuls on TF32", attention)
        if requested == "bf16":
            raise ConfigError(f"{{precision}} bf16: this GPU (compute capability {major}.{minor}) has no bf16; "
                              "use float32 or auto", ("precision",))
        return Precision(None, False, f"float32 (this GPU, compute capability {major}.{minor}, has no bf16; "
                                      "fp16 would need loss scaling)", attention)
    if requested == "auto":
        return Precision(None, False, "float32")
    if device.type == "cpu" and cpu_has_bf16():
        return Precision(torch.bfloat16, False, "bf16 autocast on the CPU (AVX512-BF16 or AMX)")
    why = "has no bf16 instructions (AVX512-BF16 or AMX)" if device.type == "cpu" else "is not supported"
    raise ConfigError(f"{{precision}} bf16: {device.type} {why}; use float32 or auto", ("precision",))


def mixed_precision(device: torch.device, requested: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context of `precision_policy(device, requested)` (a null context for float32);
    turns TF32 on for the float32 matmuls where the policy says so, and chooses the attention
    kernels (`use_attention_kernels`). Training, validation and every translation on a device call it
    before they compute there."""
    policy = precision_policy(device, requested)
    use_attention_kernels(device)
    if policy.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if policy.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=policy.autocast_dtype)
