"""Every config field, walked through the command line: a value its config refuses is one `error:` line
that names the flag, never the field, and a config that exists is valid.

The bad values are found, not listed: for each field, the first candidate of its type that the config
itself refuses when it is made (with the context some rules need, such as Performer attention).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.options import flag
from seq2seq.config import DecodeConfig, DistributedConfig, ModelConfig, ServeConfig, TrainConfig
from seq2seq.config_fields import settable_fields
from seq2seq.errors import ConfigError

runner = CliRunner()

# The command that takes each config's flags, and what else it needs to reach the config.
COMMANDS = {ModelConfig: ["train"], TrainConfig: ["train"], DistributedConfig: ["train"],
            DecodeConfig: ["translate", "-m", "no-such-run"], ServeConfig: ["serve", "-m", "no-such-run"]}
# Settings under which more of a config's rules apply (Performer's only with Performer attention).
CONTEXTS = {ModelConfig: [{}, {"attention": "performer"}]}


def candidates(hint: Any) -> list[Any]:
    """Values of a field's type, the likely bad ones first."""
    if typing.get_origin(hint) is Literal:
        return ["no-such-choice"]
    if typing.get_origin(hint) is tuple:
        return [tuple(value for _ in typing.get_args(hint)) for value in (-1.0, 2.0, math.nan)]
    if hint in (int, int | None):
        return [-1, 0, 70_000, 10 ** 9]
    if hint is float:
        return [-1.0, 0.0, 1.0, 1e9, math.nan]  # NaN last: every float refuses it (test_bad_input)
    if hint is str:
        return ["", "no-such-place", "en", "de,,fr", "de,fr"]
    return []


def as_option(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def bad_settings() -> list[tuple[type, str, Any, dict[str, Any]]]:
    """(config class, field, a value it refuses, the context it is refused in) for every settable field
    that has such a value."""
    found = []
    for cls in COMMANDS:
        hints = typing.get_type_hints(cls)
        for field in settable_fields(cls):
            for context in CONTEXTS.get(cls, [{}]):
                value = next((value for value in candidates(hints[field.name])
                              if refuses(cls, {**context, field.name: value})), None)
                if value is not None:
                    found.append((cls, field.name, value, context))
                    break
    return found


def refuses(cls: type, values: dict[str, Any]) -> bool:
    try:
        cls(**values)
    except ConfigError:
        return True
    return False


BAD = bad_settings()
NEVER_BAD = {("TrainConfig", "seed"), ("TrainConfig", "tokenizer"), ("TrainConfig", "init_from"),
             ("TrainConfig", "valid"), ("TrainConfig", "train"), ("DecodeConfig", "seed"), ("ServeConfig", "host")}


def test_every_field_that_can_hold_a_bad_value_is_walked():
    """Each settable field is in BAD, or is one that takes any value of its type (or is a flag)."""
    walked = {(cls.__name__, name) for cls, name, _, _ in BAD}
    for cls in COMMANDS:
        hints = typing.get_type_hints(cls)
        for field in settable_fields(cls):
            key = (cls.__name__, field.name)
            assert key in walked or key in NEVER_BAD or hints[field.name] is bool, key


@pytest.mark.parametrize("cls, name, value, context", BAD,
                         ids=[f"{cls.__name__}.{name}" for cls, name, _, _ in BAD])
def test_a_refused_value_is_one_error_line_naming_the_flag(tmp_path, cls, name, value, context):
    args = [*COMMANDS[cls], *(["--run", str(tmp_path / "run")] if cls in (ModelConfig, TrainConfig,
                                                                             DistributedConfig) else [])]
    for key, setting in {**context, name: value}.items():
        args += [flag(key), as_option(setting)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (args, result.output)
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert flag(name) in message, message
    if "_" in name:
        assert name not in message.replace(flag(name), ""), message  # the field's own name is not shown
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cls", list(COMMANDS))
def test_a_config_that_exists_is_valid(cls):
    """dataclasses.replace makes a config anew, so a changed copy checks itself too."""
    made = cls()
    for bad_cls, name, value, context in BAD:
        if bad_cls is cls:
            with pytest.raises(ConfigError):
                dataclasses.replace(made, **{**context, name: value})
