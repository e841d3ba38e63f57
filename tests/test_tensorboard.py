"""`s2s train --tensorboard`: real event files, read back with TensorBoard's own reader, say what
metrics.jsonl says; a resumed run continues them; outputs never land on inputs."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_model_config, tiny_train_config, write_slice
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

import cli.train
from cli.main import app
from seq2seq.config import ModelConfig
from seq2seq.inspection.tensorboard import TensorBoardSink
from seq2seq.training.run import train

runner = CliRunner()
CPU = torch.device("cpu")

# The tag each field of each metrics record is logged under: the contract users' dashboards rely on.
TAGS = {"train": {"loss": "train/loss", "lr": "train/lr", "tgt_tokens_per_s": "train/tgt_tokens_per_s",
                  "model_tflops_per_s": "train/model_tflops_per_s"},
        "valid": {"valid_loss": "valid/loss", "valid_ppl": "valid/ppl", "valid_bleu": "valid/bleu"},
        "skip": {"skipped": "train/skipped_updates"}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 200, "train"), write_slice(folder, "val", 20, "val")


def config(corpus, **overrides):
    """20 updates, a train record every 5 and a validation (and checkpoint) every 10."""
    return tiny_train_config(*corpus, **{"epochs": 0, "max_steps": 20, "valid_every": 10, "log_every": 5,
                                         "valid_bleu_sentences": 20, **overrides})


def read_events(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall time)]} as TensorBoard shows them, every point kept (size_guidance 0)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected_events(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """What metrics.jsonl says each tag holds: for a step logged twice (by a run and by its
    resumption), the later record."""
    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, tag in TAGS.get(record["event"], {}).items():
            latest.setdefault(tag, {})[record["step"]] = (record[key], record["time"])
    return {tag: [(step, *latest[tag][step]) for step in sorted(latest[tag])] for tag in latest}


def assert_same(events, expected):
    assert set(events) == set(expected), (set(events), set(expected))
    for tag, points in expected.items():
        assert [step for step, *_ in events[tag]] == [step for step, *_ in points], tag
        for (_, value, wall), (step, want, when) in zip(events[tag], points):
            assert value == pytest.approx(want, rel=1e-6, abs=1e-9), (tag, step)  # stored as float32
            assert wall == pytest.approx(when, abs=1e-6), (tag, step)


def test_the_events_are_the_metrics_records(corpus, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_model_config(), config(corpus), CPU, tensorboard=run / "tensorboard")
    events = read_events(run / "tensorboard")
    assert {"train/loss", "train/lr", "train/tgt_tokens_per_s", "train/model_tflops_per_s",
            "valid/loss", "valid/ppl", "valid/bleu"} <= set(events)
    assert [step for step, *_ in events["train/loss"]] == [5, 10, 15, 20]
    assert [step for step, *_ in events["valid/bleu"]] == [10, 20]
    assert_same(events, expected_events(run))


def test_a_resumed_run_continues_its_events_and_hides_what_it_redoes(corpus, tmp_path):
    """A run is checkpointed at 10, goes on to 20, and is stopped as if killed before its
    checkpoint at 20 (the checkpoints are put back as they were at 10). Resumed to 30, its events
    go on in the same folder, found without being asked, and TensorBoard shows updates 11 to 20
    once, as the resumed run logged them."""
    run = tmp_path / "run"
    train(run, tiny_model_config(), config(corpus, max_steps=10), CPU, tensorboard=run / "tensorboard")
    shutil.copytree(run / "checkpoints", tmp_path / "at-10")
    model = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    time.sleep(1.1)  # event files are named by the second they are opened in
    train(run, model, config(corpus, max_steps=20), CPU, resume=True)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(tmp_path / "at-10", run / "checkpoints")
    time.sleep(1.1)
    train(run, model, config(corpus, max_steps=30), CPU, resume=True, tensorboard=run / "tensorboard")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3
    events = read_events(run / "tensorboard")
    assert [step for step, *_ in events["train/loss"]] == [5, 10, 15, 20, 25, 30]  # no step twice
    assert [step for step, *_ in events["valid/loss"]] == [10, 20, 30]
    assert_same(events, expected_events(run))
    # What the killed run logged for step 20 differs from what replaced it: the purge is seen.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_20 = [r["time"] for r in records if r["event"] == "train" and r["step"] == 20]
    assert len(at_20) == 2 and events["train/loss"][3][2] == pytest.approx(at_20[1], abs=1e-6)


def test_skip_records_become_skipped_updates(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    now = time.time()
    for record in ({"event": "data", "split": "train", "pairs": 3, "time": now},
                   {"event": "skip", "step": 7, "reason": "non-finite loss or gradients", "skipped": 2,
                    "in_a_row": 2, "time": now + 1},
                   {"event": "resume", "step": 7, "epoch": 1.0, "time": now + 2}):
        sink.write(record)
    sink.close()
    assert read_events(tmp_path / "tb") == {"train/skipped_updates": [(7, 2.0, pytest.approx(now + 1))]}


@pytest.fixture
def received(monkeypatch):
    """The folder `s2s train` hands the library for its event files, instead of training."""
    handed = {}

    def run_training(run_dir, model_cfg, train_cfg, device, resume, tensorboard=None, distributed=None):
        handed.update(run=run_dir, tensorboard=tensorboard, max_steps=train_cfg.max_steps)

    monkeypatch.setattr(cli.train, "run_training", run_training)
    return handed


@pytest.mark.parametrize("args, folder", [
    ([], None),
    (["--tensorboard"], "run/tensorboard"),
    (["--tensorboard", "--max-steps", "3"], "run/tensorboard"),
    (["--max-steps", "3", "--tensorboard"], "run/tensorboard"),
    (["--tensorboard-dir", "tb"], "tb"),
    (["--tensorboard-dir", "tb", "--tensorboard", "--max-steps", "3"], "tb"),
    (["--tensorboard-dir=tb"], "tb"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else str(value))
def test_the_flags_name_the_folder(args, folder, received, tmp_path):
    result = runner.invoke(app, ["train", "--run", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    assert received["tensorboard"] == (None if folder is None else tmp_path / folder if folder.startswith("run")
                                       else Path(folder))
    assert received["max_steps"] == (3 if "--max-steps" in args else 0)


def cli_train(run: Path, corpus, *extra: str):
    train_prefix, valid_prefix = corpus
    return runner.invoke(app, ["train", "--run", str(run), "--train", train_prefix, "--valid", valid_prefix,
                               "--vocab-size", "200", "--d-model", "32", "--heads", "2", "--ffn-dim", "64",
                               "--encoder-layers", "1", "--decoder-layers", "1", "--max-tokens", "600",
                               "--epochs", "0", "--valid-every", "10", "--log-every", "5",
                               "--valid-bleu-sentences", "20", "--device", "cpu", *extra])


def test_the_command_writes_and_resumes_the_runs_own_folder(corpus, tmp_path):
    run = tmp_path / "run"
    result = cli_train(run, corpus, "--max-steps", "10", "--tensorboard")
    assert result.exit_code == 0, result.output
    assert [s for s, *_ in read_events(run / "tensorboard")["train/loss"]] == [5, 10]
    time.sleep(1.1)
    result = cli_train(run, corpus, "--max-steps", "20", "--resume")  # no flag: the run has its folder
    assert result.exit_code == 0, result.output
    events = read_events(run / "tensorboard")
    assert [s for s, *_ in events["train/loss"]] == [5, 10, 15, 20]
    assert_same(events, expected_events(run))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tok"
    result = runner.invoke(app, ["tokenizer", "train", "--corpus", corpus[0], "-o", str(folder),
                                 "--vocab-size", "150"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize("case, fragment", [
    ("the training corpus", "is the training corpus"),
    ("the tokenizer folder", "lies inside the --tokenizer folder"),
    ("inside the tokenizer folder", "lies inside the --tokenizer folder"),
    ("inside checkpoints", "which training rewrites"),
    ("an existing file", "exists and is not a folder"),
    ("under a file", "which is not a folder"),
    ("a file training writes", "a file training writes"),
])
def test_the_folder_never_lands_on_what_training_reads_or_writes(case, fragment, corpus, tokenizer, tmp_path):
    train_prefix, valid_prefix = corpus
    run = tmp_path / "run"
    (tmp_path / "notes.txt").write_text("keep me\n")
    folder, extra = {
        "the training corpus": (train_prefix + ".en", []),
        "the tokenizer folder": (tokenizer, ["--tokenizer", str(tokenizer)]),
        "inside the tokenizer folder": (tokenizer / "tb", ["--tokenizer", str(tokenizer)]),
        "inside checkpoints": (run / "checkpoints" / "tb", []),
        "an existing file": (tmp_path / "notes.txt", []),
        "under a file": (tmp_path / "notes.txt" / "tb", []),
        "a file training writes": (run / "metrics.jsonl", []),
    }[case]
    before = snapshot(tmp_path), snapshot(Path(train_prefix).parent), snapshot(tokenizer)
    result = cli_train(run, corpus, "--max-steps", "5", "--tensorboard-dir", str(folder), *extra)
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and fragment in message, message
    assert (snapshot(tmp_path), snapshot(Path(train_prefix).parent), snapshot(tokenizer)) == before
    assert not run.exists()


def test_a_missing_tensorboard_is_one_error_line(corpus, tmp_path, monkeypatch):
    # None in sys.modules makes `import` fail, as it does where the package is not installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = cli_train(tmp_path / "run", corpus, "--max-steps", "5", "--tensorboard")
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "pip install 's2s[tensorboard]'" in message
    assert not (tmp_path / "run").exists()


def test_a_resume_of_a_run_without_events_writes_none(corpus, tmp_path):
    run = tmp_path / "run"
    train(run, tiny_model_config(), config(corpus, max_steps=5, valid_every=0), CPU)
    model = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    train(run, model, config(corpus, max_steps=10, valid_every=0), CPU, resume=True)
    assert not (run / "tensorboard").exists()
