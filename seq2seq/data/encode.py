"""Token ids of a corpus, and the pairs short enough to train on.

`encode_corpus` tokenizes every pair with `datasets.map`, cached on disk by
the corpus's fingerprint and the tokenizers' content; `filter_pairs` drops the
pairs with an empty side or more than `max_len` tokens on either side, and
says how many (`kept_rows` names them); `token_lengths` reads the lengths
batching needs. `sample_corpus` tokenizes every pair in a segmentation drawn
at random, for subword regularization (seq2seq.training.resampling).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.fingerprint import Hasher

from ..errors import DataError, TokenizerError
from .corpora import ARROW_BATCH_ROWS
from .directions import tagged_languages
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
    src_tokenizer, tgt_tokenizer = _tokenizer(src_model, src_sha256), _tokenizer(tgt_model, tgt_sha256)
    src_ids, tgt_ids = src_tokenizer.encode(batch["src"]), tgt_tokenizer.encode(batch["tgt"])
    return {"src_ids": [tag + ids + [EOS_ID] for tag, ids in zip(_tags(batch, "src", src_tokenizer), src_ids)],
            "tgt_ids": [tag + ids + [EOS_ID] for tag, ids in zip(_tags(batch, "tgt", tgt_tokenizer), tgt_ids)]}


# The column of a multilingual corpus that holds each pair's language tag, by the side the tag goes on
# (seq2seq.data.corpora.load_directions).
TAG_COLUMNS = {"source": "src_tag", "target": "tgt_tag"}


def _tags(batch: dict[str, list[str]], side: str, tokenizer: Tokenizer) -> Iterator[list[int]]:
    """The ids each row of `batch` starts `side` with: its language tag, if the corpus has them on
    that side (a `{side}_tag` column), else none."""
    tags = batch.get(f"{side}_tag")
    if tags is None:
        return itertools.repeat([])
    ids = {tag: [tokenizer.piece_id(tag)] for tag in set(tags)}
    return (ids[tag] for tag in tags)


def given_target_tokens(lang_tag: str, tgt_lang: str) -> int:
    """How many ids each encoded target starts with that the decoder is given but not trained to
    predict: a target language tag (lang_tag "target", several target languages) is forced at
    inference as a one-token prefix, and nothing before it (BOS and the source alone) could say
    which language it is (seq2seq.data.batching.collate)."""
    return 1 if lang_tag == "target" and tagged_languages(tgt_lang) else 0


@dataclass(frozen=True)
class Sampling:
    """How `sample_corpus` draws the segmentations of one epoch (see `Tokenizer.sample`)."""

    alpha: float  # unigram: smoothing; BPE: dropout probability
    nbest_size: int  # unigram: sample among this many best segmentations; -1: all of them
    seed: int  # the run's
    epoch: int
    max_len: int  # a side whose draw is longer than this, EOS included, keeps its best segmentation


class SamplingCancelled(Exception):
    """`sample_corpus` stopped because its `cancel_file` appeared."""


def sample_corpus(corpus: datasets.Dataset, tokenizers: TokenizerPair, sampling: Sampling, out_file: Path, *,
                  num_proc: int = 1, cancel_file: Path | None = None) -> datasets.Dataset:
    """Token ids of every pair, as `encode_corpus` gives them, but each side in a segmentation drawn
    at random; written to `out_file` (and shards beside it with `num_proc` > 1), never cached.

    The draws are a function of `sampling` and `num_proc` alone: each batch of rows draws from a
    generator seeded by (seed, epoch, its first row, its side), and `num_proc` decides where the
    batches begin. A side whose draw is longer than `sampling.max_len` (EOS included) keeps its best
    segmentation, so that a corpus `filter_pairs` has already filtered keeps every pair, within
    `max_len`. Stops with SamplingCancelled soon after `cancel_file` appears.
    """
    fn_kwargs = dict(src_model=str(tokenizers.src.path.resolve()), src_sha256=tokenizers.src.sha256,
                     tgt_model=str(tokenizers.tgt.path.resolve()), tgt_sha256=tokenizers.tgt.sha256,
                     sampling=sampling, cancel_file=str(cancel_file) if cancel_file else None)
    new_fingerprint = Hasher.hash([corpus._fingerprint, tokenizers.src.sha256, tokenizers.tgt.sha256, sampling,
                                   num_proc, _CACHE_VERSION])
    return corpus.map(_sample_batch, batched=True, with_indices=True, num_proc=num_proc if num_proc > 1 else None,
                      remove_columns=corpus.column_names, features=_ID_FEATURES, fn_kwargs=fn_kwargs,
                      cache_file_name=str(out_file), load_from_cache_file=False, new_fingerprint=new_fingerprint,
                      batch_size=ARROW_BATCH_ROWS, writer_batch_size=ARROW_BATCH_ROWS,
                      desc=f"Sampling segmentations for epoch {sampling.epoch}")


def _sample_batch(batch: dict[str, list[str]], indices: list[int], src_model: str, src_sha256: str, tgt_model: str,
                  tgt_sha256: str, sampling: Sampling, cancel_file: str | None) -> dict[str, list[list[int]]]:
    """Text pairs -> sampled ids with EOS appended to both sides (a `datasets.map` function)."""
    if cancel_file and os.path.exists(cancel_file):
        raise SamplingCancelled(cancel_file)
    sampled = {}
    for number, (side, model, sha256) in enumerate((("src", src_model, src_sha256), ("tgt", tgt_model, tgt_sha256))):
        tokenizer = _tokenizer(model, sha256)
        # A tagged side keeps a place for its tag within max_len.
        side_sampling = replace(sampling, max_len=sampling.max_len - 1) if f"{side}_tag" in batch else sampling
        ids = _sampled_side(tokenizer, batch[side], side_sampling,
                            stream=(sampling.seed, sampling.epoch, indices[0], number))
        sampled[f"{side}_ids"] = [tag + row for tag, row in zip(_tags(batch, side, tokenizer), ids)]
    return sampled


def _sampled_side(tokenizer: Tokenizer, lines: list[str], sampling: Sampling,
                  stream: tuple[int, ...]) -> list[list[int]]:
    """Sampled ids of `lines`, each ending in EOS; a line drawn longer than max_len gets its best ids."""
    # sentencepiece's seed is an unsigned 32-bit number, and 2**32 - 1 means "draw one at random".
    seed = int(np.random.SeedSequence(stream).generate_state(1)[0]) % (2**32 - 1)
    ids = [row + [EOS_ID] for row in tokenizer.sample(lines, sampling.alpha, sampling.nbest_size, seed)]
    too_long = [i for i, row in enumerate(ids) if len(row) > sampling.max_len]
    if too_long:
        for i, best in zip(too_long, tokenizer.encode([lines[i] for i in too_long])):
            ids[i] = best + [EOS_ID]
    return ids


@dataclass
class LengthFilterReport:
    """What `filter_pairs` kept and dropped."""

    kept: int
    too_long: int  # either side longer than max_len tokens (EOS included)
    empty: int  # either side without a token (empty or whitespace-only text)


def filter_pairs(encoded: datasets.Dataset, max_len: int, *, num_proc: int = 1, name: str = "the corpus",
                 tags: tuple[int, int] = (0, 0)) -> tuple[datasets.Dataset, LengthFilterReport]:
    """Drop pairs with an empty side or a side longer than `max_len` tokens.

    `encoded` comes from `encode_corpus`. A pair counts as empty when either
    side is only EOS; else as too long when either side has more than
    `max_len` tokens, EOS included. The result's Arrow table (`.data`) holds
    just the kept pairs, in order: no index mapping. `name` (e.g. the corpus
    spec) is used in the DataError raised when no pair is left. `tags`: the ids a language tag
    puts before the source and the target pieces (`tag_lengths`): a side with only its tag is empty.
    """
    if max_len <= 1:
        raise DataError(f"max_len must leave room for a token and EOS, got {max_len}")
    empty, too_long = _unusable(encoded, max_len, tags)
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
                                               fn_kwargs=dict(max_len=max_len, tags=tags),
                                               desc="Filtering by length")
    # filter() only records the kept row numbers; writing the kept rows out
    # (cached like the rest) makes `kept.data` hold exactly them, for code
    # that reads the Arrow table directly.
    kept = kept.flatten_indices(num_proc=workers)
    return kept.with_format(**_format_of(encoded)), report


def kept_rows(encoded: datasets.Dataset, max_len: int, tags: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The row numbers, in order, of the pairs `filter_pairs` keeps: (K,) int64."""
    empty, too_long = _unusable(encoded, max_len, tags)
    return np.flatnonzero(~empty & ~too_long)


def tag_lengths(corpus: datasets.Dataset) -> tuple[int, int]:
    """The ids encoding puts before the source and the target pieces of each pair of `corpus`: 1 on
    the side its language tags go on (seq2seq.data.corpora.load_directions), else 0."""
    return int("src_tag" in corpus.column_names), int("tgt_tag" in corpus.column_names)


def _unusable(encoded: datasets.Dataset, max_len: int, tags: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool masks of the pairs with an empty side, and of the others with a side over `max_len`."""
    src_lengths, tgt_lengths = token_lengths(encoded)
    empty = (src_lengths <= 1 + tags[0]) | (tgt_lengths <= 1 + tags[1])
    return empty, ~empty & ((src_lengths > max_len) | (tgt_lengths > max_len))


def _fits(batch: pa.Table, max_len: int, tags: tuple[int, int] = (0, 0)) -> pa.Array:
    """Which pairs of an Arrow batch have 2 to max_len ids, EOS included, on both sides, and a
    piece besides a side's tag.

    A `datasets.filter` function on Arrow-formatted batches.
    """
    src = pc.list_value_length(batch["src_ids"])
    tgt = pc.list_value_length(batch["tgt_ids"])
    return pc.and_(pc.and_(pc.greater(src, 1 + tags[0]), pc.less_equal(src, max_len)),
                   pc.and_(pc.greater(tgt, 1 + tags[1]), pc.less_equal(tgt, max_len)))


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
