"""Which parts of the recipe move the score: a table of test BLEU against one finished base run.

Two kinds of rows, all scored on Multi30k test_2016_flickr with sacreBLEU:

- Choosing the weights, from the base run's snapshots (needs the run trained
  with snapshots kept, as bench/quality.py does): the model `s2s train`
  chose, the last snapshot, and averages of the last or best k snapshots
  (`s2s average`), at beam 5; and the chosen model at beam 1.
- Training changes, each a new run from the base run's own config.json with
  the variant's flags on top, for exactly as many updates as the base run
  made (its time limit dropped), so that every row has the same budget:

    python bench/ablation.py --base runs/bench-demo/run --out runs/ablation \\
        --variant "no label smoothing=--label-smoothing 0" --variant "dropout 0.3=--dropout 0.3"

Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import date
from pathlib import Path

from results import ROOT, S2S, append_entry, machine, run_timed, shown

from seq2seq.files.run_layout import WEIGHTS_FILE
from seq2seq.runs.run_dir import read_run_config
from seq2seq.runs.snapshots import list_snapshots


def test_bleu(run: Path, src: str, tgt: str, weights: str = WEIGHTS_FILE, beam: int = 5) -> float:
    data = ROOT / "data" / "multi30k"
    _, stdout = run_timed([S2S, "eval", "-m", str(run), "--weights", weights, "--beam", str(beam),
                           "--src", str(data / f"test_2016_flickr.{src}.gz"),
                           "--ref", str(data / f"test_2016_flickr.{tgt}.gz"), "--metrics", "bleu", "--json"])
    return json.loads(stdout)["bleu"]["score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a finished run directory with its snapshots")
    parser.add_argument("--out", default="runs/ablation", help="folder for the variants' runs")
    parser.add_argument("--average", type=int, default=5, help="k for the snapshot averages")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="a training change: a name, '=', and the `s2s train` flags it adds")
    a = parser.parse_args()
    base = Path(a.base)
    config = read_run_config(base)
    src, tgt = config.train.src_lang, config.train.tgt_lang
    steps = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines()]
    base_steps = max(r["step"] for r in steps if "step" in r)
    snapshots = list_snapshots(base)
    rows: list[tuple[str, float]] = [("model chosen by `s2s train` (best validation BLEU or average)",
                                      test_bleu(base, src, tgt))]
    rows.append(("the same, greedy (beam 1)", test_bleu(base, src, tgt, beam=1)))
    if snapshots:
        last = snapshots[-1].path.relative_to(base)
        rows.append((f"last snapshot (step {snapshots[-1].step})", test_bleu(base, src, tgt, str(last))))
    if len(snapshots) >= 2:
        for how in ("last", "best"):
            name = f"average.{how}{a.average}.safetensors"
            run_timed([S2S, "average", "-m", str(base), f"--{how}", str(a.average), "-o", name])
            rows.append((f"average of the {how} {min(a.average, len(snapshots))} snapshots",
                         test_bleu(base, src, tgt, name)))
    commands = []
    for variant in a.variant:
        label, _, flags = variant.partition("=")
        run = Path(a.out) / label.replace(" ", "-")
        shutil.rmtree(run, ignore_errors=True)
        args = [S2S, "train", "--config", str(base / "config.json"), "--run", str(run),
                "--max-steps", str(base_steps), "--max-time", "0", *shlex.split(flags)]
        print(f"{label}: {shlex.join(args)}", file=sys.stderr)
        run_timed(args)
        commands.append(args)
        rows.append((f"{label} (`{flags}`, {base_steps} updates)", test_bleu(run, src, tgt)))

    reference = rows[0][1]
    lines = [f"\n## {date.today().isoformat()}: ablation against {base} ({src}->{tgt})\n",
             f"- Machine: {machine()}",
             f"- Command: `python bench/ablation.py {shlex.join(sys.argv[1:])}`",
             f"- Base run: {base_steps} updates; its recipe is its config.json. Variants retrain from that "
             "config with their flags added, for the same number of updates:",
             *[f"  - `{shown(args)}`" for args in commands],
             "- Test BLEU on test_2016_flickr, beam 5 unless the row says otherwise:",
             "", "| recipe | BLEU | change |", "| --- | ---: | ---: |",
             *[f"| {name} | {bleu:.2f} | {bleu - reference:+.2f} |" for name, bleu in rows]]
    append_entry(lines)


if __name__ == "__main__":
    main()
