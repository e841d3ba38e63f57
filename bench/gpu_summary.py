"""The summary of one bench/gpu_session.sh call: issue 27's Targets rows, each with its figure, its
target and whether it was met, read from the last JSON line that each stage's bench printed.

A row whose stage was skipped, cut at its cap or failed says so instead of a figure. Writes
WORK/summary.md, appends it to bench/RESULTS.md with the machine line (GPU, driver, torch), and
prints it.

    python bench/gpu_summary.py --work /tmp/s2s-gpu --budget 450 --recipe-time 45
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from results import append_entry


@dataclass
class Row:
    measure: str
    figure: str
    target: str
    met: bool | None  # None: not measured, or nothing to meet

    def cells(self) -> str:
        verdict = {True: "yes", False: "**no**", None: "-"}[self.met]
        return f"| {self.measure} | {self.figure} | {self.target} | {verdict} |"


def last_result(log: Path) -> dict | None:
    """The last line of `log` that is a bench's JSON result ({"bench": ...}), or None."""
    if not log.exists():
        return None
    for line in reversed(log.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(result, dict) and "bench" in result:
                return result
    return None


def stage_outcomes(logs: Path) -> dict[str, str]:
    """How each stage ended, by name, from stages.log ("exit 0 after 31s (cap 45s)", "skipped, ...")."""
    path = logs / "stages.log"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def unmeasured(stage: str, outcomes: dict[str, str]) -> str:
    return f"unmeasured: `{stage}` {outcomes.get(stage, 'not run')}"


def passes_rows(name: str, result: dict | None, outcome: str) -> list[Row]:
    """Rows 1 and 2 from one gpu_profile pass pair (the eager or the compiled step)."""
    if result is None or "train_second_s" not in result:
        return [Row(f"first pass / second pass, 40 updates ({name})", outcome, "<= 1.5x", None),
                Row(f"updates/s, small preset, 4,096-token batches ({name})", outcome, ">= 100", None)]
    name = "CUDA graphs" if result.get("compile") and result.get("device") != "cpu" else \
        "compiled, on the CPU" if result.get("compile") else "eager"
    warm = f", after a {result['warmup_s']:.1f} s warm-up of {result['batch_shapes']} shapes" \
        if result.get("warmup_s") is not None else f", {result['batch_shapes']} shapes"
    ratio = result["first_over_second"]
    return [Row(f"first pass / second pass, {result['updates']} updates ({name})",
                f"{ratio:.2f}x ({result['train_first_s']:.2f} s / {result['train_second_s']:.2f} s{warm})",
                "<= 1.5x", ratio <= 1.5),
            Row(f"updates/s, {result['preset']} preset, {result['max_tokens']:,}-token batches ({name})",
                f"{result['train_second_updates_per_s']:.1f} (second pass; first "
                f"{result['train_first_updates_per_s']:.1f})", ">= 100", result["train_second_updates_per_s"] >= 100)]


def speed_rows(result: dict | None, outcome: str) -> list[Row]:
    """Row 3: s2s against the transformers peer, per shape."""
    rows = []
    measured = [r for r in (result or {}).get("rows", []) if r["toolkit"] == "s2s"]
    for shape in dict.fromkeys([r["shape"] for r in measured] or ["small", "base"]):
        ours = next((r for r in measured if r["shape"] == shape), None)
        measure = f"target tok/s against the transformers peer, {shape}"
        if ours is None or ours.get("vs_peer") is None:
            figure = outcome if ours is None else f"{ours['tgt_tok_per_s']:,.0f} tok/s; no peer"
            rows.append(Row(measure, figure, ">= 10x", None))
            continue
        rows.append(Row(measure, f"{ours['vs_peer']:.2f}x ({ours['tgt_tok_per_s']:,.0f} tok/s)", ">= 10x",
                        ours["vs_peer"] >= 10))
    return rows


def mfu_row(result: dict | None, outcome: str) -> Row:
    """Row 4: model FLOPs utilisation of the base preset at 64k-token batches."""
    measure = "model FLOPs utilisation, base preset, 65,536-token batches"
    if result is None or "train_second_model_tflops_per_s" not in result:
        return Row(measure, outcome, ">= 30% of 790 TFLOP/s", None)
    tflops, mfu = result["train_second_model_tflops_per_s"], result.get("mfu_vs_nominal")
    measured = result.get("measured_peak_tflops")
    figure = (f"{mfu:.1%} ({tflops:.1f} TFLOP/s of {result['nominal_peak_tflops']:g}"
              if mfu is not None else f"{tflops:.3f} TFLOP/s (no known peak")
    figure += f"; a bf16 8192^3 product ran at {measured:.0f} here)" if measured else ")"
    return Row(f"{measure} ({result['preset']}, {result['max_tokens']:,})", figure, ">= 30% of 790 TFLOP/s",
               None if mfu is None else mfu >= 0.30)


def milestone(result: dict | None, level: str) -> dict | None:
    return ((result or {}).get("milestones") or {}).get(level)


def quality_rows(test: dict | None, long: dict | None, outcomes: dict[str, str]) -> list[Row]:
    """Row 5: time to 37.3 test BLEU (within 30 s of training and 60 s of the command), and to 40.0
    (within 2 minutes), from the chosen candidate's run and the long run."""
    rows = []
    measure = "test BLEU >= 37.3 (beam 5, cased, 13a): training s / command s"
    reached = milestone(test, "37.3")
    if test is None:
        rows.append(Row(measure, unmeasured("test", outcomes), "<= 30 s / <= 60 s", None))
    elif reached is None:
        best = max(test["snapshots"].values(), default=0.0)
        rows.append(Row(measure, f"not reached (best snapshot {best:.2f})", "<= 30 s / <= 60 s", False))
    else:
        training = reached["training_s"]
        rows.append(Row(measure, f"{training:.0f} s / {reached['from_start_s']:.0f} s (step {reached['step']})",
                        "<= 30 s / <= 60 s", training is not None and training <= 30 and reached["from_start_s"] <= 60))
    if test is not None and "test beam 5" in test.get("test", {}):
        final = test["test"]["test beam 5"]
        rows.append(Row("test BLEU of the chosen candidate's final model, beam 5", f"{final['bleu']:.2f}", "-", None))
    measure = "test BLEU >= 40.0 within 2 minutes of the command's start"
    candidates = [(name, result, milestone(result, "40")) for name, result in (("long", long), ("test", test))
                  if result is not None]
    hit = next(((name, m) for name, _, m in candidates if m is not None and m["from_start_s"] <= 120), None)
    if hit:
        rows.append(Row(measure, f"{hit[1]['from_start_s']:.0f} s (`{hit[0]}`, step {hit[1]['step']})", "<= 120 s",
                        True))
    elif long is not None:
        best = max(long["snapshots"].values(), default=0.0)
        rows.append(Row(measure, f"not reached in `long` (best snapshot {best:.2f})", "<= 120 s", False))
    else:
        rows.append(Row(measure, unmeasured("long", outcomes), "<= 120 s", None))
    return rows


def decode_rows(result: dict | None, outcome: str) -> list[Row]:
    """Row 6: beam 5 over the test set in process after a warm-up, and a whole `s2s eval` process."""
    beam5 = ((result or {}).get("in_process") or {}).get("5")
    process = (result or {}).get("eval_process")
    sentences = (result or {}).get("sentences", 1000)
    rows = [Row(f"beam 5 over test_2016_flickr ({sentences:,} sentences), in process after warm-up",
                outcome if beam5 is None else f"{beam5['seconds']:.2f} s (BLEU {beam5['bleu']:.2f})", "<= 1.0 s",
                None if beam5 is None else beam5["seconds"] <= 1.0)]
    rows.append(Row("the whole `s2s eval --beam 5` process",
                    outcome if process is None else f"{process['wall_s']:.1f} s", "<= 6 s",
                    None if process is None else process["wall_s"] <= 6))
    return rows


def ct2_row(result: dict | None, outcome: str) -> Row:
    """Row 7: the torch engine against CTranslate2 on the GPU, same export, beam 5."""
    measure = "CTranslate2 against the torch engine, same export, beam 5"
    rows = {r["engine"]: r for r in (result or {}).get("rows", []) if r["beam"] == 5}
    if "torch" not in rows or "ctranslate2" not in rows:
        return Row(measure, outcome, "torch within 2x", None)
    torch_speed, ct2_speed = rows["torch"]["sent_per_s"], rows["ctranslate2"]["sent_per_s"]
    return Row(measure, f"torch {torch_speed:,.0f} sent/s, ctranslate2 {ct2_speed:,.0f} sent/s "
                        f"(ctranslate2 {ct2_speed / torch_speed:.2f}x)", "torch within 2x",
               torch_speed * 2 >= ct2_speed)


def recipe_lines(result: dict | None, recipe_time: int) -> list[str]:
    """The candidates' validation BLEU and which was chosen."""
    if result is None:
        return []
    lines = [f"GPU recipe candidates, each a whole `s2s train --max-time {recipe_time}` (tokenizer included), "
             "chosen on validation BLEU (what training recorded for the model it kept):", ""]
    for v in result["variants"]:
        lines.append(f"- {v['name']}: val BLEU {v['val_bleu']:.2f}, {v['updates']:,} updates, "
                     f"{v['tgt_tok_per_s']:,.0f} tgt tok/s, {v['train_s']:.0f} s: `{v['flags']}`")
    lines += [f"- chosen: {result['chosen']['name']}", ""]
    return lines


def machine_line(work: Path) -> str:
    path = work / "machine.json"
    if not path.exists():
        return "unknown machine (setup wrote no machine.json)"
    m = json.loads(path.read_text())
    return (f"{m['gpu']}, driver {m.get('driver') or 'unknown'}, torch {m['torch']}, Python {m['python']}, "
            f"{m['cpus']} CPUs; ctranslate2 {m.get('ctranslate2')}, libcublas.so.12 {m.get('libcublas.so.12')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="bench/gpu_session.sh's work folder (logs/ in it)")
    parser.add_argument("--budget", type=int, required=True, help="the session's budget in seconds")
    parser.add_argument("--recipe-time", type=int, required=True, help="each candidate's --max-time")
    a = parser.parse_args()
    work = Path(a.work)
    logs = work / "logs"
    outcomes = stage_outcomes(logs)
    results = {stage: last_result(logs / f"{stage}.log") for stage in
               ("profile", "compiled", "mfu", "recipe", "test", "decode", "ct2", "speed", "long")}

    def outcome(stage: str) -> str:
        return unmeasured(stage, outcomes)

    rows = [*passes_rows("eager", results["profile"], outcome("profile")),
            *passes_rows("CUDA graphs", results["compiled"], outcome("compiled")),
            *speed_rows(results["speed"], outcome("speed")),
            mfu_row(results["mfu"], outcome("mfu")),
            *quality_rows(results["test"], results["long"], outcomes),
            *decode_rows(results["decode"], outcome("decode")),
            ct2_row(results["ct2"], outcome("ct2"))]
    lines = [f"\n## {date.today().isoformat()}: issue 27's targets, one bench/gpu_session.sh call\n",
             f"- Machine: {machine_line(work)}",
             f"- Budget {a.budget} s; stages: " + "; ".join(f"{k} {v}" for k, v in outcomes.items()),
             "- MFU counts the model FLOPs of the real (unpadded) tokens as seq2seq/model/flops.py does: the "
             "matrix products of the forward, the backward at twice the forward, over the second pass's seconds; "
             "against 790 TFLOP/s, the bf16 rate an 8192^3 product reached on the device machines' H200.",
             "", *recipe_lines(results["recipe"], a.recipe_time),
             "| measure | figure | target | met? |", "| --- | --- | --- | --- |", *[row.cells() for row in rows]]
    (work / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    append_entry(lines)


if __name__ == "__main__":
    main()
