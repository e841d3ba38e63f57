"""Token-budget batches of similar-length pairs, and padding them into tensors.

Sorting by length before cutting batches keeps padding small; shuffling the
batches (not the pairs) keeps training stochastic. The order of one epoch is a
pure function of (seed, epoch), which is what makes resuming exact: a run
only needs to remember how many batches of the epoch it has consumed.

With a shape ladder (seq2seq.data.shape_ladder), lengths are sorted and padded
on their rungs and rows are cut to the ladder's row counts, so that a GPU sees
a few dozen batch shapes; without one, batches are cut and padded to the pairs'
own lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .shape_ladder import ShapeCount, ShapeLadder, count_shapes, padded_width
from .token_store import TokenStore


@dataclass
class Batch:
    """One padded batch for teacher forcing, on the device of its `TokenStore`s."""

    src: Tensor  # (B, S) source ids ending in EOS, right-padded
    tgt_in: Tensor  # (B, T) BOS followed by the target without its EOS
    tgt_out: Tensor  # (B, T) the target including EOS: what tgt_in should predict
    n_tgt_tokens: int  # non-pad positions of tgt_out


def collate(src: TokenStore, tgt: TokenStore, index: np.ndarray, pad_id: int, bos_id: int,
            ladder: ShapeLadder | None = None, given: int = 0) -> Batch:
    """Pairs `index` as a batch; targets shifted right: tgt_in = BOS + y[:-1], tgt_out = y (ending in EOS).
    Each side is padded to its longest row, or with a `ladder` to that row's rung.

    `given`: how many ids each target starts with that the decoder is fed but not asked to predict
    (a forced target language tag: seq2seq.data.encode.given_target_tokens); they are padding in
    tgt_out, so they carry no loss and are not counted in n_tgt_tokens."""
    tgt_out = tgt.padded(index, pad_id, padded_width(index, tgt.lengths, ladder))  # (B, T)
    # tgt_in is tgt_out moved one place right behind BOS; the place each row's EOS
    # moves into is padding in tgt_out, so the same mask pads both.
    bos = torch.full_like(tgt_out[:, :1], bos_id)  # (B, 1)
    tgt_in = torch.cat([bos, tgt_out[:, :-1]], dim=1).masked_fill(tgt_out.eq(pad_id), pad_id)  # (B, T)
    if given:
        tgt_out = tgt_out.clone()
        tgt_out[:, :given] = pad_id
    return Batch(src=src.padded(index, pad_id, padded_width(index, src.lengths, ladder)),  # (B, S)
                 tgt_in=tgt_in, tgt_out=tgt_out,
                 n_tgt_tokens=int(tgt.lengths[index].sum()) - given * len(index))


def cut_batches(order: np.ndarray, widths: np.ndarray, max_tokens: int,
                row_counts: np.ndarray | None = None) -> list[np.ndarray]:
    """Rows `order`, in that order, cut into consecutive batches whose padded size (rows x the
    widest row's width) is at most `max_tokens`; a single row wider than `max_tokens` forms a
    batch alone. `widths` (N,) is indexed by row. `row_counts` (C,), ascending from 1: each
    batch's rows are cut down to the largest of them that fits (ShapeLadder.row_counts); the
    rows cut off start the next batch.

    The one budget rule for training, validation and decoding; each caller sorts the rows as it
    needs (training shortest first with random ties, decoding longest first), so that rows of
    similar width share a batch.
    """
    widths = widths[order]
    batches: list[np.ndarray] = []
    start = 0
    # One step per batch, not per row (10M pairs are 10M Python iterations, 100k batches are
    # not): a batch that starts at `start` is at most max_tokens // widths[start] rows, so the
    # cut lies in the window after it. There, the padded size of the first j + 1 rows is the
    # running maximum width times j + 1, which never decreases with j: the batch ends before
    # the first row at which it exceeds the budget, and has at least one row.
    while start < len(order):
        window = widths[start:start + max_tokens // max(int(widths[start]), 1) + 1]
        padded = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)  # (window,)
        over = np.flatnonzero(padded > max_tokens)
        rows = max(int(over[0]), 1) if len(over) else len(window)
        if row_counts is not None:
            rows = int(row_counts[np.searchsorted(row_counts, rows, side="right") - 1])
        batches.append(order[start:start + rows])
        start += rows
    return batches


def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int,
                  rng: np.random.Generator | None, ladder: ShapeLadder | None = None) -> list[np.ndarray]:
    """Cut pairs into batches whose padded size (rows x longest side) is at most `max_tokens`.

    With an `rng`, pairs of equal length are shuffled among themselves and the
    batches come out in random order; without one, the order is deterministic
    (validation). A single pair longer than `max_tokens` forms a batch alone.
    With a `ladder`, lengths count as their rungs, and rows are cut to its row counts.
    """
    n = len(src_lens)
    if ladder is not None:
        src_lens, tgt_lens = ladder.rungs(src_lens), ladder.rungs(tgt_lens)
    noise = rng.random(n) if rng is not None else np.arange(n)
    longest = np.maximum(src_lens, tgt_lens)
    # Sort by the longer side, which is what the budget counts, then by target and source
    # length; the noise breaks ties at random. Sorting by the side the budget counts pads
    # less than sorting by target then source length, and fills batches closer to the budget.
    order = np.lexsort((noise, src_lens, tgt_lens, longest))
    batches = cut_batches(order, longest, max_tokens, ladder.row_counts(max_tokens) if ladder else None)
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def direction_shares(sizes: np.ndarray, temperature: float) -> np.ndarray:
    """Each direction's share of an epoch's pairs, from its size (pairs) and the temperature T:
    proportional to size^(1/T) (fairseq's and M2M's sampling). T = 1 keeps the corpus' proportions;
    a larger T evens them out, so that a small direction is seen more often than its size says."""
    weights = sizes.astype(np.float64) ** (1.0 / temperature)
    return weights / weights.sum()


def sample_directions(directions: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """The rows one epoch trains on, when each row belongs to a direction (`directions` (N,), small
    ints): N rows in all, each direction's number of them given by its share (`direction_shares`),
    each of its rows as many whole times as that allows and the rest drawn at random without
    replacement. Sorted: which rows share a batch is token_batches' business."""
    sizes = np.bincount(directions)
    wanted = np.round(direction_shares(sizes, temperature) * len(directions)).astype(np.int64)
    rows = []
    for direction, count in enumerate(wanted):
        own = np.flatnonzero(directions == direction)
        if not len(own):
            continue
        copies, rest = divmod(int(count), len(own))
        rows += [np.tile(own, copies), rng.choice(own, rest, replace=False)]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


class EpochBatches:
    """The batches of each training epoch, reproducible from (seed, epoch), sharded by rank.

    Under torch.distributed every rank gets the same number of batches (the
    remainder is dropped) so that gradient all-reduces stay in step.

    With `directions` (the direction of each pair, for a run of several) and a `temperature`
    above 1, each epoch first draws the pairs it trains on (`sample_directions`), also from
    (seed, epoch); otherwise every epoch trains on every pair once.
    """

    def __init__(self, src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1, ladder: ShapeLadder | None = None,
                 directions: np.ndarray | None = None, temperature: float = 1.0):
        self.src_lens, self.tgt_lens = src_lens, tgt_lens
        # Sampling at T = 1 would only redraw the corpus' own proportions: every pair once is those exactly.
        self.directions = directions if temperature != 1.0 and directions is not None else None
        self.temperature = temperature
        self.ladder = ladder  # batches are cut and padded on its rungs
        self.max_tokens, self.seed = max_tokens, seed
        self.rank, self.world_size = rank, world_size
        self._per_epoch: int | None = None
        # The last epoch cut, by (epoch, max_tokens): counting batches and training then cut it
        # once, which on 10M pairs is seconds.
        self._last: tuple[tuple[int, int], list[list[np.ndarray]]] | None = None

    def shards(self, epoch: int) -> list[list[np.ndarray]]:
        """Every rank's batches of `epoch`, in rank order: rank r has batches r, r + world_size, ...
        of the shuffled epoch. So the k-th update of all ranks together trains on the same pairs
        as a single process that accumulates world_size batches per update."""
        key = (epoch, self.max_tokens)
        if self._last is None or self._last[0] != key:
            rng = np.random.default_rng([self.seed, epoch])
            if self.directions is None:
                batches = token_batches(self.src_lens, self.tgt_lens, self.max_tokens, rng, self.ladder)
            else:
                # A stream of its own, so the batch order's draws are the same as without sampling.
                rows = sample_directions(self.directions, self.temperature, np.random.default_rng([self.seed, epoch, 1]))
                batches = [rows[batch] for batch in token_batches(self.src_lens[rows], self.tgt_lens[rows],
                                                                  self.max_tokens, rng, self.ladder)]
            per_rank = len(batches) // self.world_size
            self._last = key, [batches[rank::self.world_size][:per_rank] for rank in range(self.world_size)]
        return self._last[1]

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of `epoch`."""
        return self.shards(epoch)[self.rank]

    def shape_count(self, epoch: int) -> ShapeCount:
        """The shapes this rank's batches of `epoch` take, and how much they pad."""
        return count_shapes(self.epoch(epoch), self.src_lens, self.tgt_lens, self.ladder)

    def set_max_tokens(self, max_tokens: int) -> None:
        """A new token budget, for epochs cut from now on."""
        self.max_tokens, self._per_epoch = max_tokens, None

    def __len__(self) -> int:
        """Batches per epoch for this rank.

        Every epoch has the same count: shuffling only reorders pairs of equal
        lengths (or rungs), so the cut points fall at the same widths. An epoch
        whose pairs are drawn by direction (a temperature) has about as many.
        """
        if self._per_epoch is None:
            self._per_epoch = len(self.epoch(1))  # the first epoch: the one a new run trains on next
        return self._per_epoch
