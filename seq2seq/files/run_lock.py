"""Keeping two trainers out of one run directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import RunLockedError
from .atomic import FILE_MODE
from .run_layout import LOCK_FILE


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
                                 "to this run directory; wait for it or choose another {run}", ("run",)) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
