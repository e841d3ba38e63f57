"""The `s2s` command: options in, library calls out, errors turned into exit codes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import datasets
import typer

import seq2seq
from seq2seq.rundir import CONFIG_FILE, WEIGHTS_FILE
from seq2seq.clobber import Reads, refuse_clobbering
from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError, DataError, S2SError, TrainingInterrupted
from seq2seq.evaluate import METRICS, score_corpus, scores_to_json
from seq2seq.files import check_output, new_folder, open_output
from seq2seq.textio import ReadStats, chunks, iter_lines, open_binary, read_lines

from .display import error, score_table, stderr, stdout, warning
from .train import train_command

# s2s draws its own progress; datasets' bars would interleave with it and with error lines.
datasets.disable_progress_bars()

app = typer.Typer(name="s2s", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False,
                  help="Train, run and score Transformer translation models.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train sentencepiece tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")


def _exit_on_sigterm(signum, frame) -> None:
    # An exception, unlike the default action, unwinds the stack: a half-written
    # temporary file is removed on the way out (seq2seq.files.replacing).
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM exits with 143, as by default, but after cleaning up like Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_errors(command):
    """Report library errors as one line and a non-zero exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_unwinds():
                return command(*args, **kwargs)
        except S2SError as err:
            error(str(err))
            raise typer.Exit(1) from None
        except TrainingInterrupted as err:
            warning(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`s2s translate | head`). Point stdout at
            # /dev/null so the flush at exit cannot fail again, and exit as
            # tools killed by SIGPIPE do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None

    return wrapper


def version_callback(value: bool) -> None:
    if value:
        print(f"s2s {seq2seq.__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train, run and score Transformer translation models."""


app.command("train")(user_errors(train_command))


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(
    corpus: Annotated[str, typer.Option("--corpus", help="Corpus spec (see README).")] = "data/multi30k/train",
    src: Annotated[str, typer.Option(help="Source language code.")] = "en",
    tgt: Annotated[str, typer.Option(help="Target language code.")] = "de",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the tokenizer to.")]
    = Path("runs/tokenizer"),
    vocab_size: Annotated[int, typer.Option(help="Pieces per vocabulary.")] = 8000,
    model_type: Annotated[str, typer.Option(help="unigram or bpe.")] = "unigram",
    separate: Annotated[bool, typer.Option("--separate", help="One vocabulary per language "
                                           "instead of one shared.")] = False,
    character_coverage: Annotated[float, typer.Option(help="Share of characters covered by the "
                                                      "vocabulary; rarer ones map to <unk>.")] = 1.0,
    sample_size: Annotated[int, typer.Option(help="Train on a random sample of at most this many "
                                             "sentences.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed for the sample.")] = 1,
) -> None:
    """Train a sentencepiece tokenizer; writes tokenizer.model and tokenizer.vocab to --output."""
    from seq2seq.data import load_corpus
    from seq2seq.tokenizer import TOKENIZER_FILES, train_tokenizer

    if sample_size <= 0:
        raise ConfigError(f"--sample-size must be positive, got {sample_size}")
    if not 0.0 < character_coverage <= 1.0:  # NaN fails this too
        raise ConfigError(f"--character-coverage must be in (0, 1], got {character_coverage}")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a folder")
    if (output / CONFIG_FILE).is_file():
        raise ConfigError(f"--output {output} is a run directory; its tokenizer is the one its model was "
                          "trained with and must not change. Choose another folder")
    reads = Reads().corpus("the corpus", corpus, (src, tgt))
    for name in TOKENIZER_FILES:
        refuse_clobbering("--output", output / name, reads)
    pairs = load_corpus(corpus, src, tgt)
    with new_folder(output, "--output", leftovers=()):
        tokenizers = train_tokenizer(pairs, output, vocab_size=vocab_size, model_type=model_type,
                                     shared=not separate, character_coverage=character_coverage,
                                     sample_size=sample_size, seed=seed)
    for path in tokenizers.files():
        stderr.print(f"wrote {path} ({path.with_suffix('.vocab').name} beside it)")


def decode_config(beam: int, length_penalty: str, alpha: float, max_len_a: float, max_len_b: int,
                  min_len: int, batch_tokens: int, long_lines: str = "split", sampling: bool = False,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  seed: Optional[int] = None) -> DecodeConfig:
    cfg = DecodeConfig(beam=beam, length_penalty=length_penalty, alpha=alpha, max_len_a=max_len_a,
                       max_len_b=max_len_b, min_len=min_len, max_tokens=batch_tokens, long_lines=long_lines,
                       sampling=sampling, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    cfg.validate()
    return cfg


def report_input(read: ReadStats, translator) -> None:
    if read.invalid_utf8:
        warning(f"{read.invalid_utf8} line(s) held bytes that are not UTF-8; they were decoded "
                "with U+FFFD replacement characters")
    report_translation(translator)


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


# Characters at which `str.splitlines` breaks but which JSON leaves unescaped.
_JSON_UNESCAPED_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def nbest_jsonl(first_line: int, sources: list[str], nbest) -> str:
    """One JSON object per input line: its 1-based number, source and hypotheses."""
    records = []
    for number, (source, hypotheses) in enumerate(zip(sources, nbest), start=first_line):
        record = {"line": number, "source": source,
                  "hypotheses": [{"text": h.text, "score": h.score, "logprob": h.logprob} for h in hypotheses]}
        records.append(json.dumps(record, ensure_ascii=False).translate(_JSON_UNESCAPED_BREAKS) + "\n")
    return "".join(records)


def nbest_tsv(first_line: int, sources: list[str], nbest) -> str:
    """One `line<TAB>rank<TAB>score<TAB>text` row per hypothesis; tabs in the text become spaces."""
    return "".join(f"{number}\t{rank}\t{h.score:.6f}\t{h.text.replace(chr(9), ' ')}\n"
                   for number, hypotheses in enumerate(nbest, start=first_line)
                   for rank, h in enumerate(hypotheses, start=1))


Beam = Annotated[int, typer.Option("--beam", "-b", help="Beam size; 1 is greedy search.")]
LengthPenalty = Annotated[str, typer.Option(help="gnmt ((5+len)/6)^alpha, average len^alpha, or none.")]
Alpha = Annotated[float, typer.Option(help="Length penalty exponent.")]
MaxLenA = Annotated[float, typer.Option(help="Output limit: a * source tokens + b.")]
MaxLenB = Annotated[int, typer.Option(help="Output limit: a * source tokens + b.")]
MinLen = Annotated[int, typer.Option(help="Fewest output tokens for a non-empty line; 0 allows an "
                                     "empty translation.")]
BatchTokens = Annotated[int, typer.Option(help="Source tokens per batch, padding included.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
Weights = Annotated[str, typer.Option(help="Weights file inside the run directory.")]


LongLines = Annotated[str, typer.Option(help="Lines longer than the model can read: split (at sentence "
                                         "ends, translated in pieces) or truncate.")]
Sample = Annotated[bool, typer.Option("--sample", help="Sample each token instead of searching "
                                      "(for back-translation); ignores --beam.")]
Temperature = Annotated[float, typer.Option(help="With --sample: divide log-probabilities by T.")]
TopK = Annotated[int, typer.Option(help="With --sample: only the K most probable tokens; 0 is off.")]
TopP = Annotated[float, typer.Option(help="With --sample: only the fewest tokens whose probability "
                                     "reaches P; 1 is off.")]
Seed = Annotated[Optional[int], typer.Option(help="With --sample: seed, for repeatable samples.")]


@app.command()
@user_errors
def translate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory.")],
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="Source file, plain or .gz; "
                                                  "default or '-': stdin.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file; default or '-': "
                                                   "stdout.")] = None,
    beam: Beam = 5, length_penalty: LengthPenalty = "gnmt", alpha: Alpha = 0.6,
    max_len_a: MaxLenA = 1.5, max_len_b: MaxLenB = 10, min_len: MinLen = 1, batch_tokens: BatchTokens = 8000,
    long_lines: LongLines = "split",
    nbest: Annotated[int, typer.Option(help="Write the N best translations of each line "
                                       "(N <= --beam) instead of the best one.")] = 0,
    nbest_format: Annotated[str, typer.Option(help="With --nbest: jsonl (one object per line) or tsv "
                                              "(one row per hypothesis).")] = "jsonl",
    sample: Sample = False, temperature: Temperature = 1.0, top_k: TopK = 0, top_p: TopP = 1.0,
    seed: Seed = None,
    buffer_lines: Annotated[int, typer.Option(help="Lines read, translated and written at a time.")] = 1000,
    interactive: Annotated[bool, typer.Option("--interactive", help="Answer line by line (the default "
                                              "when stdin is a terminal).")] = False,
    device: Device = "auto", weights: Weights = WEIGHTS_FILE,
) -> None:
    """Translate one line out for every line in, in order. Empty lines give empty lines."""
    from seq2seq.device import resolve_device
    from seq2seq.translator import Translator

    cfg = decode_config(beam, length_penalty, alpha, max_len_a, max_len_b, min_len, batch_tokens, long_lines,
                        sample, temperature, top_k, top_p, seed)
    if buffer_lines <= 0:
        raise ConfigError(f"--buffer-lines must be positive, got {buffer_lines}")
    if nbest < 0:
        raise ConfigError(f"--nbest must be positive, got {nbest}")
    if nbest and sample:
        raise ConfigError("--nbest needs beam search; --sample gives one output per line")
    if nbest > beam:
        raise ConfigError(f"--nbest {nbest} is more than --beam {beam}; beam search finds at most "
                          "--beam hypotheses")
    if nbest_format not in ("jsonl", "tsv"):
        raise ConfigError(f"--nbest-format must be jsonl or tsv, got {nbest_format!r}")
    from_stdin = input is None or str(input) == "-"
    if from_stdin and sys.stdin is None:
        raise ConfigError("stdin is closed; give the input with -i FILE")
    if output is None or str(output) == "-":
        if sys.stdout is None:
            raise ConfigError("stdout is closed; give the output with -o FILE")
    else:
        check_output(output, "--output")
        refuse_clobbering("--output", output,
                          Reads().file("the input file", None if from_stdin else input)
                          .folder("the run directory", model))
    if not from_stdin:
        open_binary(input).close()  # a missing input is reported before the model is loaded
    translator = Translator.from_run(model, resolve_device(device), cfg, weights)
    if interactive or (from_stdin and sys.stdin.isatty()):
        buffer_lines = 1
    read = ReadStats()
    write_nbest = nbest_jsonl if nbest_format == "jsonl" else nbest_tsv

    def render(first_line: int, chunk: list[str]) -> str:
        if nbest:
            return write_nbest(first_line, chunk, translator.translate_nbest(chunk, nbest))
        return "".join(line + "\n" for line in translator.translate(chunk))

    source = sys.stdin.buffer if from_stdin else open_binary(input)
    # A regular output file is written to a temporary file and renamed at the end, so a
    # crash never leaves half of it; stdout, devices and pipes are written as we go.
    with source, open_output(output or "-") as sink:
        first_line = 1
        lines = iter_lines(source, read, "stdin" if from_stdin else str(input))
        for chunk in chunks(lines, buffer_lines):
            # UTF-8 and "\n" whatever the locale or platform: the output is data, not a console.
            sink.write(render(first_line, chunk).encode("utf-8"))
            sink.flush()
            first_line += len(chunk)
    report_input(read, translator)


def read_scored_lines(path: Path) -> list[str]:
    lines, stats = read_lines(path)
    if stats.invalid_utf8:
        warning(f"{path}: {stats.invalid_utf8} line(s) are not valid UTF-8 and were decoded with "
                "replacement characters")
    return lines


@app.command()
@user_errors
def average(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory.")],
    last: Annotated[int, typer.Option(help="Average the K newest snapshots.")] = 0,
    best: Annotated[int, typer.Option(help="Average the K snapshots with the best validation BLEU.")] = 0,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="A new .safetensors file name inside the run directory, or an earlier "
        "average's. [default: average-last-K.safetensors or average-best-K.safetensors]")] = None,
) -> None:
    """Average the weights of several snapshots of a run; translate with `--weights FILE`."""
    from seq2seq.average import average_output, list_snapshots, select_snapshots, write_average
    from seq2seq.rundir import read_run_config

    read_run_config(model)  # a clear error for anything that is not a run directory
    path = average_output(model, output, last=last, best=best)
    chosen = select_snapshots(list_snapshots(model), last=last, best=best)
    steps = ",".join(str(s.step) for s in chosen)
    write_average([s.path for s in chosen], path, metadata={"averaged_steps": steps})
    stderr.print(f"averaged steps {steps} into {path}; "
                 f"translate with: s2s translate -m {model} --weights {path.name}")


@app.command("eval")
@user_errors
def evaluate(
    ref: Annotated[list[Path], typer.Option("--ref", "-r", help="Reference file; repeat for several.")],
    hyp: Annotated[Optional[Path], typer.Option("--hyp", help="Hypotheses to score.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Run directory: translate "
                                                  "--src first, then score.")] = None,
    src: Annotated[Optional[Path], typer.Option("--src", "-s", help="Source file, with --model.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="With --model: also write "
                                                   "the translations here ('-': stdout).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: bleu, chrf, ter.")] = ",".join(METRICS),
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Case-insensitive scores.")] = False,
    tokenize: Annotated[Optional[str], typer.Option(help="sacreBLEU tokenizer for BLEU "
                                                    "(13a, intl, none, ...). [default: 13a]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    beam: Beam = 5, length_penalty: LengthPenalty = "gnmt", alpha: Alpha = 0.6,
    max_len_a: MaxLenA = 1.5, max_len_b: MaxLenB = 10, min_len: MinLen = 1, batch_tokens: BatchTokens = 8000,
    long_lines: LongLines = "split",
    device: Device = "auto", weights: Weights = WEIGHTS_FILE,
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
    if output is not None:
        check_output(output, "--output")
        reads = Reads().file("the hypotheses", hyp).file("the source file", src).folder("the run directory", model)
        for path in ref:
            reads.file("the reference", path)
        refuse_clobbering("--output", output, reads)
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
    refs = [read_scored_lines(path) for path in ref]
    if hyp is not None:
        hyps = read_scored_lines(hyp)
        described = str(hyp)
    else:
        from seq2seq.device import resolve_device
        from seq2seq.translator import Translator

        cfg = decode_config(beam, length_penalty, alpha, max_len_a, max_len_b, min_len, batch_tokens, long_lines)
        sources = read_scored_lines(src)
        for path, lines in zip(ref, refs):
            if len(lines) != len(sources):
                raise DataError(f"{src} has {len(sources)} lines but {path} has {len(lines)}")
        translator = Translator.from_run(model, resolve_device(device), cfg, weights)
        hyps = translator.translate(sources)
        report_translation(translator)
        if output is not None:
            with open_output(output) as sink:
                sink.write("".join(h + "\n" for h in hyps).encode("utf-8"))
        described = f"{model} on {src} (beam {beam})"
    for path, lines in zip(ref, refs):
        if len(lines) != len(hyps):
            raise DataError(f"{hyp or src} has {len(hyps)} lines but {path} has {len(lines)}")
    scores = score_corpus(hyps, refs, metrics=metric_names, lowercase=lowercase, tokenize=tokenize)
    if as_json:
        print(json.dumps({**scores_to_json(scores), "hypotheses": described,
                          "references": [str(p) for p in ref], "lines": len(hyps)}))
    else:
        stdout.print(score_table(scores, f"{described}: {len(hyps)} lines"))
        # Below the table, one per line: a signature is copied whole, never wrapped mid-token.
        for score in scores:
            stdout.print(f"{score.name} signature: {score.signature}", soft_wrap=True)


if __name__ == "__main__":
    app()
