"""One test per row of the bad-input table: exit code, the message, and files left untouched.

Every case must end with one `error:` line naming the problem, a non-zero exit
code and no traceback.
"""

import dataclasses
import gzip
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest
import torch
import typer.main
from helpers import MULTI30K, make_untrained_run, write_slice
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
S2S = str(Path(sys.executable).parent / "s2s")
# Reading this file fails with EIO whoever the reader is (root ignores file modes).
UNREADABLE = "/proc/self/mem"


def fails_cleanly(args: list[str], *fragments: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory with an untrained model: loading and input checks need no training."""
    return make_untrained_run(tmp_path_factory.mktemp("run"))


def copy_run(run: Path, target: Path, without: str | None = None) -> Path:
    target.mkdir()
    for name in ("config.json", "tokenizer.model", "model.safetensors"):
        if name != without:
            (target / name).write_bytes((run / name).read_bytes())
    return target


def pair(folder: Path, src: bytes, tgt: bytes) -> str:
    (folder / "c.en").write_bytes(src)
    (folder / "c.de").write_bytes(tgt)
    return str(folder / "c")


def tokenizer_train(corpus, out, *extra):
    return ["tokenizer", "train", "--corpus", corpus, "-o", out, *extra]


def test_missing_file(run, tmp_path):
    fails_cleanly(["eval", "--hyp", tmp_path / "nope.txt", "--ref", tmp_path / "nope.txt"], "nope.txt: no such file")
    fails_cleanly(["translate", "-m", run, "-i", tmp_path / "nope.txt"], "nope.txt: no such file")
    # An earlier tokenizer in the output folder outlives the failed command.
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tokenizer.model").write_bytes(b"the earlier tokenizer")
    fails_cleanly(tokenizer_train(tmp_path / "nothing", tmp_path / "t"), "no such corpus", "nothing")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["tokenizer.model"]
    assert (tmp_path / "t" / "tokenizer.model").read_bytes() == b"the earlier tokenizer"


def test_unreadable_file(run, tmp_path):
    fails_cleanly(["eval", "--hyp", UNREADABLE, "--ref", UNREADABLE], "cannot be read", "Input/output error")
    (tmp_path / "c.en").symlink_to(UNREADABLE)
    (tmp_path / "c.de").write_text("a\n")
    fails_cleanly(tokenizer_train(tmp_path / "c", tmp_path / "t"), "cannot be read", "c.en")


def test_a_directory_where_a_file_is_expected(run, tmp_path):
    fails_cleanly(["eval", "--hyp", tmp_path, "--ref", tmp_path], "is a directory")
    fails_cleanly(["translate", "-m", run, "-i", tmp_path], "is a directory")
    (tmp_path / "pairs.tsv").mkdir()
    fails_cleanly(tokenizer_train(tmp_path / "pairs.tsv", tmp_path / "t"), "is a folder")


def test_mismatched_line_counts_give_both_counts(tmp_path):
    corpus = pair(tmp_path, b"a\nb\nc\n", b"a\nb\n")
    fails_cleanly(tokenizer_train(corpus, tmp_path / "t"), "c.en has 3 lines", "c.de has 2")
    (tmp_path / "h.txt").write_text("a\nb\nc\n")
    (tmp_path / "r.txt").write_text("a\nb\n")
    fails_cleanly(["eval", "--hyp", tmp_path / "h.txt", "--ref", tmp_path / "r.txt"], "has 3 lines", "has 2")


def test_empty_corpus(tmp_path):
    fails_cleanly(tokenizer_train(pair(tmp_path, b"", b""), tmp_path / "t"), "empty")


def test_a_corpus_of_only_empty_lines(tmp_path):
    fails_cleanly(tokenizer_train(pair(tmp_path, b"\n \n\t\n", b"\n\n\n"), tmp_path / "t"), "no usable text")


def test_non_utf8_training_data_is_refused_with_its_line(tmp_path):
    corpus = pair(tmp_path, "ok\nstill ok\n".encode() + b"caf\xe9\n", b"a\nb\nc\n")
    fails_cleanly(tokenizer_train(corpus, tmp_path / "t"), "c.en: line 3 is not valid UTF-8")


def test_tsv_with_the_wrong_number_of_columns(tmp_path):
    (tmp_path / "pairs.tsv").write_text("a\tA\nb\tB\nc\tC\textra\n")
    fails_cleanly(tokenizer_train(tmp_path / "pairs.tsv", tmp_path / "t"), "line 3 has 3 tab-separated fields")


def test_json_lines_missing_a_language(tmp_path):
    rows = [{"translation": {"en": "a", "de": "A"}}, {"translation": {"en": "b"}}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails_cleanly(tokenizer_train(tmp_path / "pairs.jsonl", tmp_path / "t"), "line 2 has no 'de' text")


def test_vocab_size_too_large(tmp_path):
    fails_cleanly(tokenizer_train(write_slice(tmp_path, "val", 20), tmp_path / "t", "--vocab-size", "50000"),
                  "vocab size 50000")
    assert not (tmp_path / "t" / "tokenizer.model").exists()


def test_unknown_language_codes(tmp_path):
    fails_cleanly(tokenizer_train(MULTI30K / "train", tmp_path / "t", "--src", "xx"),
                  "train.xx", "languages found for this prefix: cs, de, en, fr")


@pytest.mark.parametrize("config, fragment", [
    ({"train": {"lr": 1e-3, "learning_rate": 1}}, "unknown key(s) learning_rate"),
    ({"model": {"d_model": "wide"}}, "model.d_model must be of type int"),
    ({"model": {"encoder_layers": -2}}, "model.encoder_layers must be positive"),
    ({"model": {"d_model": 100, "n_heads": 8}}, "n_heads (8) must divide model.d_model (100)"),
    ({"optimizer": {}}, "unknown key(s) optimizer"),
])
def test_bad_config_file(tmp_path, config, fragment):
    (tmp_path / "c.json").write_text(json.dumps(config))
    fails_cleanly(["train", "--config", tmp_path / "c.json", "--run", tmp_path / "r"], "c.json", fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--d-model", "-5"], "--d-model must be positive"),
    (["--d-model", "100", "--heads", "8"], "--n-heads (8) must divide --d-model (100)"),
    (["--max-len", "-1"], "--max-len must be positive"),
    (["--norm", "sideways"], "must be one of 'pre', 'post'"),
    (["--positions", "absolute"], "must be one of 'sinusoidal', 'learned', 'rope'"),
    (["--attention", "linear"], "must be one of 'softmax', 'performer'"),
    (["--performer-in", "encoder"], "--performer-in only applies to Performer attention"),
    (["--attention", "performer", "--performer-in", "encoder,memory"], "--performer-in must list"),
    (["--attention", "performer", "--performer-features", "0"], "--performer-features must be positive"),
    (["--positions", "rope", "--d-model", "30", "--heads", "2"], "head dimension"),
    (["--lr-schedule", "exponential"], "must be one of 'inverse_sqrt', 'cosine', 'linear'"),
    (["--lr-schedule", "cosine", "--epochs", "0"], "--lr-schedule cosine needs --epochs, --max-steps or --max-time"),
    (["--lr-schedule", "linear", "--epochs", "0"], "--lr-schedule linear needs --epochs, --max-steps or --max-time"),
])
def test_bad_training_flags(tmp_path, flags, fragment):
    fails_cleanly(["train", "--run", tmp_path / "r", *flags], fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("beam", ["0", "-1"])
def test_bad_beam(run, beam):
    fails_cleanly(["translate", "-m", run, "--beam", beam], f"--beam must be at least 1, got {beam}")


def test_negative_max_len(run):
    fails_cleanly(["translate", "-m", run, "--max-len-b", "-1"], "must not be negative")


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.model"])
def test_a_model_folder_missing_a_file(run, tmp_path, missing):
    fails_cleanly(["translate", "-m", copy_run(run, tmp_path / "m", without=missing)], missing.split(".")[0])


def test_a_truncated_model(run, tmp_path):
    broken = copy_run(run, tmp_path / "m")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    fails_cleanly(["translate", "-m", broken], "model.safetensors", "not a readable safetensors file")


def test_a_run_from_a_future_format_version(run, tmp_path):
    future = copy_run(run, tmp_path / "m")
    config = json.loads((future / "config.json").read_text())
    config["format_version"] = 99
    (future / "config.json").write_text(json.dumps(config))
    fails_cleanly(["translate", "-m", future], "format version 99 is not supported")


def test_cuda_without_a_gpu(run):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails_cleanly(["translate", "-m", run, "--device", "cuda"], "no CUDA GPU")
    fails_cleanly(["train", "--device", "cuda", "--run", "/nonexistent/never-created"], "no CUDA GPU")


def test_an_output_in_a_missing_directory(run, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n")
    fails_cleanly(["translate", "-m", run, "-i", tmp_path / "in.txt", "-o", tmp_path / "no" / "out.txt"],
                  "does not exist")
    assert not (tmp_path / "no").exists()


def test_an_output_that_is_the_input_is_refused(run, tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("hello\n")
    fails_cleanly(["translate", "-m", run, "-i", tmp_path / "in.txt", "-o", tmp_path / "in.txt"],
                  "is the input file")
    monkeypatch.chdir(tmp_path)
    fails_cleanly(["translate", "-m", run, "-i", "in.txt", "-o", "./in.txt"], "is the input file")
    assert (tmp_path / "in.txt").read_text() == "hello\n"


def test_resume_with_a_changed_setting(run):
    fails_cleanly(["train", "--run", run, "--resume", "--lr", "5", "--epochs", "3"],
                  "only epochs, max_steps, max_time and patience may change", "lr (saved 0.001, given 5.0)")
    assert not (run / "checkpoints").exists()


# ---------------------------------------------------------------------------
# Rule 1: no command writes over what it reads, or over a run it does not own.
# Each output option is aimed at each of its command's inputs and at each file of
# the run it uses, through every way of naming a file.

def _names_for(target: Path, tmp_path: Path) -> dict[str, Path]:
    """Other names of `target`: relative with ./ and ../, a symlink, and a hard link."""
    links = tmp_path / "links"
    links.mkdir(exist_ok=True)
    symlink, hardlink = links / f"sym-{target.name}", links / f"hard-{target.name}"
    symlink.symlink_to(target)
    if target.is_file():
        os.link(target, hardlink)
    return {"plain": target, "dot": Path(f"{target.parent}/./{target.name}"),
            "dotdot": Path(f"{target.parent}/../{target.parent.name}/{target.name}"),
            "symlink": symlink, "hardlink": hardlink}


# Every file a run directory can hold at its top level, and one inside checkpoints/.
RUN_FILES = ["config.json", "tokenizer.model", "tokenizer.vocab", "model.safetensors", ".lock",
             "metrics.jsonl", "average.safetensors", "checkpoints/last.json"]


@pytest.fixture
def full_run(run, tmp_path) -> Path:
    """A copy of the run, with every file a trained run has."""
    target = copy_run(run, tmp_path / "full")
    (target / "tokenizer.vocab").write_bytes((run / "tokenizer.vocab").read_bytes())
    (target / "average.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    (target / ".lock").write_text("")
    (target / "metrics.jsonl").write_text('{"event": "train"}\n')
    (target / "checkpoints").mkdir()
    (target / "checkpoints" / "last.json").write_text('{"dir": "step_00000001"}\n')
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("way", ["plain", "dot", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("target", ["input", *RUN_FILES])
def test_translate_never_writes_over_its_input_or_its_run(full_run, tmp_path, target, way):
    source = tmp_path / "in.txt"
    source.write_text("a dog\n")
    aimed = _names_for(source if target == "input" else full_run / target, tmp_path)[way]
    before = snapshot(tmp_path)
    fails_cleanly(["translate", "-m", full_run, "-i", source, "-o", aimed, "--device", "cpu"],
                  "input file" if target == "input" else "run directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("way", ["plain", "dot", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("target", [*RUN_FILES, "heat.png"])
def test_attention_never_writes_into_its_run(full_run, tmp_path, target, way):
    if way == "hardlink" and not (full_run / target).exists():
        pytest.skip("a file that does not exist has no hard link")
    aimed = _names_for(full_run / target, tmp_path)[way]
    before = snapshot(tmp_path)
    fails_cleanly(["attention", "-m", full_run, "a dog", "-o", aimed, "--device", "cpu"], "run directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("way", ["plain", "dot", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("target", ["src", "ref", "second ref", *RUN_FILES])
def test_eval_never_writes_over_its_inputs_or_its_run(full_run, tmp_path, target, way):
    files = {"src": tmp_path / "s.en", "ref": tmp_path / "r.de", "second ref": tmp_path / "r2.de"}
    for path in files.values():
        path.write_text("a dog\n")
    aimed = _names_for(files.get(target) or full_run / target, tmp_path)[way]
    before = snapshot(tmp_path)
    fails_cleanly(["eval", "-m", full_run, "--src", files["src"], "--ref", files["ref"], "--ref",
                   files["second ref"], "-o", aimed, "--device", "cpu"],
                  "run directory" if target in RUN_FILES else "refusing to write over it")
    assert snapshot(tmp_path) == before


def test_eval_output_needs_a_model_to_translate(run, tmp_path):
    (tmp_path / "h.txt").write_text("a\n")
    fails_cleanly(["eval", "--hyp", tmp_path / "h.txt", "--ref", tmp_path / "h.txt", "-o", tmp_path / "o.txt"],
                  "with --hyp there are none to write")
    assert not (tmp_path / "o.txt").exists()


def test_eval_output_in_a_missing_folder_fails_before_translating(run, tmp_path):
    (tmp_path / "s.en").write_text("a\n")
    fails_cleanly(["eval", "-m", run, "--src", tmp_path / "s.en", "--ref", tmp_path / "s.en",
                   "-o", tmp_path / "no" / "o.txt", "--device", "cpu"], "does not exist")


@pytest.mark.parametrize("name, fragment", [
    *[(name, "file name ending in .safetensors") for name in
      ("config.json", "tokenizer.model", "tokenizer.vocab", ".lock", "metrics.jsonl", "../x.safetensors",
       "checkpoints/last.json", ".hidden.safetensors")],
    ("model.safetensors", "a file the trainer writes"),
    ("average.safetensors", "a file the trainer writes"),
    ("mine.safetensors", "not an average written by s2s average"),
])
def test_average_writes_only_its_own_files_in_the_run(full_run, name, fragment):
    from seq2seq.runs.run_dir import load_run
    from seq2seq.runs.snapshots import save_snapshot

    model = load_run(full_run, torch.device("cpu"))[0]
    for step in (1, 2):
        save_snapshot(model, full_run, step, valid_bleu=float(step))
    (full_run / "mine.safetensors").write_bytes((full_run / "model.safetensors").read_bytes())
    before = snapshot(full_run)
    fails_cleanly(["average", "-m", full_run, "--last", "2", "-o", name], fragment)
    assert snapshot(full_run) == before


def test_average_replaces_its_own_earlier_average(full_run):
    from seq2seq.runs.run_dir import load_run
    from seq2seq.runs.snapshots import save_snapshot

    model = load_run(full_run, torch.device("cpu"))[0]
    for step in (1, 2, 3):
        save_snapshot(model, full_run, step, valid_bleu=float(step))
    for _ in range(2):
        result = runner.invoke(app, ["average", "-m", str(full_run), "--last", "2"])
        assert result.exit_code == 0, result.output
    assert (full_run / "average-last-2.safetensors").is_file()
    assert (full_run / "average.safetensors").read_bytes() == (full_run / "model.safetensors").read_bytes()


def test_tokenizer_train_never_writes_into_a_run(full_run, tmp_path):
    before = snapshot(full_run)
    fails_cleanly(tokenizer_train(write_slice(tmp_path, "val", 20), full_run), "is a run directory")
    assert snapshot(full_run) == before


@pytest.mark.parametrize("case", ["valid file is the run's metrics", "tokenizer folder is the run",
                                  "corpus inside checkpoints"])
def test_train_never_writes_over_what_it_reads(tmp_path, case):
    run = tmp_path / "run"
    run.mkdir()
    corpus = write_slice(tmp_path / "data", "val", 30)
    args = ["train", "--run", run, "--train", corpus, "--device", "cpu", "--max-steps", "1"]
    if case == "valid file is the run's metrics":
        (run / "metrics.jsonl").write_text(json.dumps({"translation": {"en": "a", "de": "b"}}) + "\n")
        args += ["--valid", run / "metrics.jsonl"]
    elif case == "tokenizer folder is the run":
        runner.invoke(app, tokenizer_train(corpus, str(run), "--vocab-size", "100"))
        args += ["--tokenizer", run]
    else:
        args += ["--valid", write_slice(run / "checkpoints", "val", 10)]
    before = snapshot(tmp_path)
    fails_cleanly(args, "run")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------
# Rule 2: -o writes through what is there; only a regular file is replaced.

def _decode_args(command: str, run: Path, source: Path) -> list:
    if command == "translate":
        return ["translate", "-m", run, "-i", source, "--beam", "1", "--device", "cpu"]
    return ["eval", "-m", run, "--src", source, "--ref", source, "--beam", "1", "--device", "cpu"]


@pytest.mark.parametrize("command", ["translate", "eval"])
def test_output_to_dev_null_leaves_it_a_device(run, tmp_path, command):
    (tmp_path / "in.txt").write_text("a dog\n")
    result = runner.invoke(app, [str(a) for a in _decode_args(command, run, tmp_path / "in.txt") + ["-o", "/dev/null"]])
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("command", ["translate", "eval"])
def test_output_to_a_fifo_is_written_through(run, tmp_path, command):
    (tmp_path / "in.txt").write_text("a dog\ntwo cats\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = runner.invoke(app, [str(a) for a in _decode_args(command, run, tmp_path / "in.txt") + ["-o", fifo]])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert received[0].count("\n") == 2


@pytest.mark.parametrize("command", ["translate", "eval"])
def test_output_to_an_inherited_descriptor_is_written_through(run, tmp_path, command):
    (tmp_path / "in.txt").write_text("a dog\ntwo cats\nhello\n")
    read_end, write_end = os.pipe()  # what bash's >(...) hands a command: /dev/fd/N
    try:
        result = runner.invoke(app, [str(a) for a in _decode_args(command, run, tmp_path / "in.txt")
                                     + ["-o", f"/dev/fd/{write_end}"]])
        assert result.exit_code == 0, result.output
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read().count(b"\n") == 3


@pytest.mark.parametrize("command", ["translate", "eval"])
def test_a_symlinked_output_replaces_the_file_it_points_at(run, tmp_path, command):
    (tmp_path / "in.txt").write_text("a dog\ntwo cats\n")
    (tmp_path / "real.txt").write_text("old\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    result = runner.invoke(app, [str(a) for a in _decode_args(command, run, tmp_path / "in.txt")
                                 + ["-o", tmp_path / "link.txt"]])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.txt").is_symlink()
    assert (tmp_path / "real.txt").read_text().count("\n") == 2


def test_dash_means_stdin_and_stdout(run, tmp_path):
    result = runner.invoke(app, ["translate", "-m", str(run), "-i", "-", "-o", "-", "--device", "cpu"],
                           input="a dog\n\ntwo cats\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 3 and result.stdout.split("\n")[1] == ""
    assert not (tmp_path / "-").exists() and not Path("-").exists()


def test_sigterm_leaves_no_temporary_file(run, tmp_path):
    out = tmp_path / "out.txt"
    process = subprocess.Popen([S2S, "translate", "-m", str(run), "-o", str(out), "--buffer-lines", "1",
                                "--device", "cpu"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(b"a dog\n")
    process.stdin.flush()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.txt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.txt.*.tmp")), "the temporary output never appeared"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Rule 4: every float option of every command rejects NaN and infinity.

def _takes_a_float(param) -> bool:
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.20 keeps its own click
    if descriptor is not None:
        return descriptor.annotation is float or float in typing.get_args(descriptor.annotation)
    # By class name: some typer versions vendor click, whose FloatParamType (and FloatRange,
    # its subclass) is not click.types.FloatParamType.
    return any(cls.__name__ == "FloatParamType" for cls in type(param.type).__mro__)


def _float_options() -> list[tuple[str, str]]:
    """(command path, option) for every float option of the CLI, found by walking it."""
    found = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        for param in getattr(command, "params", []):
            if _takes_a_float(param):
                found.append((path, max(param.opts, key=len)))

    walk(typer.main.get_command(app), "")
    return found


FLOAT_OPTIONS = _float_options()


def test_every_float_option_is_found():
    assert ("train", "--lr") in FLOAT_OPTIONS and ("translate", "--alpha") in FLOAT_OPTIONS
    assert ("tokenizer train", "--character-coverage") in FLOAT_OPTIONS


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("command, option", FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinity(run, tmp_path, command, option, value):
    (tmp_path / "s.en").write_text("a dog\n")
    required = {"translate": ["-m", run, "--device", "cpu"],
                "eval": ["-m", run, "--src", tmp_path / "s.en", "--ref", tmp_path / "s.en", "--device", "cpu"],
                "train": ["--run", tmp_path / "r", "--device", "cpu"],
                "tokenizer train": ["-o", tmp_path / "t"],
                "serve": ["-m", run, "--device", "cpu"],
                "attention": ["-m", run, "a dog", "--device", "cpu"]}[command]
    message = fails_cleanly([*command.split(), *required, option, value], value.lstrip("-"))
    assert option.lstrip("-").replace("-", "_") in message.replace("-", "_"), message
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------
# Rule 5: every failure is one error line, never a traceback.

@pytest.mark.parametrize("damage", ["not gzip", "truncated"])
@pytest.mark.parametrize("to_file", [False, True])
def test_a_broken_gzip_input_names_the_input(run, tmp_path, damage, to_file):
    bad = tmp_path / "in.en.gz"
    if damage == "not gzip":
        bad.write_text("plain text\n")
    else:
        text = "".join(f"{os.urandom(8).hex()}\n" for _ in range(1000)).encode()  # incompressible
        bad.write_bytes(gzip.compress(text)[:-1000])
    output = ["-o", tmp_path / "out.txt"] if to_file else []
    fails_cleanly(["translate", "-m", run, "-i", bad, "--device", "cpu", "--beam", "1", "--max-len-a", "0",
                   "--max-len-b", "1", *output],
                  "in.en.gz", "cannot be read")
    assert not (tmp_path / "out.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.en.gz"]


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_run_path_that_is_or_lies_under_a_file(tmp_path, where):
    (tmp_path / "f").write_text("x")
    run_path = tmp_path / "f" if where == "a file" else tmp_path / "f" / "run"
    fails_cleanly(["train", "--run", run_path, "--device", "cpu", "--train", write_slice(tmp_path, "val", 20)],
                  "is not a folder")
    assert (tmp_path / "f").read_text() == "x"


def test_closed_stdin_and_stdout_are_reported(run):
    closed_stdin = subprocess.run([S2S, "translate", "-m", str(run)], capture_output=True, text=True,
                                  preexec_fn=lambda: os.close(0), timeout=120)
    assert closed_stdin.returncode == 1 and "error: stdin is closed" in closed_stdin.stderr
    assert "Traceback" not in closed_stdin.stderr


@pytest.mark.parametrize("damage", ["symlink loop", "a folder"])
def test_unreadable_weights_say_why(run, tmp_path, damage):
    broken = copy_run(run, tmp_path / "m", without="model.safetensors")
    if damage == "symlink loop":
        (broken / "model.safetensors").symlink_to(broken / "model.safetensors")
        reason = "Too many levels of symbolic links"
    else:
        (broken / "model.safetensors").mkdir()
        reason = "Is a directory"
    message = fails_cleanly(["translate", "-m", broken, "--device", "cpu"], "model.safetensors", reason)
    assert "has training saved" not in message


def test_a_write_refused_by_the_system_is_one_error_line(run, tmp_path):
    """A real failed write (the file-size limit, as a full disk would): safetensors raises its own
    error type, which must still come out as one error line with the old file intact."""
    from seq2seq.runs.run_dir import load_run
    from seq2seq.runs.snapshots import save_snapshot

    target = copy_run(run, tmp_path / "m")
    model = load_run(target, torch.device("cpu"))[0]
    for step in (1, 2):
        save_snapshot(model, target, step, valid_bleu=None)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limit[1]))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        fails_cleanly(["average", "-m", target, "--last", "2"], "cannot write", "average-last-2.safetensors")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert not (target / "average-last-2.safetensors").exists()
    assert not list(target.rglob("*.tmp"))


def test_written_weights_get_ordinary_permissions(run, tmp_path):
    target = copy_run(run, tmp_path / "m")
    (tmp_path / "plain").write_text("x")
    assert os.stat(target / "model.safetensors").st_mode == os.stat(tmp_path / "plain").st_mode
    assert os.stat(run / "model.safetensors").st_mode == os.stat(tmp_path / "plain").st_mode


def test_a_failed_tokenizer_train_leaves_no_folder(tmp_path):
    fails_cleanly(tokenizer_train(write_slice(tmp_path, "val", 20), tmp_path / "new" / "tok",
                                  "--vocab-size", "50000"), "vocab size 50000")
    assert not (tmp_path / "new").exists()


def test_a_failed_train_leaves_no_folder(tmp_path):
    fails_cleanly(["train", "--run", tmp_path / "new" / "run", "--train", tmp_path / "nothing", "--device", "cpu"],
                  "no such corpus")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("flag", ["--beam", "--nbest"])
def test_the_beam_is_capped_at_the_vocabulary(run, flag):
    args = ["--beam", "20000"] + (["--nbest", "20000"] if flag == "--nbest" else [])
    fails_cleanly(["translate", "-m", run, "--device", "cpu", *args], "--beam 20000", "150 pieces")


def _float_fields() -> list[tuple[str, str]]:
    """(section, field) for every float of ModelConfig and TrainConfig, tuples of floats included."""
    from seq2seq.config import ModelConfig, TrainConfig

    def holds_floats(hint) -> bool:  # float, or a tuple of them; not Literal["float32", ...]
        return hint is float or float in typing.get_args(hint)

    return [(section, f.name) for section, cls in (("model", ModelConfig), ("train", TrainConfig))
            for f in dataclasses.fields(cls) if holds_floats(typing.get_type_hints(cls)[f.name])]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("section, name", _float_fields())
def test_every_float_field_of_a_config_file_refuses_nan_and_infinity(tmp_path, section, name, value):
    """Python's JSON reader accepts NaN and Infinity; a config file holding them is refused."""
    from seq2seq.config import ModelConfig, TrainConfig

    default = getattr((ModelConfig if section == "model" else TrainConfig)(), name)
    bad = [value, value] if isinstance(default, tuple) else value
    (tmp_path / "c.json").write_text(f'{{"{section}": {{"{name}": {json.dumps(bad).replace(chr(34), "")}}}}}')
    fails_cleanly(["train", "--config", tmp_path / "c.json", "--run", tmp_path / "r"], f"{section}.{name}",
                  "finite")
    assert not (tmp_path / "r").exists()
