"""Which columns of a table hold each language's text, and is every value text?

JSON lines, JSON arrays, parquet files, saved datasets and hub datasets all
arrive as Arrow tables through `datasets`, with the pair either nested under
`translation` or as one column per language code. `select_pairs` turns any of
them into the two string columns `src` and `tgt`, and refuses, with the line
(JSON lines) or row it is on, a value that is missing or is not text. Plain
text and TSV corpora never come here: seq2seq.data.corpora reads them line by line.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets.exceptions import DatasetsError

from ..errors import DataError, one_line
from ..files.lines import open_binary

# datasets fingerprints module-level functions by their name, not their code:
# bump this when the column handling below changes, or caches go stale.
_CACHE_VERSION = 1

PAIR_FEATURES = datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})
_ROWS_PER_BATCH = 100_000  # rows per Arrow batch when scanning a column


def is_json_lines(path: Path) -> bool:
    """Whether a .json/.jsonl file holds JSON lines rather than one JSON array."""
    with open_binary(str(path)) as file:
        start = file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return not start.startswith(b"[")


def line_of_json_row(path: Path, row: int) -> int:
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


def check_stringified_values(pairs: datasets.Dataset, path: Path, spec: str, src_lang: str,
                              tgt_lang: str) -> None:
    """DataError for the first line whose text was a JSON list, number, object or boolean.

    Only the lines of rows whose text looks like one of those are parsed
    again, so a corpus without such sentences is not read a second time.
    """
    suspects = set()
    for offset, batch in enumerate(pairs.with_format("arrow").iter(batch_size=_ROWS_PER_BATCH)):
        looks = pc.or_(pc.match_substring_regex(batch["src"], _LOOKS_LIKE_JSON),
                       pc.match_substring_regex(batch["tgt"], _LOOKS_LIKE_JSON))
        rows = pc.indices_nonzero(pc.fill_null(looks, False)).to_numpy()
        suspects.update((rows + offset * _ROWS_PER_BATCH).tolist())
    if suspects:
        check_json_lines(path, spec, src_lang, tgt_lang, rows=suspects)


def check_json_lines(path: Path, spec: str, src_lang: str, tgt_lang: str, *,
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
        return f"is not valid JSON ({one_line(err)})"
    if not isinstance(entry, dict):
        return f"is {_json_kind(entry)}, expected a JSON object"
    # The two layouts, told apart as `select_pairs` does for a whole table.
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


def select_pairs(table: datasets.Dataset, src_lang: str, tgt_lang: str, spec: str,
                  locate: Callable[[int], str]) -> datasets.Dataset:
    """The `src`/`tgt` columns of a table holding `translation` dicts or one column per language."""
    try:
        return _select_pair_columns(table, src_lang, tgt_lang, spec, locate)
    except (pa.ArrowException, DatasetsError, ValueError) as err:
        # A layout none of the checks below foresaw: still one line, never a traceback.
        raise DataError(f"cannot read {spec}: {one_line(err)}") from None


def _select_pair_columns(table: datasets.Dataset, src_lang: str, tgt_lang: str, spec: str,
                         locate: Callable[[int], str]) -> datasets.Dataset:
    """`select_pairs` itself, which may let datasets' or Arrow's errors through."""
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
                                 remove_columns=columns, features=PAIR_FEATURES,
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
                _decode_json_text, batched=True, features=PAIR_FEATURES,
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
