"""Position and attention variants compared on equal footing: same data, tokenizer, recipe and updates.

For each variant it trains a model with the real `s2s train`, then scores
Multi30k test_2016_flickr with `s2s eval` (beam 5), and appends one table to
bench/RESULTS.md: test BLEU and chrF, the best validation BLEU, parameters,
and training wall time. The budget is a number of updates, not seconds, so
the scores do not depend on how busy the machine was; the wall times do.

    python bench/variant_quality.py --steps 700
    python bench/variant_quality.py --steps 3000 --device cuda -- --preset small
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from datetime import date
from pathlib import Path

from results import ROOT, S2S, append_entry, machine, run_timed, shown
from safetensors import safe_open

VARIANTS: dict[str, list[str]] = {
    "sinusoidal": [],
    "learned": ["--positions", "learned"],
    "rope": ["--positions", "rope"],
    "performer": ["--attention", "performer"],
    "performer + rope": ["--attention", "performer", "--positions", "rope"],
    "performer (encoder only)": ["--attention", "performer", "--performer-in", "encoder"],
}
# The demo's recipe, with validation on a slice so that it costs little.
RECIPE = ["--preset", "tiny", "--lr", "3e-3", "--warmup-steps", "300", "--max-tokens", "2500",
          "--patience", "0", "--valid-bleu-sentences", "500"]


def trained_parameters(weights: Path) -> int:
    """Numbers in the weights file, less the FAVOR+ random features (drawn, not trained)."""
    with safe_open(str(weights), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape())
                   for name in f.keys() if not name.endswith("random_features"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-variants")
    parser.add_argument("--steps", type=int, default=700, help="updates per variant")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("train_flags", nargs="*", help="extra flags for every `s2s train` (after --)")
    a = parser.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    data = ROOT / "data" / "multi30k"
    tokenizer = [S2S, "tokenizer", "train", "--corpus", str(data / "train"), "--src", "en", "--tgt", "de",
                 "-o", str(out / "tok")]
    run_timed(tokenizer)
    rows, commands = [], [shown(tokenizer)]
    for name in a.only or VARIANTS:
        run = out / name.replace(" ", "").replace("(", "-").replace(")", "").replace("+", "-")
        train = [S2S, "train", "--run", str(run), "--tokenizer", str(out / "tok"), "--device", a.device,
                 *RECIPE, "--max-steps", str(a.steps), *VARIANTS[name], *a.train_flags]
        score = [S2S, "eval", "-m", str(run), "--src", str(data / "test_2016_flickr.en.gz"),
                 "--ref", str(data / "test_2016_flickr.de.gz"), "--beam", "5", "--device", a.device, "--json"]
        print(f"{name}: {shown(train)}", file=sys.stderr)
        train_seconds, _ = run_timed(train)
        eval_seconds, stdout = run_timed(score)
        result = json.loads(stdout)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        valid = [r["valid_bleu"] for r in records if r["event"] == "valid"]
        rows.append(f"| {name} | {trained_parameters(run / 'model.safetensors') / 1e6:.2f}M "
                    f"| {result['bleu']['score']:.2f} | {result['chrf']['score']:.2f} "
                    f"| {max(valid):.2f} | {train_seconds:.0f} s | {eval_seconds:.0f} s |")
        commands += [shown(train), shown(score)]
        print(rows[-1], file=sys.stderr)
    append_entry([
        f"\n## {date.today().isoformat()}: position and attention variants, {a.steps} updates each (en->de)\n",
        f"- Machine: {machine()}",
        "- Commands:", *[f"  - `{command}`" for command in commands],
        f"- Signature: `{result['bleu']['signature']}`",
        "",
        "| variant | trained parameters | test BLEU (beam 5) | test chrF | best valid BLEU (greedy, 500 sent.) "
        "| training wall time | eval wall time |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    main()
