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
`resolve_corpus_spec` makes a spec's path absolute, for a run's config.
"""

from __future__ import annotations

import itertools
import json
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


def resolve_corpus_spec(spec: str) -> str:
    """`spec` with its path made absolute, to be stored where the working directory may change.

    A local spec (a PREFIX, a corpus file, a saved-dataset folder, `DIR#SPLIT`)
    becomes absolute, with `.`, `..` and symlinks resolved in the folders that
    lead to it; it need not exist. `hub:` specs and the empty string are
    returned unchanged. Idempotent, and the result names the same corpus as
    `spec` does from the current working directory.

    The last component is kept as written, not resolved: a PREFIX is no file
    of its own, and resolving it as one would follow a symlink or folder of
    the same name away from `PREFIX.SRC`. Kept whole, it also keeps `#SPLIT`.
    """
    if not spec or spec.startswith("hub:"):
        return spec
    path = Path(spec)
    try:
        if path.name in ("", ".", ".."):
            return str(path.resolve())  # `.`, `..`, `/`: a folder, resolved whole
        return str(path.parent.resolve() / path.name)
    except (OSError, RuntimeError, ValueError) as err:
        # A symlink loop (RuntimeError before Python 3.13), a NUL byte (ValueError).
        raise DataError(f"cannot resolve the corpus path {spec}: {_one_line(err)}") from None


def _load_local(spec: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """Dispatch a local spec on its file suffix, then on prefix files, then on a saved folder."""
    path = Path(spec)
    name = path.name.lower()
    if name.endswith(_TSV_SUFFIXES + _JSON_SUFFIXES + _PARQUET_SUFFIXES):
        _check_file(path, what="corpus file")
        if name.endswith(_TSV_SUFFIXES):
            return _generate(_read_tsv, dict(path=str(path), stamp=_stamp(path)), spec, cache_dir)
        builder = "parquet" if name.endswith(_PARQUET_SUFFIXES) else "json"
        json_lines = builder == "json" and _is_json_lines(path)
        try:
            table = _load_with_datasets(spec, builder, data_files=str(path), split="train",
                                        cache_dir=cache_dir)
        except DataError:
            if json_lines:
                # datasets' message has no line number: find the line ourselves.
                _check_json_lines(path, spec, src_lang, tgt_lang)
            raise
        if not json_lines:
            return _select_pairs(table, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")
        pairs = _select_pairs(table, src_lang, tgt_lang, spec,
                              lambda row: f"line {_line_of_json_row(path, row)}")
        _check_stringified_values(pairs, path, spec, src_lang, tgt_lang)
        return pairs
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
        for number, raw in enumerate(raw_lines(file, path), start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid UTF-8 "
                                f"(byte {err.start + 1}: {err.reason})") from None
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises these for a corrupt or truncated archive (raw_lines itself
        # turns OSError and EOFError into a DataError naming the file; not zlib.error).
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


def _is_json_lines(path: Path) -> bool:
    """Whether a .json/.jsonl file holds JSON lines rather than one JSON array."""
    with open_binary(str(path)) as file:
        start = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return not start.startswith(b"[")


def _line_of_json_row(path: Path, row: int) -> int:
    """The 1-based line holding JSON row `row`; the json builder skips blank lines."""
    with open_binary(str(path)) as file:
        rows = (number for number, line in enumerate(file, start=1) if line.strip())
        return next(itertools.islice(rows, row, None), row + 1)


# How datasets' json builder turns a value that is not a string into text
# without a word: it reads a file in blocks of about 10 MB, types each column
# from the first block, and casts the later blocks to those types, so a list,
# number, object or boolean in a column of strings becomes its JSON text:
# ["a"] is read as the sentence '["a"]'. The arrow column cannot tell that
# from a sentence written that way; the line itself can.
_LOOKS_LIKE_JSON = (r"^(\[.*\]|\{.*\}|-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false)$")


def _check_stringified_values(pairs: datasets.Dataset, path: Path, spec: str, src_lang: str,
                              tgt_lang: str) -> None:
    """DataError for the first line whose text was a JSON list, number, object or boolean.

    Only the lines of rows whose text looks like one of those are parsed
    again, so a corpus without such sentences is not read a second time.
    """
    suspects = set()
    for offset, batch in enumerate(pairs.with_format("arrow").iter(batch_size=_LENGTH_BATCH)):
        looks = pc.or_(pc.match_substring_regex(batch["src"], _LOOKS_LIKE_JSON),
                       pc.match_substring_regex(batch["tgt"], _LOOKS_LIKE_JSON))
        rows = pc.indices_nonzero(pc.fill_null(looks, False)).to_numpy()
        suspects.update((rows + offset * _LENGTH_BATCH).tolist())
    if suspects:
        _check_json_lines(path, spec, src_lang, tgt_lang, rows=suspects)


def _check_json_lines(path: Path, spec: str, src_lang: str, tgt_lang: str, *,
                      rows: set[int] | None = None) -> None:
    """DataError naming the first bad line of a JSON-lines file, if any: not JSON, not an
    object, or without a string for a language. Only the lines of `rows` (0-based,
    blank lines not counted, as datasets numbers them) if given, else all of them."""
    row, last = -1, max(rows) if rows else None
    with open_binary(str(path)) as file:
        try:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                row += 1
                if rows is not None and row not in rows:
                    continue
                problem = _json_line_problem(line, src_lang, tgt_lang)
                if problem:
                    raise DataError(f"{spec}: line {number} {problem}")
                if row == last:
                    return
        except (OSError, EOFError, zlib.error):
            return  # a broken archive: datasets' own message says so


def _json_line_problem(line: bytes, src_lang: str, tgt_lang: str) -> str | None:
    """What is wrong with one JSON line as a sentence pair, or None."""
    line = line.rstrip(b"\r\n")  # so that an error is placed on this line, not the next
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        entry = json.loads(line)
    except UnicodeDecodeError as err:
        return f"is not valid UTF-8 (byte {err.start + 1}: {err.reason})"
    except json.JSONDecodeError as err:
        return f"is not valid JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return "is not valid JSON (nested too deeply)"
    except ValueError as err:
        return f"is not valid JSON ({_one_line(err)})"
    if not isinstance(entry, dict):
        return f"is {_json_kind(entry)}, expected a JSON object"
    # The two layouts, told apart as `_select_pairs` does for a whole table.
    if "translation" in entry and not (src_lang in entry and tgt_lang in entry):
        return _translation_problem(entry["translation"], src_lang, tgt_lang)
    for lang in (src_lang, tgt_lang):
        if entry.get(lang) is None:
            return f"has no {lang!r} text"
        if not isinstance(entry[lang], str):
            return _not_text(lang, entry[lang])
    return None


def _translation_problem(entry: object, src_lang: str, tgt_lang: str) -> str | None:
    """What is wrong with a row's `translation` value, or None if it has both texts."""
    if entry is not None and not isinstance(entry, dict):
        return (f"has {_json_kind(entry)} as its 'translation' value, expected "
                f"an object with {src_lang!r} and {tgt_lang!r} text")
    entry = entry or {}
    for lang in (src_lang, tgt_lang):
        text = entry.get(lang)
        if text is None:
            present = sorted(key for key, value in entry.items() if value is not None)
            return f"has no {lang!r} text (it has {', '.join(present) or 'nothing'})"
        if not isinstance(text, str):
            return _not_text(lang, text)
    return None


def _select_pairs(table: datasets.Dataset, src_lang: str, tgt_lang: str, spec: str,
                  locate: Callable[[int], str]) -> datasets.Dataset:
    """The `src`/`tgt` columns of a table holding `translation` dicts or one column per language."""
    try:
        return _select_pair_columns(table, src_lang, tgt_lang, spec, locate)
    except (pa.ArrowException, DatasetsError, ValueError) as err:
        # A layout none of the checks below foresaw: still one line, never a traceback.
        raise DataError(f"cannot read {spec}: {_one_line(err)}") from None


def _select_pair_columns(table: datasets.Dataset, src_lang: str, tgt_lang: str, spec: str,
                         locate: Callable[[int], str]) -> datasets.Dataset:
    """`_select_pairs` itself, which may let datasets' or Arrow's errors through."""
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
            except _BadRow as bad:
                raise DataError(f"{spec}: {locate(bad.row)} {bad.problem}") from None
        unknown = [lang for lang in (src_lang, tgt_lang) if lang not in languages]
        if unknown:
            raise DataError(f"{spec} has no {unknown[0]!r} translations; "
                            f"its languages are {', '.join(sorted(languages))}")
        # One level only: a language whose values are objects must stay one
        # column, to be refused below, not become `translation.en.x`.
        pairs = table.select_columns(["translation"]).flatten(max_depth=2)
        pairs = pairs.rename_columns({f"translation.{src_lang}": "src",
                                      f"translation.{tgt_lang}": "tgt"})
        pairs = pairs.select_columns(["src", "tgt"])
    else:
        unknown = next(lang for lang in (src_lang, tgt_lang) if lang not in columns)
        raise DataError(f"{spec} has no column {unknown!r} and no 'translation' column; "
                        f"its columns are {', '.join(columns)}")
    for column, lang in (("src", src_lang), ("tgt", tgt_lang)):
        values = pairs.with_format("arrow")[column]
        if _is_string_view(values.type):
            # Text all the same, which Arrow's string functions used later do not take.
            pairs = pairs.cast_column(column, datasets.Value("string"))
            values = pairs.with_format("arrow")[column]
        row = _first_row_without_text(values)
        if row is not None:
            value = _arrow_value(values, row)
            if value is not None:
                raise DataError(f"{spec}: {locate(row)} {_not_text(lang, value)}")
            found = ""
            if nested:
                entry = table[row]["translation"] or {}
                present = sorted(key for key, text in entry.items() if text is not None)
                found = f" (it has {', '.join(present) or 'nothing'})"
            raise DataError(f"{spec}: {locate(row)} has no {lang!r} text{found}")
        invalid = _first_invalid_utf8(values) if _is_text_type(values.type) else None
        if invalid:
            row, err = invalid
            raise DataError(f"{spec}: {locate(row)} is not valid UTF-8 (its {lang!r} text, "
                            f"byte {err.start + 1}: {err.reason})")
        if not _is_text_type(values.type):
            # A JSON-typed column whose values all turned out to be strings
            # (a dataset declared with a Json feature): store them as text.
            pairs = pairs.with_format("arrow").map(
                _decode_json_text, batched=True, features=_PAIR_FEATURES,
                fn_kwargs=dict(column=column, cache_version=_CACHE_VERSION)).with_format(None)
    return pairs


# How the json builder stores a column whose rows hold different JSON types
# (a string on one line, a list or a number on another): the `arrow.json`
# extension type, each value JSON-encoded text, so a string is `"..."`.
_JSON_EXTENSION = "arrow.json"


def _is_json_type(kind: pa.DataType) -> bool:
    return isinstance(kind, pa.BaseExtensionType) and kind.extension_name == _JSON_EXTENSION


def _is_text_type(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_string_view(kind: pa.DataType) -> bool:
    # pyarrow < 16 has no string_view type, nor this function.
    return getattr(pa.types, "is_string_view", lambda _: False)(kind)


def _first_row_without_text(values: pa.ChunkedArray) -> int | None:
    """The first row whose value is missing or not a string; None if every row has a string.

    Arrow compute throughout, so a good column of millions of rows costs no Python loop.
    """
    if _is_text_type(values.type):
        missing = values.is_null()
    elif _is_json_type(values.type):
        encoded = pa.chunked_array([chunk.storage for chunk in values.chunks],
                                   type=values.type.storage_type)
        is_string = pc.starts_with(pc.utf8_ltrim(encoded, characters=" \t\r\n"), '"')
        missing = pc.invert(pc.fill_null(is_string, False))
    else:
        # Numbers, lists, objects, a column of nulls: no row has text.
        return 0 if len(values) else None
    row = pc.index(missing, True).as_py()
    return None if row < 0 else row


def _first_invalid_utf8(values: pa.ChunkedArray) -> tuple[int, UnicodeDecodeError] | None:
    """The first row of a string column that is not UTF-8, and how; None if all are.

    Arrow's JSON reader does not check the bytes inside strings, and a string
    column that is not UTF-8 makes Arrow's text functions fail later on.
    """
    start = 0
    for chunk in values.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            # Rare: find the row in Python, in this chunk only.
            binary = pa.large_binary() if pa.types.is_large_string(chunk.type) else pa.binary()
            for row, raw in enumerate(chunk.view(binary).to_pylist(), start=start):
                try:
                    raw is None or raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return row, err
        start += len(chunk)
    return None


def _arrow_value(values: pa.ChunkedArray, row: int) -> object:
    """The Python value in `row`, JSON-decoded for a JSON-typed column."""
    scalar = values[row]
    if _is_json_type(values.type):
        encoded = scalar.value.as_py() if scalar.is_valid else None
        return None if encoded is None else json.loads(encoded)
    return scalar.as_py()


def _not_text(lang: str, value: object) -> str:
    """Says, after a row's location, that its `lang` value is `value` and not text."""
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"has {_json_kind(value)} as its {lang!r} value, not text: {shown}"


def _json_kind(value: object) -> str:
    """`value`'s type in JSON's words, with an article: "a number", "an object"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a value of type {type(value).__name__}"


def _decode_json_text(batch: pa.Table, column: str, cache_version: int) -> pa.Table:
    """`column` of a JSON-typed batch holding only strings, as a string column.

    A `datasets.map` function on Arrow batches: the JSON text is decoded here
    rather than left to datasets' formatting, which hands it over still encoded.
    """
    values = batch[column]
    encoded = itertools.chain.from_iterable(chunk.storage.to_pylist() for chunk in values.chunks) \
        if isinstance(values, pa.ChunkedArray) else values.storage.to_pylist()
    texts = pa.array([None if text is None else json.loads(text) for text in encoded], type=pa.string())
    return batch.set_column(batch.schema.get_field_index(column), column, texts)


class _BadRow(Exception):
    """Raised inside `datasets.map` for a row without usable text; `problem` follows its location."""

    def __init__(self, row: int, problem: str):
        super().__init__(row, problem)
        self.row, self.problem = row, problem


def _split_translations(batch: dict, indices: list[int], src_lang: str, tgt_lang: str,
                        cache_version: int) -> dict[str, list[str]]:
    """`translation` dicts -> `src` and `tgt` columns (a `datasets.map` function)."""
    for row, entry in zip(indices, batch["translation"]):
        problem = _translation_problem(entry, src_lang, tgt_lang)
        if problem:
            raise _BadRow(row, problem)
    return {"src": [entry[src_lang] for entry in batch["translation"]],
            "tgt": [entry[tgt_lang] for entry in batch["translation"]]}


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
