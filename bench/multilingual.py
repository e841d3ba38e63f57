"""One model for several directions (issue 28): where its language tag goes, and what it costs each direction.

Two measurements, each with the real `s2s train` and `s2s eval`:

- the tag scheme (the default): two en->{de,fr} models that differ only in --lang-tag, source (a <2xx>
  tag first in the source, Johnson et al. 2017, Marian) and target (the tag forced as the first target
  token, mBART, M2M), trained for the same number of updates; their validation BLEU, each direction's
  and the mean, at the best validation. Chosen on the validation set, never on test.
- `--compare`: one en->{de,fr,cs} model against three bilingual ones (en->de, en->fr, en->cs) with the
  same total training time (the multilingual model gets --seconds, each bilingual one a third of it),
  or with `--updates N` the same total compute (N updates of the same batch size and model against N/3
  each: what a shared machine measures reliably, since its seconds vary from run to run);
  test_2016_flickr BLEU of each direction (beam 5).

Each appends a table to bench/RESULTS.md. `--quick` runs the same steps on a slice of the corpus with a
few updates, in seconds, appends nothing and ends with the JSON line alone: what the tests run.

    python bench/multilingual.py --steps 1500
    python bench/multilingual.py --compare --seconds 2700
    python bench/multilingual.py --compare --updates 7896
    python bench/multilingual.py --quick [--compare]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from datetime import date
from pathlib import Path

from results import DATA, S2S, append_entry, machine, run_timed, shown

# The demo's recipe (Makefile), with validation on a slice so that it costs little.
RECIPE = ["--preset", "tiny", "--lr", "5e-3", "--warmup-steps", "300", "--max-tokens", "2500",
          "--lr-schedule", "cosine", "--average-last", "5", "--patience", "0", "--valid-bleu-sentences", "500"]
QUICK_RECIPE = ["--d-model", "32", "--n-heads", "2", "--ffn-dim", "64", "--encoder-layers", "1",
                "--decoder-layers", "1", "--vocab-size", "300", "--max-tokens", "600", "--max-len", "64",
                "--lr", "3e-3", "--warmup-steps", "10", "--patience", "0", "--log-every", "5",
                "--max-positions", "64"]
QUICK_LINES = {"train": 200, "val": 20, "test_2016_flickr": 20}
TAG_SCHEMES = ("source", "target")
COMPARED = ("de", "fr", "cs")


def corpus(out: Path, quick: bool, split: str, langs: tuple[str, ...]) -> Path:
    """The prefix of a Multi30k split: the bundled one, or with --quick the first lines of it, written to `out`."""
    if not quick:
        return DATA / split
    prefix = out / "data" / split
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(QUICK_LINES[split])]
        Path(f"{prefix}.{lang}").write_text("".join(lines), encoding="utf-8")
    return prefix


def best_validation(run: Path) -> dict:
    """The best "valid" record of a run (by its mean BLEU: what chose its model)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max((r for r in records if r["event"] == "valid"), key=lambda r: r["valid_bleu"])


def train(run: Path, train_prefix: Path, valid_prefix: Path, tgt: str, budget: list[str], a: argparse.Namespace,
          *flags: str) -> tuple[list[str], float]:
    args = [S2S, "train", "--run", str(run), "--train", str(train_prefix), "--valid", str(valid_prefix),
            "--src", "en", "--tgt", tgt, "--device", a.device, *(QUICK_RECIPE if a.quick else RECIPE), *budget,
            *flags, *a.train_flags]
    print(shown(args), file=sys.stderr)
    seconds, _ = run_timed(args)
    return args, seconds


def tag_schemes(a: argparse.Namespace, out: Path) -> tuple[dict, list[str]]:
    """Validation BLEU of en->{de,fr} with each tag scheme, after the same updates."""
    langs = ("en", "de", "fr")
    train_prefix, valid_prefix = corpus(out, a.quick, "train", langs), corpus(out, a.quick, "val", langs)
    steps = 10 if a.quick else a.steps
    rows, commands, result = [], [], {}
    for scheme in TAG_SCHEMES:
        args, seconds = train(out / f"tag-{scheme}", train_prefix, valid_prefix, "de,fr",
                              ["--epochs", "0", "--max-steps", str(steps)], a, "--lang-tag", scheme)
        best = best_validation(out / f"tag-{scheme}")
        result[scheme] = {"valid_bleu": best["valid_bleu"], "by_direction": best["valid_bleu_by_direction"],
                          "step": best["step"], "seconds": round(seconds, 1)}
        each = " | ".join(f"{best['valid_bleu_by_direction'][f'en-{lang}']:.2f}" for lang in ("de", "fr"))
        rows.append(f"| {scheme} | {best['valid_bleu']:.2f} | {each} | {best['step']} | {seconds:.0f} s |")
        commands.append(shown(args))
    lines = [f"\n## {date.today().isoformat()}: where the language tag goes, en->{{de,fr}}, {steps} updates each\n",
             f"- Machine: {machine()}",
             "- Commands:", *[f"  - `{command}`" for command in commands],
             "",
             "| --lang-tag | mean valid BLEU (greedy) | en-de | en-fr | at update | training wall time |",
             "|---|---|---|---|---|---|",
             *rows]
    return result, lines


def compare(a: argparse.Namespace, out: Path) -> tuple[dict, list[str]]:
    """test_2016_flickr BLEU of each direction: one en->{de,fr,cs} model against three bilingual ones,
    with the same total training time."""
    langs = ("en", *COMPARED)
    train_prefix, valid_prefix = corpus(out, a.quick, "train", langs), corpus(out, a.quick, "val", langs)
    test_prefix = corpus(out, a.quick, "test_2016_flickr", langs)
    test = lambda lang: Path(f"{test_prefix}.{lang}") if a.quick else Path(f"{test_prefix}.{lang}.gz")
    # The budget: training seconds, or updates (of the same model and batch size, so the same compute).
    if a.updates:
        flag, budget, unit = "--max-steps", 30 if a.quick else a.updates, "updates"
    else:
        flag, budget, unit = "--max-time", 20.0 if a.quick else a.seconds, "s"
    runs = {"multilingual": (",".join(COMPARED), budget),
            **{f"en-{lang}": (lang, budget / len(COMPARED)) for lang in COMPARED}}
    scores: dict[str, dict[str, float]] = {}
    commands, spent = [], {}
    for name, (tgt, share) in runs.items():
        run = out / f"compare-{name}"
        share = f"{round(share)}" if unit == "updates" else f"{share:g}"
        args, spent[name] = train(run, train_prefix, valid_prefix, tgt, ["--epochs", "0", flag, share], a)
        commands.append(shown(args))
        for lang in tgt.split(","):
            score = [S2S, "eval", "-m", str(run), "--src", str(test("en")), "--ref", str(test(lang)), "--beam",
                     "1" if a.quick else "5", "--device", a.device, "--json",
                     *(["--tgt", lang] if "," in tgt else [])]
            _, stdout = run_timed(score)
            commands.append(shown(score))
            scores.setdefault(name, {})[f"en-{lang}"] = json.loads(stdout)["bleu"]["score"]
    rows = [f"| en-{lang} | {scores[f'en-{lang}'][f'en-{lang}']:.2f} | {scores['multilingual'][f'en-{lang}']:.2f} "
            f"| {scores['multilingual'][f'en-{lang}'] - scores[f'en-{lang}'][f'en-{lang}']:+.2f} |" for lang in COMPARED]
    lines = [f"\n## {date.today().isoformat()}: one en->{{de,fr,cs}} model against three bilingual ones, "
             f"{budget:g} {unit} of training in all\n",
             f"- Machine: {machine()}",
             "- Commands:", *[f"  - `{command}`" for command in commands],
             "- Training wall time (the whole `s2s train`): "
             + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in spent.items()),
             "",
             f"| direction | bilingual ({budget / len(COMPARED):g} {unit}) | multilingual ({budget:g} {unit}, all three) "
             "| difference |",
             "|---|---|---|---|",
             *rows]
    return scores, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-multilingual")
    parser.add_argument("--compare", action="store_true", help="one en->{de,fr,cs} model against three bilingual ones")
    parser.add_argument("--steps", type=int, default=1500, help="updates of each tag-scheme run")
    parser.add_argument("--seconds", type=float, default=2700.0,
                        help="--compare: training seconds of the multilingual model; each bilingual one has a third")
    parser.add_argument("--updates", type=int, default=0,
                        help="--compare: updates of the multilingual model instead of seconds; each bilingual one a third")
    parser.add_argument("--quick", action="store_true",
                        help="a slice of the corpus and a few updates: checks the script, measures nothing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("train_flags", nargs="*", help="extra flags for every `s2s train` (after --)")
    a = parser.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    result, lines = compare(a, out) if a.compare else tag_schemes(a, out)
    if not a.quick:
        append_entry(lines)
    print(json.dumps({"bench": "multilingual", "measure": "compare" if a.compare else "tag_scheme",
                      "quick": a.quick, "result": result}))


if __name__ == "__main__":
    main()
