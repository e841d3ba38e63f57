"""Errors a user can fix. The CLI prints their message on one line and exits non-zero."""


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
