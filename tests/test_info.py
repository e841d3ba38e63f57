"""`s2s info`: what it says of a run comes from the run's own files, for a run directory and an export."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.info import render, sparkline
from cli.main import app
from seq2seq.model.transformer import build_model, count_parameters
from seq2seq.runs.run_dir import read_run_config

runner = CliRunner()


def info_json(folder) -> dict:
    result = runner.invoke(app, ["info", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_json_matches_the_runs_config_and_metrics(trained_run):
    info = info_json(trained_run)
    config = read_run_config(trained_run)
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if r["event"] == "train"]
    validations = [r for r in records if r["event"] == "valid"]
    assert info["kind"] == "run directory"
    # lang_tag: only a model that writes several languages has one (tests/test_multilingual.py).
    assert info["languages"] == {"source": config.train.src_lang, "target": config.train.tgt_lang, "lang_tag": None}
    assert info["model"]["parameters"] == count_parameters(build_model(config.model))
    assert info["model"]["d_model"] == config.model.d_model and info["model"]["preset"] == "custom"
    assert info["tokenizer"]["sha256"] == config.tokenizer_sha256
    assert info["training"]["updates"] == trained[-1]["step"] == 100
    assert info["training"]["epochs"] == trained[-1]["epoch"]
    assert info["data"]["pairs"] == {r["split"]: r["pairs"] for r in records if r["event"] == "data"}
    assert info["data"]["pairs"]["train"] == 300
    if validations:
        best = max(validations, key=lambda r: r["valid_bleu"])
        assert (info["validation"]["best_bleu"], info["validation"]["best_step"]) == (best["valid_bleu"], best["step"])
        assert info["validation"]["bleu"] == [[r["step"], r["valid_bleu"]] for r in validations]
    assert info["files"]["model.safetensors"] == (trained_run / "model.safetensors").stat().st_size
    assert info["translate"] == f"s2s translate -m {trained_run} -i INPUT -o OUTPUT"


def test_info_of_an_exported_folder(trained_run, exported_run):
    exported, original = info_json(exported_run), info_json(trained_run)
    assert exported["kind"] == "exported (CTranslate2)"
    assert exported["model"] == original["model"] and exported["languages"] == original["languages"]
    assert "model.bin" in exported["files"]


def test_the_panel_renders(trained_run):
    from seq2seq.inspection.summary import describe

    console = Console(record=True, width=100)
    console.print(render(describe(trained_run)))
    text = console.export_text()
    assert "languages" in text and "parameters" in text and "s2s translate -m" in text


def test_sparkline():
    assert sparkline([]) == ""
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([5.0, 5.0]) == "▁▁"


@pytest.mark.parametrize("damage", ["missing", "not a run"])
def test_what_is_not_a_run_is_one_error_line(tmp_path, damage):
    """(A bad line in metrics.jsonl is skipped and told of: tests/test_metrics_records.py.)"""
    folder = tmp_path / "run"
    if damage == "not a run":
        folder.mkdir()
    result = runner.invoke(app, ["info", str(folder)])
    assert result.exit_code == 1 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("name", [b"plain", b"two words", b"it's", b"r\xff", b"caf\xc3\xa9 \xfe's"])
def test_the_translate_line_pastes_into_a_shell_whatever_the_folder_name(name):
    """`s2s info` ends with the command that translates with the folder; a name that is not UTF-8 is
    written in bash's $'...' quoting, and bash gives back the very bytes of the name."""
    import os
    import subprocess

    from seq2seq.inspection.summary import shell_word

    path = os.fsdecode(b"/tmp/" + name)
    echoed = subprocess.run(["bash", "-c", f"printf %s {shell_word(path)}"], capture_output=True, check=True).stdout
    assert echoed == os.fsencode(path)
