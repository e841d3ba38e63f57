"""What the commands that translate with a model share (translate, eval, attention, serve): the
search options, generated from DecodeConfig's fields, the model, device, weights, engine and threads
options, the model loader, and the report of what translating took.

torch and the translator are imported when a model is loaded, so that `--help` never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seq2seq.config import SAMPLING, SEARCH, DecodeConfig

from .display import warning
from .options import ConfigOptions

# The old names stay, for the README's examples and users' scripts: --batch-tokens, --sample and -b.
DECODE_OPTIONS = ConfigOptions(DecodeConfig, aliases={"beam": ["-b"], "max_tokens": ["--batch-tokens"],
                                                      "sampling": ["--sample"], "tgt_lang": ["--tgt"]})
DECODE_PANELS = (SEARCH, SAMPLING)

MODEL_HELP = "Run directory, or a folder written by `s2s export` (run with CTranslate2)."
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
# seq2seq.files.run_layout.WEIGHTS_FILE by default.
Weights = Annotated[Optional[str], typer.Option(help="Weights file inside the run directory, such as an "
                                                "average from `s2s average`.", show_default="the run's model")]
Engine = Annotated[Optional[str], typer.Option(help="torch (a run directory) or ctranslate2 (a folder from "
                                                "`s2s export`).", show_default="found from -m")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for the search (torch's, or CTranslate2's "
                                                "intra_threads).", show_default="the engine's own")]


def model_label(model: Path) -> str:
    """How the clobber checks name the folder -m reads: no output may land inside it either way."""
    from seq2seq.runs.exported_folder import is_exported

    return "the exported model folder" if is_exported(model) else "the run directory"


def load_translator(model: Path, device: str, cfg: DecodeConfig, weights: str | None,
                    engine: str | None = None, threads: int | None = None):
    """A seq2seq.search.translator.Translator for the run or exported folder in `model`, on `device`.

    An exported folder is run by CTranslate2, which takes the device by name
    (auto picks CUDA when CTranslate2 sees a GPU, else the CPU) and never loads
    torch: the process starts in a fraction of the time.
    """
    from seq2seq.search.translator import Translator

    return Translator.from_run(model, device, cfg, weights, engine=engine, threads=threads)


def report_translation(translator) -> None:
    """What the translator had to do to keep one line out per line in, on stderr."""
    stats = translator.stats
    if stats.split:
        warning(f"{stats.split} line(s) were longer than the model's {translator.max_source_tokens} "
                "source tokens and were translated in pieces split at sentence ends")
    if stats.truncated:
        warning(f"{stats.truncated} line(s) were longer than the model's {translator.max_source_tokens} "
                "source tokens and were truncated")
    if stats.length_limited:
        warning(f"{stats.length_limited} translation(s) reached the output length limit (--max-len-a "
                "x source tokens + --max-len-b) and were cut there")
    if stats.empty_outputs:
        warning(f"{stats.empty_outputs} non-empty line(s) were translated to an empty line")
