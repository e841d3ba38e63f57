"""The whole pipeline, timed: tokenizer -> train -> test-set scores, through the real `s2s` commands.

Appends an entry to bench/RESULTS.md with the date, the machine, the exact
commands, each stage's wall time and the test_2016_flickr scores at beam 1
and beam 5. `make bench` runs it with the demo's settings:

    python bench/pipeline.py --out runs/bench-demo -- --preset small --max-time 840
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-pipeline", help="folder for the tokenizer and the run")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--vocab-size", default="8000")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label", default="pipeline", help="title of the RESULTS.md entry")
    parser.add_argument("train_flags", nargs="*", help="extra flags for `s2s train` (after --)")
    a = parser.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    data = ROOT / "data" / "multi30k"
    test_src, test_ref = data / f"test_2016_flickr.{a.src}.gz", data / f"test_2016_flickr.{a.tgt}.gz"
    commands = {
        "tokenizer": [S2S, "tokenizer", "train", "--corpus", str(data / "train"), "--src", a.src,
                      "--tgt", a.tgt, "-o", str(out / "tok"), "--vocab-size", a.vocab_size],
        "train": [S2S, "train", "--run", str(out / "run"), "--tokenizer", str(out / "tok"),
                  "--train", str(data / "train"), "--valid", str(data / "val"), "--src", a.src,
                  "--tgt", a.tgt, "--device", a.device, *a.train_flags],
    }
    for beam in (1, 5):
        commands[f"test beam {beam}"] = [S2S, "eval", "-m", str(out / "run"), "--src", str(test_src),
                                         "--ref", str(test_ref), "--beam", str(beam), "--device", a.device,
                                         "--json"]
    seconds, scores = {}, {}
    for stage, args in commands.items():
        print(f"{stage}: {shlex.join(args)}", file=sys.stderr)
        seconds[stage], stdout = run_timed(args)
        if stage.startswith("test"):
            scores[stage] = json.loads(stdout)
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["event"] == "valid"]
    best = max(valid, key=lambda r: r["valid_bleu"]) if valid else None
    train_rates = [r["tgt_tokens_per_s"] for r in records if r["event"] == "train"]

    lines = [f"\n## {date.today().isoformat()}: {a.label} ({a.src}->{a.tgt})\n",
             f"- Machine: {machine()}",
             "- Commands:", *[f"  - `{shown(args)}`" for args in commands.values()],
             "- Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
             + f"; tokenizer + training {seconds['tokenizer'] + seconds['train']:.0f} s",
             f"- Training: {records[-1]['step'] if records else 0} updates, "
             f"median {sorted(train_rates)[len(train_rates) // 2] if train_rates else 0:,.0f} target tokens/s",
             (f"- Best validation BLEU (greedy): {best['valid_bleu']:.2f} at step {best['step']}"
              if best else "- No validation"),
             ]
    for stage, result in scores.items():
        lines.append(f"- test_2016_flickr {stage}: BLEU {result['bleu']['score']:.2f}, "
                     f"chrF {result['chrf']['score']:.2f}, TER {result['ter']['score']:.2f} "
                     f"(`{result['bleu']['signature']}`)")
    append_entry(lines)


if __name__ == "__main__":
    main()
