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

With `--scored-run RUN --started T` it trains nothing: it scores a run
that another command trained (bench/recipe.py's chosen variant), timing
the milestones from T, the wall-clock time (time.time()) at which that
`s2s train` command started. With `--tokenizer-in-run`, the training
command trains its own tokenizer, as `s2s train` does when given none, so
that its time to each milestone counts the tokenizer as a user's command
does. Milestones are timed from the command's start and from the start of
training (the first update), both.

Appends an entry to bench/RESULTS.md, and prints its figures as one JSON
line last (what bench/gpu_session.sh reads). `make bench` runs it with the
demo's settings:

    python bench/quality.py --out runs/bench-demo --label "make demo recipe" -- --preset tiny --max-time 840
    python bench/quality.py --src de --tgt en --device cuda --out runs/quality-de-en   # on a GPU
    python bench/quality.py --device cuda --out /tmp/q --scored-run /tmp/recipe/a/run --started 1796000000.0 \
        --beams 5 --max-snapshots 12
"""

from __future__ import annotations

import argparse
import gzip
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
from seq2seq.runs.snapshots import Snapshot, list_snapshots
from seq2seq.runs.weights import load_weights
from seq2seq.scores import score_corpus
from seq2seq.search.translator import Translator


def thinned(snapshots: list[Snapshot], most: int) -> list[Snapshot]:
    """At most `most` of `snapshots` (all for 0), evenly spread, the first and the last among them."""
    if not most or len(snapshots) <= most:
        return snapshots
    if most == 1:
        return snapshots[-1:]
    picks = {round(i * (len(snapshots) - 1) / (most - 1)) for i in range(most)}
    return [snapshots[i] for i in sorted(picks)]


def snapshot_scores(run: Path, device: str, sources: list[str], refs: list[str], most: int = 0) -> dict[int, float]:
    """Test BLEU at beam 5 of the weights snapshots of `run` (at most `most`, evenly spread), by step."""
    model, tokenizers, _ = load_run(run, resolve_device(device))
    scores = {}
    for snapshot in thinned(list_snapshots(run), most):
        load_weights(model, snapshot.path)
        hyps = Translator.for_model(model, tokenizers, DecodeConfig(beam=5)).translate(sources)
        scores[snapshot.step] = score_corpus(hyps, [refs], metrics=("bleu",))[0].score
        print(f"snapshot step {snapshot.step}: test BLEU {scores[snapshot.step]:.2f}", file=sys.stderr)
    return scores


def training_started(records: list[dict]) -> float | None:
    """The wall-clock time of the run's first update: its first "train" record's time less the
    seconds it says training had run (None without one)."""
    train = next((r for r in records if r["event"] == "train"), None)
    return None if train is None else train["time"] - train["elapsed"]


def milestone_times(scores: dict[int, float], valid: list[dict], start: float, milestones: list[float],
                    train_start: float | None = None) -> dict[float, tuple[int, float, float | None] | None]:
    """For each milestone, (step, seconds since `start`, seconds since `train_start`) of the first
    snapshot reaching it, or None."""
    saved_at = {r["step"]: r["time"] for r in valid}
    reached: dict[float, tuple[int, float, float | None] | None] = {}
    for milestone in milestones:
        first = next((step for step in sorted(scores) if scores[step] >= milestone and step in saved_at), None)
        reached[milestone] = None if first is None else (
            first, saved_at[first] - start, None if train_start is None else saved_at[first] - train_start)
    return reached


def test_files(out: Path, src: Path, ref: Path, sentences: int) -> tuple[Path, Path]:
    """The test set's files, or files of its first `sentences` lines written into `out` (0: all)."""
    if not sentences:
        return src, ref
    out.mkdir(parents=True, exist_ok=True)
    sliced = []
    for path in (src, ref):
        sliced.append(out / f"first{sentences}.{path.name}")
        with gzip.open(sliced[-1], "wt", encoding="utf-8") as f:
            f.write("\n".join(read_lines(path)[:sentences]) + "\n")
    return sliced[0], sliced[1]


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
    parser.add_argument("--tokenizer-in-run", action="store_true",
                        help="no tokenizer command: `s2s train` trains one into the run, inside its own time")
    parser.add_argument("--scored-run", default=None, help="score this trained run instead of training one")
    parser.add_argument("--started", type=float, default=None,
                        help="with --scored-run: time.time() at which its `s2s train` command started")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beams of the final test scores")
    parser.add_argument("--max-snapshots", type=int, default=0,
                        help="score at most this many snapshots for the milestones, evenly spread; 0 all")
    parser.add_argument("--sentences", type=int, default=0, help="score the first N test sentences; 0 all")
    parser.add_argument("train_flags", nargs="*", help="extra flags for `s2s train` (after --)")
    a = parser.parse_args()
    if a.scored_run and a.started is None:
        parser.error("--scored-run needs --started")
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = ROOT / "data" / "multi30k"
    test_src, test_ref = test_files(out, data / f"test_2016_flickr.{a.src}.gz", data / f"test_2016_flickr.{a.tgt}.gz",
                                    a.sentences)
    run = Path(a.scored_run) if a.scored_run else out / "run"
    commands: dict[str, list[str]] = {}
    if not a.scored_run:
        tokenizer = ["--vocab-size", a.vocab_size] if a.tokenizer_in_run else ["--tokenizer", str(out / "tok")]
        if not a.tokenizer_in_run:
            commands["tokenizer"] = [S2S, "tokenizer", "train", "--corpus", str(data / "train"), "--src", a.src,
                                     "--tgt", a.tgt, "-o", str(out / "tok"), "--vocab-size", a.vocab_size]
        # Every snapshot is kept for the milestones; flags given after -- still win.
        commands["train"] = [S2S, "train", "--run", str(run), *tokenizer,
                             "--train", str(data / "train"), "--valid", str(data / "val"), "--src", a.src,
                             "--tgt", a.tgt, "--device", a.device, "--keep-snapshots", "100000", *a.train_flags]
    for beam in a.beams:
        commands[f"test beam {beam}"] = [S2S, "eval", "-m", str(run), "--src", str(test_src),
                                         "--ref", str(test_ref), "--beam", str(beam), "--device", a.device,
                                         "--json", "-o", str(out / f"test.beam{beam}.{a.tgt}")]
    if 5 in a.beams:
        commands["test beam 5, lowercased"] = [S2S, "eval", "--hyp", str(out / f"test.beam5.{a.tgt}"),
                                               "--ref", str(test_ref), "--lowercase", "--json"]
    seconds, scores = {}, {}
    start = a.started if a.scored_run else time.time()
    for stage, args in commands.items():
        print(f"{stage}: {shlex.join(args)}", file=sys.stderr)
        seconds[stage], stdout = run_timed(args)
        if stage.startswith("test"):
            scores[stage] = json.loads(stdout)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["event"] == "valid"]
    train_rates = [r["tgt_tokens_per_s"] for r in records if r["event"] == "train"]
    by_step = snapshot_scores(run, a.device, read_lines(test_src), read_lines(test_ref), a.max_snapshots)
    train_start = training_started(records)
    reached = milestone_times(by_step, valid, start, a.milestones, train_start)
    updates = max((r["step"] for r in records if "step" in r), default=0)

    command = f"`python bench/quality.py {shlex.join(sys.argv[1:])}`"
    lines = [f"\n## {date.today().isoformat()}: {a.label} ({a.src}->{a.tgt})\n",
             f"- Machine: {machine()}",
             f"- Command: {command}, which ran:",
             *[f"  - `{shown(args)}`" for args in commands.values()],
             "- Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
             + (f"; tokenizer + training {seconds.get('tokenizer', 0) + seconds['train']:.0f} s"
                if "train" in seconds else ""),
             f"- Training: {updates} updates, median "
             f"{sorted(train_rates)[len(train_rates) // 2] if train_rates else 0:,.0f} target tokens/s, "
             f"{len(valid)} validations"
             + (f"; the first update {train_start - start:.0f} s after the command started" if train_start else ""),
             "- Time to test BLEU (beam 5), from the start of the command (tokenizer included) / from the first "
             "update: " + "; ".join(f"{m:g}: " + (f"{r[1]:.0f} s / {r[2]:.0f} s (step {r[0]})" if r and r[2] is not None
                                                 else f"{r[1]:.0f} s (step {r[0]})" if r else "not reached")
                                    for m, r in reached.items()),
             "- Test BLEU (beam 5) of each snapshot scored, by step: "
             + ", ".join(f"{step} {bleu:.1f}" for step, bleu in sorted(by_step.items())),
             ]
    if a.sentences:
        lines.append(f"- Test scores on the first {a.sentences} sentences of test_2016_flickr only")
    for stage, result in scores.items():
        lines.append(f"- test_2016_flickr {stage}: BLEU {result['bleu']['score']:.2f}, "
                     f"chrF {result['chrf']['score']:.2f}, TER {result['ter']['score']:.2f} "
                     f"(`{result['bleu']['signature']}`)")
    append_entry(lines)
    print(json.dumps({
        "bench": "quality", "label": a.label, "run": str(run), "updates": updates,
        "first_update_after_s": None if train_start is None else train_start - start,
        "milestones": {f"{m:g}": None if r is None else {"step": r[0], "from_start_s": r[1], "training_s": r[2]}
                       for m, r in reached.items()},
        "snapshots": {str(step): bleu for step, bleu in sorted(by_step.items())},
        "test": {stage: {"bleu": result["bleu"]["score"], "signature": result["bleu"]["signature"],
                         "wall_s": seconds[stage]} for stage, result in scores.items()},
        "seconds": seconds, "sentences": a.sentences or 1000}))


if __name__ == "__main__":
    main()
