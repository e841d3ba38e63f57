"""Library errors and signals turned into one `error:` line and an exit code, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import sys

import typer

from seq2seq.errors import S2SError, TrainingInterrupted

from .display import error, warning
from .options import flag


def _exit_on_sigterm(signum, frame) -> None:
    # An exception, unlike the default action, unwinds the stack: a half-written
    # temporary file is removed on the way out (seq2seq.files.atomic.replacing).
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM exits with 143, as by default, but after cleaning up like Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(command):
    """Report library errors as one line and a non-zero exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_unwinds():
                return command(*args, **kwargs)
        except S2SError as err:
            error(err.named(flag))  # the library names settings; here they are flags
            raise typer.Exit(1) from None
        except TrainingInterrupted as err:
            warning(f"{err}. Resume with: {shlex.join(['s2s', 'train', '--run', str(err.run_dir), '--resume'])}")
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`s2s translate | head`). Point stdout at
            # /dev/null so the flush at exit cannot fail again, and exit as
            # tools killed by SIGPIPE do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None

    return wrapper
