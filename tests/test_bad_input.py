"""One test per row of the bad-input table: exit code, the message, and files left untouched.

Every case must end with one `error:` line naming the problem, a non-zero exit
code and no traceback.
"""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

from helpers import MULTI30K, make_untrained_run, write_slice

runner = CliRunner()
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
    fails_cleanly(tokenizer_train(tmp_path / "nothing", tmp_path / "t"), "no such corpus", "nothing")
    assert not (tmp_path / "t").exists()


def test_unreadable_file(run, tmp_path):
    fails_cleanly(["eval", "--hyp", UNREADABLE, "--ref", UNREADABLE], "cannot be read", "Input/output error")
    (tmp_path / "c.en").symlink_to(UNREADABLE)
    (tmp_path / "c.de").write_text("a\n")
    fails_cleanly(tokenizer_train(tmp_path / "c", tmp_path / "t"), "cannot read", "c.en")


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
    (["--d-model", "-5"], "d_model must be positive"),
    (["--d-model", "100", "--heads", "8"], "must divide"),
    (["--max-len", "-1"], "max_len must be positive"),
    (["--norm", "sideways"], "must be one of 'pre', 'post'"),
    (["--positions", "absolute"], "must be one of 'sinusoidal', 'learned', 'rope'"),
    (["--attention", "linear"], "must be one of 'softmax', 'performer'"),
    (["--performer-in", "encoder"], "--performer-in only applies to Performer attention"),
    (["--attention", "performer", "--performer-in", "encoder,memory"], "performer_in must list"),
    (["--attention", "performer", "--performer-features", "0"], "performer_features must be positive"),
    (["--positions", "rope", "--d-model", "30", "--heads", "2"], "head dimension"),
    (["--lr-schedule", "linear"], "must be one of 'inverse_sqrt', 'cosine'"),
    (["--lr-schedule", "cosine", "--epochs", "0", "--max-time", "60"], "cosine needs epochs or max_steps"),
])
def test_bad_training_flags(tmp_path, flags, fragment):
    fails_cleanly(["train", "--run", tmp_path / "r", *flags], fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("beam", ["0", "-1"])
def test_bad_beam(run, beam):
    fails_cleanly(["translate", "-m", run, "--beam", beam], f"beam size must be at least 1, got {beam}")


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
                  "only --epochs, --max-steps, --max-time and --patience may change", "lr (saved 0.001, given 5.0)")
    assert not (run / "checkpoints").exists()
