"""Ctrl-C and SIGTERM during training: stop at the next safe point, or at once on a second signal."""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    """SIGINT and SIGTERM turned into a request the training loop acts on.

    The first signal is recorded in `received`; the loop then saves a
    resumable state and exits with 128 + the signal number. A second signal
    exits at once. That is safe because every file is written atomically: the
    last complete checkpoint is never half-overwritten.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        # Python runs signal handlers in the main thread only; elsewhere (a
        # library user's worker thread) the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            os.write(2, b"\nsecond interrupt: exiting now; the last complete checkpoint is intact\n")
            os._exit(128 + signum)
        self.received = signum
        os.write(2, b"\nstopping after this update to save a resumable checkpoint "
                    b"(interrupt again to exit at once)\n")
