"""What every benchmark shares: describing the machine, and appending an entry to bench/RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """CPU model, cores, GPU and torch version, for the entry's "Machine:" line."""
    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}"


def append_entry(lines: list[str]) -> None:
    """Append one entry (its lines) to bench/RESULTS.md and print it."""
    entry = "\n".join(lines) + "\n"
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(entry)
    print(entry)
