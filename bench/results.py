"""What every benchmark shares: describing the machine, and appending an entry to bench/RESULTS.md."""

from __future__ import annotations

import gzip
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parent.parent
S2S = str(Path(sys.executable).parent / "s2s")  # the `s2s` of the environment running the bench
DATA = ROOT / "data" / "multi30k"
# transformers doing the same job. On the GPU machine, where ../shared does not
# travel, S2S_PEER points at a copy carried with the repository.
PEER = Path(os.environ.get("S2S_PEER", ROOT.parent / "shared" / "peers" / "hf_marian.py"))


def read_lines(path: Path) -> list[str]:
    """The lines of a gzipped text file, such as a Multi30k split, without their newlines."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def run_timed(args: list[str]) -> tuple[float, str]:
    """Run a command; its wall time in seconds and its stdout. Exits with its stderr if it fails."""
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(args)}\n{done.stderr}")
    return time.monotonic() - start, done.stdout


def shown(args: list[str]) -> str:
    """A command as RESULTS.md shows it: `s2s` for our binary, paths relative to the repository."""
    return shlex.join("s2s" if x == S2S else
                      str(Path(x).relative_to(ROOT)) if x.startswith(str(ROOT)) else x for x in args)


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
