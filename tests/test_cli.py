"""End to end through the real `s2s` command: tokenizer -> train -> translate -> eval."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_translate_into_a_closed_pipe_exits_quietly(trained):
    root, run = trained
    result = subprocess.run(
        f"'{S2S}' translate -m '{run}' --beam 1 --device cpu --buffer-lines 10 | head -n 2",
        shell=True, input="A dog runs.\n" * 3000, capture_output=True, text=True, timeout=300)
    assert result.stdout.count("\n") == 2
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
