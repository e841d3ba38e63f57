"""Parallel corpora through `datasets`: loading, tokenizing, length filtering.

A corpus spec names where the sentence pairs are; `src_lang` and `tgt_lang`
(e.g. en, de) pick the two sides:

- `PREFIX`: two aligned plain-text files `PREFIX.SRC` and `PREFIX.TGT`, one
  sentence per line, UTF-8, each optionally gzip'ed (`PREFIX.SRC.gz`).
  Example: `data/multi30k/train` with en and de. Lines end at "\\n" only (a
  trailing "\\r" is dropped), so characters such as U+2028 or form feed stay
  inside their line. Both files must have the same number of lines.
- `FILE.tsv`, `FILE.tsv.gz`: one pair per line, source TAB target.
- `FILE.jsonl`, `FILE.jsonl.gz`, `FILE.json`: JSON lines (or a JSON array),
  either `{"translation": {"en": ..., "de": ...}}` as on the Hugging Face Hub,
  or with the language codes as top-level keys: `{"en": ..., "de": ...}`.
- `FILE.parquet`: the same two column layouts as JSON.
- `DIR` or `DIR#SPLIT`: a dataset written with `Dataset.save_to_disk` or
  `DatasetDict.save_to_disk`; a DatasetDict needs `#SPLIT` unless it has a
  single split. Same column layouts as JSON.
- `hub:NAME[@CONFIG]#SPLIT`: `datasets.load_dataset(NAME, CONFIG, split=SPLIT)`,
  e.g. `hub:wmt/wmt14@de-en#train` (needs network access the first time;
  NAME may also be a local folder of data files). Same column layouts.

`load_corpus` gives a Dataset with string columns `src` and `tgt`, cached as
Arrow files on disk. Pairs with an empty side are kept there, so that row
numbers match line numbers; `filter_pairs` drops them after tokenizing.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError, DatasetsError
from datasets.fingerprint import Hasher

from .errors import DataError, TokenizerError
from .textio import open_binary, raw_lines
from .tokenizer import EOS_ID, Tokenizer, TokenizerPair

# datasets fingerprints module-level functions by their name, not their code:
# bump this when the readers or the encoding below change, or caches go stale.
_CACHE_VERSION = 1

_PAIR_FEATURES = datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})
_ID_FEATURES = datasets.Features({"src_ids": datasets.List(datasets.Value("int32")),
                                  "tgt_ids": datasets.List(datasets.Value("int32"))})
_TSV_SUFFIXES = (".tsv", ".tsv.gz")
_JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_PARQUET_SUFFIXES = (".parquet",)
_LENGTH_BATCH = 100_000  # rows per Arrow batch when reading token lengths


# ---------------------------------------------------------------------------
# Loading


def load_corpus(spec: str, src_lang: str, tgt_lang: str, *,
                cache_dir: str | None = None) -> datasets.Dataset:
    """The sentence pairs named by `spec` (see the module docstring for the grammar).

    Returns a Dataset with exactly two string columns, `src` and `tgt`, one
    row per pair, in corpus order. `cache_dir` is where `datasets` keeps its
    Arrow files (default: its own cache, `HF_DATASETS_CACHE`). Raises
    DataError naming the file and the problem for anything unreadable,
    misaligned, empty, or without the requested languages.
    """
    if not spec:
        raise DataError("the corpus spec is empty")
    if not src_lang or not tgt_lang:
        raise DataError(f"{spec}: both a source and a target language are needed")
    if src_lang == tgt_lang:
        raise DataError(f"{spec}: source and target language are both {src_lang!r}")
    if spec.startswith("hub:"):
        pairs = _load_hub(spec, src_lang, tgt_lang, cache_dir)
    else:
        pairs = _load_local(spec, src_lang, tgt_lang, cache_dir)
    _check_has_text(pairs, spec)
    return pairs


def _load_local(spec: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """Dispatch a local spec on its file suffix, then on prefix files, then on a saved folder."""
    path = Path(spec)
    name = path.name.lower()
    if name.endswith(_TSV_SUFFIXES + _JSON_SUFFIXES + _PARQUET_SUFFIXES):
        _check_file(path, what="corpus file")
        if name.endswith(_TSV_SUFFIXES):
            return _generate(_read_tsv, dict(path=str(path), stamp=_stamp(path)), spec, cache_dir)
        builder = "parquet" if name.endswith(_PARQUET_SUFFIXES) else "json"
        table = _load_with_datasets(spec, builder, data_files=str(path), split="train",
                                    cache_dir=cache_dir)
        return _select_pairs(table, src_lang, tgt_lang, spec, _row_locator(path, builder))
    src_file, tgt_file = _language_file(path, src_lang), _language_file(path, tgt_lang)
    if src_file and tgt_file:
        return _generate(_read_parallel_text,
                         dict(src_path=str(src_file), tgt_path=str(tgt_file),
                              src_stamp=_stamp(src_file), tgt_stamp=_stamp(tgt_file)),
                         spec, cache_dir)
    folder, _, split = spec.rpartition("#") if "#" in spec and not path.exists() else (spec, "", "")
    if Path(folder).is_dir() and not (src_file or tgt_file):
        return _load_saved(Path(folder), split, src_lang, tgt_lang, spec)
    if path.is_file():
        raise DataError(f"{spec}: unknown corpus format; expected .tsv, .jsonl, .json or .parquet, "
                        f"or a PREFIX with files PREFIX.{src_lang} and PREFIX.{tgt_lang}")
    missing = tgt_lang if src_file else src_lang
    looked = f"looked for {path}.{missing}, {path}.{missing}.gz"
    languages = _prefix_languages(path)
    if languages:
        raise DataError(f"no such corpus: {spec} ({looked}); languages found for this prefix: "
                        f"{', '.join(languages)}")
    raise DataError(f"no such corpus: {spec} ({looked})")


def _language_file(prefix: Path, lang: str) -> Path | None:
    """`PREFIX.LANG` or `PREFIX.LANG.gz`, whichever exists; DataError if both or a folder."""
    found = [p for p in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")) if p.exists()]
    if len(found) == 2:
        raise DataError(f"both {found[0]} and {found[1]} exist; remove one so the corpus is unambiguous")
    if found:
        _check_file(found[0], what="text file")
        return found[0]
    return None


def _prefix_languages(prefix: Path) -> list[str]:
    """Language codes `X` of the files `PREFIX.X` / `PREFIX.X.gz` that exist."""
    if not prefix.parent.is_dir():
        return []
    pattern = re.compile(re.escape(prefix.name) + r"\.([A-Za-z][A-Za-z0-9_-]*)(\.gz)?")
    codes = {match.group(1) for entry in prefix.parent.iterdir()
             if (match := pattern.fullmatch(entry.name)) and entry.is_file()}
    return sorted(codes - {"tsv", "jsonl", "json", "parquet", "gz"})


def _check_file(path: Path, *, what: str) -> None:
    """DataError unless `path` is a readable regular file."""
    if not path.exists():
        raise DataError(f"no such {what}: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, expected a {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror})") from None


def _stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: part of the cache key, so an edited file is read again."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _generate(reader: Callable[..., Iterator[dict[str, str]]], gen_kwargs: dict, spec: str,
              cache_dir: str | None) -> datasets.Dataset:
    """Run one of our readers through `Dataset.from_generator`, surfacing its DataError."""
    gen_kwargs = dict(gen_kwargs, cache_version=_CACHE_VERSION)
    try:
        return datasets.Dataset.from_generator(reader, features=_PAIR_FEATURES, gen_kwargs=gen_kwargs,
                                               cache_dir=cache_dir)
    except DatasetGenerationError as err:
        # datasets wraps whatever the generator raises; ours carries the message.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise DataError(f"cannot read {spec}: {_one_line(cause or err)}") from None


# Why our own line reader rather than datasets' "text" builder: that builder
# opens files in universal-newline mode, so a stray "\r" inside a line splits
# it in two and shifts every later pair (it does not use str.splitlines, so
# U+2028 and form feed survive). It also reads each file on its own, so it
# cannot check that two files align, and reports bad UTF-8 without a line.


def _read_parallel_text(src_path: str, tgt_path: str, src_stamp: tuple, tgt_stamp: tuple,
                        cache_version: int) -> Iterator[dict[str, str]]:
    """Pairs from two aligned text files, read in lockstep (a `from_generator` function).

    The stamps and `cache_version` are not read: they are there for datasets' cache key.
    """
    with open_binary(src_path) as src_file, open_binary(tgt_path) as tgt_file:
        src_lines, tgt_lines = _decoded_lines(src_file, src_path), _decoded_lines(tgt_file, tgt_path)
        count = 0
        for src, tgt in itertools.zip_longest(src_lines, tgt_lines):
            if src is None or tgt is None:
                longer_path, rest = (tgt_path, tgt_lines) if src is None else (src_path, src_lines)
                longer_count = count + 1 + sum(1 for _ in rest)
                src_count, tgt_count = ((count, longer_count) if longer_path == tgt_path
                                        else (longer_count, count))
                raise DataError(f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}")
            count += 1
            yield {"src": src, "tgt": tgt}
    if count == 0:
        raise DataError(f"{src_path} and {tgt_path} are empty")


def _read_tsv(path: str, stamp: tuple, cache_version: int) -> Iterator[dict[str, str]]:
    """Pairs from a file of `source TAB target` lines (a `from_generator` function)."""
    count = 0
    with open_binary(path) as file:
        for count, line in enumerate(_decoded_lines(file, path), start=1):
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(f"{path}: line {count} has {len(fields)} tab-separated fields, "
                                "expected 2 (source TAB target)")
            yield {"src": fields[0], "tgt": fields[1]}
    if count == 0:
        raise DataError(f"{path} is empty")


def _decoded_lines(file: BinaryIO, path: str) -> Iterator[str]:
    """Lines of `file` as `textio.raw_lines` splits them, decoded as strict UTF-8.

    Training data with bytes that are not UTF-8 is refused, not repaired: a
    replacement character would be learnt as if it were text.
    """
    number = 0
    try:
        for number, raw in enumerate(raw_lines(file), start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid UTF-8 "
                                f"(byte {err.start + 1}: {err.reason})") from None
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises these for a corrupt or truncated archive.
        raise DataError(f"cannot read {path} after line {number} ({_one_line(err)})") from None


def _load_saved(folder: Path, split: str, src_lang: str, tgt_lang: str, spec: str) -> datasets.Dataset:
    """A Dataset, or one split of a DatasetDict, written with `save_to_disk`."""
    try:
        saved = datasets.load_from_disk(str(folder))
    except FileNotFoundError:
        raise DataError(f"no such corpus: {spec} ({folder} is a folder but not a dataset saved "
                        f"with save_to_disk, and there are no files {folder}.{src_lang}, "
                        f"{folder}.{tgt_lang})") from None
    except (DatasetsError, OSError, ValueError) as err:
        raise DataError(f"cannot load the saved dataset {folder}: {_one_line(err)}") from None
    if isinstance(saved, datasets.DatasetDict):
        splits = ", ".join(saved)
        if not split and len(saved) != 1:
            raise DataError(f"{folder} holds the splits {splits}; pick one with {folder}#SPLIT")
        if split and split not in saved:
            raise DataError(f"{folder} has no split {split!r}; its splits are {splits}")
        saved = saved[split or next(iter(saved))]
    elif split:
        raise DataError(f"{folder} is a single saved dataset with no splits; drop #{split}")
    return _select_pairs(saved, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")


def _load_hub(spec: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """A split of a dataset `datasets.load_dataset` can find: a Hub name or a local folder."""
    match = re.fullmatch(r"hub:([^@#]+)(?:@([^#]+))?#(.+)", spec)
    if not match:
        raise DataError(f"{spec}: a hub corpus is written hub:NAME[@CONFIG]#SPLIT, "
                        "e.g. hub:wmt/wmt14@de-en#train")
    name, config, split = match.groups()
    table = _load_with_datasets(spec, name, config=config, split=split, cache_dir=cache_dir)
    return _select_pairs(table, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")


def _load_with_datasets(spec: str, path: str, *, config: str | None = None,
                        data_files: str | None = None, split: str,
                        cache_dir: str | None) -> datasets.Dataset:
    """`datasets.load_dataset`, with its many failure types turned into one DataError."""
    try:
        return datasets.load_dataset(path, config, data_files=data_files, split=split,
                                     cache_dir=cache_dir)
    except DatasetGenerationError as err:
        raise DataError(f"cannot read {spec}: {_one_line(err.__cause__ or err)}") from None
    except StopIteration:
        # The json builder lets this escape for a file with no rows.
        raise DataError(f"{spec} is empty") from None
    except (DatasetsError, OSError, ValueError) as err:
        # DatasetNotFoundError, FileNotFoundError, ConnectionError, unknown split or config, ...
        raise DataError(f"cannot load {spec}: {_one_line(err)}") from None


def _row_locator(path: Path, builder: str) -> Callable[[int], str]:
    """How to name a bad row in messages: its line in a JSON-lines file, else its row number."""
    if builder == "json":
        with open_binary(str(path)) as file:
            start = file.read(4096).lstrip()
        if not start.startswith(b"["):
            return lambda row: f"line {_line_of_json_row(path, row)}"
    return lambda row: f"row {row + 1}"


def _line_of_json_row(path: Path, row: int) -> int:
    """The 1-based line holding JSON row `row`; the json builder skips blank lines."""
    with open_binary(str(path)) as file:
        rows = (number for number, line in enumerate(file, start=1) if line.strip())
        return next(itertools.islice(rows, row, None), row + 1)


def _select_pairs(table: datasets.Dataset, src_lang: str, tgt_lang: str, spec: str,
                  locate: Callable[[int], str]) -> datasets.Dataset:
    """The `src`/`tgt` columns of a table holding `translation` dicts or one column per language."""
    columns = table.column_names
    nested = "translation" in columns and not (src_lang in columns and tgt_lang in columns)
    if not nested and src_lang in columns and tgt_lang in columns:
        pairs = table.select_columns([src_lang, tgt_lang])
        pairs = pairs.rename_columns({src_lang: "src", tgt_lang: "tgt"})
    elif nested:
        feature = table.features["translation"]
        languages = (list(feature.languages) if isinstance(feature, datasets.Translation)
                     else list(feature) if isinstance(feature, dict) else None)
        if languages is None:
            # The json builder gives rows with differing keys a JSON-typed column:
            # each row has to be looked at.
            try:
                return table.map(_split_translations, batched=True, with_indices=True,
                                 remove_columns=columns, features=_PAIR_FEATURES,
                                 fn_kwargs=dict(src_lang=src_lang, tgt_lang=tgt_lang,
                                                cache_version=_CACHE_VERSION))
            except _MissingText as missing:
                raise DataError(f"{spec}: {locate(missing.row)} has no {missing.lang!r} text "
                                f"(it has {', '.join(missing.found) or 'nothing'})") from None
        unknown = [lang for lang in (src_lang, tgt_lang) if lang not in languages]
        if unknown:
            raise DataError(f"{spec} has no {unknown[0]!r} translations; "
                            f"its languages are {', '.join(sorted(languages))}")
        pairs = table.select_columns(["translation"]).flatten()
        pairs = pairs.rename_columns({f"translation.{src_lang}": "src",
                                      f"translation.{tgt_lang}": "tgt"})
        pairs = pairs.select_columns(["src", "tgt"])
    else:
        unknown = next(lang for lang in (src_lang, tgt_lang) if lang not in columns)
        raise DataError(f"{spec} has no column {unknown!r} and no 'translation' column; "
                        f"its columns are {', '.join(columns)}")
    for column, lang in (("src", src_lang), ("tgt", tgt_lang)):
        dtype = getattr(pairs.features[column], "dtype", type(pairs.features[column]).__name__)
        if dtype not in ("string", "large_string"):
            raise DataError(f"{spec}: the {lang!r} values are {dtype}, expected text")
        values = pairs.with_format("arrow")[column]
        if values.null_count:
            row = pc.index(values.is_null(), True).as_py()
            found = ""
            if nested:
                entry = table[row]["translation"] or {}
                present = sorted(key for key, text in entry.items() if text is not None)
                found = f" (it has {', '.join(present) or 'nothing'})"
            raise DataError(f"{spec}: {locate(row)} has no {lang!r} text{found}")
    return pairs


class _MissingText(Exception):
    """Raised inside `datasets.map` for a row without text for one language."""

    def __init__(self, row: int, lang: str, found: list[str]):
        super().__init__(row, lang, found)
        self.row, self.lang, self.found = row, lang, found


def _split_translations(batch: dict, indices: list[int], src_lang: str, tgt_lang: str,
                        cache_version: int) -> dict[str, list[str]]:
    """`translation` dicts -> `src` and `tgt` columns (a `datasets.map` function)."""
    src, tgt = [], []
    for row, entry in zip(indices, batch["translation"]):
        entry = entry if isinstance(entry, dict) else {}
        for lang, out in ((src_lang, src), (tgt_lang, tgt)):
            text = entry.get(lang)
            if not isinstance(text, str):
                raise _MissingText(row, lang, sorted(entry))
            out.append(text)
    return {"src": src, "tgt": tgt}


def _check_has_text(pairs: datasets.Dataset, spec: str) -> None:
    """DataError unless at least one pair has text on both sides."""
    if len(pairs) == 0:
        raise DataError(f"{spec} is empty")
    # Batch by batch, so a usable corpus is confirmed after its first batch.
    for batch in pairs.with_format("arrow").iter(batch_size=_LENGTH_BATCH):
        src_text = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(batch["src"])), 0)
        tgt_text = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(batch["tgt"])), 0)
        if pc.any(pc.and_(src_text, tgt_text)).as_py():
            return
    raise DataError(f"{spec} has no usable text: all {len(pairs)} pairs have an empty side")


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------
# Tokenizing and filtering


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
    """Source and target lengths in tokens (EOS included) of every pair, as int64 arrays."""
    src, tgt = [], []
    # Arrow list lengths, batch by batch: no Python loop over rows, and a
    # filtered dataset (an index mapping) only materialises one batch at a time.
    for batch in encoded.with_format("arrow").iter(batch_size=_LENGTH_BATCH):
        src.append(pc.list_value_length(batch["src_ids"]).to_numpy(zero_copy_only=False))
        tgt.append(pc.list_value_length(batch["tgt_ids"]).to_numpy(zero_copy_only=False))
    if not src:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(src).astype(np.int64), np.concatenate(tgt).astype(np.int64)
