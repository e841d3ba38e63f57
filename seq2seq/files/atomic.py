"""Writing files without ever losing what was there: the one place files are replaced.

- `atomic_write` fills a temporary file beside the target, fsyncs it and
  renames it over the target, so a crash, a full disk or a signal leaves
  either the old file or the new one, never half of either.
- `open_output` is the `-o` of every command. It replaces a regular file (or
  the file a symlink points at) atomically, but writes *through* whatever is
  not a regular file: `-` is stdout, and a character device (/dev/null), a
  FIFO, a socket or an inherited descriptor (/dev/stdout, /dev/fd/N, which
  is what bash's `>(...)` gives) is opened and written to directly. Renaming
  over /dev/null would replace the machine's /dev/null with a regular file.
- `RunLock` keeps two trainers out of one run directory.
- `new_folder` removes the folders it created when the command that wanted
  them fails, so a failed command leaves no empty folders behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError, RunLockedError, WriteError

TMP_SUFFIX = ".tmp"
LOCK_FILE = ".lock"

# Names of descriptors the process already has open: writing to them must not replace them.
_DESCRIPTOR_PATH = re.compile(r"^/(dev/(fd/\d+|stdout|stderr)|proc/(self|\d+)/fd/\d+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp (and safetensors) create files readable by their owner alone; a
# written file gets the permissions any other new file would.
FILE_MODE = 0o666 & ~_umask()


def fsync_dir(folder: Path | str) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failed(path: Path, err: BaseException) -> WriteError:
    reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
    return WriteError(f"cannot write {path} ({reason}); the previous version of the file is intact")


def _write_errors() -> tuple[type[BaseException], ...]:
    # safetensors reports a failed write (a full disk, say) as SafetensorError, not OSError.
    from safetensors import SafetensorError

    return OSError, SafetensorError


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, fsync it and rename it over `path`.

    If the block raises (an error, Ctrl-C, or SIGTERM turned into SystemExit
    by the CLI), the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _write_failed(path, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    errors = _write_errors()
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # after the writer, which may have made the file anew
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except errors as err:  # ENOSPC, EDQUOT, EACCES...: the old file is untouched
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` to fill a temporary file, then fsync and rename it to `path`."""
    with replacing(path) as tmp:
        write(tmp)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


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


def check_output(path: Path | str, option: str) -> None:
    """Refuse, before any work is done, an output that cannot be written: a folder, or a
    file in a folder that does not exist."""
    if writes_through(path):
        if os.path.isdir(path):
            raise ConfigError(f"{option} {path}: is a folder")
        if _DESCRIPTOR_PATH.match(os.path.abspath(path)) and not os.path.exists(path):
            raise ConfigError(f"{option} {path}: no such descriptor is open")
        return
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise ConfigError(f"{option} {path}: is a folder")
    if not target.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {target.parent} does not exist")


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
            raise _write_failed(Path(path), err) from None
        with sink:
            yield sink
        return
    # A symlink is followed, and the file it points at is replaced.
    with replacing(os.path.realpath(path)) as tmp, open(tmp, "wb") as sink:
        yield sink


@contextlib.contextmanager
def new_folder(path: Path | str, option: str, leftovers: tuple[str, ...] = (LOCK_FILE,)) -> Iterator[Path]:
    """Create `path` (and missing parents) for a command; if the command fails, remove again
    the folders it created, provided they hold nothing but `leftovers`."""
    path = Path(path)
    created = []
    for folder in [*reversed(path.parents), path]:
        if folder.is_dir():
            continue
        if folder.exists() or folder.is_symlink():
            raise ConfigError(f"{option} {path}: {folder} exists and is not a folder")
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by another process (a DDP rank): not ours to remove
            continue
        except OSError as err:
            raise ConfigError(f"{option} {path}: cannot create {folder} ({err.strerror or err})") from None
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


class RunLock:
    """An exclusive lock on a run directory, held while a trainer writes to it.

    It is an flock on `.lock`: the kernel releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunLockedError(f"{self.path.parent}: another s2s train (pid {holder}) is writing "
                                 "to this run directory; wait for it or choose another --run") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
