"""The torchrun path on CPUs (gloo): processes and "machines" on localhost join one group and train one run."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, write_slice

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


# A tiny model on 300 pairs: an update takes milliseconds, so the processes' start-up is most of a test.
TRAIN_ARGS = ["--vocab-size", "200", "--d-model", "32", "--heads", "2", "--ffn-dim", "64", "--encoder-layers", "1",
              "--decoder-layers", "1", "--max-tokens", "600", "--max-len", "64", "--epochs", "0", "--lr", "3e-3",
              "--warmup-steps", "5", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node(rank: int, port: int, run: Path, args: list[str], nodes: int = 2) -> subprocess.Popen:
    """One torchrun "machine" of `nodes`, with one process, meeting the others through c10d
    rendezvous on 127.0.0.1:`port`; in a session of its own, out of reach of pytest's signals."""
    return subprocess.Popen(
        [TORCHRUN, "--nnodes", str(nodes), "--node-rank", str(rank), "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "s2s-test",
         "--max-restarts", "0", "-m", "cli.main", "train", "--run-dir", str(run), *TRAIN_ARGS, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV, start_new_session=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc. torchrun starts each worker in a session of
    its own, so killing the agent's process group would leave its workers running."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing bracket.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def kill_node(agent: subprocess.Popen) -> None:
    """Kill a torchrun "machine" at once, as a power cut would: its agent and every worker."""
    for pid in process_tree(agent.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_two_nodes_train_as_one_process_with_their_global_batch(tmp_path):
    """Two torchrun nodes of one process each, through c10d rendezvous on localhost, train one run:
    every rank ends with the same weights, and the losses are those of one process that
    accumulates the same two batches per update (dropout off, so the ranks' streams do not matter)."""
    data = tmp_path / "data"
    args = ["--train", write_slice(data, "train", 300, "train"), "--valid", write_slice(data, "val", 40, "val"),
            "--max-steps", "16", "--log-every", "2", "--valid-every", "8", "--dropout", "0"]
    port, two_nodes = free_port(), tmp_path / "two-nodes"
    nodes = [node(rank, port, two_nodes, args) for rank in (0, 1)]
    outputs = [n.communicate(timeout=300) for n in nodes]
    for n, (_, stderr) in zip(nodes, outputs):
        # A rank that fails first says why in an error line; the end of stderr is the others' tracebacks.
        reasons = [line for line in stderr.splitlines() if "error:" in line]
        assert n.returncode == 0, "\n".join(reasons) + "\n" + stderr[-3000:]
    one = tmp_path / "one-process"
    done = subprocess.run([sys.executable, "-m", "cli.main", "train", "--run-dir", str(one), *TRAIN_ARGS, *args,
                           "--accum-steps", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    # Rank 0 alone writes: one record per log step, not two.
    two_curve, one_curve = records(two_nodes, "train"), records(one, "train")
    assert [r["step"] for r in two_curve] == [r["step"] for r in one_curve] == list(range(2, 17, 2))
    assert [r["loss"] for r in two_curve] == pytest.approx([r["loss"] for r in one_curve], rel=1e-4)
    assert two_curve[-1]["loss"] < two_curve[0]["loss"]
    validations = records(two_nodes, "valid")
    assert [r["step"] for r in validations] == [8, 16]
    assert [r["valid_loss"] for r in validations] == pytest.approx(
        [r["valid_loss"] for r in records(one, "valid")], rel=1e-4)
    # Every rank's weights, hashed at the last checkpoint: the same.
    digests = records(two_nodes, "stop")[0]["rank_weights_sha256"]
    assert len(digests) == 2 and len(set(digests)) == 1
    assert (two_nodes / "model.safetensors").is_file()
    assert "x 2 processes" in outputs[0][1]


def test_two_processes_resume_as_if_never_stopped(tmp_path):
    """The resume promise under torchrun, with dropout on: two processes stopped at step 4 and
    resumed to step 8 log the losses, and end with the weights, of two processes that never
    stopped. Each rank must get its own random stream back, not rank 0's."""
    data = tmp_path / "data"
    args = ["--train", write_slice(data, "train", 300, "train"), "--valid", "", "--log-every", "2",
            "--valid-every", "4", "--dropout", "0.3"]

    def two_processes(run: Path, *more: str) -> None:
        done = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "cli.main", "train",
                               "--run-dir", str(run), *TRAIN_ARGS, *args, *more],
                              capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    two_processes(straight, "--max-steps", "8")
    two_processes(resumed, "--max-steps", "4")
    two_processes(resumed, "--max-steps", "8", "--resume")
    curve = {r["step"]: r["loss"] for r in records(straight, "train")}
    assert {r["step"]: r["loss"] for r in records(resumed, "train")} == pytest.approx(curve, rel=1e-6)
    digests = [records(run, "stop")[-1]["rank_weights_sha256"] for run in (straight, resumed)]
    assert digests[0] == digests[1] and len(set(digests[0])) == 1


def test_two_processes_decay_a_time_based_schedule_alike(tmp_path):
    """A cosine that decays with the clock: each rank's clock and reserve for the final validation
    (rank 0's alone) differ, but every update's learning rate is the one every rank agreed, so
    the weights stay the same on every rank and the rate still falls to near 0 by the end."""
    data = tmp_path / "data"
    run = tmp_path / "run"
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "cli.main", "train",
                           "--run-dir", str(run), *TRAIN_ARGS, "--train", write_slice(data, "train", 300, "train"),
                           "--valid", write_slice(data, "val", 30, "val"), "--max-time", "12",
                           "--lr-schedule", "cosine", "--valid-every", "40", "--log-every", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    stop = records(run, "stop")[-1]
    assert stop["reason"] == "max_time" and stop["step"] > 40
    assert len(set(stop["rank_weights_sha256"])) == 1
    lrs = [r["lr"] for r in records(run, "train")]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[-1] < 0.1 * 3e-3


@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_node_fails_the_other_instead_of_hanging(tmp_path, killed):
    """Node `killed` dies (SIGKILL, torchrun agent and all) mid-training; the other exits non-zero,
    well before any collective timeout, with an error rather than a hang."""
    data = tmp_path / "data"
    run = tmp_path / "run"
    args = ["--train", write_slice(data, "train", 300, "train"), "--valid", "", "--max-time", "240",
            "--log-every", "1", "--dist-timeout", "120"]
    port = free_port()
    nodes = [node(rank, port, run, args) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").is_file() and records(run, "train")):
            assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "training never started"
            time.sleep(0.2)
        kill_node(nodes[killed])
        survivor = nodes[1 - killed]
        # Far below the 120 s collective timeout: the lost connection is noticed at once.
        _, stderr = survivor.communicate(timeout=90)
    finally:
        for n in nodes:
            kill_node(n)
    assert survivor.returncode != 0
    # Whoever notices first says so: s2s's worker, in its own error line, when a collective
    # fails; or, as is usual when a whole node dies, the survivor's torchrun agent, which loses
    # the rendezvous store (hosted by one of the two agents) and tears its worker down.
    assert (("error: rank" in stderr and "another process of the torchrun job failed" in stderr)
            or "RendezvousConnectionError" in stderr), stderr[-3000:]


RANKS_AGREE = """
import torch.distributed as dist
from seq2seq.training.distributed import (is_main_process, join_process_group, rank_and_world_size, rank_zeros_decision,
                                 rank_zeros_object, rank_zeros_signal, wait_for_all_ranks)

device = join_process_group("cpu")
rank, world_size = rank_and_world_size()
assert (device.type, world_size, is_main_process()) == ("cpu", 2, rank == 0)
# Each rank proposes something else; every rank acts on rank 0's.
assert rank_zeros_decision(rank == 0) is True
assert rank_zeros_signal(15 if rank == 0 else None) == 15
assert rank_zeros_signal(None if rank == 0 else 2) == 0
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
