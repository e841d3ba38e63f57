"""Optional extras (pyproject's optional-dependencies): imported only by what needs them.

A missing extra is a ConfigError that names what needed it and the pip
command that installs it, so the CLI prints one `error:` line, never an
ImportError's traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """`import module`, or a ConfigError: "`purpose` needs the `extra` extra: pip install 's2s[extra]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{purpose} needs the optional {extra} extra ({err}): "
                          f"pip install 's2s[{extra}]'") from None
