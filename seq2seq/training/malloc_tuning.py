"""Keeping freed memory in the process on glibc, so that a training step does not fault its tensors in anew.

By default glibc hands large freed blocks back to the kernel: a block above
its mmap threshold is unmapped when freed, and the top of the heap is trimmed
once more than the trim threshold is free. A training step frees and
allocates the same large activations and gradients every update, and each
one was then faulted in again, page by page, in kernel time (bench/RESULTS.md,
issue 16). Fixing the thresholds keeps those blocks in the heap for the next
update: the process's peak memory stays what it was, but its resident size
no longer shrinks between updates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# glibc's largest mmap threshold on 64-bit systems; blocks above it are always mmap'd.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1 << 40  # never trim the heap
TOP_PAD = 64 * 1024 * 1024  # grow the heap in steps of 64 MB, not 128 KB


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt's value is an int: the trim threshold is capped at its largest.
    return all(mallopt(param, min(value, 2 ** 31 - 1)) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
