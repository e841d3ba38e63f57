"""Subword regularization: what drawing an epoch's segmentation costs, and whether it slows training.

Two measurements (issue 28):

- cost per epoch: for each corpus size (Multi30k's training split, repeated to the size), the
  seconds to encode it once in the best segmentation (`encode_corpus`, uncached) and to draw one
  epoch's sampled segmentation (`sample_corpus`, what the trainer does in the background each
  epoch), for each tokenizer type and each `num_proc`;
- step rate: `train` on the 29k pairs (or `--rate-pairs` of them) for a few epochs, without sampling and with it
  (`subword_alpha`), the demo's model and batches: updates/s and target tokens/s between the
  first and the last progress record, and how long each epoch waited for its draw (0 when it was
  drawn in time, while the epoch before trained).

    python bench/subword_cost.py --out /tmp/subword --sizes 29000 1000000 --num-proc 1 2

Writes its corpora, tokenizers, runs and a `datasets` cache of its own under --out (about 1 GB
for 1M pairs). Run it with nothing else on the machine. Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path

from results import DATA, append_entry, machine, read_lines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import datasets  # noqa: E402
import torch  # noqa: E402

from seq2seq.config import ModelConfig, TrainConfig  # noqa: E402
from seq2seq.data.corpora import load_corpus  # noqa: E402
from seq2seq.data.encode import Sampling, encode_corpus, kept_rows, sample_corpus, token_lengths  # noqa: E402
from seq2seq.data.tokenizer import load_tokenizers, train_tokenizer  # noqa: E402
from seq2seq.presets import preset_values  # noqa: E402
from seq2seq.training.run import train  # noqa: E402

MULTI30K_PAIRS = 29_000
# The demo's recipe (Makefile DEMO_TRAIN_FLAGS), by epochs rather than by the clock.
DEMO_MODEL = ModelConfig(**preset_values("tiny"))
DEMO_TRAIN = dict(lr=3e-3, warmup_steps=300, max_tokens=2500, valid="", log_every=25, keep_snapshots=0)


def build_corpus(prefix: Path, pairs: int) -> str:
    """`prefix`.en and `prefix`.de: Multi30k's training pairs, repeated (and cut) to `pairs` lines."""
    for lang in ("en", "de"):
        path = prefix.with_suffix(f".{lang}")
        if not path.is_file():
            lines = read_lines(DATA / f"train.{lang}.gz")
            repeated = (lines * -(-pairs // len(lines)))[:pairs]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(repeated) + "\n", encoding="utf-8")
    return str(prefix)


def timed(work):
    start = time.monotonic()
    result = work()
    return time.monotonic() - start, result


def encoding_costs(work: Path, sizes: list[int], model_types: list[str], num_procs: list[int], alpha: float,
                   tokenizers: dict) -> list[str]:
    """Table rows: per size, tokenizer type and num_proc, the best encoding's and one draw's seconds, and
    how many more tokens (both sides, EOS included) the draw has than the best segmentation."""
    table = []
    for pairs in sizes:
        texts = load_corpus(build_corpus(work / "corpora" / f"{pairs}" / "train", pairs), "en", "de")
        for model_type in model_types:
            for num_proc in num_procs:
                texts.cleanup_cache_files()  # the best encoding of the num_proc before: timed uncached again
                best_s, encoded = timed(lambda: encode_corpus(texts, tokenizers[model_type], num_proc=num_proc))
                rows = kept_rows(encoded, 256)
                kept = texts.select(rows)
                sampling = Sampling(alpha=alpha, nbest_size=-1, seed=1, epoch=1, max_len=256)
                out = work / "draws" / f"{pairs}-{model_type}-{num_proc}" / "ids.arrow"
                out.parent.mkdir(parents=True, exist_ok=True)
                draw_s, drawn = timed(lambda: sample_corpus(kept, tokenizers[model_type], sampling, out,
                                                        num_proc=num_proc))
                longer = sum(side.sum() for side in token_lengths(drawn)) / sum(
                    side[rows].sum() for side in token_lengths(encoded))
                print(f"{pairs} {model_type} num_proc {num_proc}: best {best_s:.1f} s, draw {draw_s:.1f} s, "
                      f"{longer:.2f}x the tokens", file=sys.stderr)
                table.append(f"| {pairs:,} | {model_type} | {num_proc} | {best_s:.1f} | {draw_s:.1f} | "
                             f"{pairs / draw_s:,.0f} | {longer:.2f} |")
    return table


def step_rate(work: Path, name: str, corpus: str, tokenizer: Path, epochs: int, alpha: float) -> str:
    """A table row: one run of the demo's model for `epochs` epochs, with `alpha` (0: no sampling)."""
    events: list[dict] = []
    cfg = TrainConfig(train=corpus, tokenizer=str(tokenizer), epochs=epochs, subword_alpha=alpha, **DEMO_TRAIN)
    train(work / "runs" / name, DEMO_MODEL, cfg, torch.device("cpu"), on_event=events.append)
    records = [e for e in events if e["event"] == "train"]
    first, last = records[0], records[-1]
    seconds = last["elapsed"] - first["elapsed"]
    updates_per_s = (last["step"] - first["step"]) / seconds
    # Each record's rate is over the interval since the one before: weigh each by its seconds.
    tokens = sum(r["tgt_tokens_per_s"] * (r["elapsed"] - p["elapsed"]) for p, r in zip(records, records[1:]))
    waits = [e["waited_s"] for e in events if e["event"] == "segmentation"][1:]  # the first is drawn in preparing
    waited = " / ".join(f"{w:.2f}" for w in waits) if waits else "-"
    print(f"{name}: {updates_per_s:.2f} updates/s, {tokens / seconds:,.0f} tgt tok/s, waits {waited}",
          file=sys.stderr)
    return (f"| {alpha:g} | {last['step']:,} | {seconds:.0f} | {updates_per_s:.2f} | {tokens / seconds:,.0f} | "
            f"{waited} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="Working folder for corpora, runs and caches.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[MULTI30K_PAIRS, 1_000_000])
    parser.add_argument("--model-types", nargs="+", default=["unigram", "bpe"], choices=["unigram", "bpe"])
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--alpha", type=float, default=0.1, help="subword_alpha: smoothing, or BPE-dropout.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each step-rate run (0: none).")
    parser.add_argument("--rate-pairs", type=int, default=MULTI30K_PAIRS,
                        help="Pairs the step-rate runs train on: the first of Multi30k's (29,000: all).")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Step-rate pairs, alternating which goes first (off, on, on, off, ...).")
    a = parser.parse_args()
    work = a.out.resolve()
    # A cache of the bench's own (read when a corpus is loaded): every encoding is timed uncached.
    datasets.config.HF_DATASETS_CACHE = str(work / "hf-cache")
    texts = load_corpus(build_corpus(work / "corpora" / f"{MULTI30K_PAIRS}" / "train", MULTI30K_PAIRS), "en", "de")
    tokenizers = {}
    for model_type in a.model_types:  # the demo's: a shared 8,000-piece vocabulary
        folder = work / "tokenizers" / model_type
        if not (folder / "tokenizer.model").is_file():
            train_tokenizer(texts, folder, vocab_size=8000, model_type=model_type)
        tokenizers[model_type] = load_tokenizers(folder)
    cost_rows = encoding_costs(work, a.sizes, a.model_types, a.num_proc, a.alpha, tokenizers)
    rate_rows = []
    corpus = build_corpus(work / "corpora" / f"{a.rate_pairs}" / "train", a.rate_pairs)
    for repeat in range(a.repeats if a.epochs else 0):
        for alpha in (0.0, a.alpha) if repeat % 2 == 0 else (a.alpha, 0.0):
            rate_rows.append(step_rate(work, f"{repeat}-alpha-{alpha:g}", corpus, work / "tokenizers" / "unigram",
                                       a.epochs, alpha))
    lines = [
        f"\n## {date.today().isoformat()}: the cost of subword regularization (issue 28)\n",
        f"Machine: {machine()}\n",
        f"Command: `python bench/subword_cost.py {shlex.join(sys.argv[1:])}`\n",
        "Cost per epoch: Multi30k's training pairs repeated to each size, a shared 8,000-piece tokenizer of each "
        "type. *best* is `encode_corpus` once, uncached (what a run without sampling does once); *draw* is "
        f"`sample_corpus` at alpha {a.alpha:g} (nbest -1), what a sampled run does for every epoch, in a "
        "background thread while the epoch before trains.\n",
        "| pairs | tokenizer | num_proc | best s | draw s | pairs/s drawn | drawn tokens / best |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |", *cost_rows]
    if rate_rows:
        lines += [
            "",
            f"Step rate: the demo's model and batches (`--preset tiny --lr 3e-3 --warmup-steps 300 --max-tokens "
            f"2500`) on {a.rate_pairs:,} pairs, unigram tokenizer, {a.epochs} epochs, no validation, without sampling and "
            f"with `--subword-alpha {a.alpha:g}`, one run after the other. Rates are between the first and the "
            "last progress record (updates 25 on); *waits* are the seconds epochs 2 on waited for their draw.\n",
            "| subword alpha | updates | seconds | updates/s | tgt tokens/s | waits s |",
            "| ---: | ---: | ---: | ---: | ---: | --- |", *rate_rows]
    append_entry(lines)


if __name__ == "__main__":
    main()
