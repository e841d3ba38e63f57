"""How a config field is declared, typed and checked.

`setting` declares a field with its help and its heading beside it, so that
the command line's flags are generated from the field (cli/options.py).
`SelfChecking` is what every config dataclass does when it is made: it puts
each value in its declared type, refuses a non-finite float, then runs the
config's own rules. Its messages name the field (seq2seq.errors.field_error).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import field, fields
from typing import Any, Literal

from .errors import field_error


def setting(default: Any, help: str, group: str, derived_from: str | None = None) -> Any:
    """A config field with its description kept beside it, in the field's metadata.

    `help` is one or two sentences for `--help` and for readers of the code;
    `group` is the heading the field is listed under. A field that the user
    does not set, because it follows from something else (a vocabulary size
    from the tokenizer), names that in `derived_from` and gets no flag.
    The command line's flags, their defaults and their help are all generated
    from these (cli/options.py), so a setting is described only here.
    """
    return field(default=default, metadata={"help": help, "group": group, "derived_from": derived_from})


def settable_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that a user sets: all but the derived ones."""
    return [f for f in fields(cls) if not f.metadata.get("derived_from")]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(value: Any, hint: Any, name: str) -> Any:
    """`value` as field `name` of type `hint` holds it (an int where a float is declared becomes one, a
    list where a tuple is declared becomes one), or a ConfigError naming the field."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise field_error(name, f"must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        item_types = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise field_error(name, f"must be a list of {len(item_types)} values, got {value!r}")
        return tuple(_typed(item, item_type, name) for item, item_type in zip(value, item_types))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return value
        return _typed(value, next(option for option in options if option is not type(None)), name)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = {bool: lambda: isinstance(value, bool), int: lambda: isinstance(value, int) and not isinstance(value, bool),
          float: lambda: isinstance(value, float), str: lambda: isinstance(value, str)}.get(hint, lambda: True)()
    if not ok:
        raise field_error(name, f"must be of type {hint.__name__}, got {value!r}")
    return value


class SelfChecking:
    """What every config dataclass does when it is made: its types, then that every float is a
    finite number (NaN passes every `<` and `>` unnoticed, and an infinite learning rate turns the
    weights into NaN), then its own rules (`check`)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = _typed(getattr(self, f.name), hints[f.name], f.name)
            object.__setattr__(self, f.name, value)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, float) and not math.isfinite(item):
                    raise field_error(f.name, f"must be a finite number, got {item}")
        self.check()

    def check(self) -> None:
        """The rules between this config's values; a ConfigError naming its fields."""

    def _positive(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name) > 0:
                raise field_error(name, f"must be positive, got {getattr(self, name)}")

    def _not_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise field_error(name, f"must not be negative, got {getattr(self, name)}")

    def _fraction(self, *names: str) -> None:
        for name in names:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise field_error(name, f"must be in [0, 1), got {getattr(self, name)}")
