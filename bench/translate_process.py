"""Whole-process translation speed: `s2s translate -i FILE -o OUT` per engine and model size.

What a user waits for: the process started from the shell, the model loaded,
test_2016_flickr (1,000 sentences) translated and written. For each run
directory given, it exports the run to CTranslate2 (float32 and int8) and
times, in rotating order over `--repeats` rounds:

- `torch`: the run directory, s2s's own search, as the checkout is now;
- `torch@REF` (with `--baseline-ref REF`): the same, with the code of git
  commit REF (checked out into a temporary worktree), to compare with the
  torch engine as it was before a change;
- `ctranslate2` and `ctranslate2-int8`: the exported folders.

Each figure is the best of the rounds (whole-process wall time); BLEU is
sacreBLEU's on the output. Appends a table to bench/RESULTS.md.

    python bench/translate_process.py --runs tiny=runs/demo/en-de --threads 2 --beam 5 \\
        --baseline-ref 5e5cbf4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from results import DATA, ROOT, S2S, append_entry, machine, read_lines, run_timed

SOURCE = DATA / "test_2016_flickr.en.gz"
REFERENCE = DATA / "test_2016_flickr.de.gz"


def translate_command(model: Path, output: Path, beam: int, threads: int, code: Path | None) -> list[str]:
    """The command for one timed translation; with `code`, run from that checkout's sources."""
    args = ["translate", "-m", str(model), "-i", str(SOURCE), "-o", str(output), "--beam", str(beam),
            "--threads", str(threads), "--device", "cpu"]
    if code is None:
        return [S2S, *args]
    return [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); from cli.main import app; app()",
            str(code), *args]


def bleu(path: Path) -> float:
    from seq2seq.scores import score_corpus

    hypotheses = path.read_text(encoding="utf-8").splitlines()
    return score_corpus(hypotheses, [read_lines(REFERENCE)], metrics=("bleu",))[0].score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated NAME=RUN_DIRECTORY pairs")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-ref", default=None, help="also time the torch engine at this git commit")
    a = parser.parse_args()
    runs = dict(item.split("=", 1) for item in a.runs.split(","))
    sentences = len(read_lines(SOURCE))
    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = None
        if a.baseline_ref:
            baseline = tmp / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline), a.baseline_ref],
                           check=True)
        try:
            rows = []
            for name, run in runs.items():
                variants = {"torch": (Path(run), None)}
                if baseline is not None:
                    variants[f"torch@{a.baseline_ref}"] = (Path(run), baseline)
                for engine, quantization in (("ctranslate2", None), ("ctranslate2-int8", "int8")):
                    variants[engine] = (export_ctranslate2(run, tmp / f"{name}-{engine}", quantization=quantization),
                                        None)
                times: dict[str, float] = {}
                scores: dict[str, float] = {}
                order = list(variants)
                for round_ in range(a.repeats):
                    for engine in order[round_ % len(order):] + order[:round_ % len(order)]:
                        model, code = variants[engine]
                        output = tmp / f"{name}-{engine}.de"
                        seconds, _ = run_timed(translate_command(model, output, a.beam, a.threads, code))
                        times[engine] = min(times.get(engine, float("inf")), seconds)
                        scores[engine] = bleu(output)
                for engine in variants:
                    rows.append((name, engine, sentences / times[engine], scores[engine],
                                 times["torch"] / times[engine],
                                 times[f"torch@{a.baseline_ref}"] / times[engine] if baseline else None))
        finally:
            if baseline is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)

    command = f"python bench/translate_process.py {' '.join(sys.argv[1:])}"
    lines = [f"\n## {date.today().isoformat()}: whole-process `s2s translate -i -o`, test_2016_flickr "
             f"({sentences:,} sentences), beam {a.beam}, {a.threads} threads\n",
             f"- Machine: {machine()}; OMP/MKL threads as the engines set them (`--threads {a.threads}`)",
             f"- Command: `{command}`",
             f"- Protocol: `s2s translate -m MODEL -i test_2016_flickr.en.gz -o OUT --beam {a.beam} --threads "
             f"{a.threads} --device cpu`, timed from process start to exit (imports, loading, writing "
             f"included); rotating order, best of {a.repeats} rounds; CTranslate2 folders from `s2s export`",
             "", "| model | engine | sent/s | BLEU | vs torch now |"
             + (f" vs torch@{a.baseline_ref} |" if a.baseline_ref else ""),
             "| --- | --- | ---: | ---: | ---: |" + (" ---: |" if a.baseline_ref else "")]
    for name, engine, speed, score, ratio, baseline_ratio in rows:
        lines.append(f"| {name} | {engine} | {speed:,.1f} | {score:.2f} | {ratio:.2f}x |"
                     + (f" {baseline_ratio:.2f}x |" if baseline_ratio is not None else ""))
    append_entry(lines)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
