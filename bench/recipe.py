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

On a GPU, where a whole run takes a minute (issue 27), two options make a
variant cost what a user's `s2s train` costs and no more:

- `--tokenizer-in-run`: no tokenizer command; `s2s train` trains the
  variant's tokenizer into its run (`--vocab-size`), as it does when given
  none, inside the command's own time (and --max-time).
- `--scores training`: a variant's validation BLEU is the one its training
  recorded for the model it kept (the best validation, or the average of the
  last snapshots when that validated better), in metrics.jsonl, instead of
  decoding the validation set again with `s2s eval` at beam 5 (`--scores
  eval`, the default). It is the validation BLEU of training's own search
  (`--valid-beam`, greedy by default).

It prints one JSON line last: each variant's figures and its `s2s train`
command's start (time.time()), and the chosen one, the best by validation
BLEU, which it also writes to OUT/chosen.json for bench/quality.py to
score on the test set (bench/gpu_session.sh does):

    python bench/recipe.py --out /tmp/recipe --tokenizer-in-run --scores training \
        --shared "--device cuda --max-time 60 --keep-snapshots 100000 --patience 0" \
        --variant "small 4k|8000|--preset small --max-tokens 4096 --lr 2e-3 --lr-schedule cosine"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
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


def run_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def training_scores(run: Path) -> tuple[float, float | None]:
    """The validation BLEU training recorded for the model it kept, and chrF (None: training scores
    BLEU only): the average's when it was kept, else the best validation's."""
    records = run_records(run)
    average = next((r for r in records if r.get("event") == "average" and r.get("kept")), None)
    stop = next((r for r in reversed(records) if r.get("event") == "stop"), None)
    kept = average or (stop or {}).get("best") or max(
        (r for r in records if r.get("event") == "valid"), key=lambda r: r["valid_bleu"], default=None)
    if kept is None:
        sys.exit(f"{run}: training recorded no validation BLEU; give the variants a validation set")
    return kept["valid_bleu"], None


def training_summary(run: Path) -> tuple[int, float, float]:
    """Updates made, mean target tokens/s, and the training command's last elapsed seconds."""
    records = run_records(run)
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
    parser.add_argument("--tokenizer-in-run", action="store_true",
                        help="no tokenizer command: `s2s train` trains the variant's tokenizer into its run")
    parser.add_argument("--scores", choices=("eval", "training"), default="eval",
                        help="eval: `s2s eval` on val at beam 5, with averages; training: the validation "
                             "BLEU training recorded for the model it kept")
    a = parser.parse_args()
    rows, commands, figures = [], [], []
    for variant in a.variant:
        name, vocab, flags = (part.strip() for part in variant.split("|", 2))
        folder = Path(a.out) / name.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        tokenizer_args = [S2S, "tokenizer", "train", "--corpus", str(DATA / "train"), "--src", a.src,
                          "--tgt", a.tgt, "--vocab-size", vocab, "-o", str(folder / "tokenizer")]
        tokenizer = ["--vocab-size", vocab] if a.tokenizer_in_run else ["--tokenizer", str(folder / "tokenizer")]
        train_args = [S2S, "train", "--run", str(folder / "run"), *tokenizer, *shlex.split(a.shared),
                      *shlex.split(flags)]
        print(f"{name}: {shlex.join(train_args)}", file=sys.stderr)
        tokenizer_s = 0.0
        if not a.tokenizer_in_run:
            tokenizer_s, _ = run_timed(tokenizer_args)
            commands.append(tokenizer_args)
        started = time.time()
        commands.append(train_args)
        run = folder / "run"
        try:
            train_s, _ = run_timed(train_args)
            updates, speed, _ = training_summary(run)
            if a.scores == "training":
                (bleu, chrf), eval_s = training_scores(run), 0.0
            else:
                bleu, chrf, eval_s = validation_scores(run, a.src, a.tgt)
        except SystemExit as failure:  # one variant failing (a flag, memory, no validation) still lets the others run
            print(f"{name}: {failure}", file=sys.stderr)
            rows.append(f"| {name} | {vocab} | `{flags}` | failed | | | | | |")
            continue
        averages = []
        if a.scores == "eval" and len(list_snapshots(run)) >= 5:
            for k in (3, 5):
                out = f"average.last{k}.safetensors"
                run_timed([S2S, "average", "-m", str(run), "--last", str(k), "-o", out])
                averages.append(validation_scores(run, a.src, a.tgt, out)[0])
        shown_averages = " / ".join(f"{x:.2f}" for x in averages) or "n/a"
        rows.append(f"| {name} | {vocab} | `{flags}` | {updates:,} | {speed:,.0f} | {tokenizer_s:.0f} + "
                    f"{train_s:.0f} + {eval_s:.0f} | {bleu:.2f} | {'-' if chrf is None else f'{chrf:.2f}'} | "
                    f"{shown_averages} |")
        figures.append({"name": name, "vocab": vocab, "flags": flags, "run": str(run), "started": started,
                        "train_s": train_s, "updates": updates, "tgt_tok_per_s": speed, "val_bleu": bleu})
    lines = [f"\n## {date.today().isoformat()}: the demo recipe, chosen on the validation set ({a.src}->{a.tgt})\n",
             f"Machine: {machine()}\n",
             f"Command: `python bench/recipe.py {shlex.join(sys.argv[1:])}`\n",
             ("Each variant: `s2s train` with the shared flags and its own, training a joint tokenizer of its "
              "size into the run; val BLEU is what training recorded for the model it kept (training's own "
              "validation search). Seconds are 0 + training + 0.\n" if a.tokenizer_in_run and a.scores == "training"
              else "Each variant: a joint tokenizer of its size, then training with the shared flags and its own, "
              "then `s2s eval` on val (1,014 lines) at beam 5 with the decoding defaults. Seconds are "
              "tokenizer + training + validation-set decoding. Averages are of the last 3 / 5 kept snapshots.\n"),
             *[f"- `{shown(args)}`" for args in commands], "",
             "| variant | vocab | flags | updates | tgt tokens/s | seconds | val BLEU | val chrF | "
             "avg last 3 / 5 BLEU |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]
    if not figures:
        append_entry(lines)
        sys.exit("every variant failed")
    chosen = max(figures, key=lambda figure: figure["val_bleu"])
    lines.append(f"\nChosen on the validation set: {chosen['name']} ({chosen['val_bleu']:.2f} val BLEU).")
    append_entry(lines)
    (Path(a.out) / "chosen.json").write_text(json.dumps(chosen))
    print(json.dumps({"bench": "recipe", "scores": a.scores, "variants": figures, "chosen": chosen}))


if __name__ == "__main__":
    main()
