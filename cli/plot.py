"""`s2s plot RUN [RUN ...] -o curves.png`: training curves of runs, overlaid, as PNG or SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seq2seq.files.reads import Reads, refuse_stdout_clobbering

from .display import warning


def plot_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to plot, each from its metrics.jsonl.", metavar="RUN",
                                               show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The picture to write: .png or .svg.")],
    x: Annotated[str, typer.Option("--x", help="The horizontal axis: steps (updates) or time (training time, "
                                               "in minutes, or hours for runs of 2 hours or more).")] = "steps",
    label: Annotated[Optional[list[str]], typer.Option(
        "--label", help="A run's name in the legend, once per run in order.",
        show_default="each run folder's name")] = None,
    width: Annotated[int, typer.Option(help="Width in pixels.")] = 1200,
    height: Annotated[int, typer.Option(help="Height in pixels.")] = 500,
) -> None:
    """Plot training and validation loss, and validation BLEU, of one or more runs, to compare them."""
    reads = Reads()
    for run in runs:
        reads.folder("the run directory", run)
    refuse_stdout_clobbering(reads)
    from seq2seq.inspection.curves import write_plot

    for metrics in write_plot(runs, output, x=x, labels=label, width=width, height=height):
        if metrics.skipped:  # drawn without them
            warning(metrics.skipped_message())
