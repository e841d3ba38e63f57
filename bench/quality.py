"""The full recipe for one language pair, timed: time to each test-BLEU milestone, and final scores.

Runs the real `s2s` commands (tokenizer, then training with a validation and
a weights snapshot every `--valid-every` updates, or every epoch), then
scores every snapshot on test_2016_flickr at beam 5. A milestone's time is
the wall time from the start of tokenizer training to the validation that
saved the first snapshot reaching it: tokenizer, data preparation and
validation included. Scoring the snapshots happens after training and is
not counted.

The final model (`s2s train`'s choice: best validation BLEU, or the average
of the last snapshots) is scored at beam 1 and beam 5, and at beam 5 also
lowercased, which is how published Multi30k results are often given
(e.g. Wu et al. 2021, 41.02 for a text-only Transformer on en-de).

Appends an entry to bench/RESULTS.md. `make bench` runs it with the demo's
settings:

    python bench/quality.py --out runs/bench-demo --label "make demo recipe" -- --preset tiny --max-time 840
    python bench/quality.py --src de --tgt en --device cuda --out runs/quality-de-en   # on a GPU
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

from results import ROOT, S2S, append_entry, machine, read_lines, run_timed, shown

from seq2seq.config import DecodeConfig
from seq2seq.device import resolve_device
from seq2seq.runs.run_dir import load_run
from seq2seq.runs.snapshots import list_snapshots
from seq2seq.runs.weights import load_weights
from seq2seq.scores import score_corpus
from seq2seq.search.translator import Translator


def snapshot_scores(run: Path, device: str, sources: list[str], refs: list[str]) -> dict[int, float]:
    """Test BLEU at beam 5 of every weights snapshot of `run`, by step."""
    model, tokenizers, _ = load_run(run, resolve_device(device))
    scores = {}
    for snapshot in list_snapshots(run):
        load_weights(model, snapshot.path)
        hyps = Translator.for_model(model, tokenizers, DecodeConfig(beam=5)).translate(sources)
        scores[snapshot.step] = score_corpus(hyps, [refs], metrics=("bleu",))[0].score
        print(f"snapshot step {snapshot.step}: test BLEU {scores[snapshot.step]:.2f}", file=sys.stderr)
    return scores


def milestone_times(scores: dict[int, float], valid: list[dict], start: float,
                    milestones: list[float]) -> dict[float, tuple[int, float] | None]:
    """For each milestone, (step, seconds since `start`) of the first snapshot reaching it, or None."""
    saved_at = {r["step"]: r["time"] - start for r in valid}
    reached: dict[float, tuple[int, float] | None] = {}
    for milestone in milestones:
        first = next((step for step in sorted(scores) if scores[step] >= milestone and step in saved_at), None)
        reached[milestone] = None if first is None else (first, saved_at[first])
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-quality", help="folder for the tokenizer and the run")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--vocab-size", default="8000")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--milestones", type=float, nargs="+", default=[30.0, 35.0, 37.3, 40.0],
                        help="test BLEU (beam 5) levels to time")
    parser.add_argument("--label", default="full recipe", help="title of the RESULTS.md entry")
    parser.add_argument("train_flags", nargs="*", help="extra flags for `s2s train` (after --)")
    a = parser.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    data = ROOT / "data" / "multi30k"
    test_src, test_ref = data / f"test_2016_flickr.{a.src}.gz", data / f"test_2016_flickr.{a.tgt}.gz"
    run = out / "run"
    commands = {
        "tokenizer": [S2S, "tokenizer", "train", "--corpus", str(data / "train"), "--src", a.src,
                      "--tgt", a.tgt, "-o", str(out / "tok"), "--vocab-size", a.vocab_size],
        # Every snapshot is kept for the milestones; flags given after -- still win.
        "train": [S2S, "train", "--run", str(run), "--tokenizer", str(out / "tok"),
                  "--train", str(data / "train"), "--valid", str(data / "val"), "--src", a.src,
                  "--tgt", a.tgt, "--device", a.device, "--keep-snapshots", "100000", *a.train_flags],
    }
    for beam in (1, 5):
        commands[f"test beam {beam}"] = [S2S, "eval", "-m", str(run), "--src", str(test_src),
                                         "--ref", str(test_ref), "--beam", str(beam), "--device", a.device,
                                         "--json", "-o", str(out / f"test.beam{beam}.{a.tgt}")]
    commands["test beam 5, lowercased"] = [S2S, "eval", "--hyp", str(out / f"test.beam5.{a.tgt}"),
                                           "--ref", str(test_ref), "--lowercase", "--json"]
    seconds, scores = {}, {}
    start = time.time()
    for stage, args in commands.items():
        print(f"{stage}: {shlex.join(args)}", file=sys.stderr)
        seconds[stage], stdout = run_timed(args)
        if stage.startswith("test"):
            scores[stage] = json.loads(stdout)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["event"] == "valid"]
    train_rates = [r["tgt_tokens_per_s"] for r in records if r["event"] == "train"]
    by_step = snapshot_scores(run, a.device, read_lines(test_src), read_lines(test_ref))
    reached = milestone_times(by_step, valid, start, a.milestones)

    lines = [f"\n## {date.today().isoformat()}: {a.label} ({a.src}->{a.tgt})\n",
             f"- Machine: {machine()}",
             f"- Command: `python bench/quality.py {shlex.join(sys.argv[1:])}`, which ran:",
             *[f"  - `{shown(args)}`" for args in commands.values()],
             "- Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
             + f"; tokenizer + training {seconds['tokenizer'] + seconds['train']:.0f} s",
             f"- Training: {records[-1]['step'] if records else 0} updates, median "
             f"{sorted(train_rates)[len(train_rates) // 2] if train_rates else 0:,.0f} target tokens/s, "
             f"{len(valid)} validations",
             "- Time to test BLEU (beam 5), from the start of tokenizer training: "
             + "; ".join(f"{m:g}: " + (f"{r[1]:.0f} s (step {r[0]})" if r else "not reached")
                         for m, r in reached.items()),
             "- Test BLEU (beam 5) of each snapshot, by step: "
             + ", ".join(f"{step} {bleu:.1f}" for step, bleu in sorted(by_step.items())),
             ]
    for stage, result in scores.items():
        lines.append(f"- test_2016_flickr {stage}: BLEU {result['bleu']['score']:.2f}, "
                     f"chrF {result['chrf']['score']:.2f}, TER {result['ter']['score']:.2f} "
                     f"(`{result['bleu']['signature']}`)")
    append_entry(lines)


if __name__ == "__main__":
    main()
