"""No output may land on an input, or inside a run directory the command only reads.

Every command names what it reads (`Reads`) before it does any work, and
`refuse_clobbering` compares each of its outputs with that, stdout included
(`refuse_stdout_clobbering`). Two comparisons, because an output has a name
and may already be an open file:

- by name, for a regular path: symlinks, `.` and `..` are resolved, so an
  output that is, or lies inside, something read is refused even before it
  exists;
- by open file, for every output: what it names (following symlinks and
  /dev/fd/N, /proc/self/fd/N, /dev/stdout to the open file) or what stdout
  is, as (device, inode), against every input, stdin, and every file of the
  folders read. This is what catches a hard link, `-o /dev/fd/3 3<>in.txt`,
  `1<>in.txt` and `>> in.txt`. Only a regular file can be an input: pipes,
  terminals, sockets and devices such as /dev/null are never refused.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .outputs import writes_through

# How a label or an output's description names a setting (seq2seq.errors.S2SError).
_SETTING = re.compile(r"\{(\w+)\}")


@dataclass
class Reads:
    """What a command reads: files (label, path), folders whose every file it may read, and
    the label of stdin if it reads stdin. A label may name a setting as `{setting}` ("the
    {tokenizer} folder"), which each reader of the error names its own way (seq2seq.errors)."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    folders: list[tuple[str, Path]] = field(default_factory=list)
    stdin: str | None = None

    def file(self, label: str, path: Path | str | None) -> "Reads":
        if path is not None and str(path) != "-":
            self.files.append((label, Path(path)))
        return self

    def folder(self, label: str, path: Path | str | None) -> "Reads":
        if path is not None:
            self.folders.append((label, Path(path)))
        return self

    def standard_input(self, label: str) -> "Reads":
        """The command reads stdin, which `label` names in messages."""
        self.stdin = label
        return self

    def paths(self, label: str, files: Iterable[Path], folders: Iterable[Path]) -> "Reads":
        """Files and folders that `label` names together (a corpus: seq2seq.data.corpus_specs.corpus_paths)."""
        for path in files:
            self.file(label, path)
        for path in folders:
            self.folder(label, path)
        return self


def _real(path: Path) -> str:
    return os.path.realpath(path)


def same_file(a: Path, b: Path) -> bool:
    """True if `a` and `b` name one file: the same resolved path, or the same inode."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): only the path could tell
        return False


def is_inside(path: Path, folder: Path) -> bool:
    """True if `path`, resolved, lies in `folder`, resolved (at any depth)."""
    real_folder = _real(folder)
    return os.path.commonpath([_real(path), real_folder]) == real_folder


def refuse_clobbering(setting: str, output: Path | str | None, reads: Reads) -> None:
    """ConfigError if writing `output`, the value of `setting` (None: no output; `-`: stdout), could
    change anything in `reads`."""
    if output is None:
        return
    if str(output) == "-":
        refuse_stdout_clobbering(reads)
        return
    where = "{" + setting + "} " + str(output)
    if not writes_through(output):  # a descriptor's or a device's name says nothing of the file behind it
        _refuse_by_name(where, Path(output), reads)
    try:
        opened = os.stat(output)
    except OSError:  # not there yet: nothing read can be it
        return
    _refuse_by_inode(where, opened, reads)


def refuse_stdout_clobbering(reads: Reads) -> None:
    """ConfigError if stdout is a file the command reads (`1<>input`, `>> input`).

    Nothing to check when stdout is closed, or is a stream with no descriptor
    (a test runner's buffer): writing to it cannot reach a file.
    """
    fd = _descriptor(sys.stdout)
    if fd is None:
        return
    try:
        opened = os.fstat(fd)
    except OSError:
        return
    _refuse_by_inode("stdout", opened, reads)


def refuse_folder_over_reads(setting: str, folder: Path, reads: Reads) -> None:
    """ConfigError if the folder `folder`, the value of `setting`, that a command fills is or lies inside
    anything in `reads` (by name: symlinks, `.` and `..` resolved)."""
    _refuse_by_name("{" + setting + "} " + str(folder), Path(folder), reads)


def _refusal(message: str, where: str, label: str) -> ConfigError:
    """The error `message`, naming the settings that `where` (the output) and `label` write as `{setting}`."""
    return ConfigError(message, tuple(_SETTING.findall(where + " " + label)))


def _refuse_by_name(where: str, output: Path, reads: Reads) -> None:
    for label, path in reads.files:
        if _real(output) == _real(path):
            raise _refusal(f"{where} is {label} {path}; refusing to write over it", where, label)
    for label, folder in reads.folders:
        if is_inside(output, folder):
            raise _refusal(f"{where} lies inside {label} {folder}, which this command only reads; write it "
                           "elsewhere", where, label)


def _refuse_by_inode(where: str, opened: os.stat_result, reads: Reads) -> None:
    """ConfigError if the open file `opened`, which `where` names, is one that `reads` holds."""
    if not stat.S_ISREG(opened.st_mode):  # a pipe, terminal, socket or device is never an input
        return
    inode = (opened.st_dev, opened.st_ino)
    stdin = _descriptor(sys.stdin) if reads.stdin is not None else None
    if stdin is not None and _inode(stdin) == inode:
        raise _refusal(f"{where} is {reads.stdin}, the file on stdin; refusing to write over it", where, reads.stdin)
    for label, path in reads.files:
        if _inode(path) == inode:
            raise _refusal(f"{where} is {label} {path}; refusing to write over it", where, label)
    for label, folder in reads.folders:
        for path in _files_in(folder):
            if _inode(path) == inode:
                raise _refusal(f"{where} is {path}, a file of {label} {folder}; refusing to write over it", where,
                               label)


def _descriptor(stream: object) -> int | None:
    """The descriptor behind a standard stream, or None (closed, or held in memory)."""
    try:
        return stream.fileno()  # type: ignore[union-attr]
    except (AttributeError, ValueError, io.UnsupportedOperation):  # None; closed; a StringIO or BytesIO
        return None


def _inode(file: Path | int) -> tuple[int, int] | None:
    """(device, inode) of the file a path (symlinks followed) or a descriptor leads to; None if none."""
    try:
        found = os.stat(file)
    except OSError:  # missing, a dangling link, or a closed descriptor
        return None
    return found.st_dev, found.st_ino


def _files_in(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, at any depth (a symlink among them stands for what it points at)."""
    for root, _, names in os.walk(folder):
        for name in names:
            yield Path(root) / name
