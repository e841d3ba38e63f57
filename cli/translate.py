"""`s2s translate`: one line out for every line in; the search options are DecodeConfig's fields.

torch and the translator are imported inside the command, so that `--help` never loads them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError
from seq2seq.files.lines import ReadStats, chunks, count_lines, iter_lines, open_binary, tsv_prefixes, with_prefixes
from seq2seq.files.outputs import check_output, open_output
from seq2seq.files.reads import Reads, refuse_clobbering, refuse_stdout_clobbering
from seq2seq.search.hypotheses import check_nbest

from .display import line_progress, warning
from .model_options import (
    DECODE_OPTIONS,
    DECODE_PANELS,
    MODEL_HELP,
    Device,
    Engine,
    Threads,
    Weights,
    load_translator,
    model_label,
    report_translation,
)
from .options import config_options

# Characters at which `str.splitlines` breaks but which JSON leaves unescaped.
_JSON_UNESCAPED_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def nbest_jsonl(first_line: int, sources: list[str], nbest, prefixes: list[str] | None = None) -> str:
    """One JSON object per input line: its 1-based number, source, prefix (if given) and hypotheses,
    each with its alignment when there is one."""
    records = []
    for number, (source, hypotheses) in enumerate(zip(sources, nbest), start=first_line):
        record = {"line": number, "source": source}
        if prefixes is not None:
            record["prefix"] = prefixes[number - first_line]
        record["hypotheses"] = [{"text": h.text, "score": h.score, "logprob": h.logprob,
                                 **({} if h.alignment is None else {"alignment": h.alignment})} for h in hypotheses]
        records.append(json.dumps(record, ensure_ascii=False).translate(_JSON_UNESCAPED_BREAKS) + "\n")
    return "".join(records)


def tsv_field(text: str) -> str:
    """Text for one column of a tab-separated line: its tabs become spaces."""
    return text.replace("\t", " ")


def nbest_tsv(first_line: int, sources: list[str], nbest, prefixes: list[str] | None = None) -> str:
    """One `line<TAB>rank<TAB>score<TAB>text` row per hypothesis, then `<TAB>alignment` when there is one;
    tabs in the text become spaces."""
    return "".join(f"{number}\t{rank}\t{h.score:.6f}\t{tsv_field(h.text)}"
                   + ("" if h.alignment is None else f"\t{h.alignment}") + "\n"
                   for number, hypotheses in enumerate(nbest, start=first_line)
                   for rank, h in enumerate(hypotheses, start=1))


def best_lines(hypotheses) -> str:
    """One line per hypothesis: its text, then `<TAB>alignment` (its text's tabs as spaces) when it has one."""
    return "".join(h.text + "\n" if h.alignment is None else f"{tsv_field(h.text)}\t{h.alignment}\n"
                   for h in hypotheses)


@config_options(panels=DECODE_PANELS, decode=DECODE_OPTIONS)
def translate_command(
    decode: dict[str, Any],
    model: Annotated[Path, typer.Option("--model", "-m", help=MODEL_HELP)],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Source file, plain or .gz; "
                                                  "default or '-': stdin.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file; default or '-': "
                                                   "stdout.")] = None,
    nbest: Annotated[int, typer.Option(help="Write the N best translations of each line "
                                       "(N <= --beam) instead of the best one.")] = 0,
    nbest_format: Annotated[str, typer.Option(help="With --nbest: jsonl (one object per line) or tsv "
                                              "(one row per hypothesis).")] = "jsonl",
    buffer_lines: Annotated[int, typer.Option(help="Lines read, translated and written at a time.")] = 1000,
    interactive: Annotated[bool, typer.Option("--interactive", help="Answer line by line (the default "
                                              "when stdin is a terminal).")] = False,
    prefix_file: Annotated[Optional[Path], typer.Option(help="Target prefixes, plain or .gz, one per input line "
                                                        "(empty: none): each translation starts with its "
                                                        "line's prefix.")] = None,
    prefix_tsv: Annotated[bool, typer.Option("--prefix-tsv", help="Input lines are source<TAB>prefix: each "
                                             "translation starts with its prefix.")] = False,
    alignment: Annotated[bool, typer.Option("--alignment", help="Add word alignments from cross-attention, "
                                            "'i-j' pairs (0-based source-output words): a tab then the pairs "
                                            "after each line, or an alignment field with --nbest.")] = False,
    alignment_layer: Annotated[Optional[int], typer.Option(
        help="With --alignment: the decoder layer (1 is the first) whose cross-attention, averaged over "
             "heads, aligns.", show_default="the penultimate, as Garg et al. 2019 found best")] = None,
    device: Device = "auto",
    weights: Weights = None,
    engine: Engine = None,
    threads: Threads = None,
) -> None:
    """Translate one line out for every line in, in order. Empty lines give empty lines."""
    cfg = DecodeConfig(**decode)
    if buffer_lines <= 0:
        raise ConfigError(f"--buffer-lines must be positive, got {buffer_lines}")
    if nbest:
        check_nbest(nbest, cfg)
    if nbest_format not in ("jsonl", "tsv"):
        raise ConfigError(f"--nbest-format must be jsonl or tsv, got {nbest_format!r}")
    if prefix_file is not None and prefix_tsv:
        raise ConfigError("--prefix-file and --prefix-tsv are two ways to give the prefixes: use one")
    if alignment_layer is not None and not alignment:
        raise ConfigError("--alignment-layer chooses the layer that --alignment reads: add --alignment")
    from_stdin = input is None or str(input) == "-"
    if from_stdin and sys.stdin is None:
        raise ConfigError("stdin is closed; give the input with -i FILE")
    if output is None or str(output) == "-":
        if sys.stdout is None:
            raise ConfigError("stdout is closed; give the output with -o FILE")
    else:
        check_output(output, "output")
    reads = (Reads().file("the input file", None if from_stdin else input)
             .file("the {prefix_file}", prefix_file)
             .folder(model_label(model), model))
    if from_stdin:
        reads.standard_input("the input")
    refuse_clobbering("output", output, reads)
    refuse_stdout_clobbering(reads)
    if not from_stdin:
        open_binary(input).close()  # a missing input is reported before the model is loaded
    if prefix_file is not None:
        open_binary(prefix_file).close()
    translator = load_translator(model, device, cfg, weights, engine, threads)
    layer = None
    if alignment:
        layer = translator.alignment_layer(alignment_layer)
    if interactive or (from_stdin and sys.stdin.isatty()):
        buffer_lines = 1
    read = ReadStats()
    write_nbest = nbest_jsonl if nbest_format == "jsonl" else nbest_tsv

    def render(first_line: int, chunk: list[tuple[str, str | None]]) -> str:
        sources = [source for source, _ in chunk]
        prefixes = None if chunk[0][1] is None else [prefix for _, prefix in chunk]
        if nbest:
            return write_nbest(first_line, sources,
                               translator.translate_nbest(sources, nbest, prefixes, first_line, layer), prefixes)
        return best_lines(translator.translate_best(sources, prefixes, first_line, layer))

    input_name = "stdin" if from_stdin else str(input)
    source = sys.stdin.buffer if from_stdin else open_binary(input)
    prefix_source = open_binary(prefix_file) if prefix_file is not None else contextlib.nullcontext()
    # A regular output file is written to a temporary file and renamed at the end, so a
    # crash never leaves half of it; stdout, devices and pipes are written as we go.
    with source, prefix_source, open_output(output or "-") as sink:
        first_line = 1
        lines = iter_lines(source, read, input_name)
        if prefix_tsv:
            pairs = tsv_prefixes(lines, input_name)
        elif prefix_file is not None:
            pairs = with_prefixes(lines, iter_lines(prefix_source, ReadStats(), str(prefix_file)), input_name,
                                  str(prefix_file))
        else:
            pairs = ((line, None) for line in lines)
        progress = contextlib.nullcontext(lambda lines: None) if from_stdin else line_progress(
            count_lines(input), output or "-")
        with progress as advance:
            for chunk in chunks(pairs, buffer_lines):
                # UTF-8 and "\n" whatever the locale or platform: the output is data, not a console.
                sink.write(render(first_line, chunk).encode("utf-8"))
                sink.flush()
                first_line += len(chunk)
                advance(len(chunk))
    if read.invalid_utf8:
        warning(f"{read.invalid_utf8} line(s) held bytes that are not UTF-8; they were decoded "
                "with U+FFFD replacement characters")
    report_translation(translator)
