"""End to end through the real `s2s` command, and one clear error line for each bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

from helpers import write_slice

S2S = str(Path(sys.executable).parent / "s2s")


def s2s(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([S2S, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tokenizer -> train, through the real command; shared by the tests below."""
    root = tmp_path_factory.mktemp("e2e")
    train_prefix = write_slice(root / "data", "train", 400, "train")
    valid_prefix = write_slice(root / "data", "val", 50, "val")
    tok = s2s("tokenizer", "train", "--corpus", train_prefix, "-o", str(root / "tok"), "--vocab-size", "200")
    assert tok.returncode == 0, tok.stderr
    run = root / "run"
    result = s2s("train", "--run", str(run), "--train", train_prefix, "--valid", valid_prefix,
                 "--tokenizer", str(root / "tok"), "--d-model", "32", "--heads", "2", "--ffn-dim", "64",
                 "--encoder-layers", "1", "--decoder-layers", "1", "--max-tokens", "800", "--max-len", "64",
                 "--max-steps", "40", "--epochs", "0", "--lr", "3e-3", "--warmup-steps", "10",
                 "--log-every", "5", "--valid-every", "20", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return root, run


def test_train_writes_the_run_directory(trained):
    root, run = trained
    for name in ("config.json", "tokenizer.model", "model.safetensors", "metrics.jsonl", "checkpoints/last.json"):
        assert (run / name).is_file(), name
    assert (root / "tok" / "tokenizer.model").read_bytes() == (run / "tokenizer.model").read_bytes()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert [r["step"] for r in records if r["event"] == "valid"] == [20, 40]


def test_translate_writes_one_line_per_line_in_order(trained):
    root, run = trained
    lines = ["A man is walking.", "", "   ", "Two dogs play in the snow.", "A woman \u2028 sings.", "x"]
    result = s2s("translate", "-m", str(run), "--beam", "3", "--device", "cpu", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == "" and out[2] == ""
    # Batched beam output equals translating each line alone.
    alone = s2s("translate", "-m", str(run), "--beam", "3", "--device", "cpu", stdin=lines[3] + "\n")
    assert alone.stdout.split("\n")[0] == out[3]


def test_translate_files_and_eval(trained):
    root, run = trained
    src = root / "data" / "val.en"
    hyp = root / "hyp.de"
    result = s2s("translate", "-m", str(run), "-i", str(src), "-o", str(hyp), "--beam", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert len(hyp.read_text().split("\n")) - 1 == 50
    scored = s2s("eval", "--hyp", str(hyp), "--ref", str(root / "data" / "val.de"), "--json")
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    assert {"bleu", "chrf", "ter"} <= set(scores) and scores["lines"] == 50
    assert "tok:13a" in scores["bleu"]["signature"]
    # Translating inside eval with the same settings gives the same score.
    again = s2s("eval", "-m", str(run), "--src", str(src), "--ref", str(root / "data" / "val.de"),
                "--beam", "1", "--device", "cpu", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["bleu"]["score"] == scores["bleu"]["score"]
    table = s2s("eval", "--hyp", str(hyp), "--ref", str(root / "data" / "val.de"))
    assert "BLEU" in table.stdout and "chrF" in table.stdout and "nrefs:1" in table.stdout


def test_version_and_help():
    assert s2s("--version").stdout.startswith("s2s ")
    assert "translate" in s2s("--help").stdout


runner = CliRunner()


def fails_cleanly(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert message.startswith("error:"), message
    assert fragment in message, message


def test_missing_file(tmp_path):
    fails_cleanly(["eval", "--hyp", str(tmp_path / "nope.txt"), "--ref", str(tmp_path / "nope.txt")],
                  "nope.txt: no such file")
    fails_cleanly(["tokenizer", "train", "--corpus", str(tmp_path / "nothing"), "-o", str(tmp_path / "t")],
                  "nothing")


def test_mismatched_line_counts_give_both_counts(tmp_path):
    (tmp_path / "h.txt").write_text("a\nb\nc\n")
    (tmp_path / "r.txt").write_text("a\nb\n")
    fails_cleanly(["eval", "--hyp", str(tmp_path / "h.txt"), "--ref", str(tmp_path / "r.txt")], "3 lines")
    fails_cleanly(["eval", "--hyp", str(tmp_path / "h.txt"), "--ref", str(tmp_path / "r.txt")], "has 2")
    (tmp_path / "c.en").write_text("a\nb\nc\n")
    (tmp_path / "c.de").write_text("a\nb\n")
    fails_cleanly(["tokenizer", "train", "--corpus", str(tmp_path / "c"), "-o", str(tmp_path / "t")], "3")


def test_empty_corpus(tmp_path):
    (tmp_path / "c.en").write_text("")
    (tmp_path / "c.de").write_text("")
    fails_cleanly(["tokenizer", "train", "--corpus", str(tmp_path / "c"), "-o", str(tmp_path / "t")], "empty")


def test_vocab_size_larger_than_the_corpus_supports(tmp_path):
    prefix = write_slice(tmp_path, "val", 20)
    fails_cleanly(["tokenizer", "train", "--corpus", prefix, "-o", str(tmp_path / "t"),
                   "--vocab-size", "50000"], "vocab size")


def test_model_folder_without_tokenizer(trained, tmp_path):
    root, run = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((run / name).read_bytes())
    fails_cleanly(["translate", "-m", str(broken), "--device", "cpu"], "tokenizer")


@pytest.mark.parametrize("beam", ["0", "-2"])
def test_bad_beam_size(trained, beam):
    root, run = trained
    fails_cleanly(["translate", "-m", str(run), "--beam", beam], "beam size")


def test_unknown_config_key(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"train": {"lr": 1e-3, "learning_rate": 1}}))
    fails_cleanly(["train", "--config", str(tmp_path / "c.json"), "--run", str(tmp_path / "r")],
                  "learning_rate")


def test_cuda_without_a_gpu(trained):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    root, run = trained
    fails_cleanly(["translate", "-m", str(run), "--device", "cuda"], "no CUDA GPU")


def test_output_that_is_the_input_is_refused(trained, tmp_path):
    root, run = trained
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    fails_cleanly(["translate", "-m", str(run), "-i", str(src), "-o", str(src)], "is the input file")
    assert src.read_text() == "hello\n"
    fails_cleanly(["translate", "-m", str(run), "-i", str(src), "-o", str(tmp_path / "no" / "out.txt")],
                  "does not exist")
