"""`s2s attention -m RUN "a sentence"`: the cross-attention behind one translation, as a heatmap.

On the terminal it is a rich table, output pieces down, source pieces across,
each cell the weight in percent on a shade as dark as the weight; `-o` also
draws it as a PNG or SVG (the plot extra: seq2seq.inspection.heatmap). torch and the
translator are imported inside the command, so that `--help` never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.style import Style
from rich.table import Table

from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError
from seq2seq.files.outputs import check_output
from seq2seq.files.reads import Reads, refuse_clobbering, refuse_stdout_clobbering

from .display import stderr, stdout
from .model_options import DECODE_OPTIONS, DECODE_PANELS, Device, Weights, load_translator
from .options import config_options


def _shade(weight: float, darkest: float) -> Style:
    """White for no attention, deep blue for the most attention in the map."""
    level = weight / darkest if darkest > 0 else 0.0
    red, green, blue = (round(255 - level * (255 - end)) for end in (8, 48, 107))  # towards #08306b
    return Style(bgcolor=f"rgb({red},{green},{blue})", color="white" if level > 0.5 else "black")


def heatmap_table(source_pieces: list[str], output_pieces: list[str], weights, title: str) -> Table:
    """A rich table of `weights` (T, S): a row per output piece, a column per source piece."""
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False, padding=(0, 0),
                  header_style="bold", box=None)
    table.add_column("", justify="right", style="bold", no_wrap=True)
    for piece in source_pieces:
        # Written downwards, a character a line, so that a column is as narrow as its numbers.
        table.add_column("\n".join(escape(char) for char in piece), justify="right", vertical="bottom",
                         no_wrap=True, width=4)
    darkest = float(weights.max())
    for piece, row in zip(output_pieces, weights):
        table.add_row(escape(piece) + " ", *(f"[{_shade(w, darkest)}]{round(w * 100):>3}[/]" for w in row.tolist()))
    return table


@config_options(panels=DECODE_PANELS, decode=DECODE_OPTIONS)
def attention_command(
    decode: dict[str, Any],
    text: Annotated[str, typer.Argument(help="The sentence to translate.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also draw the heatmap here: .png or "
                                                   ".svg (needs the plot extra).")] = None,
    layer: Annotated[Optional[int], typer.Option(help="Decoder layer to show; 1 is the first.",
                                                 show_default="the last")] = None,
    head: Annotated[Optional[int], typer.Option(help="Attention head to show; 1 is the first.",
                                                show_default="the mean over heads")] = None,
    device: Device = "auto",
    weights: Weights = None,
) -> None:
    """Translate one sentence and show the cross-attention behind it: which source pieces each output piece read."""
    cfg = DecodeConfig(**decode)
    from seq2seq.search.engines import is_exported

    if is_exported(model):
        raise ConfigError(f"{model} is exported to CTranslate2, which keeps no attention weights to show: give -m "
                          "the run directory it was exported from")
    reads = Reads().folder("the run directory", model)
    refuse_stdout_clobbering(reads)  # the translation and the table go there
    if output is not None:
        from seq2seq.inspection.figures import figure_format

        check_output(output, "output")
        refuse_clobbering("output", output, reads)
        figure_format(output, "output")
    translator = load_translator(model, device, cfg, weights, engine="torch")
    attention = translator.attention_map(text, layer)
    shown = attention.heads(head)  # (T, S)
    what = "mean over heads" if head is None else f"head {head}"
    stdout.print(escape(attention.translation), soft_wrap=True)
    table = heatmap_table(attention.source_pieces, attention.output_pieces, shown,
                          f"cross-attention, decoder layer {attention.layer}, {what} (percent)")
    # Into a file or a pipe, a line is as long as the table needs; a terminal's width is its own.
    needed = max(map(len, attention.output_pieces)) + 1 + 4 * len(attention.source_pieces)
    console = stdout if stdout.is_terminal else Console(highlight=False, width=max(needed, stdout.width))
    console.print(table)
    if output is not None:
        from seq2seq.inspection.heatmap import draw_attention

        draw_attention(attention, shown, what, output, "output")
        stderr.print(f"wrote {escape(str(output))}")
