"""Token ids of a corpus, and the pairs short enough to train on.

`encode_corpus` tokenizes every pair with `datasets.map`, cached on disk by
the corpus's fingerprint and the tokenizers' content; `filter_pairs` drops the
pairs with an empty side or more than `max_len` tokens on either side, and
says how many; `token_lengths` reads the lengths batching needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import Hasher

from ..errors import DataError, TokenizerError
from .corpora import ARROW_BATCH_ROWS
from .tokenizer import EOS_ID, Tokenizer, TokenizerPair

# datasets fingerprints module-level functions by their name, not their code:
# bump this when the encoding below changes, or caches go stale.
_CACHE_VERSION = 1

_ID_FEATURES = datasets.Features({"src_ids": datasets.List(datasets.Value("int32")),
                                  "tgt_ids": datasets.List(datasets.Value("int32"))})
_LENGTH_BATCH = 100_000  # rows per Arrow batch when reading token lengths


def encode_corpus(corpus: datasets.Dataset, tokenizers: TokenizerPair, *, num_proc: int = 1,
                  cache_dir: str | None = None) -> datasets.Dataset:
    """Token ids of every pair: columns `src_ids` and `tgt_ids`, int32 lists ending in EOS.

    Runs `datasets.map` in `num_proc` processes; the ids are cached as Arrow
    files beside the corpus's own cache (or in `cache_dir`, which a corpus
    held only in memory needs for caching), keyed by the tokenizer files'
    sha256, so a second call with the same corpus and tokenizers reads them
    back instead of tokenizing again.
    """
    fn_kwargs = dict(src_model=str(tokenizers.src.path.resolve()), src_sha256=tokenizers.src.sha256,
                     tgt_model=str(tokenizers.tgt.path.resolve()), tgt_sha256=tokenizers.tgt.sha256,
                     cache_version=_CACHE_VERSION)
    # The cache key is the corpus's own fingerprint (datasets' key for its
    # content and history) and the tokenizers' content, not their paths: the
    # same tokenizer copied into a run folder reuses the ids.
    new_fingerprint = Hasher.hash([corpus._fingerprint, tokenizers.src.sha256, tokenizers.tgt.sha256,
                                   _CACHE_VERSION])
    cache_file_name = None
    if cache_dir is not None:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create the cache folder {cache_dir} ({err.strerror})") from None
        cache_file_name = str(Path(cache_dir) / f"encoded-{new_fingerprint}.arrow")
    return corpus.map(_encode_batch, batched=True, num_proc=num_proc if num_proc > 1 else None,
                      remove_columns=corpus.column_names, features=_ID_FEATURES,
                      fn_kwargs=fn_kwargs, cache_file_name=cache_file_name,
                      # Each map call's rows become one record batch: what a worker holds is bounded,
                      # and the cache file has few batch headers to fault in when loaded.
                      batch_size=ARROW_BATCH_ROWS, writer_batch_size=ARROW_BATCH_ROWS,
                      new_fingerprint=new_fingerprint, desc="Tokenizing")


# Loaded tokenizers by (path, sha256), so each worker process loads a model once.
_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}


def _tokenizer(path: str, sha256: str) -> Tokenizer:
    """The tokenizer at `path`, checked to be the file the caller hashed."""
    key = (path, sha256)
    if key not in _TOKENIZERS:
        tokenizer = Tokenizer(path)
        if tokenizer.sha256 != sha256:
            raise TokenizerError(f"{path} changed on disk while the corpus was being tokenized")
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def _encode_batch(batch: dict[str, list[str]], src_model: str, src_sha256: str, tgt_model: str,
                  tgt_sha256: str, cache_version: int) -> dict[str, list[list[int]]]:
    """Text pairs -> ids with EOS appended to both sides (a `datasets.map` function)."""
    src_ids = _tokenizer(src_model, src_sha256).encode(batch["src"])
    tgt_ids = _tokenizer(tgt_model, tgt_sha256).encode(batch["tgt"])
    return {"src_ids": [ids + [EOS_ID] for ids in src_ids],
            "tgt_ids": [ids + [EOS_ID] for ids in tgt_ids]}


@dataclass
class LengthFilterReport:
    """What `filter_pairs` kept and dropped."""

    kept: int
    too_long: int  # either side longer than max_len tokens (EOS included)
    empty: int  # either side without a token (empty or whitespace-only text)


def filter_pairs(encoded: datasets.Dataset, max_len: int, *, num_proc: int = 1,
                 name: str = "the corpus") -> tuple[datasets.Dataset, LengthFilterReport]:
    """Drop pairs with an empty side or a side longer than `max_len` tokens.

    `encoded` comes from `encode_corpus`. A pair counts as empty when either
    side is only EOS; else as too long when either side has more than
    `max_len` tokens, EOS included. The result's Arrow table (`.data`) holds
    just the kept pairs, in order: no index mapping. `name` (e.g. the corpus
    spec) is used in the DataError raised when no pair is left.
    """
    if max_len <= 1:
        raise DataError(f"max_len must leave room for a token and EOS, got {max_len}")
    src_lengths, tgt_lengths = token_lengths(encoded)
    empty = (src_lengths <= 1) | (tgt_lengths <= 1)
    too_long = ~empty & ((src_lengths > max_len) | (tgt_lengths > max_len))
    report = LengthFilterReport(kept=int((~empty & ~too_long).sum()), too_long=int(too_long.sum()),
                                empty=int(empty.sum()))
    if report.kept == 0:
        raise DataError(f"no usable pairs in {name}: all {len(encoded)} pairs were empty "
                        f"or longer than max_len={max_len}")
    if report.kept == len(encoded):
        return encoded, report
    workers = num_proc if num_proc > 1 else None
    # Filtering on Arrow batches: the id lists are never turned into Python lists.
    kept = encoded.with_format("arrow").filter(_fits, batched=True, num_proc=workers,
                                               fn_kwargs=dict(max_len=max_len),
                                               desc="Filtering by length")
    # filter() only records the kept row numbers; writing the kept rows out
    # (cached like the rest) makes `kept.data` hold exactly them, for code
    # that reads the Arrow table directly.
    kept = kept.flatten_indices(num_proc=workers)
    return kept.with_format(**_format_of(encoded)), report


def _fits(batch: pa.Table, max_len: int) -> pa.Array:
    """Which pairs of an Arrow batch have 2 to max_len ids, EOS included, on both sides.

    A `datasets.filter` function on Arrow-formatted batches.
    """
    src = pc.list_value_length(batch["src_ids"])
    tgt = pc.list_value_length(batch["tgt_ids"])
    return pc.and_(pc.and_(pc.greater(src, 1), pc.less_equal(src, max_len)),
                   pc.and_(pc.greater(tgt, 1), pc.less_equal(tgt, max_len)))


def _format_of(dataset: datasets.Dataset) -> dict:
    """Arguments to `with_format` that restore `dataset`'s format."""
    current = dataset.format
    return dict(type=current["type"], columns=current["columns"],
                output_all_columns=current["output_all_columns"], **current["format_kwargs"])


def token_lengths(encoded: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths in tokens (EOS included) of every pair, as int32 arrays (4 bytes
    a pair and side: the host memory a corpus takes grows with this alone)."""
    src, tgt = [], []
    # Arrow list lengths, batch by batch: no Python loop over rows, and a
    # filtered dataset (an index mapping) only materialises one batch at a time.
    for batch in encoded.with_format("arrow").iter(batch_size=_LENGTH_BATCH):
        src.append(pc.list_value_length(batch["src_ids"]).to_numpy(zero_copy_only=False))
        tgt.append(pc.list_value_length(batch["tgt_ids"]).to_numpy(zero_copy_only=False))
    if not src:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
    return np.concatenate(src).astype(np.int32), np.concatenate(tgt).astype(np.int32)
