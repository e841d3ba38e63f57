"""A run directory checks itself, for every command that opens it (seq2seq.runs.run_dir.open_run).

Each damage (a tokenizer that is not the one config.json records, bytes of the weights zeroed,
a NaN weight saved with a valid hash, vocabulary sizes edited in config.json) is refused by every
command with one `error:` line naming the file, before anything is written. Every weights file
s2s writes records the SHA-256 of its data. A run that stopped before its first checkpoint can be
started again; one that holds anything of value cannot. A run folder whose name is not UTF-8
works with every command.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import ROOT, one_error_line, tiny_model_config, tiny_train_config, write_slice
from typer.testing import CliRunner

import seq2seq.training.loss as loss_module
from cli.main import app
from seq2seq.data.corpora import load_corpus
from seq2seq.data.tokenizer import train_tokenizer
from seq2seq.errors import RunDirError
from seq2seq.runs.run_dir import open_run
from seq2seq.runs.weights import DATA_SHA256_KEY, read_metadata, read_tensors, save_tensors, save_weights
from seq2seq.training.run import train

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run trained for 2 updates, with a trainer state, 2 snapshots and their average (kept as the
    model); beside it the corpus it was trained on, 3 sentences to evaluate on, and another tokenizer
    of the same size."""
    folder = tmp_path_factory.mktemp("integrity")
    corpus = write_slice(folder / "corpus", "train", 200, "train")
    write_slice(folder / "corpus", "val", 3, "eval")
    train_tokenizer(load_corpus(write_slice(folder / "corpus", "val", 300, "other"), "en", "de"), folder / "other",
                    vocab_size=200)
    torch.manual_seed(0)
    train(folder / "run", tiny_model_config(),
          tiny_train_config(corpus, "", epochs=0, max_steps=2, valid_every=1, keep_snapshots=2, average_last=2), CPU)
    return folder / "run"


def copy_of(base: Path, target: Path) -> Path:
    shutil.copytree(base, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".lock"}


# Damages: each changes `run`, a copy of `base`, and says what the error must name: the file first.

def swap_tokenizer(run: Path, base: Path) -> list[str]:
    (run / "tokenizer.model").write_bytes((base.parent / "other" / "tokenizer.model").read_bytes())
    return ["tokenizer.model", "sha256"]


def zero_weight_bytes(run: Path, base: Path) -> list[str]:
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") + 512  # inside the tensor data
    data[start:start + 1000] = bytes(1000)
    path.write_bytes(bytes(data))
    return ["model.safetensors", "SHA-256"]


def nan_weight_row(run: Path, base: Path) -> list[str]:
    path = run / "model.safetensors"
    tensors = read_tensors(path)
    tensors["src_embed.weight"][5] = float("nan")
    save_tensors(tensors, path, read_metadata(path))  # a valid hash: only the values are wrong
    return ["model.safetensors", "src_embed.weight", "NaN"]


def edit_vocab_sizes(run: Path, base: Path) -> list[str]:
    config = json.loads((run / "config.json").read_text())
    config["model"]["src_vocab_size"] = config["model"]["tgt_vocab_size"] = 100
    (run / "config.json").write_text(json.dumps(config))
    return ["config.json", "src_vocab_size"]


DAMAGES = {"tokenizer swapped": swap_tokenizer, "weight bytes zeroed": zero_weight_bytes,
           "NaN weight row": nan_weight_row, "vocabulary sizes edited": edit_vocab_sizes}


@pytest.fixture
def corpus(base) -> str:
    """The corpus prefix `base` was trained on."""
    return str(base.parent / "corpus" / "train")


# Commands: the arguments that open the run `run`; `out` is where one may write, and must stay absent on failure.

def command_args(command: str, run: Path, out: Path, corpus: str) -> list[str]:
    evaluation = Path(corpus).parent / "eval"
    return {
        "translate": ["translate", "-m", run, "--device", "cpu", "--beam", "1"],
        "eval": ["eval", "-m", run, "--src", f"{evaluation}.en", "--ref", f"{evaluation}.de", "--device", "cpu",
                 "--beam", "1"],
        "attention": ["attention", "-m", run, "A dog.", "--device", "cpu", "--beam", "1"],
        "average": ["average", "-m", run, "--last", "2", "-o", "mean.safetensors"],
        "export": ["export", "-m", run, "-o", out],
        "info": ["info", run, "--json"],
        "serve": ["serve", "-m", run, "--port", str(free_port()), "--device", "cpu", "--log-level", "warning"],
        "train --init-from": ["train", "--init-from", run, "--run", out, "--train", corpus, "--valid", "",
                              "--epochs", "0", "--max-steps", "2", "--max-len", "64", "--device", "cpu"],
        "train --resume": ["train", "--run", run, "--resume", "--max-steps", "3", "--device", "cpu"],
    }[command]


COMMANDS = ["translate", "eval", "attention", "average", "export", "info", "serve", "train --init-from",
            "train --resume"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(args: list, own_process: bool = False) -> tuple[int, str]:
    """Exit code and stderr of `s2s ARGS`, in this process or its own; `s2s serve` runs in its own
    until it is healthy."""
    args = [str(a) for a in args]
    if args[0] == "serve":
        return serve(args)
    if own_process:
        # A strict UTF-8 stdout, as in a UTF-8 locale other than C.UTF-8: what cannot be encoded fails there.
        done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, input=b"A dog.\n",
                              capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
        return done.returncode, done.stderr.decode(errors="backslashreplace")
    result = runner.invoke(app, args, input="A dog.\n")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def serve(args: list[str]) -> tuple[int, str]:
    """Exit code and stderr of a server that exits by itself, or 0 once it answers /health (it is then stopped)."""
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    port = args[args.index("--port") + 1]
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        return 0, ""
            except OSError:
                time.sleep(0.2)
        assert process.poll() is not None, "the server neither exited nor became healthy"
        return process.returncode, process.stderr.read().decode(errors="backslashreplace")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        process.stderr.close()


def fails_naming(args: list, *fragments: str) -> str:
    code, stderr = invoke(args)
    assert code == 1, (code, stderr)
    message = stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sound_run_opens_with_every_command(base, corpus, tmp_path, command):
    """The control: each command, as the damage tests give it, works on the undamaged run."""
    run = copy_of(base, tmp_path / "run")
    code, stderr = invoke(command_args(command, run, tmp_path / "out", corpus))
    assert code == 0, stderr


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_run_is_refused_by_every_command_naming_the_file(base, corpus, tmp_path, command, damage):
    run = copy_of(base, tmp_path / "run")
    fragments = DAMAGES[damage](run, base)
    before = files_of(run)
    out = tmp_path / "out"
    fails_naming(command_args(command, run, out, corpus), str(run / fragments[0]), *fragments[1:])
    assert files_of(run) == before  # nothing written into the run (no average, no new config.json)
    assert not out.exists()  # no new run folder, no export


def test_the_library_opens_a_run_as_the_commands_do(base, tmp_path):
    run = copy_of(base, tmp_path / "run")
    assert open_run(run).weights.keys() == read_tensors(run / "model.safetensors").keys()
    nan_weight_row(run, base)
    with pytest.raises(RunDirError, match="src_embed.weight holds NaN"):
        open_run(run, need_weights=False)
    (run / "model.safetensors").unlink()  # a run that has saved no weights yet opens, when weights are not needed
    assert open_run(run, need_weights=False).weights is None
    with pytest.raises(RunDirError, match="no model.safetensors"):
        open_run(run)


def test_every_weights_file_records_the_sha256_of_its_data(base, tmp_path):
    run = copy_of(base, tmp_path / "run")
    assert runner.invoke(app, ["average", "-m", str(run), "--last", "2"]).exit_code == 0
    written = sorted(run.rglob("*.safetensors"))
    names = {path.name for path in written}
    assert {"model.safetensors", "average.safetensors", "average-last-2.safetensors", "trainer.safetensors",
            "step_00000001.safetensors", "step_00000002.safetensors"} <= names
    for path in written:
        assert len(read_metadata(path)[DATA_SHA256_KEY]) == 64, path
        read_tensors(path)


@pytest.mark.parametrize("name, command", [
    ("checkpoints/step_00000002/model.safetensors", "train --resume"),
    ("checkpoints/step_00000002/trainer.safetensors", "train --resume"),
    ("checkpoints/weights/step_00000001.safetensors", "average"),
    ("average.safetensors", "translate"),
])
def test_damage_to_any_weights_file_is_found_where_it_is_read(base, corpus, tmp_path, name, command):
    run = copy_of(base, tmp_path / "run")
    path = run / name
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    args = command_args(command, run, tmp_path / "out", corpus)
    if command == "translate":
        args += ["--weights", name]
    fails_naming(args, str(path), "SHA-256")


def test_weights_saved_before_the_hashes_still_open(base, tmp_path):
    """A file written by safetensors itself, without the hash: read as before, checked for the rest."""
    from safetensors.torch import save_file

    run = copy_of(base, tmp_path / "run")
    tensors = read_tensors(run / "model.safetensors")
    save_file(tensors, str(run / "model.safetensors"))
    assert DATA_SHA256_KEY not in read_metadata(run / "model.safetensors")
    assert all(torch.equal(tensors[name], value) for name, value in open_run(run).weights.items())
    assert runner.invoke(app, ["translate", "-m", str(run), "--device", "cpu"], input="A dog.\n").exit_code == 0


def test_the_same_weights_give_the_same_bytes_and_a_changed_one_another_hash(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "a.safetensors", {"step": "1", "b": "x"})
    save_weights(model, tmp_path / "b.safetensors", {"b": "x", "step": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with torch.no_grad():
        model.bias[0] += 1
    save_weights(model, tmp_path / "c.safetensors", {"step": "1", "b": "x"})
    hashes = {read_metadata(tmp_path / name)[DATA_SHA256_KEY] for name in ("a.safetensors", "c.safetensors")}
    assert len(hashes) == 2


# Starting again over a run that stopped before its first checkpoint.

def train_args(run: Path, corpus: str, *extra: str) -> list[str]:
    return ["train", "--run", str(run), "--train", corpus, "--valid", "", "--epochs", "0", "--max-len", "64",
            "--d-model", "32", "--n-heads", "2", "--ffn-dim", "64", "--encoder-layers", "1", "--decoder-layers", "1",
            "--vocab-size", "200", "--device", "cpu", *extra]


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(corpus, tmp_path, monkeypatch):
    real_loss = loss_module.projected_smoothed_loss
    monkeypatch.setattr(loss_module, "projected_smoothed_loss",
                        lambda *args: tuple(value * float("nan") for value in real_loss(*args)))
    run = tmp_path / "run"
    first = runner.invoke(app, train_args(run, corpus, "--max-steps", "5", "--log-every", "1", "--max-bad-updates",
                                          "1", "--lr", "0.5"))
    assert first.exit_code == 1 and "not finite" in first.stderr.strip().splitlines()[-1]
    assert (run / "config.json").is_file() and not (run / "checkpoints").exists()
    monkeypatch.setattr(loss_module, "projected_smoothed_loss", real_loss)
    again = runner.invoke(app, train_args(run, corpus, "--max-steps", "2", "--lr", "0.003"))
    assert again.exit_code == 0, again.output
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.003
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["event"] == "skip"]  # the failed run's records went with it
    open_run(run)


@pytest.mark.parametrize("keeps", ["a checkpoint", "weights", "a snapshot", "another file"])
def test_a_run_folder_that_holds_anything_of_value_is_still_refused(base, corpus, tmp_path, keeps):
    run = copy_of(base, tmp_path / "run")
    # What a run that failed before its first checkpoint leaves, and one thing more.
    for name in ("model.safetensors", "average.safetensors"):
        (run / name).unlink()
    checkpoints = run / "checkpoints"
    if keeps == "a snapshot":
        shutil.rmtree(checkpoints / "step_00000002")
        (checkpoints / "last.json").unlink()
    elif keeps != "a checkpoint":
        shutil.rmtree(checkpoints)
    if keeps == "weights":
        save_weights(torch.nn.Linear(2, 2), run / "model.safetensors")
    if keeps == "another file":
        (run / "notes.txt").write_text("mine")
    before = files_of(run)
    message = one_error_line(runner.invoke(app, train_args(run, corpus, "--max-steps", "2")))
    assert "already holds a run" in message and "--resume" in message
    if keeps == "another file":
        assert "notes.txt" in message
    assert files_of(run) == before


# A run folder whose name is not UTF-8 (POSIX paths are bytes).

# eval's score table is titled with the run's path, which a strict UTF-8 stdout cannot encode:
# cli/evaluate.py must make it printable (seq2seq.files.lines.printable), as cli/info.py does.
@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_folder_whose_name_is_not_utf8_works_with_every_command(base, corpus, tmp_path, command):
    run = copy_of(base, tmp_path / os.fsdecode(b"r\xff"))
    # eval prints the run's path in its score table: it runs in a process of its own, whose stdout is
    # strict UTF-8, so that a path printed unprintable fails there.
    code, stderr = invoke(command_args(command, run, tmp_path / "out", corpus), own_process=command == "eval")
    assert code == 0, stderr


def test_training_into_a_folder_whose_name_is_not_utf8(corpus, tmp_path):
    run = tmp_path / os.fsdecode(b"r\xff") / "run"
    result = runner.invoke(app, train_args(run, corpus, "--max-steps", "2", "--valid-every", "1",
                                           "--average-last", "2"))
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train"]["train"] == corpus
    assert len(open_run(run).weights) > 0
