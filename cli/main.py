"""The `s2s` command: the Typer app, its commands, and `--version`.

Each command lives in its own module and imports torch, datasets and
sacrebleu only when it runs, so `s2s --help`, `s2s --version` and every
`s2s X --help` answer without loading them (tests/test_options.py checks).
"""

from __future__ import annotations

from typing import Annotated

import typer

import seq2seq

from .attention import attention_command
from .average import average_command
from .errors import user_errors
from .evaluate import eval_command
from .export import export_command
from .info import info_command
from .plot import plot_command
from .serve import serve_command
from .tokenizer import tokenizer_train_command
from .train import train_command
from .translate import translate_command

app = typer.Typer(name="s2s", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False,
                  help="Train, run and score Transformer translation models.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train sentencepiece tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")


def version_callback(value: bool) -> None:
    if value:
        print(f"s2s {seq2seq.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train, run and score Transformer translation models."""


tokenizer_app.command("train")(user_errors(tokenizer_train_command))
app.command("train")(user_errors(train_command))
app.command("translate")(user_errors(translate_command))
app.command("average")(user_errors(average_command))
app.command("eval")(user_errors(eval_command))
app.command("export")(user_errors(export_command))
app.command("serve")(user_errors(serve_command))
app.command("info")(user_errors(info_command))
app.command("attention")(user_errors(attention_command))
app.command("plot")(user_errors(plot_command))


if __name__ == "__main__":
    app()
