"""Command-line options generated from the config dataclasses of seq2seq.config.

Every settable field of a config is one option, named after the field
(`n_heads` is `--n-heads`), listed under the field's group, with the field's
help and default. A setting is described once, beside its field; a new field
is a new flag, and nothing about it is copied here. Fields derived from
something else (a vocabulary size, from the tokenizer) get no flag.

Typer reads a command's options from its signature, so `config_options`
adds the generated ones to the command's `__signature__`.

Types: int, float and str are themselves; a bool is a `--x/--no-x` pair; a
Literal is a str, so that the config's validation refuses a wrong value with
an `error:` line naming the choices, as for a config file (Typer's own
choices would give a usage error instead); a tuple is one comma-separated
value (`--betas 0.9,0.98`), like --performer-in.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Optional

import typer

from seq2seq.config_fields import settable_fields
from seq2seq.errors import ConfigError

# Where a value did not come from the command line (click's ParameterSource names).
_NOT_GIVEN = {"DEFAULT", "DEFAULT_MAP"}


def flag(name: str) -> str:
    """The option a config field is set with: `max_len` -> `--max-len`."""
    return "--" + name.replace("_", "-")


class ConfigOptions:
    """The options of one config dataclass: one per settable field.

    `aliases` maps a field to other names its option also answers to: older
    flags that scripts rely on (`--heads` for `--n-heads`), and short forms.
    """

    def __init__(self, config_class: type, aliases: dict[str, Sequence[str]] | None = None):
        self.config_class = config_class
        self.fields = settable_fields(config_class)
        self.aliases = dict(aliases or {})
        self.hints = typing.get_type_hints(config_class)
        unknown = set(self.aliases) - {f.name for f in self.fields}
        if unknown:
            raise TypeError(f"aliases for no settable field of {config_class.__name__}: {sorted(unknown)}")

    def parameters(self) -> list[inspect.Parameter]:
        """The generated options, as Typer reads them from a signature."""
        return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=self._default(f),
                                  annotation=self._annotation(f)) for f in self.fields]

    def take_given(self, values: dict[str, Any], given_on_command_line: Callable[[str], bool]) -> dict[str, Any]:
        """Remove this config's options from `values` (a command's arguments), and return the
        fields set on the command line, by field name, converted to the field's type."""
        given = {}
        for f in self.fields:
            value = values.pop(f.name)
            if given_on_command_line(f.name):
                given[f.name] = self._from_option(f, value)
        return given

    def _annotation(self, f: dataclasses.Field) -> Any:
        hint, decls, metavar = self.hints[f.name], [flag(f.name)], None
        if hint is bool:
            decls = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"]
        elif typing.get_origin(hint) is Literal:
            hint = str  # the help lists the choices; a metavar of them all would crowd the help's columns
        elif typing.get_origin(hint) is tuple:
            hint, metavar = str, _tuple_metavar(hint)
        option = typer.Option(*decls, *self.aliases.get(f.name, ()), help=f.metadata["help"], metavar=metavar,
                              rich_help_panel=f.metadata["group"])
        # An `int | None` field stays optional; every other option has the field's default.
        return Annotated[hint if f.default is not None else Optional[hint], option]

    def _default(self, f: dataclasses.Field) -> Any:
        """The option's default: the field's, a tuple written as it is typed."""
        if isinstance(f.default, tuple):
            return ",".join(str(item) for item in f.default)
        return f.default

    def _from_option(self, f: dataclasses.Field, value: Any) -> Any:
        """A tuple field's comma-separated text as a tuple; other values are already typed."""
        hint = self.hints[f.name]
        if typing.get_origin(hint) is not tuple:
            return value
        item_types = typing.get_args(hint)
        items = value.split(",")
        try:
            if len(items) != len(item_types):
                raise ValueError
            return tuple(item_type(item) for item_type, item in zip(item_types, items))
        except ValueError:
            raise ConfigError(f"{flag(f.name)} takes {len(item_types)} comma-separated values, "
                              f"{_tuple_metavar(hint)}; got {value!r}") from None


def _tuple_metavar(hint: Any) -> str:
    """How a tuple option's value is written: `FLOAT,FLOAT` for tuple[float, float]."""
    return ",".join(t.__name__.upper() for t in typing.get_args(hint))


def _panel(parameter: inspect.Parameter) -> str | None:
    """The help group (rich_help_panel) of a Typer option declared in a signature."""
    infos = [parameter.default, *typing.get_args(parameter.annotation)[1:]]
    return next((info.rich_help_panel for info in infos if isinstance(info, typer.models.ParameterInfo)), None)


def config_options(panels: Sequence[str] = (), **option_sets: ConfigOptions) -> Callable:
    """Give the decorated command the generated options of each of `option_sets`.

    For each keyword of `option_sets` the command declares a parameter of that
    name, and receives in it a dict of the fields given on the command line.
    `s2s train` merges those over a config file and a preset, so a flag that
    repeats a default must still count, and an absent one must not: each
    option holds its field's default (which Typer's help then shows), and
    whether it was given is click's parameter source, not its value.
    `panels` orders the help's groups: options without one come first, then
    the listed ones in order, then the rest.
    """

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        missing = set(option_sets) - set(signature.parameters)
        if missing:
            raise TypeError(f"{command.__name__} has no parameter for {sorted(missing)}")
        own = [p for name, p in signature.parameters.items() if name not in option_sets]
        generated = [p for options in option_sets.values() for p in options.parameters()]
        context = inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own + generated] + [context]
        names = [p.name for p in parameters]
        clashes = {name for name in names if names.count(name) > 1}
        if clashes:
            raise TypeError(f"{command.__name__}: more than one option is called {sorted(clashes)}")

        def panel_position(parameter: inspect.Parameter) -> int:
            panel = _panel(parameter)
            return -1 if panel is None else list(panels).index(panel) if panel in panels else len(panels)

        @functools.wraps(command)
        def with_config_options(**values: Any) -> Any:
            ctx = values.pop("typer_context")

            def given_on_command_line(name: str) -> bool:
                source = ctx.get_parameter_source(name)
                return source is not None and source.name not in _NOT_GIVEN

            for keyword, options in option_sets.items():
                values[keyword] = options.take_given(values, given_on_command_line)
            return command(**values)

        with_config_options.__signature__ = signature.replace(parameters=sorted(parameters, key=panel_position))
        # Typer also reads the annotations; these are evaluated, unlike the module's strings.
        with_config_options.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_config_options

    return decorate
