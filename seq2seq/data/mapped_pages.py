"""Telling the kernel how training reads a memory-mapped corpus, so its resident memory stays flat.

A batch's rows lie scattered over the whole Arrow file (batches group pairs by
length, not by position). Each row read through the map page-faults, and by
default the kernel then reads ahead (128 KiB) and maps the cached pages around
the fault (64 KiB): ~100 bytes wanted, tens of KiB resident. Over a few
hundred updates on a 10M-pair corpus that was gigabytes of file pages counted
in the process's RSS, and as many bytes read from disk for a corpus that is
not in the page cache.

`MappedPages` covers the file-backed pages under a set of Arrow buffers:

- `MADV_RANDOM` once: a fault reads the page it needs, not the pages after it;
- `MADV_DONTNEED` after each batch (`release`): the process lets go of the
  pages it touched. They stay in the page cache, and the map stays valid: a
  later read faults them back in from the cache or the file.

Only ranges inside file-backed mappings are advised (from /proc/self/maps):
MADV_DONTNEED on anonymous memory would zero it. Where there is no
/proc/self/maps or no madvise (macOS, Windows), nothing is advised. Advice is
a hint: a failed call changes nothing that is read.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
from pathlib import Path

import pyarrow as pa

PAGE = mmap.PAGESIZE


def _libc_madvise():
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(mmap, "MADV_DONTNEED") or not hasattr(mmap, "MADV_RANDOM"):
        return None
    madvise = ctypes.CDLL(name, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise()


def file_backed_mappings() -> list[tuple[int, int]]:
    """(start, end) addresses of this process's mappings of files, from /proc/self/maps; [] where
    there is none to read."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    mappings = []
    for line in lines:
        # start-end perms offset dev inode [path]: inode 0 is anonymous memory.
        fields = line.split(maxsplit=5)
        if len(fields) >= 6 and fields[4] != "0":
            start, end = (int(address, 16) for address in fields[0].split("-"))
            mappings.append((start, end))
    return mappings


def _page_ranges(buffers: list[pa.Buffer], mappings: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Page-aligned (start, length) ranges covering `buffers`, each within one of `mappings`."""
    spans = sorted((b.address, b.address + b.size) for b in buffers if b is not None and b.size)
    mappings = sorted(mappings)
    starts = [m_start for m_start, _ in mappings]
    ranges: list[list[int]] = []
    for start, end in spans:
        at = bisect.bisect_right(starts, start) - 1  # the last mapping that starts at or before `start`
        if at < 0 or end > mappings[at][1]:  # not memory-mapped from a file: leave it alone
            continue
        mapping = mappings[at]
        start, end = start - start % PAGE, min(-(-end // PAGE) * PAGE, mapping[1])
        # Buffers in one mapping are advised as one range: a few calls per batch, not one a chunk.
        if ranges and ranges[-1][2] == mapping[0]:
            ranges[-1][1] = max(ranges[-1][1], end)
        else:
            ranges.append([start, end, mapping[0]])
    return [(start, end - start) for start, end, _ in ranges]


class MappedPages:
    """The file-backed pages under `buffers`, read at random and released after use."""

    def __init__(self, buffers: list[pa.Buffer]):
        self.ranges = _page_ranges(buffers, file_backed_mappings()) if _madvise is not None else []
        self._advise("MADV_RANDOM")

    def release(self) -> None:
        """Let go of the pages read so far (they stay in the page cache)."""
        self._advise("MADV_DONTNEED")

    def _advise(self, advice: str) -> None:
        for start, length in self.ranges:
            _madvise(start, length, getattr(mmap, advice))
