"""`s2s export`: a run directory as a model folder for a deployment engine (CTranslate2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seq2seq.errors import ConfigError
from seq2seq.files.reads import Reads, refuse_stdout_clobbering

from .display import stderr

FORMATS = ("ctranslate2",)


def export_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write; it must not exist, or be "
                                         "empty, and must not lie inside the run.")],
    format: Annotated[str, typer.Option("--format", help=f"Engine format: {', '.join(FORMATS)}.")] = "ctranslate2",
    quantization: Annotated[Optional[str], typer.Option(
        help="Weight type: int8, int8_float32, int16, float16, ... (CTranslate2's); default float32.")] = None,
    weights: Annotated[str, typer.Option(help="Weights file inside the run directory.")] = "model.safetensors",
) -> None:
    """Export a trained run for a deployment engine: the converted model, its tokenizers and settings."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    refuse_stdout_clobbering(Reads().folder("the run directory", model))
    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    folder = export_ctranslate2(model, output, weights=weights, quantization=quantization, setting="output")
    stderr.print(f"exported {model} to {folder} ({quantization or 'float32'})")
