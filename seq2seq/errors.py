"""Errors a user can fix, and the interruption of training.

The CLI prints an `S2SError`'s message on one line and exits non-zero; it
turns a `TrainingInterrupted` into the exit code a shell reports for the
signal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path


class S2SError(Exception):
    """Base class: the message names the file or setting at fault and what is wrong.

    A message that names settings (config fields, or a function's parameters
    that a command takes as options) writes each one as `{name}` in its
    template, so that every reader sees the name it knows (`named`): the
    library's own message gives the setting (`beam`), a config file's reader
    `train.lr`, and the command line the flag (`--lr`).
    """

    def __init__(self, template: str, fields: tuple[str, ...] = ()):
        self.template, self.fields = template, tuple(fields)
        super().__init__(self.named(str))

    def named(self, name_of: Callable[[str], str]) -> str:
        """The message with each setting written as `name_of(setting)`."""
        if not self.fields:
            return self.template
        return re.sub(r"\{(\w+)\}", lambda m: name_of(m[1]) if m[1] in self.fields else m[0], self.template)


class ConfigError(S2SError):
    """A config value, file or option is invalid."""

    def in_file(self, source: str, name_of: Callable[[str], str]) -> "ConfigError":
        """This error as the reader of the file `source` says it: the file first, its fields named by `name_of`."""
        return ConfigError(f"{source}: {self.named(name_of)}")


def field_error(field: str, problem: str, kind: type[S2SError] = ConfigError) -> S2SError:
    """An error "`field` `problem`" ("beam must be at least 1, got 0"), the setting named as each reader
    names it; a ConfigError unless `kind` says otherwise."""
    return kind("{" + field + "} " + problem, (field,))


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
        super().__init__(f"interrupted at step {step}; a resumable checkpoint is saved in {run_dir}")
        self.run_dir, self.step = run_dir, step
        self.exit_code = 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
