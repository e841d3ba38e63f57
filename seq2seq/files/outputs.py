"""The outputs of a command: `-o` files written through or replaced, and folders made for it.

- `open_output` is the `-o` of every command. It replaces a regular file (or
  the file a symlink points at) atomically, but writes *through* whatever is
  not a regular file: `-` is stdout, and a character device (/dev/null), a
  FIFO, a socket or an inherited descriptor (/dev/stdout, /dev/fd/N, which
  is what bash's `>(...)` gives) is opened and written to directly. Renaming
  over /dev/null would replace the machine's /dev/null with a regular file.
- `new_folder` removes the folders it created when the command that wanted
  them fails, so a failed command leaves no empty folders behind.

Whether an output may be written at all, or is one of the command's inputs,
is seq2seq.files.reads' question.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import field_error
from .atomic import replacing, write_failed
from .run_layout import LOCK_FILE

# Names of descriptors the process already has open: writing to them must not replace them.
_DESCRIPTOR_PATH = re.compile(r"^/(dev/(fd/\d+|stdout|stderr)|proc/(self|\d+)/fd/\d+)$")


def writes_through(path: Path | str) -> bool:
    """True if `path` is `-`, an open descriptor's name, or anything but a regular file:
    such a target is written to directly, never replaced."""
    text = str(path)
    if text == "-" or _DESCRIPTOR_PATH.match(os.path.abspath(text)):
        return True
    try:
        mode = os.stat(text).st_mode  # follows symlinks: a link to /dev/null writes through too
    except OSError:
        return False  # missing, or a dangling link: a regular file will be created
    return not stat.S_ISREG(mode)


def check_output(path: Path | str, setting: str) -> None:
    """Refuse, before any work is done, an output that cannot be written: a folder, or a
    file in a folder that does not exist."""
    if writes_through(path):
        if os.path.isdir(path):
            raise field_error(setting, f"{path}: is a folder")
        if _DESCRIPTOR_PATH.match(os.path.abspath(path)) and not os.path.exists(path):
            raise field_error(setting, f"{path}: no such descriptor is open")
        return
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise field_error(setting, f"{path}: is a folder")
    if not target.parent.is_dir():
        raise field_error(setting, f"{path}: folder {target.parent} does not exist")


@contextlib.contextmanager
def open_output(path: Path | str) -> Iterator[BinaryIO]:
    """A binary stream for an `-o` option (see the module docstring for what is replaced and what not)."""
    if str(path) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if writes_through(path):
        try:
            sink = open(path, "wb")  # truncation means nothing to a device or a pipe
        except OSError as err:
            raise write_failed(Path(path), err) from None
        with sink:
            yield sink
        return
    # A symlink is followed, and the file it points at is replaced.
    with replacing(os.path.realpath(path)) as tmp, open(tmp, "wb") as sink:
        yield sink


@contextlib.contextmanager
def new_folder(path: Path | str, setting: str, leftovers: tuple[str, ...] = (LOCK_FILE,)) -> Iterator[Path]:
    """Create `path` (and missing parents) for a command; if the command fails, remove again
    the folders it created, provided they hold nothing but `leftovers`."""
    path = Path(path)
    created = []
    for folder in [*reversed(path.parents), path]:
        if folder.is_dir():
            continue
        if folder.exists() or folder.is_symlink():
            raise field_error(setting, f"{path}: {folder} exists and is not a folder")
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by another process (a DDP rank): not ours to remove
            continue
        except OSError as err:
            raise field_error(setting, f"{path}: cannot create {folder} ({err.strerror or err})") from None
        created.append(folder)
    try:
        yield path
    except BaseException:
        for folder in reversed(created):
            if all(child.name in leftovers for child in folder.iterdir()):
                for child in folder.iterdir():
                    child.unlink(missing_ok=True)
                folder.rmdir()
        raise
