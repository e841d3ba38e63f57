"""Crash safety: locks, full disks, interrupts, kill -9, non-finite losses, running out of memory."""

import errno
import json
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch
from helpers import ROOT, tiny_model_config, tiny_train_config, write_slice
from kill_harness import check_everything_loads, deterministic_env, last_logged_step, run_kill_test, train_args
from safetensors.torch import load_file

import seq2seq.runs.checkpoint as checkpoint
import seq2seq.runs.weights as weights_files
import seq2seq.training.loss as loss_module
from seq2seq.errors import ConfigError, RunLockedError, TrainingDiverged, TrainingInterrupted, WriteError
from seq2seq.files.run_layout import WEIGHTS_FILE
from seq2seq.files.run_lock import RunLock
from seq2seq.model.transformer import build_model
from seq2seq.runs.checkpoint import load_trainer_state
from seq2seq.runs.run_dir import read_run_config
from seq2seq.search.translator import Translator
from seq2seq.training.loss import TrainingObjective
from seq2seq.training.run import train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 300, "train")


def events_of(kind, events):
    return [e for e in events if e["event"] == kind]


def read_checkpoint(run):
    """Weights and optimizer tensors of the run's last trainer state."""
    root = run / checkpoint.CHECKPOINTS_DIR
    folder = root / json.loads((root / checkpoint.LAST_POINTER).read_text())["dir"]
    optimizer = {k: v for k, v in load_file(folder / checkpoint.TRAINER_TENSORS).items() if k.startswith("optim.")}
    return {**load_file(folder / WEIGHTS_FILE), **optimizer}


def test_a_second_trainer_on_the_same_run_stops_at_once(corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        with pytest.raises(RunLockedError, match="another s2s train"):
            train(run, tiny_model_config(), tiny_train_config(corpus, "", max_steps=2), CPU)
    assert not (run / "config.json").exists()
    train(run, tiny_model_config(), tiny_train_config(corpus, "", max_steps=2), CPU)  # free again


def test_a_full_disk_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    real_atomic_write = weights_files.atomic_write
    calls = []

    def fill_the_disk(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    def atomic_write_until_the_disk_fills(path, write):
        if path.name == checkpoint.TRAINER_TENSORS:  # the second trainer state fills the disk as it is written
            calls.append(path)
            if len(calls) == 2:
                write = fill_the_disk
        return real_atomic_write(path, write)

    monkeypatch.setattr(weights_files, "atomic_write", atomic_write_until_the_disk_fills)
    run = tmp_path / "run"
    with pytest.raises(WriteError, match="No space left on device.*previous version of the file is intact"):
        train(run, tiny_model_config(), tiny_train_config(corpus, "", max_steps=9, valid_every=3), CPU)
    config = read_run_config(run)
    model = build_model(config.model)
    assert load_trainer_state(run, model, torch.optim.AdamW(model.parameters()))["step"] == 3
    assert not list(run.rglob("*.tmp"))


def make_the_loss_nan(monkeypatch, on_call) -> None:
    """Turn the training loss into NaN on the calls (counted from 1) for which `on_call(n)` holds."""
    real_loss = loss_module.projected_smoothed_loss
    calls = []

    def loss(*args):
        calls.append(1)
        value, nll = real_loss(*args)
        return (value * float("nan"), nll) if on_call(len(calls)) else (value, nll)

    monkeypatch.setattr(loss_module, "projected_smoothed_loss", loss)


def test_non_finite_updates_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    make_the_loss_nan(monkeypatch, lambda n: n in (3, 4))
    events = []
    result = train(tmp_path / "run", tiny_model_config(), tiny_train_config(corpus, "", max_steps=6), CPU,
                   on_event=events.append)
    assert result.step == 6  # updates tried, the 2 skipped ones included
    # The device counts skips; the host reads them at the next log interval (every 5 updates).
    assert [(e["step"], e["skipped"], e["in_a_row"]) for e in events_of("skip", events)] == [(5, 2, 0)]
    assert all(math.isfinite(e["loss"]) for e in events_of("train", events))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000006" / "trainer.json").read_text())
    assert state["counters"]["skipped_updates"] == 2 and state["counters"]["bad_in_a_row"] == 0
    for name, value in build_model(read_run_config(tmp_path / "run").model).state_dict().items():
        assert torch.isfinite(value).all(), name


def test_a_skipped_update_leaves_weights_and_optimizer_untouched(corpus, tmp_path, monkeypatch):
    make_the_loss_nan(monkeypatch, lambda n: n == 3)
    cfg = tiny_train_config(corpus, "", max_steps=2, log_every=1)
    train(tmp_path / "run", tiny_model_config(), cfg, CPU)
    before = read_checkpoint(tmp_path / "run")
    # Step 3 is not finite: after it, weights and optimizer moments equal step 2's exactly.
    train(tmp_path / "run", read_run_config(tmp_path / "run").model, replace(cfg, max_steps=3), CPU, resume=True)
    after = read_checkpoint(tmp_path / "run")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_too_many_non_finite_updates_in_a_row_stop_training(corpus, tmp_path, monkeypatch):
    make_the_loss_nan(monkeypatch, lambda n: n > 4)
    cfg = tiny_train_config(corpus, "", max_steps=50, valid_every=2, max_bad_updates=3)
    with pytest.raises(TrainingDiverged, match="not finite for 4 updates in a row by step 8"):
        train(tmp_path / "run", tiny_model_config(), cfg, CPU)
    # The last checkpoint (step 6) holds step 4's weights: the skipped updates never touched them.
    model = build_model(read_run_config(tmp_path / "run").model)
    assert load_trainer_state(tmp_path / "run", model, torch.optim.AdamW(model.parameters()))["step"] == 6
    assert all(torch.isfinite(value).all() for value in model.state_dict().values())


def run_out_of_memory_when(monkeypatch, too_big) -> None:
    """Make a training step raise CUDA's out-of-memory error for the batches where `too_big(src)` holds."""
    real_forward = TrainingObjective.forward

    def forward(self, src, tgt_in, tgt_out):
        if too_big(src):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, src, tgt_in, tgt_out)

    monkeypatch.setattr(TrainingObjective, "forward", forward)


def first_update_gradients(monkeypatch) -> list[list[torch.Tensor]]:
    """Record the accumulated gradients of each update, as the trainer clips them."""
    real_clip = torch.nn.utils.clip_grad_norm_
    recorded = []

    def clip_and_record(parameters, *args, **kwargs):
        parameters = list(parameters)
        recorded.append([p.grad.detach().clone() for p in parameters])
        return real_clip(parameters, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_record)
    return recorded


def test_out_of_memory_splits_the_batch_with_the_same_update(corpus, tmp_path, monkeypatch):
    """A batch that does not fit is split and retried; its gradient is the one without the error."""
    cfg = tiny_train_config(corpus, "", max_steps=1)
    model_cfg = replace(tiny_model_config(), dropout=0.0)
    recorded = first_update_gradients(monkeypatch)
    train(tmp_path / "plain", model_cfg, cfg, CPU)
    plain = list(recorded)
    recorded.clear()

    run_out_of_memory_when(monkeypatch, lambda src: src.size(0) > 6)
    events = []
    train(tmp_path / "split", model_cfg, cfg, CPU, on_event=events.append)
    ooms = events_of("oom", events)
    assert ooms and all("split" in e["action"] for e in ooms)
    assert ooms[-1]["max_tokens_from_next_epoch"] < cfg.max_tokens
    assert len(plain) == len(recorded) == 1
    for a, b in zip(plain[0], recorded[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_sentence_that_never_fits_is_skipped(corpus, tmp_path, monkeypatch):
    run_out_of_memory_when(monkeypatch, lambda src: src.size(1) > 20)
    events = []
    train(tmp_path / "run", tiny_model_config(), tiny_train_config(corpus, "", epochs=1), CPU,
          on_event=events.append)
    skipped = [e for e in events_of("oom", events) if "skipped" in e["action"]]
    assert skipped
    state = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("step_*/trainer.json"))[-1].read_text())
    assert state["counters"]["oom_skipped_sentences"] == len(skipped)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_saves_a_resumable_checkpoint(corpus, tmp_path, signum, code):
    run = tmp_path / "run"
    process = subprocess.Popen(train_args(run, corpus, max_steps=100000, checkpoint_every=1000),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=deterministic_env())
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"  # its first "train" record: updates are under way
    while not (metrics.exists() and '"event": "train"' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "s2s train --run" in stderr and "--resume" in stderr
    model = build_model(read_run_config(run).model)
    step = load_trainer_state(run, model, torch.optim.AdamW(model.parameters()))["step"]
    assert step > 0
    resumed = subprocess.run(train_args(run, corpus, max_steps=step + 2, checkpoint_every=1000) + ["--resume"],
                             capture_output=True, text=True, env=deterministic_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {step}" in resumed.stderr


# Trains in a process of its own, where handling the first interrupt takes a minute (as a slow
# checkpoint write might): a second interrupt can then only be answered by exiting at once.
SLOW_TO_STOP = """
import sys, time
import torch
sys.path.insert(0, sys.argv[3])
import seq2seq.training.trainer as trainer_module
from helpers import tiny_model_config, tiny_train_config
from seq2seq.training.run import train

real_stop = trainer_module.Trainer.stop_if_signalled

def stop_slowly(self):
    if self.signals.received:
        time.sleep(60)
    real_stop(self)

trainer_module.Trainer.stop_if_signalled = stop_slowly
cfg = tiny_train_config(sys.argv[2], "", epochs=0, max_steps=100000, valid_every=2, log_every=1, seed=3)
train(sys.argv[1], tiny_model_config(), cfg, torch.device("cpu"))
"""


def test_a_second_interrupt_exits_at_once_and_harms_nothing(corpus, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", SLOW_TO_STOP, str(run), corpus, str(ROOT / "tests")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=deterministic_env())
    stderr_lines, first_handled = [], threading.Event()

    def read_stderr():
        for line in process.stderr:
            stderr_lines.append(line)
            if "stopping after this update" in line:
                first_handled.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while last_logged_step(run) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    # Two signals sent back to back may reach Python's handler as one: the second goes only
    # once the first has been handled.
    assert first_handled.wait(timeout=60), "".join(stderr_lines)[-2000:]
    second_sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(stderr_lines)
    # Exited at once: well before the first signal's minute of handling, let alone the run, was over.
    assert time.monotonic() - second_sent < 20
    assert process.returncode == 130, stderr[-2000:]
    assert "second interrupt: exiting now" in stderr
    step = check_everything_loads(run)
    assert step is not None and step >= 4
    cfg = tiny_train_config(corpus, "", epochs=0, max_steps=step + 2, valid_every=2, log_every=1, seed=3)
    result = train(run, read_run_config(run).model, cfg, CPU, resume=True)
    assert result.step == step + 2


def test_kill_minus_nine_at_random_moments_loses_nothing(corpus, tmp_path):
    # Three kills here; bench/kill_test.py does fifty.
    report = run_kill_test(tmp_path, corpus, kills=3, max_steps=200, checkpoint_every=4, seed=1, max_delay=0.5)
    print(report.summary())
    assert report.kills == 3
    assert report.identical, report.summary()
    assert max(report.steps_lost, default=0) <= 4 + 1


def test_weights_made_non_finite_by_an_update_are_never_saved(corpus, tmp_path):
    # 1e39 is a finite Python float, so no config check refuses it; in float32 it is infinite,
    # and the first update turns every weight it touches into inf or NaN with a finite gradient.
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 2.*no checkpoint"):
        train(run, tiny_model_config(), tiny_train_config(corpus, "", lr=1e39, max_steps=4, valid_every=2), CPU)
    assert not (run / "model.safetensors").exists()
    assert not (run / "checkpoints" / "last.json").exists()


def test_a_signal_during_validation_stops_it_and_resume_redoes_it(corpus, tmp_path, monkeypatch):
    """SIGTERM is answered between validation chunks; the cut validation is redone on resume."""
    real_translate = Translator.translate
    sent = []

    def translate_then_get_signalled(self, lines):
        if not sent:  # the first validation chunk of the run
            sent.append(True)
            signal.raise_signal(signal.SIGTERM)
        return real_translate(self, lines)

    monkeypatch.setattr(Translator, "translate", translate_then_get_signalled)
    run, valid = tmp_path / "run", write_slice(tmp_path / "v", "val", 300, "val")
    cfg = tiny_train_config(corpus, valid, max_steps=4, valid_every=2)
    events = []
    with pytest.raises(TrainingInterrupted) as stopped:
        train(run, tiny_model_config(), cfg, CPU, on_event=events.append)
    assert stopped.value.exit_code == 143 and stopped.value.step == 2
    cut = events_of("valid_cut", events)
    assert [(e["step"], e["reason"], e["done"]) for e in cut] == [(2, "a stop signal", 128)]
    assert not events_of("valid", events)
    state = json.loads(sorted((run / "checkpoints").glob("step_*/trainer.json"))[-1].read_text())
    assert state["step"] == 2 and state["pending_validation"]
    events.clear()
    train(run, read_run_config(run).model, cfg, CPU, resume=True, on_event=events.append)
    assert [e["step"] for e in events_of("valid", events)] == [2, 4]


def test_max_time_bounds_validation_too(corpus, tmp_path):
    """With the deadline already past, the final validation is cut, reported and not used; the
    latest weights are kept as an unvalidated model, and a resume with time to spare validates."""
    run, valid = tmp_path / "run", write_slice(tmp_path / "v", "val", 100, "val")
    events = []
    result = train(run, tiny_model_config(), tiny_train_config(corpus, valid, epochs=0, max_time=1e-6), CPU,
                   on_event=events.append)
    assert result.stop_reason == "max_time" and result.step == 1
    assert [(e["step"], e["reason"]) for e in events_of("valid_cut", events)] == [(1, "the time budget")]
    assert events_of("stop", events)[0]["unvalidated_model"]
    assert (run / "model.safetensors").is_file()
    events.clear()
    train(run, read_run_config(run).model, tiny_train_config(corpus, valid, epochs=0, max_steps=1), CPU, resume=True,
          on_event=events.append)
    assert [e["step"] for e in events_of("valid", events)] == [1]


def test_resume_of_a_finished_run_trains_nothing_and_a_new_budget_is_saved(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_train_config(corpus, "", max_steps=4, epochs=0)
    train(run, tiny_model_config(), cfg, CPU)
    weights = (run / "model.safetensors").read_bytes()
    for _ in range(2):
        events = []
        result = train(run, read_run_config(run).model, cfg, CPU, resume=True, on_event=events.append)
        assert result.step == 4 and not events_of("train", events)
    assert (run / "model.safetensors").read_bytes() == weights
    result = train(run, read_run_config(run).model, replace(cfg, max_steps=6), CPU, resume=True)
    assert result.step == 6 and read_run_config(run).train.max_steps == 6


def test_a_run_resumes_from_another_folder_and_after_a_move(tmp_path, monkeypatch):
    data = tmp_path / "project"
    write_slice(data / "data", "train", 100, "train")
    monkeypatch.chdir(data)
    cfg = tiny_train_config("data/train", "", max_steps=2, epochs=0)
    train("runs/r", tiny_model_config(), cfg, CPU)
    saved = read_run_config(data / "runs" / "r").train
    assert saved.train == str(data / "data" / "train")
    moved = tmp_path / "elsewhere" / "r"
    moved.parent.mkdir()
    (data / "runs" / "r").rename(moved)
    monkeypatch.chdir(tmp_path)
    # The same relative spec, given again from another folder, names other files: refused.
    with pytest.raises(ConfigError, match="only epochs"):
        train(moved, read_run_config(moved).model, replace(cfg, max_steps=3), CPU, resume=True)
    # The spec as saved, or the same files named another way, continue the run.
    result = train(moved, read_run_config(moved).model, replace(cfg, train="project/./data/train", max_steps=3), CPU,
                   resume=True)
    assert result.step == 3
