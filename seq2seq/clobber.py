"""No output may land on an input, or inside a run directory the command only reads.

Every command names what it reads and what it writes before it does any
work; `refuse_clobbering` compares them. Paths are compared as the files they
are: symlinks, `.` and `..` are resolved, and two names of one inode (a hard
link) are the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .files import writes_through


@dataclass
class Reads:
    """What a command reads: files (label, path) and folders whose every file it may read."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    folders: list[tuple[str, Path]] = field(default_factory=list)

    def file(self, label: str, path: Path | str | None) -> "Reads":
        if path is not None and str(path) != "-":
            self.files.append((label, Path(path)))
        return self

    def folder(self, label: str, path: Path | str | None) -> "Reads":
        if path is not None:
            self.folders.append((label, Path(path)))
        return self

    def corpus(self, label: str, spec: str, langs: Iterable[str]) -> "Reads":
        """The files a corpus spec (seq2seq.data) may read: a file, a folder, or PREFIX.LANG[.gz]."""
        if not spec or spec.startswith("hub:"):
            return self
        path = Path(spec)
        if path.is_dir() or ("#" in spec and Path(spec.rpartition("#")[0]).is_dir()):
            return self.folder(label, path if path.is_dir() else Path(spec.rpartition("#")[0]))
        self.file(label, path)
        for lang in langs:
            for suffix in ("", ".gz"):
                self.file(label, Path(f"{spec}.{lang}{suffix}"))
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


def refuse_clobbering(option: str, output: Path | str | None, reads: Reads) -> None:
    """ConfigError if writing `output` could change anything in `reads`.

    `-`, devices, pipes and descriptors are written through, never replaced,
    so they cannot land on an input file (the shell owns what they lead to).
    """
    if output is None or writes_through(output):
        return
    output = Path(output)
    for label, path in reads.files:
        if same_file(output, path):
            raise ConfigError(f"{option} {output} is {label} {path}; refusing to write over it")
    for label, folder in reads.folders:
        if is_inside(output, folder):
            raise ConfigError(f"{option} {output} lies inside {label} {folder}, which this command "
                              "only reads; write it elsewhere")
        twin = _hard_link_in(output, folder)
        if twin is not None:
            raise ConfigError(f"{option} {output} is {twin}, a file of {label} {folder} (a hard link to it); "
                              "refusing to write over it")


def _hard_link_in(path: Path, folder: Path) -> Path | None:
    """The file under `folder` that is the same inode as `path`, if `path` exists and has other links."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    if target.st_nlink < 2:
        return None
    for root, _, names in os.walk(folder):
        for name in names:
            candidate = Path(root) / name
            try:
                found = os.stat(candidate, follow_symlinks=False)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
                return candidate
    return None
