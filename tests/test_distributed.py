"""The torchrun path: two CPU processes on the gloo backend join one group and train one run directory."""

import json
import os
import re
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
    # A rank that fails first says why in an error line; the end of stderr is the others' tracebacks.
    reasons = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 0, "\n".join(reasons) + "\n" + done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["event"] == "train"]
    # Rank 0 alone writes: one record per log step, not two.
    assert [r["step"] for r in train_records] == [4, 8, 12, 16, 20, 24]
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    assert [r["step"] for r in records if r["event"] == "valid"] == [12, 24]
    assert (run / "model.safetensors").is_file()
    assert "x 2 processes" in done.stderr


RANKS_AGREE = """
import torch.distributed as dist
from seq2seq.distributed import (is_main_process, join_process_group, rank_and_world_size, rank_zeros_decision,
                                 rank_zeros_object, rank_zeros_signal, wait_for_all_ranks)

device = join_process_group("cpu")
rank, world_size = rank_and_world_size()
assert (device.type, world_size, is_main_process()) == ("cpu", 2, rank == 0)
# Each rank proposes something else; every rank acts on rank 0's.
assert rank_zeros_decision(rank == 0, device) is True
assert rank_zeros_signal(15 if rank == 0 else None, device) == 15
assert rank_zeros_signal(None if rank == 0 else 2, device) == 0
# A default run directory named after each rank's clock: every rank takes rank 0's.
assert rank_zeros_object((f"runs/en-de-2026120{rank}", None)) == ("runs/en-de-20261200", None)
wait_for_all_ranks()
print(f"rank {rank} agreed")
dist.destroy_process_group()
"""


def test_ranks_join_one_group_and_act_on_rank_zeros_decisions(tmp_path):
    script = tmp_path / "ranks_agree.py"
    script.write_text(RANKS_AGREE)
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    # The two ranks share one stdout, so their lines may interleave.
    assert sorted(re.findall(r"rank (\d) agreed", done.stdout)) == ["0", "1"]
