"""Errors a user can fix, and the interruption of training.

The CLI prints an `S2SError`'s message on one line and exits non-zero; it
turns a `TrainingInterrupted` into the exit code a shell reports for the
signal.
"""

from __future__ import annotations

from pathlib import Path


class S2SError(Exception):
    """Base class: the message names the file or option at fault and what is wrong."""


class ConfigError(S2SError):
    """A config file or option is invalid."""


class DataError(S2SError):
    """A corpus is missing, unreadable, empty or misaligned."""


class TokenizerError(S2SError):
    """A tokenizer cannot be trained or loaded."""


class RunDirError(S2SError):
    """A run directory is missing files, inconsistent, or from an unknown format version."""


class WriteError(S2SError):
    """A file cannot be written (disk full, permissions); the previous version is intact."""


class RunLockedError(RunDirError):
    """Another process is writing to the same run directory."""


class TrainingDiverged(S2SError):
    """Loss or gradients stayed non-finite for too many updates in a row."""


class LostProcess(S2SError):
    """Another process of a torchrun job died, hung or became unreachable during a collective."""


class RanksDisagree(S2SError):
    """The processes of a torchrun job hold different weights: their updates were not the same."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM during training; a resumable state was saved first."""

    def __init__(self, run_dir: Path, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; a resumable checkpoint is saved. "
                         f"Resume with: s2s train --run {run_dir} --resume")
        self.run_dir, self.step = run_dir, step
        self.exit_code = 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
