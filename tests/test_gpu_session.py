"""bench/gpu_session.sh, the one device-tool call that measures issue 27's targets, checked without a GPU:
its syntax, the summary it builds from each bench's last JSON line, and a dry run of one stage on the CPU
(the flow, the archive, the table printed last)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_summary  # noqa: E402
import results  # noqa: E402


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(BENCH / "gpu_session.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def write_stage(logs: Path, stage: str, result: dict | None, outcome: str = "exit 0 after 9s (cap 45s)") -> None:
    """A stage's log as a bench leaves it (noise, then its JSON line), and its line in stages.log."""
    logs.mkdir(parents=True, exist_ok=True)
    noise = 'warning: something\n{"not": "a result"}\n'
    (logs / f"{stage}.log").write_text(noise + (json.dumps(result) + "\n" if result else ""))
    with open(logs / "stages.log", "a") as f:
        f.write(f"{stage}: {outcome}\n")


PROFILE = {"bench": "gpu_profile", "preset": "small", "max_tokens": 4096, "updates": 40, "batch_shapes": 12,
           "warmup_s": None, "train_first_s": 0.5, "train_second_s": 0.4, "first_over_second": 1.25,
           "train_first_updates_per_s": 80.0, "train_second_updates_per_s": 100.0}


def test_the_summary_reads_each_stages_last_result_and_judges_each_target(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    logs = tmp_path / "logs"
    write_stage(logs, "profile", PROFILE)
    write_stage(logs, "compiled", None, "cut at its cap after 60s (cap 60s)")
    write_stage(logs, "mfu", {"bench": "gpu_profile", "preset": "base", "max_tokens": 65536,
                              "train_second_model_tflops_per_s": 158.0, "nominal_peak_tflops": 790.0,
                              "mfu_vs_nominal": 0.2, "measured_peak_tflops": 780.0})
    write_stage(logs, "speed", {"bench": "train_speed", "rows": [
        {"shape": "small", "toolkit": "s2s", "tgt_tok_per_s": 400000.0, "vs_peer": 12.0},
        {"shape": "small", "toolkit": "transformers", "tgt_tok_per_s": 33000.0},
        {"shape": "base", "toolkit": "s2s", "tgt_tok_per_s": 200000.0, "vs_peer": 8.0}]})
    write_stage(logs, "test", {"bench": "quality", "snapshots": {"300": 36.0, "600": 38.1},
                               "milestones": {"37.3": {"step": 600, "from_start_s": 52.0, "training_s": 29.0},
                                              "40": None},
                               "test": {"test beam 5": {"bleu": 38.1}}})
    write_stage(logs, "long", None, "skipped, 40s left of the budget (needs 80s)")
    write_stage(logs, "decode", {"bench": "decode_speed", "sentences": 1000, "in_process": {
        "5": {"seconds": 1.4, "bleu": 38.0}}, "eval_process": {"wall_s": 5.5}})
    write_stage(logs, "ct2", {"bench": "decode_speed", "rows": [
        {"engine": "torch", "beam": 5, "sent_per_s": 1000.0}, {"engine": "ctranslate2", "beam": 5, "sent_per_s": 1500.0}]})
    (tmp_path / "machine.json").write_text(json.dumps({"gpu": "NVIDIA H200", "driver": "580.159.04",
                                                       "torch": "2.11.0+cu130", "python": "3.12.3", "cpus": 16}))
    monkeypatch.setattr(sys, "argv", ["gpu_summary.py", "--work", str(tmp_path), "--budget", "450",
                                      "--recipe-time", "45"])
    gpu_summary.main()

    summary = (tmp_path / "summary.md").read_text()
    assert summary in (tmp_path / "RESULTS.md").read_text()
    assert "NVIDIA H200, driver 580.159.04, torch 2.11.0+cu130" in summary
    rows = {line.split(" | ")[0].lstrip("| "): line for line in summary.splitlines() if line.startswith("| ")}
    verdict = {measure: line.rstrip(" |").rsplit("| ", 1)[1] for measure, line in rows.items()}
    assert verdict["first pass / second pass, 40 updates (eager)"] == "yes"
    assert verdict["updates/s, small preset, 4,096-token batches (eager)"] == "yes"
    assert "unmeasured: `compiled` cut at its cap" in rows["first pass / second pass, 40 updates (CUDA graphs)"]
    assert verdict["target tok/s against the transformers peer, small"] == "yes"
    assert verdict["target tok/s against the transformers peer, base"] == "**no**"
    assert verdict["model FLOPs utilisation, base preset, 65,536-token batches (base, 65,536)"] == "**no**"
    assert "20.0%" in rows["model FLOPs utilisation, base preset, 65,536-token batches (base, 65,536)"]
    assert verdict["test BLEU >= 37.3 (beam 5, cased, 13a): training s / command s"] == "yes"
    assert "unmeasured: `long` skipped" in rows["test BLEU >= 40.0 within 2 minutes of the command's start"]
    assert verdict["beam 5 over test_2016_flickr (1,000 sentences), in process after warm-up"] == "**no**"
    assert verdict["the whole `s2s eval --beam 5` process"] == "yes"
    assert verdict["CTranslate2 against the torch engine, same export, beam 5"] == "yes"


@pytest.mark.parametrize("ratio, met", [(1.5, True), (1.51, False)])
def test_a_pass_ratio_is_judged_against_its_target(ratio, met):
    row = gpu_summary.passes_rows("eager", dict(PROFILE, first_over_second=ratio), "")[0]
    assert row.met is met


def test_a_dry_run_of_one_stage_packs_its_output_and_prints_the_table_last(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OUT=str(out), S2S_GPU_WORK=str(work), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), "--dry-run", "profile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("| CTranslate2 against the torch engine")
    summary = (out / "summary.md").read_text()
    eager = next(line for line in summary.splitlines() if line.startswith("| first pass / second pass, 3 updates"))
    assert "unmeasured" not in eager
    assert "unmeasured: `mfu` not run" in summary
    with tarfile.open(out / "gpu_session.tar.gz") as archive:
        names = archive.getnames()
    assert {"./logs/profile.log", "./logs/stages.log", "./summary.md", "./machine.json",
            "./profile/summary.json"} <= set(names)
    assert not any(name.endswith((".safetensors", ".gz")) for name in names)
    # The dry run works in a copy of the tree: the repository's own results are left alone.
    assert "issue 27's targets" in (out / "RESULTS-appended.md").read_text()
