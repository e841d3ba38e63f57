"""`s2s eval`: sacreBLEU scores of hypotheses, or of a run's translations (with translate's search options).

sacrebleu and torch are imported inside the command, so that `--help` never loads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError, DataError
from seq2seq.files.lines import chunks, printable, read_lines
from seq2seq.files.outputs import check_output, open_output
from seq2seq.files.reads import Reads, refuse_clobbering, refuse_stdout_clobbering

from .display import line_progress, score_table, stdout, warning
from .model_options import (
    DECODE_OPTIONS,
    DECODE_PANELS,
    Device,
    Engine,
    Threads,
    Weights,
    load_translator,
    model_label,
    report_translation,
)
from .options import config_options


def read_scored_lines(path: Path) -> list[str]:
    lines, stats = read_lines(path)
    if stats.invalid_utf8:
        warning(f"{path}: {stats.invalid_utf8} line(s) are not valid UTF-8 and were decoded with "
                "replacement characters")
    return lines


@config_options(panels=DECODE_PANELS, decode=DECODE_OPTIONS)
def eval_command(
    decode: dict[str, Any],
    ref: Annotated[list[Path], typer.Option("--ref", "-r", help="Reference file; repeat for several.")],
    hyp: Annotated[Optional[Path], typer.Option("--hyp", help="Hypotheses to score.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Run directory, or a folder "
                                                  "written by `s2s export`: translate --src first, then score.")] = None,
    src: Annotated[Optional[Path], typer.Option("--src", "-s", help="Source file, with --model.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="With --model: also write "
                                                   "the translations here ('-': stdout).")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="Comma-separated: bleu, chrf, ter.",
                                                   show_default="all three")] = None,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Case-insensitive scores.")] = False,
    tokenize: Annotated[Optional[str], typer.Option(help="sacreBLEU tokenizer for BLEU (13a, intl, none, ...).",
                                                    show_default="13a")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    device: Device = "auto",
    weights: Weights = None,
    engine: Engine = None,
    threads: Threads = None,
) -> None:
    """Score with sacreBLEU: `--hyp H --ref R`, or `-m RUN --src S --ref R` to translate first."""
    if (hyp is None) == (model is None):
        raise ConfigError("give either --hyp FILE, or --model RUN with --src FILE")
    if model is not None and src is None:
        raise ConfigError("--model needs --src FILE, the source side to translate")
    if hyp is not None and src is not None:
        raise ConfigError("--src goes with --model; with --hyp there is nothing to translate")
    if hyp is not None and output is not None:
        raise ConfigError("--output keeps the translations made with --model; with --hyp there are none "
                          "to write")
    if hyp is not None and (engine is not None or threads is not None):
        raise ConfigError("--engine and --threads go with --model; with --hyp nothing is translated")
    if output is not None:
        check_output(output, "output")
    reads = Reads().file("the hypotheses", hyp).file("the source file", src)
    for path in ref:
        reads.file("the reference", path)
    if model is not None:
        reads.folder(model_label(model), model)
    refuse_clobbering("output", output, reads)
    refuse_stdout_clobbering(reads)  # the scores go there
    from seq2seq.scores import METRICS, score_corpus, scores_to_json

    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None else list(METRICS)
    refs = [read_scored_lines(path) for path in ref]
    if hyp is not None:
        hyps = read_scored_lines(hyp)
        described = str(hyp)
    else:
        cfg = DecodeConfig(**decode)
        sources = read_scored_lines(src)
        for path, lines in zip(ref, refs):
            if len(lines) != len(sources):
                raise DataError(f"{src} has {len(sources)} lines but {path} has {len(lines)}")
        translator = load_translator(model, device, cfg, weights, engine, threads)
        hyps = []
        with line_progress(len(sources), output) as advance:
            # A chunk at a time, for the progress bar: 250 lines still fill the search's batches
            # (8,000 source tokens hold about 500 lines of Multi30k), and outputs do not depend
            # on the batches (only sampling's draws would, and eval is for searching).
            for chunk in chunks(sources, 250):
                hyps += translator.translate(chunk, first_line=len(hyps) + 1)
                advance(len(chunk))
        report_translation(translator)
        if output is not None:
            with open_output(output) as sink:
                sink.write("".join(h + "\n" for h in hyps).encode("utf-8"))
        search = "sampling" if cfg.sampling else f"beam {cfg.beam}"
        described = f"{model} on {src} ({search}{f', into {cfg.tgt_lang}' if cfg.tgt_lang else ''})"
    for path, lines in zip(ref, refs):
        if len(lines) != len(hyps):
            raise DataError(f"{hyp or src} has {len(hyps)} lines but {path} has {len(lines)}")
    scores = score_corpus(hyps, refs, metrics=metric_names, lowercase=lowercase, tokenize=tokenize)
    if as_json:
        print(json.dumps({**scores_to_json(scores), "hypotheses": described,
                          "references": [str(p) for p in ref], "lines": len(hyps)}))
    else:
        stdout.print(score_table(scores, printable(f"{described}: {len(hyps)} lines")))
        # Below the table, one per line: a signature is copied whole, never wrapped mid-token.
        for score in scores:
            stdout.print(f"{score.name} signature: {score.signature}", soft_wrap=True)
