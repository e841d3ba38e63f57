"""glibc keeps freed memory for the next update where s2s train asks it to.

What keep_freed_memory changes is what the process keeps after a step frees its large tensors:
its resident memory. Each case runs in a fresh interpreter, so that nothing this test process
allocated before (torch raises glibc's dynamic mmap threshold as it frees) decides the outcome.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT

from seq2seq.training.malloc_tuning import MMAP_THRESHOLD, keep_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")

BLOCKS, BLOCK_BYTES = 6, 8 * 1024 * 1024  # as large as a step's activations, below MMAP_THRESHOLD

# Allocates and touches BLOCKS blocks with libc's malloc, frees them, and prints the resident bytes the
# process kept of them. argv[1] says whether keep_freed_memory is called first.
CHILD = f"""
import ctypes, ctypes.util, os, sys
from seq2seq.training.malloc_tuning import keep_freed_memory

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = resident()
blocks = [libc.malloc({BLOCK_BYTES}) for _ in range({BLOCKS})]
for block in blocks:
    ctypes.memset(block, 1, {BLOCK_BYTES})  # faulted in, as a tensor being written is
touched = resident()
for block in blocks:
    libc.free(block)
print(touched - before, resident() - before)
"""


def resident_kept(mode: str) -> tuple[int, int]:
    """(bytes the touched blocks made resident, bytes still resident after freeing them) in a fresh process."""
    done = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    grown, kept = map(int, done.stdout.split())
    return grown, kept


def test_freed_blocks_stay_resident_for_the_next_update():
    assert BLOCK_BYTES < MMAP_THRESHOLD
    total = BLOCKS * BLOCK_BYTES
    grown, kept = resident_kept("keep")
    assert grown >= 0.9 * total
    assert kept >= 0.9 * total, f"only {kept} of {total} freed bytes stayed in the process"


def test_without_it_glibc_hands_them_back():
    """The control: glibc's defaults return such blocks to the kernel, so the test above can tell the two apart."""
    total = BLOCKS * BLOCK_BYTES
    grown, kept = resident_kept("default")
    assert grown >= 0.9 * total
    assert kept <= 0.1 * total, f"{kept} of {total} freed bytes stayed without keep_freed_memory"


def test_setting_it_again_is_harmless():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
