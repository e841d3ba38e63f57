"""A short ladder of sizes that batch lengths are padded up to and batch rows are cut down to, so that a
GPU sees few distinct tensor shapes.

What a GPU plans, captures or compiles per tensor shape (a cuDNN plan, a CUDA
graph, a kernel compiled for it) is made once per shape and then reused. Token-
budget batches of raw lengths bring a new (rows, source length, target length)
with almost every batch; on the ladder, a run sees a few dozen.

- Lengths go up to the next rung: four rungs per doubling (2, 4, 6, 8, 10, ...,
  16, 20, 24, ..., 32, 40, ...), so a length is padded by less than a quarter
  of itself, and by an eighth on average. Rungs stop at `longest` (the longest
  length a batch can hold), which is a rung itself.
- Rows are cut down to a multiple of 8 (1, 2 or 4 below 8), unless they are
  already the capacity of a rung (max_tokens // rung). A full batch has its
  rung's capacity, and keeps it; a batch is cut short only where the next pair
  would not fit, which happens where the pairs' rung changes: there its rows
  would be any number, and are one of a few instead. The pairs cut off start
  the next batch.

Padding more only costs arithmetic on pad positions; the token budget counts
the padded widths, so it still holds. On the CPU, which plans nothing per
shape, the ladder is off unless asked for (`shape_ladder`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

RUNGS_PER_DOUBLING = 4
SMALLEST_STEP = 2  # below 8, rungs are every other length
ROW_STEP = 8  # rows of a batch cut short: a multiple of this


@dataclass(frozen=True)
class ShapeLadder:
    """The rungs up to `longest` that batch lengths are padded to, and the row counts batches are cut to."""

    longest: int  # the top rung: no batch is padded beyond what its longest possible pair needs

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """(R,) every rung, ascending, the last one `longest`."""
        rungs, step = [], SMALLEST_STEP
        length = step
        while length < self.longest:
            rungs.append(length)
            # From 2 ** k on, rungs are 2 ** k / RUNGS_PER_DOUBLING apart.
            if length >= step * 2 * RUNGS_PER_DOUBLING:
                step *= 2
            length += step
        return np.array(rungs + [self.longest], dtype=np.int64)

    def rungs(self, lengths: np.ndarray) -> np.ndarray:
        """(N,) each of `lengths` (N,) padded up to its rung; a length above `longest` is left as it is."""
        lengths = np.asarray(lengths)
        rungs = self.lengths[np.minimum(np.searchsorted(self.lengths, lengths), len(self.lengths) - 1)]
        return np.where(lengths > self.longest, lengths, rungs)

    def rung(self, length: int) -> int:
        """`length` padded up to its rung."""
        return int(self.rungs(np.array([length]))[0])

    def row_counts(self, max_tokens: int) -> np.ndarray:
        """(C,) ascending, from 1: the row counts a batch of at most `max_tokens` padded tokens is cut to."""
        capacities = np.maximum(max_tokens // self.lengths, 1)  # (R,)
        multiples = np.arange(ROW_STEP, capacities.max() + 1, ROW_STEP)
        powers = 1 << np.arange(ROW_STEP.bit_length() - 1)  # 1, 2, 4
        return np.union1d(np.union1d(capacities, multiples), powers).astype(np.int64)


def shape_ladder(setting: str, device: torch.device, longest: int) -> ShapeLadder | None:
    """The ladder that `setting` ("auto", "on" or "off"; auto is on for CUDA) asks for on `device`,
    up to `longest`; None for none."""
    on = setting == "on" or (setting == "auto" and device.type == "cuda")
    return ShapeLadder(longest) if on else None


def padded_width(index: np.ndarray, lengths: np.ndarray, ladder: ShapeLadder | None) -> int:
    """The padded width of the rows `index` of a side whose lengths are `lengths`: the longest, on its rung."""
    width = int(lengths[index].max()) if len(index) else 0
    return ladder.rung(width) if ladder is not None and width else width


def batch_shape(index: np.ndarray, src_lens: np.ndarray, tgt_lens: np.ndarray,
                ladder: ShapeLadder | None) -> tuple[int, int, int]:
    """(rows, source width, target width) of the batch of pairs `index`, padded as `collate` pads it."""
    return len(index), padded_width(index, src_lens, ladder), padded_width(index, tgt_lens, ladder)


@dataclass(frozen=True)
class ShapeCount:
    """The distinct shapes of a list of batches, and how much they pad."""

    batches: int
    # The first batch of each distinct (rows, source width, target width), in order.
    examples: dict[tuple[int, int, int], np.ndarray] = field(repr=False)
    padding: float  # padded positions, source and target, over the real tokens, less 1

    @property
    def shapes(self) -> int:
        """Distinct (rows, source width, target width)."""
        return len(self.examples)


def count_shapes(batches: list[np.ndarray], src_lens: np.ndarray, tgt_lens: np.ndarray,
                 ladder: ShapeLadder | None) -> ShapeCount:
    """The shapes `batches` (pair indices) take when padded as `collate` pads them."""
    examples: dict[tuple[int, int, int], np.ndarray] = {}
    padded = real = 0
    for index in batches:
        shape = batch_shape(index, src_lens, tgt_lens, ladder)
        examples.setdefault(shape, index)
        padded += shape[0] * (shape[1] + shape[2])
        real += int(src_lens[index].sum()) + int(tgt_lens[index].sum())
    return ShapeCount(len(batches), examples, padded / real - 1.0 if real else 0.0)
