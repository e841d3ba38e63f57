"""How many batch shapes an epoch of the bundled corpus takes, and how much its batches pad, with the shape
ladder off and on (seq2seq.data.shape_ladder, issue 27).

A GPU plans, captures or compiles per tensor shape, so a run should see few. This cuts the Multi30k
English-German training set, in the pieces of an 8k joint unigram tokenizer (the demo's), into
token-budget batches at several budgets, as `s2s train` cuts them (pairs over max_len dropped, EOS on
each side), and counts for each budget, over the first `--epochs` epochs:

- shapes: distinct (rows, source width, target width) of the padded batches;
- padding: padded positions, source and target together, over the real tokens, less 1; and the ladder's
  extra, its padding less that of the batches without it (what the ladder adds, in real tokens).

CPU-only, a few seconds after the tokenizer (about half a minute on 2 cores). Appends a table to
bench/RESULTS.md.

    python bench/shape_count.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

from results import DATA, append_entry, machine, read_lines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import datasets  # noqa: E402
import numpy as np  # noqa: E402

from seq2seq.config import TrainConfig  # noqa: E402
from seq2seq.data.batching import EpochBatches  # noqa: E402
from seq2seq.data.shape_ladder import ShapeLadder, count_shapes  # noqa: E402
from seq2seq.data.tokenizer import train_tokenizer  # noqa: E402

BUDGETS = (2500, 4096, 16384, 65536)


def piece_lengths(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths in pieces, EOS included, of the training pairs `s2s train` keeps."""
    lines = {"src": read_lines(DATA / "train.en.gz"), "tgt": read_lines(DATA / "train.de.gz")}
    with tempfile.TemporaryDirectory() as folder:
        tokenizers = train_tokenizer(datasets.Dataset.from_dict(lines), folder, vocab_size=vocab_size)
        src = np.array([len(ids) + 1 for ids in tokenizers.src.encode(lines["src"])])
        tgt = np.array([len(ids) + 1 for ids in tokenizers.tgt.encode(lines["tgt"])])
    kept = (src <= TrainConfig.max_len) & (tgt <= TrainConfig.max_len)
    return src[kept], tgt[kept]


def measure(src: np.ndarray, tgt: np.ndarray, max_tokens: int, ladder: ShapeLadder | None, epochs: int,
            seed: int) -> dict:
    """Batches an epoch, distinct shapes over `epochs` epochs, and the first epoch's padding."""
    batches = EpochBatches(src, tgt, max_tokens, seed, ladder=ladder)
    counts = [count_shapes(batches.epoch(epoch), src, tgt, ladder) for epoch in range(1, epochs + 1)]
    shapes = set().union(*(count.examples for count in counts))
    return {"batches": counts[0].batches, "shapes": len(shapes), "padding": counts[0].padding}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=8000, help="joint unigram tokenizer size")
    parser.add_argument("--epochs", type=int, default=3, help="epochs whose shapes are counted together")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    src, tgt = piece_lengths(args.vocab)
    ladder = ShapeLadder(TrainConfig.max_len)
    lines = [f"## {date.today().isoformat()}: batch shapes of the bundled corpus, shape ladder off and on (issue 27)",
             "", f"- Machine: {machine()}",
             f"- Command: `python bench/shape_count.py --vocab {args.vocab} --epochs {args.epochs} --seed {args.seed}`",
             f"- Data: Multi30k train en-de, {len(src):,} pairs in the pieces of a {args.vocab:,}-piece joint unigram "
             f"tokenizer ({int(src.sum() + tgt.sum()):,} real tokens, EOS included); shapes are the distinct "
             f"(rows, source width, target width) over {args.epochs} epochs; padding is padded positions over real "
             "tokens, less 1, source and target together", "",
             "| max tokens | batches off / on | shapes off | shapes on | padding off | padding on | ladder's extra |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for max_tokens in BUDGETS:
        off = measure(src, tgt, max_tokens, None, args.epochs, args.seed)
        on = measure(src, tgt, max_tokens, ladder, args.epochs, args.seed)
        lines.append(f"| {max_tokens:,} | {off['batches']:,} / {on['batches']:,} | {off['shapes']} | {on['shapes']} "
                     f"| {100 * off['padding']:.1f}% | {100 * on['padding']:.1f}% "
                     f"| {100 * (on['padding'] - off['padding']):.1f}% |")
    lines.append("")
    append_entry(lines)


if __name__ == "__main__":
    main()
