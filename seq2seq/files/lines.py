"""Lines in, lines out: the text contract of `s2s translate` and `s2s eval`.

- A line ends at "\\n" and nowhere else; a trailing "\\r" is dropped. (Python's
  `str.splitlines` also breaks at \\u2028, \\x0c, \\x85 and others, which would
  turn one input line into several.)
- Bytes that are not UTF-8 are decoded with U+FFFD replacement characters and
  the lines affected are counted, never dropped.
- An output line never contains a line break of any kind: `clean_output`
  turns them into spaces, so one line in is always one line out.
- A label meant for a person (a file name in a title) is made `printable`.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError

# Everything `str.splitlines` treats as a line boundary, plus other C0 controls
# except tab, which a consumer splitting on "\n" or by `splitlines` might trip on.
_LINE_BREAKING = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


@dataclass
class ReadStats:
    """What reading an input stream did to it."""

    lines: int = 0
    invalid_utf8: int = 0  # lines that held bytes which are not UTF-8


_UTF8_BOM = b"\xef\xbb\xbf"


def raw_lines(stream: BinaryIO, name: str = "the input") -> Iterator[bytes]:
    """The lines of a binary stream, undecoded: split at b"\n" only, without the
    "\n" or a trailing "\r". A UTF-8 byte-order mark opening the stream, which
    some editors write, is dropped. A stream that fails part-way (a truncated or
    corrupt .gz) raises a DataError naming `name` and the last good line."""
    number = 0
    try:
        for number, raw in enumerate(stream, start=1):  # binary iteration splits on b"\n" only
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            yield raw
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        where = f" after line {number}" if number else ""
        raise DataError(f"{name}: cannot be read{where} ({err})") from None


def iter_lines(stream: BinaryIO, stats: ReadStats, name: str = "the input") -> Iterator[str]:
    """Decode a binary stream into lines, counting what needed replacement."""
    for raw in raw_lines(stream, name):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            stats.invalid_utf8 += 1
        stats.lines += 1
        yield line


def open_binary(path: Path | str) -> BinaryIO:
    """Open a plain or gzip'ed file for reading, with a DataError naming any problem."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None


def count_lines(path: Path | str) -> int:
    """How many lines `iter_lines` reads from a plain or gzip'ed file: its "\n"s, and one more
    for a last line without one."""
    lines, last = 0, b"\n"
    try:
        with open_binary(path) as stream:
            while block := stream.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read ({err})") from None
    return lines + (last != b"\n")


def read_lines(path: Path | str) -> tuple[list[str], ReadStats]:
    """All lines of a text file (plain or .gz)."""
    stats = ReadStats()
    try:
        with open_binary(path) as stream:
            return list(iter_lines(stream, stats, str(path))), stats
    except (OSError, EOFError) as err:  # e.g. a corrupt .gz
        raise DataError(f"{path}: cannot be read ({err})") from None


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of up to `size` lines, without reading ahead further."""
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def tsv_prefixes(lines: Iterable[str], name: str = "the input") -> Iterator[tuple[str, str]]:
    """(source, prefix) from lines `source<TAB>prefix`, split at the first tab.

    A blank line is an empty source with no prefix; any other line without a
    tab is a DataError naming `name` and the line, never guessed at.
    """
    for number, line in enumerate(lines, start=1):
        source, tab, prefix = line.partition("\t")
        if not tab and line.strip():
            raise DataError(f"{name}: line {number} has no tab; {{prefix_tsv}} reads source<TAB>prefix lines "
                            "(end the line with a tab for no prefix)", ("prefix_tsv",))
        yield source, prefix


def with_prefixes(lines: Iterable[str], prefixes: Iterable[str], name: str, prefix_name: str) -> Iterator[tuple[str, str]]:
    """(line, prefix) pairs from two files that must have as many lines; a DataError names the one that is short."""
    prefixes = iter(prefixes)
    number = 0
    for number, line in enumerate(lines, start=1):
        prefix = next(prefixes, None)
        if prefix is None:
            raise DataError(f"{prefix_name}: has {number - 1} lines, fewer than {name}; give one target prefix "
                            "per input line (an empty line for none)")
        yield line, prefix
    if next(prefixes, None) is not None:
        raise DataError(f"{prefix_name}: has more lines than {name} ({number}); give one target prefix per "
                        "input line")


def clean_output(text: str) -> str:
    """One output line: line breaks and control characters become spaces."""
    return _LINE_BREAKING.sub(" ", text)


# Control characters, which would break a label's line or drive a terminal, and lone surrogates, which
# no UTF-8 output and no font takes: Python holds each byte of a file name that is not UTF-8 as one
# (os.fsdecode).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # the byte os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    return repr(match.group())[1:-1]  # as Python writes it: "\\t", "\\x1b", "\\ud800"


def printable(text: str) -> str:
    """`text` (a label, a file name) as one line that any UTF-8 output and matplotlib can show: a
    byte of a file name that is not UTF-8 as a backslash escape, "\\xff", and so are control characters."""
    return _UNPRINTABLE.sub(_escaped, text)
