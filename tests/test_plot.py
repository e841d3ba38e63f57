"""`s2s plot`: real runs' metrics drawn as PNG or SVG of the asked size; every wrong input is one
error line, and the picture never lands in a run it reads."""

import json
import shutil
import struct
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch
from helpers import tiny_model_config, tiny_train_config, write_slice
from matplotlib.image import imread
from typer.testing import CliRunner

from cli.main import app
from seq2seq.inspection.curves import current_records, draw, read_curves, training_seconds
from seq2seq.training.run import train

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory) -> Path:
    """A second short run, with validation, to overlay on `trained_run` (which has none)."""
    folder = tmp_path_factory.mktemp("validated")
    train_prefix = write_slice(folder / "corpus", "train", 200, "train")
    valid_prefix = write_slice(folder / "corpus", "val", 20, "val")
    train(folder / "recipe-b", tiny_model_config(),
          tiny_train_config(train_prefix, valid_prefix, epochs=0, max_steps=20, valid_every=10, log_every=5,
                            valid_bleu_sentences=20), torch.device("cpu"))
    return folder / "recipe-b"


def plot(*args) -> None:
    result = runner.invoke(app, ["plot", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("width, height", [(1200, 500), (901, 403)])
def test_a_png_of_overlaid_runs_has_the_asked_size(trained_run, validated_run, tmp_path, width, height):
    out = tmp_path / "curves.png"
    plot(trained_run, validated_run, "-o", out, "--width", width, "--height", height)
    assert png_size(out) == (width, height)
    assert imread(out).shape[:2] == (height, width)  # matplotlib reads it back
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_the_default_size_and_an_svg(trained_run, validated_run, tmp_path):
    plot(trained_run, validated_run, "-o", tmp_path / "curves.png")
    assert png_size(tmp_path / "curves.png") == (1200, 500)
    plot(trained_run, validated_run, "-o", tmp_path / "curves.SVG", "--label", "a", "--label", "b")
    root = ElementTree.parse(tmp_path / "curves.SVG").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 864 360"  # 1200 x 500 pixels at 100 dpi, in points


def test_against_time(trained_run, validated_run, tmp_path):
    plot(trained_run, validated_run, "-o", tmp_path / "time.png", "--x", "time", "--width", 800, "--height", 300)
    assert png_size(tmp_path / "time.png") == (800, 300)
    curves = [read_curves(run, run.name, "time") for run in (trained_run, validated_run)]
    for run in curves:
        seconds = [point[1] for point in run.train_loss]
        assert seconds == sorted(seconds) and seconds[0] > 0
    figure = draw(curves, "time", 800, 300)
    loss, bleu = figure.axes
    assert loss.get_xlabel() == bleu.get_xlabel() == "training time (minutes)"


def test_what_is_drawn(trained_run, validated_run):
    """Per run one colour: train loss solid, valid loss dashed, BLEU; from the run's own records."""
    curves = [read_curves(trained_run, "a", "steps"), read_curves(validated_run, "b", "steps")]
    records = [json.loads(line) for line in (validated_run / "metrics.jsonl").read_text().splitlines()]
    assert [(step, loss) for step, _, loss in curves[1].train_loss] == [
        (r["step"], r["loss"]) for r in records if r["event"] == "train"]
    assert [(step, bleu) for step, _, bleu in curves[1].valid_bleu] == [
        (r["step"], r["valid_bleu"]) for r in records if r["event"] == "valid"]
    loss, bleu = draw(curves, "steps", 1200, 500).axes
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert set(lines) == {"a train", "b train", "b valid"}
    assert lines["b train"].get_linestyle() == "-" and lines["b valid"].get_linestyle() == "--"
    assert lines["b train"].get_color() == lines["b valid"].get_color() != lines["a train"].get_color()
    assert [line.get_label() for line in bleu.get_lines()] == ["b"]
    assert (loss.get_title(), bleu.get_title(), loss.get_xlabel()) == ("Loss", "Validation BLEU", "updates")


def test_records_a_resume_replaced_are_left_out():
    """As TensorBoard's purge: what a stopped run logged after its checkpoint (step 10) gives way
    to the resumed run's records; neither the pause before the resume nor the lost updates count
    as training time."""
    records = [{"event": "data", "time": 100.0},
               {"event": "train", "step": 5, "loss": 3.0, "time": 110.0},
               {"event": "valid", "step": 10, "valid_loss": 2.9, "valid_bleu": 1.0, "time": 120.0},
               {"event": "train", "step": 15, "loss": 2.5, "time": 130.0},  # after the checkpoint at 10
               {"event": "data", "time": 5000.0},
               {"event": "resume", "step": 10, "epoch": 1.0, "time": 5010.0},
               {"event": "train", "step": 15, "loss": 2.4, "time": 5020.0}]
    kept = current_records(records)
    assert [(r["event"], r.get("step"), r.get("loss")) for r in kept if r["event"] == "train"] == [
        ("train", 5, 3.0), ("train", 15, 2.4)]
    seconds = training_seconds(kept)
    assert [s for s, r in zip(seconds, kept) if r["event"] in ("train", "valid")] == [10.0, 20.0, 30.0]


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize("case, fragment", [
    ("missing folder", "no such run directory"),
    ("missing metrics.jsonl", "metrics.jsonl: no such file"),
    ("empty metrics.jsonl", "metrics.jsonl: no train or valid records"),
    ("metrics.jsonl without training", "metrics.jsonl: no train or valid records"),
    ("bad extension", "-o"),
    ("no extension", "-o"),
    ("-o inside a run", "lies inside the run directory"),
    ("-o is a run's metrics.jsonl", "lies inside the run directory"),
    ("-o in a missing folder", "does not exist"),
    ("labels for other runs", "--label"),
    ("bad --x", "--x"),
    ("too small", "--width"),
])
def test_each_wrong_input_is_one_error_line(case, fragment, trained_run, tmp_path):
    run = tmp_path / "run"
    out = tmp_path / "curves.png"
    extra = []
    if case == "missing metrics.jsonl":
        copy_run(trained_run, run)
        (run / "metrics.jsonl").unlink()
    elif case == "empty metrics.jsonl":
        copy_run(trained_run, run)
        (run / "metrics.jsonl").write_text("")
    elif case == "metrics.jsonl without training":
        copy_run(trained_run, run)
        data = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"event": "data"' in line]
        (run / "metrics.jsonl").write_text("".join(line + "\n" for line in data))
    elif case != "missing folder":
        run = trained_run
    out = {"bad extension": tmp_path / "curves.pdf", "no extension": tmp_path / "curves",
           "-o inside a run": run / "curves.png", "-o is a run's metrics.jsonl": run / "metrics.jsonl",
           "-o in a missing folder": tmp_path / "nowhere" / "curves.png"}.get(case, out)
    extra = {"labels for other runs": ["--label", "a", "--label", "b"], "bad --x": ["--x", "epochs"],
             "too small": ["--width", "10"]}.get(case, [])
    before = {p: p.read_bytes() for p in Path(run).rglob("*") if p.is_file()} if Path(run).exists() else {}
    result = runner.invoke(app, ["plot", str(run), "-o", str(out), *map(str, extra)])
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and fragment in message, message
    if case.startswith("missing") or "metrics.jsonl" in case:
        assert str(run) in message  # names the folder or the file
    assert not out.exists() or case == "-o is a run's metrics.jsonl"
    assert {p: p.read_bytes() for p in Path(run).rglob("*") if p.is_file()} == before


def test_a_missing_matplotlib_is_one_error_line(trained_run, tmp_path, monkeypatch):
    # None in sys.modules makes `import` fail, as it does where the package is not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["plot", str(trained_run), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message and "pip install 's2s[plot]'" in message, message
    assert list(tmp_path.iterdir()) == []
