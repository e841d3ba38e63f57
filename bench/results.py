"""What every benchmark shares: describing the machine, and appending an entry to bench/RESULTS.md."""

from __future__ import annotations

import gzip
import os
import resource
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


def run_measured(args: list[str]) -> tuple[float, str, dict[str, float]]:
    """Run a command; its wall time in seconds, its stdout, and what it cost the kernel: user and
    system CPU seconds and minor and major page faults, of it and its children (getrusage).
    Exits with its stderr if it fails. Commands run one at a time, so the children's usage
    after it, less before, is its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(args)}\n{done.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = {"user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
             "minor_faults": after.ru_minflt - before.ru_minflt, "major_faults": after.ru_majflt - before.ru_majflt}
    return seconds, done.stdout, usage


def run_timed(args: list[str]) -> tuple[float, str]:
    """Run a command; its wall time in seconds and its stdout. Exits with its stderr if it fails."""
    seconds, stdout, _ = run_measured(args)
    return seconds, stdout


def shown(args: list[str]) -> str:
    """A command as RESULTS.md shows it: `s2s` for our binary, paths relative to the repository."""
    return shlex.join("s2s" if x == S2S else
                      str(Path(x).relative_to(ROOT)) if x.startswith(str(ROOT)) else x for x in args)


def machine() -> str:
    """CPU model, cores, GPU and torch version, for the entry's "Machine:" line."""
    import torch

    cpu = "unknown CPU"
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        # Hosts under one model name differ: "AMD EPYC" here was AVX2-only on 2026-12-02 and had
        # AVX-512 with bf16 on 12-04, and matrix products ran several times faster.
        flags = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
        vector = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                          ("amx_bf16", "AMX")) if flag in flags]
        cpu += f" ({', '.join(vector) if vector else 'AVX2' if 'avx2' in flags else 'no AVX2'})"
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
