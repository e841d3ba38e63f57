"""Writing files without ever losing what was there: the one place files are replaced.

`atomic_write` fills a temporary file beside the target, fsyncs it and renames
it over the target, so a crash, a full disk or a signal leaves either the old
file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import WriteError

TMP_SUFFIX = ".tmp"


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


def write_failed(path: Path, err: BaseException) -> WriteError:
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
        raise write_failed(path, err) from None
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
        raise write_failed(path, err) from None
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
