"""Choose the demo's recipe on the validation set: each variant trained for the same wall budget.

A variant is a vocabulary size and the `s2s train` flags it adds to the
shared ones. For each, the bench trains a joint sentencepiece tokenizer of
that size, trains with the shared flags plus the variant's, and scores the
model `s2s train` chose on Multi30k's validation split (beam 5, the decoding
defaults). It also scores the average of the last 3 and 5 kept snapshots,
which is what `--average-last` would have chosen. test_2016_flickr is not
read: it is the score we report, scored once for the recipe this picks.

    python bench/recipe.py --out runs/recipe --shared "--preset tiny --max-time 760" \\
        --variant "8k cosine|8000|--lr-schedule cosine --max-steps 2100" \\
        --variant "4k cosine|4000|--lr-schedule cosine --max-steps 2600"

Run it with nothing else on the machine: the budget is wall time. Appends a
table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import date
from pathlib import Path

from results import DATA, S2S, append_entry, machine, run_timed, shown

from seq2seq.runs.snapshots import list_snapshots


def validation_scores(run: Path, src: str, tgt: str, weights: str | None = None) -> tuple[float, float, float]:
    """BLEU and chrF on the validation split at beam 5, and the seconds the scoring took."""
    args = [S2S, "eval", "-m", str(run), "--beam", "5", "--src", str(DATA / f"val.{src}.gz"),
            "--ref", str(DATA / f"val.{tgt}.gz"), "--metrics", "bleu,chrf", "--json"]
    if weights:
        args += ["--weights", weights]
    seconds, stdout = run_timed(args)
    scores = json.loads(stdout)
    return scores["bleu"]["score"], scores["chrf"]["score"], seconds


def training_summary(run: Path) -> tuple[int, float, float]:
    """Updates made, mean target tokens/s, and the training command's last elapsed seconds."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("event") == "train"]
    updates = max(r["step"] for r in records if "step" in r)
    speed = sum(r["tgt_tokens_per_s"] for r in train) / max(len(train), 1)
    return updates, speed, train[-1]["elapsed"] if train else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/recipe", help="folder for the variants' tokenizers and runs")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--shared", default="--preset tiny --max-time 760", help="flags every variant gets")
    parser.add_argument("--variant", action="append", required=True, metavar="NAME|VOCAB|FLAGS",
                        help="a name, the vocabulary size, and the flags it adds, split by '|'")
    a = parser.parse_args()
    rows, commands = [], []
    for variant in a.variant:
        name, vocab, flags = (part.strip() for part in variant.split("|", 2))
        folder = Path(a.out) / name.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        tokenizer_args = [S2S, "tokenizer", "train", "--corpus", str(DATA / "train"), "--src", a.src,
                          "--tgt", a.tgt, "--vocab-size", vocab, "-o", str(folder / "tokenizer")]
        train_args = [S2S, "train", "--run", str(folder / "run"), "--tokenizer", str(folder / "tokenizer"),
                      *shlex.split(a.shared), *shlex.split(flags)]
        print(f"{name}: {shlex.join(train_args)}", file=sys.stderr)
        tokenizer_s, _ = run_timed(tokenizer_args)
        train_s, _ = run_timed(train_args)
        commands += [tokenizer_args, train_args]
        run = folder / "run"
        updates, speed, _ = training_summary(run)
        bleu, chrf, eval_s = validation_scores(run, a.src, a.tgt)
        averages = []
        if len(list_snapshots(run)) >= 5:
            for k in (3, 5):
                out = f"average.last{k}.safetensors"
                run_timed([S2S, "average", "-m", str(run), "--last", str(k), "-o", out])
                averages.append(validation_scores(run, a.src, a.tgt, out)[0])
        shown_averages = " / ".join(f"{x:.2f}" for x in averages) or "n/a"
        rows.append(f"| {name} | {vocab} | `{flags}` | {updates:,} | {speed:,.0f} | {tokenizer_s:.0f} + "
                    f"{train_s:.0f} + {eval_s:.0f} | {bleu:.2f} | {chrf:.2f} | {shown_averages} |")
    lines = [f"\n## {date.today().isoformat()}: the demo recipe, chosen on the validation set ({a.src}->{a.tgt})\n",
             f"Machine: {machine()}\n",
             f"Command: `python bench/recipe.py {shlex.join(sys.argv[1:])}`\n",
             "Each variant: a joint tokenizer of its size, then training with the shared flags and its own, "
             "then `s2s eval` on val (1,014 lines) at beam 5 with the decoding defaults. Seconds are "
             "tokenizer + training + validation-set decoding. Averages are of the last 3 / 5 kept snapshots.\n",
             *[f"- `{shown(args)}`" for args in commands], "",
             "| variant | vocab | flags | updates | tgt tokens/s | seconds | val BLEU | val chrF | "
             "avg last 3 / 5 BLEU |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]
    append_entry(lines)


if __name__ == "__main__":
    main()
