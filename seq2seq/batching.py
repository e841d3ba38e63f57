"""Token-budget batches of similar-length pairs, and padding them into tensors.

Sorting by length before cutting batches keeps padding small; shuffling the
batches (not the pairs) keeps training stochastic. The order of one epoch is a
pure function of (seed, epoch), which is what makes resuming exact: a run
only needs to remember how many batches of the epoch it has consumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor


@dataclass
class Batch:
    """One padded batch for teacher forcing, on the device of its `TokenStore`s."""

    src: Tensor  # (B, S) source ids ending in EOS, right-padded
    tgt_in: Tensor  # (B, T) BOS followed by the target without its EOS
    tgt_out: Tensor  # (B, T) the target including EOS: what tgt_in should predict
    n_tgt_tokens: int  # non-pad positions of tgt_out


def host_to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A host array on `device`. To a GPU it goes through pinned memory, so the copy is
    queued without the host waiting for the work already queued."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class TokenStore:
    """Token ids of one side of a corpus, kept on the training device as one flat array.

    The ids go to `device` once, as int32 (half the memory of int64); each
    batch is then gathered and padded there, so training sends only a batch's
    row numbers to the accelerator. Lengths stay on the host as well, for
    cutting batches.
    """

    def __init__(self, column: pa.ChunkedArray | pa.Array, device: torch.device = torch.device("cpu")):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        # Offsets are relative to the array's own slice of the values buffer.
        offsets = np.asarray(column.offsets, dtype=np.int64)
        offsets = offsets - offsets[0]
        self.lengths = np.diff(offsets)  # (N,) on the host
        self.device = device
        values = np.array(column.flatten(), dtype=np.int32)  # a writable copy: Arrow buffers are read-only
        self.values = torch.from_numpy(values).to(device)  # (total ids,)
        self.starts = torch.from_numpy(offsets[:-1].copy()).to(device)  # (N,) where each row begins
        self.row_lengths = torch.from_numpy(self.lengths.copy()).to(device)  # (N,)

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, index: np.ndarray, pad_id: int) -> Tensor:
        """Rows `index`, right-padded into a long tensor (B, L) on the store's device."""
        width = int(self.lengths[index].max())  # from the host copy: no device sync
        rows = host_to_device(np.asarray(index, dtype=np.int64), self.device)  # (B,)
        position = torch.arange(width, device=self.device)  # (L,)
        inside = position < self.row_lengths[rows, None]  # (B, L)
        flat = (self.starts[rows, None] + position).clamp(max=max(len(self.values) - 1, 0))  # (B, L) into values
        return self.values[flat].long().masked_fill(~inside, pad_id)


def collate(src: TokenStore, tgt: TokenStore, index: np.ndarray, pad_id: int, bos_id: int) -> Batch:
    """Pairs `index` as a batch; targets shifted right: tgt_in = BOS + y[:-1], tgt_out = y (ending in EOS)."""
    tgt_out = tgt.padded(index, pad_id)  # (B, T)
    # tgt_in is tgt_out moved one place right behind BOS; the place each row's EOS
    # moves into is padding in tgt_out, so the same mask pads both.
    bos = torch.full_like(tgt_out[:, :1], bos_id)  # (B, 1)
    tgt_in = torch.cat([bos, tgt_out[:, :-1]], dim=1).masked_fill(tgt_out.eq(pad_id), pad_id)  # (B, T)
    return Batch(src=src.padded(index, pad_id), tgt_in=tgt_in, tgt_out=tgt_out,  # src (B, S)
                 n_tgt_tokens=int(tgt.lengths[index].sum()))


def cut_batches(order: np.ndarray, widths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Rows `order`, in that order, cut into consecutive batches whose padded size (rows x the
    widest row's width) is at most `max_tokens`; a single row wider than `max_tokens` forms a
    batch alone. `widths` (N,) is indexed by row.

    The one budget rule for training, validation and decoding; each caller sorts the rows as it
    needs (training shortest first with random ties, decoding longest first), so that rows of
    similar width share a batch.
    """
    widths = widths[order]
    batches: list[np.ndarray] = []
    start, width = 0, 0
    for i in range(len(order)):
        new_width = max(width, int(widths[i]))
        if i > start and new_width * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, new_width = i, int(widths[i])
        width = new_width
    if len(order):
        batches.append(order[start:])
    return batches


def token_batches(src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int,
                  rng: np.random.Generator | None) -> list[np.ndarray]:
    """Cut pairs into batches whose padded size (rows x longest side) is at most `max_tokens`.

    With an `rng`, pairs of equal length are shuffled among themselves and the
    batches come out in random order; without one, the order is deterministic
    (validation). A single pair longer than `max_tokens` forms a batch alone.
    """
    n = len(src_lens)
    noise = rng.random(n) if rng is not None else np.arange(n)
    longest = np.maximum(src_lens, tgt_lens)
    # Sort by the longer side, which is what the budget counts, then by target and source
    # length; the noise breaks ties at random. On Multi30k this pads 8% where sorting by
    # target then source length pads 13% (30% on the source side), and fills batches closer
    # to the budget.
    order = np.lexsort((noise, src_lens, tgt_lens, longest))
    batches = cut_batches(order, longest, max_tokens)
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class EpochBatches:
    """The batches of each training epoch, reproducible from (seed, epoch), sharded by rank.

    Under torch.distributed every rank gets the same number of batches (the
    remainder is dropped) so that gradient all-reduces stay in step.
    """

    def __init__(self, src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.src_lens, self.tgt_lens = src_lens, tgt_lens
        self.max_tokens, self.seed = max_tokens, seed
        self.rank, self.world_size = rank, world_size
        self._per_epoch: int | None = None

    def epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = token_batches(self.src_lens, self.tgt_lens, self.max_tokens, rng)
        per_rank = len(batches) // self.world_size
        return batches[self.rank::self.world_size][:per_rank]

    def set_max_tokens(self, max_tokens: int) -> None:
        """A new token budget, for epochs cut from now on."""
        self.max_tokens, self._per_epoch = max_tokens, None

    def __len__(self) -> int:
        """Batches per epoch for this rank.

        Every epoch has the same count: shuffling only reorders pairs of equal
        lengths, so the cut points fall at the same widths.
        """
        if self._per_epoch is None:
            self._per_epoch = len(self.epoch(0))
        return self._per_epoch
