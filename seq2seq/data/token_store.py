"""Where the token ids of a training corpus are kept while it trains, and how a batch's rows are
gathered from there and padded.

Two places, with one interface (`lengths`, `len()`, `padded(index, pad_id)`):

- `DeviceTokenStore`: the ids copied once to the training device as one flat
  int32 array; each batch is gathered and padded there, so training sends only
  a batch's row numbers to the accelerator. For corpora that fit.
- `MappedTokenStore`: the ids left in the Arrow cache file that `datasets`
  memory-maps; each batch is gathered from the map on the host, padded, and
  sent through pinned memory. Only the pages of the rows a batch reads are
  touched, and released again (seq2seq.data.mapped_pages), so the host RAM a corpus
  takes does not grow with its size, beyond its lengths (4 bytes a pair and
  side).

`token_store` picks one: on an accelerator the device up to
`DEVICE_STORE_MAX_BYTES` of ids, the memory map above that; on the CPU the
memory map. Both give identical batches.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from ..config import TokenPlacement as Placement
from .mapped_pages import MappedPages

# Ids up to this size (about 1.5M Multi30k-length pairs a side) are copied to the device whole.
DEVICE_STORE_MAX_BYTES = 128 << 20


class TokenStore(Protocol):
    """Token ids of one side of a corpus: each row's length on the host, and padded batches."""

    lengths: np.ndarray  # (N,) int32, tokens of each row

    def __len__(self) -> int: ...

    def padded(self, index: np.ndarray, pad_id: int, width: int | None = None) -> Tensor:
        """Rows `index`, right-padded into a long tensor (B, L) on the training device: L is `width`
        (at least the longest row's length), or the longest row's length."""
        ...


def host_to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A host array on `device`. To a GPU it goes through pinned memory, so the copy is
    queued without the host waiting for the work already queued."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _batch_width(lengths: np.ndarray, index: np.ndarray, width: int | None) -> int:
    """The width rows `index` are padded to: `width`, which must hold the longest, or the longest."""
    longest = int(lengths[index].max())
    if width is None:
        return longest
    if width < longest:
        raise ValueError(f"a padded width of {width} is shorter than the longest row ({longest})")
    return width


def _chunks(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return [chunk for chunk in chunks if len(chunk)]


def _row_lengths(chunks: list[pa.Array]) -> np.ndarray:
    """(N,) int32: the ids in each row of `chunks`, in order."""
    if not chunks:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate([np.diff(chunk.offsets.to_numpy()) for chunk in chunks]).astype(np.int32)


def id_bytes(column: pa.ChunkedArray | pa.Array) -> int:
    """Bytes of the token ids in `column` (a list<int32> column), without reading them."""
    return 4 * sum(int(chunk.offsets[-1].as_py()) - int(chunk.offsets[0].as_py()) for chunk in _chunks(column))


def resolve_placement(column: pa.ChunkedArray | pa.Array, device: torch.device,
                      placement: Placement = "auto") -> Placement:
    """Where `placement` keeps `column` on `device`: "auto" is the device for up to
    DEVICE_STORE_MAX_BYTES of ids on an accelerator, else the memory map. On the CPU "device"
    would be a second copy, in the process's own memory, of ids the page cache already holds
    for the map, and gathering a batch costs far less than its update either way."""
    if placement != "auto":
        return placement
    if device.type == "cpu":
        return "mapped"
    return "device" if id_bytes(column) <= DEVICE_STORE_MAX_BYTES else "mapped"


def token_store(column: pa.ChunkedArray | pa.Array, device: torch.device,
                placement: Placement = "auto") -> TokenStore:
    """The store `placement` names for `column` (see `resolve_placement`)."""
    placement = resolve_placement(column, device, placement)
    if placement == "device":
        return DeviceTokenStore(column, device)
    if placement == "mapped":
        return MappedTokenStore(column, device)
    raise ValueError(f"unknown token store placement {placement!r}")


class DeviceTokenStore:
    """Token ids of one side of a corpus, kept on the training device as one flat array.

    The ids go to `device` once, as int32 (half the memory of int64); each
    batch is then gathered and padded there. Lengths stay on the host as well,
    for cutting batches.
    """

    placement = "device"

    def __init__(self, column: pa.ChunkedArray | pa.Array, device: torch.device = torch.device("cpu")):
        chunks = _chunks(column)
        # Each chunk's ids as a zero-copy view of its slice of the values buffer (a sliced
        # chunk's offsets index the unsliced buffer), joined in one copy: a large corpus on the
        # CPU then takes its size in RAM once, not three times while it loads.
        views = [chunk.values.to_numpy()[chunk.offsets[0].as_py():chunk.offsets[-1].as_py()] for chunk in chunks]
        self.lengths = _row_lengths(chunks)  # (N,) on the host
        self.device = device
        values = np.concatenate(views).astype(np.int32, copy=False) if chunks else np.zeros(0, dtype=np.int32)
        self.values = torch.from_numpy(values).to(device)  # (total ids,)
        starts = np.concatenate([[0], np.cumsum(self.lengths[:-1], dtype=np.int64)]) if chunks else np.zeros(0)
        self.starts = torch.from_numpy(starts.astype(np.int64)).to(device)  # (N,) where each row begins
        self.row_lengths = torch.from_numpy(self.lengths.astype(np.int64)).to(device)  # (N,)

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, index: np.ndarray, pad_id: int, width: int | None = None) -> Tensor:
        width = _batch_width(self.lengths, index, width)  # from the host copy: no device sync
        rows = host_to_device(np.asarray(index, dtype=np.int64), self.device)  # (B,)
        position = torch.arange(width, device=self.device)  # (L,)
        inside = position < self.row_lengths[rows, None]  # (B, L)
        flat = (self.starts[rows, None] + position).clamp(max=max(len(self.values) - 1, 0))  # (B, L) into values
        return self.values[flat].long().masked_fill(~inside, pad_id)


class MappedTokenStore:
    """Token ids of one side of a corpus, left in the Arrow buffers they came in.

    For a dataset read from `datasets`' cache those buffers are the memory-
    mapped cache file, and nothing is copied: each chunk's offsets and values
    are numpy views of the map (a chunk is one record batch of the file). The
    host keeps only the row lengths.
    """

    placement = "mapped"

    def __init__(self, column: pa.ChunkedArray | pa.Array, device: torch.device = torch.device("cpu")):
        chunks = _chunks(column)
        # Zero-copy views (to_numpy refuses to copy): a sliced chunk's offsets index its
        # unsliced values, which is what .values returns.
        self.offsets = [chunk.offsets.to_numpy() for chunk in chunks]  # C x (rows + 1,)
        self.values = [chunk.values.to_numpy() for chunk in chunks]  # C x (ids,)
        self.first_rows = np.cumsum([0] + [len(chunk) for chunk in chunks[:-1]], dtype=np.int64)  # (C,)
        self.lengths = _row_lengths(chunks)  # (N,)
        self.device = device
        self.pages = MappedPages([buffer for chunk in chunks for buffer in chunk.buffers()])
        self.pages.release()  # what loading and measuring the corpus touched

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, index: np.ndarray, pad_id: int, width: int | None = None) -> Tensor:
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        batch = np.full((len(index), _batch_width(self.lengths, index, width)), pad_id, dtype=np.int64)  # (B, L)
        chunk_of = np.searchsorted(self.first_rows, index, side="right") - 1  # (B,)
        row_in_chunk = index - self.first_rows[chunk_of]  # (B,)
        # One slice of the map per row: a batch is tens to hundreds of rows.
        for row, (chunk, i) in enumerate(zip(chunk_of.tolist(), row_in_chunk.tolist())):
            offsets = self.offsets[chunk]
            batch[row, :lengths[row]] = self.values[chunk][offsets[i]:offsets[i + 1]]
        self.pages.release()  # the batch is copied out: resident memory does not grow with the corpus
        return host_to_device(batch, self.device)
