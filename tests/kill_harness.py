"""kill -9 a training run at random moments, resume it each time, and check nothing was lost.

Used by tests/test_reliability.py (a few kills) and bench/kill_test.py (many).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from seq2seq.files.run_layout import CHECKPOINTS_DIR, WEIGHTS_FILE
from seq2seq.model.transformer import build_model
from seq2seq.runs.checkpoint import LAST_POINTER, load_trainer_state
from seq2seq.runs.run_dir import load_run, read_run_config

S2S = str(Path(sys.executable).parent / "s2s")
CPU = torch.device("cpu")


def train_args(run: Path, train_prefix: str, max_steps: int, checkpoint_every: int) -> list[str]:
    """A tiny model with no validation set: a complete trainer state every `checkpoint_every` updates."""
    return [S2S, "train", "--run", str(run), "--train", train_prefix, "--valid", "", "--vocab-size", "200",
            "--d-model", "32", "--heads", "2", "--ffn-dim", "64", "--encoder-layers", "1",
            "--decoder-layers", "1", "--max-tokens", "400", "--max-len", "64", "--epochs", "0",
            "--max-steps", str(max_steps), "--valid-every", str(checkpoint_every), "--log-every", "1",
            "--lr", "3e-3", "--warmup-steps", "5", "--seed", "3", "--device", "cpu"]


def deterministic_env() -> dict[str, str]:
    # One thread: the same arithmetic order in every process, so weights compare exactly.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def last_state_dir(run: Path) -> Path:
    pointer = json.loads((run / CHECKPOINTS_DIR / LAST_POINTER).read_text())
    return run / CHECKPOINTS_DIR / pointer["dir"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(last_state_dir(run) / WEIGHTS_FILE))


def check_everything_loads(run: Path) -> int | None:
    """Load every file of the run directory; return the step of the last trainer state, if any."""
    if not (run / "config.json").exists():
        return None  # killed before the run was set up: nothing to check yet
    config = read_run_config(run)
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        json.loads(line)
    if (run / WEIGHTS_FILE).exists():
        load_run(run, CPU)
    if not (run / CHECKPOINTS_DIR / LAST_POINTER).exists():
        return None
    model = build_model(config.model)
    optimizer = torch.optim.AdamW(model.parameters())
    return load_trainer_state(run, model, optimizer)["step"]


def interrupted_a_write(run: Path) -> bool:
    """Whether a kill left a write unfinished: a temporary file, or a state folder newer than last.json's."""
    if any(run.rglob(".*.tmp")):
        return True
    pointer = run / CHECKPOINTS_DIR / LAST_POINTER
    states = sorted(p.name for p in (run / CHECKPOINTS_DIR).glob("step_*"))
    if not states:
        return False
    return not pointer.exists() or states[-1] > json.loads(pointer.read_text())["dir"]


def last_logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [record["step"] for record in map(json.loads, path.read_text().splitlines()) if "step" in record]
    return steps[-1] if steps else 0


@dataclass
class KillReport:
    kills: int = 0  # kill -9 delivered while the run was still going
    during_writes: int = 0  # kills that left a write unfinished: a temporary file, or a newer state folder
    steps_lost: list[int] = field(default_factory=list)  # per kill: logged step - resumed step
    identical: bool = False  # final weights equal the uninterrupted run's

    def summary(self) -> str:
        lost = self.steps_lost or [0]
        return (f"{self.kills} kills survived ({self.during_writes} during a checkpoint write); "
                f"steps lost at most {max(lost)}, "
                f"on average {sum(lost) / len(lost):.1f}; final weights identical: {self.identical}")


def wait_for_training(process: subprocess.Popen, run: Path, past_step: int, timeout: float = 120) -> None:
    """Until the run logs a step beyond `past_step` (it is training again), or the process ends."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if last_logged_step(run) > past_step:
            return
        time.sleep(0.05)


def run_kill_test(folder: Path, train_prefix: str, kills: int, max_steps: int = 60,
                  checkpoint_every: int = 4, seed: int = 0, max_delay: float = 1.0,
                  startup_share: float = 0.2) -> KillReport:
    """Train once straight through, then again with `kills` kill -9s; compare the results.

    A `startup_share` of the kills land while the process starts (imports,
    data, tokenizer); the rest land up to `max_delay` seconds into training,
    where checkpoint writes happen.
    """
    rng = random.Random(seed)
    env = deterministic_env()
    straight, killed = folder / "straight", folder / "killed"
    args = train_args(straight, train_prefix, max_steps, checkpoint_every)
    subprocess.run(args, check=True, capture_output=True, env=env, timeout=600)

    report = KillReport()
    resume = False
    while report.kills < kills:
        args = train_args(killed, train_prefix, max_steps, checkpoint_every) + (["--resume"] if resume else [])
        logged_before = last_logged_step(killed)
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if rng.random() < startup_share:
            time.sleep(rng.uniform(0.1, 3.0))
        else:
            wait_for_training(process, killed, logged_before)
            time.sleep(rng.uniform(0.0, max_delay))
        if process.poll() is not None:  # finished (or failed) before the kill
            _, stderr = process.communicate()
            if process.returncode != 0:
                raise AssertionError(f"training failed: {stderr.decode()[-2000:]}")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        report.kills += 1
        report.during_writes += interrupted_a_write(killed)
        logged = last_logged_step(killed)
        resumed_from = check_everything_loads(killed)
        if resumed_from is not None:
            report.steps_lost.append(max(logged - resumed_from, 0))
        # Once config.json exists, --resume continues the run (from step 0 if no
        # checkpoint was complete yet); before that, a plain start begins again.
        resume = (killed / "config.json").exists()
    # Finish the run.
    args = train_args(killed, train_prefix, max_steps, checkpoint_every) + (["--resume"] if resume else [])
    done = subprocess.run(args, capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    a, b = final_weights(straight), final_weights(killed)
    report.identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return report
