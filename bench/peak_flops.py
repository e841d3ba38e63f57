"""What model FLOPs utilisation (MFU) is measured against: a GPU's dense bf16 matrix rate.

Two figures, because a data sheet's peak is not what a card delivers: the
nominal rate by device name, and the rate a large bf16 matrix product reaches
on this card, measured in the same process (random data: zeros run faster,
/work/.library/device/METHOD.md). On one H200 of the device machines, the
measured rate was 769-798 TFLOP/s against a data sheet's 989; the issue's
targets (issue 27) are against 790.
"""

from __future__ import annotations

import statistics

import torch

# Dense bf16 matrix rates in TFLOP/s, by a part of the device name. The Hopper SXM parts' (the H200 and
# the H100 SXM, one processor) is the rate measured on the device machines' H200 (their README) where
# the data sheet says 989; the others are the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 790.0, "H100 80GB HBM3": 790.0, "H100 SXM": 790.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0}


def nominal_tflops(device: torch.device | None = None) -> float | None:
    """The dense bf16 rate of this machine's GPU, if it is one we know; None on the CPU."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def measured_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """The median rate of a size x size x size bf16 matrix product on `device` (random data, after
    three warm-ups, each product timed with device events); None off CUDA."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / statistics.median(seconds) / 1e12
