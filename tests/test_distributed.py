"""The torchrun path: two CPU processes on the gloo backend train one run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, write_slice

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_two_processes_train_one_run(tmp_path):
    train = write_slice(tmp_path / "data", "train", 300, "train")
    valid = write_slice(tmp_path / "data", "val", 40, "val")
    run = tmp_path / "run"
    done = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "cli.main", "train",
         "--run-dir", str(run), "--train", train, "--valid", valid, "--vocab-size", "200",
         "--d-model", "32", "--heads", "2", "--ffn-dim", "64", "--encoder-layers", "1",
         "--decoder-layers", "1", "--max-tokens", "600", "--max-len", "64", "--max-steps", "24",
         "--epochs", "0", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "4",
         "--valid-every", "12", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["event"] == "train"]
    # Rank 0 alone writes: one record per log step, not two.
    assert [r["step"] for r in train_records] == [4, 8, 12, 16, 20, 24]
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    assert [r["step"] for r in records if r["event"] == "valid"] == [12, 24]
    assert (run / "model.safetensors").is_file()
    assert "x 2 processes" in done.stderr
