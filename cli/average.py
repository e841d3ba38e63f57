"""`s2s average`: the mean of several weight snapshots of a run, written into the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seq2seq.files.reads import Reads, refuse_stdout_clobbering

from .display import stderr


def average_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory.")],
    last: Annotated[int, typer.Option(help="Average the K newest snapshots.")] = 0,
    best: Annotated[int, typer.Option(help="Average the K snapshots with the best validation BLEU.")] = 0,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="A new .safetensors file name inside the run directory, or an earlier "
        "average's.", show_default="average-last-K.safetensors or average-best-K.safetensors")] = None,
) -> None:
    """Average the weights of several snapshots of a run; translate with `--weights FILE`."""
    refuse_stdout_clobbering(Reads().folder("the run directory", model))
    from seq2seq.runs.snapshots import average_output, list_snapshots, select_snapshots, write_average

    path = average_output(model, output, last=last, best=best)
    chosen = select_snapshots(list_snapshots(model), last=last, best=best)
    steps = ",".join(str(s.step) for s in chosen)
    write_average([s.path for s in chosen], path, metadata={"averaged_steps": steps})
    stderr.print(f"averaged steps {steps} into {path}; "
                 f"translate with: s2s translate -m {model} --weights {path.name}")
