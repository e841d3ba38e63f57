"""`s2s attention`: the cross-attention behind one translation, on the terminal and as a picture."""

import struct

import numpy as np
import pytest
import torch
from helpers import make_untrained_run, one_error_line
from rich.console import Console
from typer.testing import CliRunner

from cli.attention import heatmap_table
from cli.main import app
from seq2seq.config import DecodeConfig
from seq2seq.search.translator import Translator

runner = CliRunner()
SENTENCE = "A man in a blue shirt is riding a bike."


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def attention(*args):
    return runner.invoke(app, ["attention", *map(str, args), "--device", "cpu"])


def test_the_map_is_the_translation_and_its_weights(trained_run):
    translator = Translator.from_run(trained_run, torch.device("cpu"), DecodeConfig(beam=3))
    shown = translator.attention_map(SENTENCE)
    assert shown.translation == translator.translate([SENTENCE])[0]
    assert shown.layer == 2  # the last by default
    heads, rows, columns = shown.weights.shape
    assert heads == 4 and columns == len(shown.source_pieces) and rows == len(shown.output_pieces)
    assert shown.source_pieces[-1] == "</s>"
    np.testing.assert_allclose(shown.weights.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(shown.heads(None), shown.weights.mean(axis=0))
    np.testing.assert_array_equal(shown.heads(2), shown.weights[1])
    assert translator.stats.lines == 1  # the translate call; the map is not counted


def test_the_terminal_heatmap_renders(trained_run):
    translator = Translator.from_run(trained_run, torch.device("cpu"), DecodeConfig(beam=1))
    shown = translator.attention_map(SENTENCE, layer=1)
    console = Console(record=True, width=300, color_system="truecolor")
    console.print(heatmap_table(shown.source_pieces, shown.output_pieces, shown.heads(None), "title"))
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) >= len(shown.output_pieces) + 2
    for piece in shown.output_pieces:
        assert any(line.lstrip().startswith(piece) for line in lines), piece
    # Column headers are written downwards, a character a line: each source piece's first character shows.
    assert "▁" in text and "<" in text and "/" in text
    assert "rgb(" in console.export_html() or "background-color" in console.export_html()


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_the_picture_is_written(trained_run, tmp_path, suffix):
    out = tmp_path / f"heat{suffix}"
    result = attention("-m", trained_run, SENTENCE, "-o", out, "--layer", "1", "--head", "2", "--beam", "1")
    assert result.exit_code == 0, result.output
    assert "decoder layer 1, head 2" in result.stdout
    assert f"wrote {out}" in result.stderr
    if suffix == ".png":
        width, height = png_size(out)
        assert width >= 480 and height >= 360
        import matplotlib.image

        assert matplotlib.image.imread(out).shape[:2] == (height, width)
    else:
        assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_stdout_is_the_translation_then_the_heatmap(trained_run):
    result = attention("-m", trained_run, SENTENCE, "--beam", "1")
    assert result.exit_code == 0, result.output
    first, *rest = result.stdout.splitlines()
    translator = Translator.from_run(trained_run, torch.device("cpu"), DecodeConfig(beam=1))
    assert first == translator.translate([SENTENCE])[0]
    assert "mean over heads" in rest[0] and "decoder layer 2" in rest[0]


def fails(*args) -> str:
    return one_error_line(attention(*args))


@pytest.mark.parametrize("args, fragment", [
    (["--layer", "0"], "--layer must be a decoder layer from 1 to 2"),
    (["--layer", "3"], "--layer must be a decoder layer from 1 to 2"),
    (["--head", "5"], "--head must be from 1 to 4"),
    (["--head", "0"], "--head must be from 1 to 4"),
    (["-o", "heat.jpg"], "name it .png or .svg"),
    (["-o", "missing/heat.png"], "does not exist"),
])
def test_bad_options(trained_run, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert fragment in fails("-m", trained_run, SENTENCE, *args)


@pytest.mark.parametrize("sentence, fragment", [("", "empty"), ("   ", "empty"),
                                                (" ".join(["word"] * 200), "give a shorter one")])
def test_a_sentence_it_cannot_show(trained_run, sentence, fragment):
    assert fragment in fails("-m", trained_run, sentence)


@pytest.mark.parametrize("name", ["heat.png", "model.safetensors", "checkpoints/heat.png"])
def test_the_picture_never_lands_in_the_run(trained_run, name):
    before = sorted(p.name for p in trained_run.rglob("*"))
    assert "lies inside the run directory" in fails("-m", trained_run, SENTENCE, "-o", trained_run / name)
    assert sorted(p.name for p in trained_run.rglob("*")) == before


def test_performer_cross_attention_has_no_weights_to_show(tmp_path):
    run = make_untrained_run(tmp_path / "run", attention="performer", performer_in="cross", performer_features=16)
    assert "never forms attention weights" in fails("-m", run, "a dog")


def test_an_exported_model_has_no_weights_to_show(exported_run):
    assert "keeps no attention weights" in fails("-m", exported_run, "a dog")
