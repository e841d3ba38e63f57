"""Parallel corpora through `datasets`: from a corpus spec to sentence pairs.

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
numbers match line numbers; `seq2seq.data.encode.filter_pairs` drops them after
tokenizing. Tables (JSON, parquet, saved and hub datasets) have their
columns picked and checked by `seq2seq.data.columns`.
What a spec names without reading it (its absolute path, the files it reads) is
seq2seq.data.corpus_specs'.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import datasets
import pyarrow.compute as pc
from datasets.exceptions import DatasetGenerationError, DatasetsError

from ..errors import DataError, one_line
from ..files.lines import open_binary, raw_lines
from .columns import (
    PAIR_FEATURES,
    check_json_lines,
    check_stringified_values,
    is_json_lines,
    line_of_json_row,
    select_pairs,
)
from .corpus_specs import saved_dataset
from .directions import language_tag

# datasets fingerprints module-level functions by their name, not their code:
# bump this when the readers below change, or caches go stale.
_CACHE_VERSION = 1

_TSV_SUFFIXES = (".tsv", ".tsv.gz")
_JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_PARQUET_SUFFIXES = (".parquet",)
_LENGTH_BATCH = 100_000  # rows per Arrow batch when reading token lengths
# Rows per record batch of the Arrow files written to `datasets`' cache (its default is 1,000).
# Loading a cached file walks every record batch's header through the memory map, and each
# header faults in the pages around it (tens of KiB): with 1,000-row batches that made a
# 10M-pair corpus cost gigabytes of resident file pages before training began. 10,000 rows
# of text are a few MB, all a writer holds at once.
ARROW_BATCH_ROWS = 10_000


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


def load_directions(spec: str, directions: list[tuple[str, str]], *, tag_column: str = "",
                    cache_dir: str | None = None) -> list[datasets.Dataset]:
    """The pairs of each (source, target) direction of `spec`, in order, as `load_corpus` reads them:
    PREFIX.SRC with PREFIX.TGT, or the two language columns of a table.

    With `tag_column` ("src_tag" or "tgt_tag"), each also has that column, holding on every row the
    tag of its target language (seq2seq.data.directions.language_tag), which encoding puts first
    on that side (seq2seq.data.encode)."""
    corpora = []
    for src_lang, tgt_lang in directions:
        pairs = load_corpus(spec, src_lang, tgt_lang, cache_dir=cache_dir)
        if tag_column:
            pairs = pairs.add_column(tag_column, [language_tag(tgt_lang)] * len(pairs))
        corpora.append(pairs)
    return corpora


def language_texts(directions: list[tuple[str, str]], corpora: list[datasets.Dataset]
                   ) -> tuple[dict[str, tuple[datasets.Dataset, str]], dict[str, tuple[datasets.Dataset, str]]]:
    """Where the sentences of each source and each target language are, among the corpora of
    `directions` (`load_directions`): language -> (a corpus, "src" or "tgt"). A language in several
    directions is read from the first, once: en -> de, fr reads the English side once, not twice."""
    sources: dict[str, tuple[datasets.Dataset, str]] = {}
    targets: dict[str, tuple[datasets.Dataset, str]] = {}
    for (src_lang, tgt_lang), pairs in zip(directions, corpora):
        sources.setdefault(src_lang, (pairs, "src"))
        targets.setdefault(tgt_lang, (pairs, "tgt"))
    return sources, targets


def _load_local(spec: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """Dispatch a local spec on its file suffix, then on prefix files, then on a saved folder."""
    path = Path(spec)
    name = path.name.lower()
    if name.endswith(_TSV_SUFFIXES + _JSON_SUFFIXES + _PARQUET_SUFFIXES):
        _check_file(path, what="corpus file")
        if name.endswith(_TSV_SUFFIXES):
            return _generate(_read_tsv, dict(path=str(path), stamp=_stamp(path)), spec, cache_dir)
        builder = "parquet" if name.endswith(_PARQUET_SUFFIXES) else "json"
        json_lines = builder == "json" and is_json_lines(path)
        try:
            table = _load_with_datasets(spec, builder, data_files=str(path), split="train",
                                        cache_dir=cache_dir)
        except DataError:
            if json_lines:
                # datasets' message has no line number: find the line ourselves.
                check_json_lines(path, spec, src_lang, tgt_lang)
            raise
        if not json_lines:
            return select_pairs(table, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")
        pairs = select_pairs(table, src_lang, tgt_lang, spec,
                              lambda row: f"line {line_of_json_row(path, row)}")
        check_stringified_values(pairs, path, spec, src_lang, tgt_lang)
        return pairs
    src_file, tgt_file = _language_file(path, src_lang), _language_file(path, tgt_lang)
    if src_file and tgt_file:
        return _generate(_read_parallel_text,
                         dict(src_path=str(src_file), tgt_path=str(tgt_file),
                              src_stamp=_stamp(src_file), tgt_stamp=_stamp(tgt_file)),
                         spec, cache_dir)
    folder, split = saved_dataset(spec)
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
        return datasets.Dataset.from_generator(reader, features=PAIR_FEATURES, gen_kwargs=gen_kwargs,
                                               cache_dir=cache_dir, writer_batch_size=ARROW_BATCH_ROWS)
    except DatasetGenerationError as err:
        # datasets wraps whatever the generator raises; ours carries the message.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise DataError(f"cannot read {spec}: {one_line(cause or err)}") from None


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
        raise DataError(f"cannot read {path} after line {number} ({one_line(err)})") from None


def _load_saved(folder: Path, split: str, src_lang: str, tgt_lang: str, spec: str) -> datasets.Dataset:
    """A Dataset, or one split of a DatasetDict, written with `save_to_disk`."""
    try:
        saved = datasets.load_from_disk(str(folder))
    except FileNotFoundError:
        raise DataError(f"no such corpus: {spec} ({folder} is a folder but not a dataset saved "
                        f"with save_to_disk, and there are no files {folder}.{src_lang}, "
                        f"{folder}.{tgt_lang})") from None
    except (DatasetsError, OSError, ValueError) as err:
        raise DataError(f"cannot load the saved dataset {folder}: {one_line(err)}") from None
    if isinstance(saved, datasets.DatasetDict):
        splits = ", ".join(saved)
        if not split and len(saved) != 1:
            raise DataError(f"{folder} holds the splits {splits}; pick one with {folder}#SPLIT")
        if split and split not in saved:
            raise DataError(f"{folder} has no split {split!r}; its splits are {splits}")
        saved = saved[split or next(iter(saved))]
    elif split:
        raise DataError(f"{folder} is a single saved dataset with no splits; drop #{split}")
    return select_pairs(saved, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")


def _load_hub(spec: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """A split of a dataset `datasets.load_dataset` can find: a Hub name or a local folder."""
    match = re.fullmatch(r"hub:([^@#]+)(?:@([^#]+))?#(.+)", spec)
    if not match:
        raise DataError(f"{spec}: a hub corpus is written hub:NAME[@CONFIG]#SPLIT, "
                        "e.g. hub:wmt/wmt14@de-en#train")
    name, config, split = match.groups()
    table = _load_with_datasets(spec, name, config=config, split=split, cache_dir=cache_dir)
    return select_pairs(table, src_lang, tgt_lang, spec, lambda row: f"row {row + 1}")


def _load_with_datasets(spec: str, path: str, *, config: str | None = None,
                        data_files: str | None = None, split: str,
                        cache_dir: str | None) -> datasets.Dataset:
    """`datasets.load_dataset`, with its many failure types turned into one DataError."""
    try:
        return datasets.load_dataset(path, config, data_files=data_files, split=split,
                                     cache_dir=cache_dir)
    except DatasetGenerationError as err:
        raise DataError(f"cannot read {spec}: {one_line(err.__cause__ or err)}") from None
    except StopIteration:
        # The json builder lets this escape for a file with no rows.
        raise DataError(f"{spec} is empty") from None
    except (DatasetsError, OSError, ValueError) as err:
        # DatasetNotFoundError, FileNotFoundError, ConnectionError, unknown split or config, ...
        raise DataError(f"cannot load {spec}: {one_line(err)}") from None


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
