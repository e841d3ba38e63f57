"""metrics.jsonl as `s2s info` and `s2s plot` read it: every record the trainer writes is used, and
every line that is not one is skipped, counted and told of once on stderr; never a traceback, never a
point drawn from a bad record. Folder names that no UTF-8 output takes are shown printable."""

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import tiny_model_config, tiny_train_config, write_slice
from rich.console import Console
from typer.testing import CliRunner

from cli.info import render
from cli.main import app
from seq2seq.files.lines import printable
from seq2seq.inspection.curves import draw, read_curves, run_labels
from seq2seq.inspection.metrics_records import (
    COUNT,
    FLAG,
    NUMBER,
    NUMBER_OR_NULL,
    NUMBERS_BY_NAME,
    RECORD_OR_NULL,
    RECORDS,
    TEXT,
    TEXTS,
    BadRecord,
    check_record,
    parse_record,
    read_metrics,
)
from seq2seq.inspection.summary import describe
from seq2seq.inspection.tensorboard import SCALARS
from seq2seq.training.run import train

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 640, 320
SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
SCORES = {"valid_loss": 2.0, "valid_ppl": 7.389, "valid_bleu": 99.0, "bleu_signature": SIGNATURE, "valid_beam": 1}

# One record of each kind as the trainer writes it (checked against a real run's below), at a step
# no real record has: were one of them read although damaged, info and the curves would show it.
SAMPLES = {
    "data": {"event": "data", "split": "train", "corpus": "/c/train", "pairs": 300, "kept": 290, "too_long": 10,
             "empty": 0, "max_len": 63},
    "train": {"event": "train", "step": 99999, "epoch": 9.5, "loss": 1.0, "lr": 1e-4, "tgt_tokens_per_s": 1000.0,
              "model_tflops_per_s": 0.01, "elapsed": 9.0},
    "valid": {"event": "valid", "step": 99999, "epoch": 9.5, **SCORES, "best": True},
    "valid_cut": {"event": "valid_cut", "step": 99999, "reason": "a stop signal", "stage": "BLEU", "done": 3,
                  "sentences": 20},
    "skip": {"event": "skip", "step": 99999, "reason": "non-finite loss or gradients", "skipped": 1, "in_a_row": 1},
    "oom": {"event": "oom", "step": 99999, "action": "split the update into 2 batches",
            "max_tokens_from_next_epoch": 450},
    "resume": {"event": "resume", "step": 99999, "epoch": 9.5},
    "batch_shapes": {"event": "batch_shapes", "epoch": 1, "batches": 130, "shapes": 36, "padding": 0.0875,
                     "shape_ladder": False},
    "average": {"event": "average", "step": 99999, "averaged_steps": "5,10", "kept": False, **SCORES},
    "stop": {"event": "stop", "reason": "max_steps", "step": 99999, "best": None, "unvalidated_model": False,
             "rank_weights_sha256": []},
}
SAMPLES = {kind: {**record, "time": 1.7e9} for kind, record in SAMPLES.items()}

# Values of the wrong type for each type of field; a count is also wrong when negative or a fraction.
WRONG = {COUNT: ["7", -1, 1.5, True, None], NUMBER: ["1.0", True, None, [1.0]], NUMBER_OR_NULL: ["1.0", True, [1.0]],
         TEXT: [7, None, ["a"]],
         FLAG: [1, "true", None], RECORD_OR_NULL: ["x", 7, []], TEXTS: ["x", [1], None],
         NUMBERS_BY_NAME: ["x", [1.0], None, {"en-de": "1.0"}, {"en-de": True}, {"en-de": None}]}


def fields(*types):
    """(kind, field, type) of every field RECORDS gives one of `types` (every field without)."""
    return [(kind, name, type_) for kind, spec in RECORDS.items() for name, type_ in spec.types.items()
            if not types or type_ in types]


def without(kind: str, name: str) -> dict:
    return {key: value for key, value in SAMPLES[kind].items() if key != name}


def line(record) -> bytes:
    return json.dumps(record).encode()  # as json.dumps writes NaN and Infinity too


# Every kind of bad line, generated from RECORDS where it concerns fields. The truncated line is
# written last, without its "\n", as a record cut off by a full disk would be.
DAMAGE = {
    "not UTF-8": [line({**SAMPLES["train"], "note": "@"}).replace(b"@", b"\xff\xfe")],
    "NaN": [line({**SAMPLES[kind], name: math.nan}) for kind, name, _ in fields(NUMBER, NUMBER_OR_NULL)],
    "Infinity": [line({**SAMPLES[kind], name: math.inf}) for kind, name, _ in fields(NUMBER, NUMBER_OR_NULL)],
    "-Infinity": [line({**SAMPLES[kind], name: -math.inf}) for kind, name, _ in fields(NUMBER, NUMBER_OR_NULL)],
    "missing field": [line(without(kind, name)) for kind, spec in RECORDS.items() for name in spec.required],
    "wrong type": [line({**SAMPLES[kind], name: WRONG[type_][0]}) for kind, name, type_ in fields()],
    "not an object": [b"[1, 2]", b'"train"', b"7", b"null", b"true"],
    "unknown event": [line({**SAMPLES["train"], "event": event}) for event in ("start", "tokenizer", "trian", 7, None)]
    + [line(without("train", "event"))],
    "not JSON": [b"garbage", b'{"event": "train", "step": }', b"[" * 100_000],
    "truncated last line": [line(SAMPLES["train"])[:40]],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A short run with validations and an average, so that its metrics.jsonl has records of most kinds."""
    folder = tmp_path_factory.mktemp("records")
    train(folder / "run", tiny_model_config(),
          tiny_train_config(write_slice(folder / "corpus", "train", 100, "train"),
                            write_slice(folder / "corpus", "val", 10, "val"), epochs=0, max_steps=10, valid_every=5,
                            log_every=5, valid_bleu_sentences=10, keep_snapshots=2, average_last=2),
          torch.device("cpu"))
    return folder / "run"


def damaged(run: Path, folder: Path, bad: list[bytes], last: bool = False) -> Path:
    """A copy of `run` whose metrics.jsonl has the `bad` lines after its first record (or at its end,
    the last one without its "\\n")."""
    shutil.copytree(run, folder)
    good = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines = good + [b"\n".join(bad)] if last else good[:1] + [item + b"\n" for item in bad] + good[1:]
    (folder / "metrics.jsonl").write_bytes(b"".join(lines))
    return folder


def invoke(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result


def info_json(folder: Path) -> dict:
    return json.loads(invoke("info", folder, "--json").stdout)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def plotted(curves) -> tuple:
    return curves.train_loss, curves.valid_loss, curves.valid_bleu


def test_every_record_a_run_writes_is_read_and_the_samples_are_like_them(run):
    metrics = read_metrics(run)
    written = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics.records == written and metrics.skipped == 0
    for record in written:
        assert set(record) == set(SAMPLES[record["event"]]), record["event"]
    assert {record["event"] for record in written} == {"data", "batch_shapes", "train", "valid", "average",
                                                          "stop"}
    assert set(SAMPLES) == set(RECORDS)
    for record in SAMPLES.values():
        assert check_record(record) == record


def test_what_older_runs_lack_and_fields_a_later_s2s_adds_are_read():
    older = {key: value for key, value in SAMPLES["train"].items() if key not in ("model_tflops_per_s", "time")}
    assert check_record(older) == older
    assert check_record({**SAMPLES["valid"], "new_score": "x"})["new_score"] == "x"
    assert check_record({**SAMPLES["average"], "cut": "--max-time"})


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, spec in RECORDS.items() for name in spec.required])
def test_a_record_without_a_field_it_always_has_is_bad(kind, name):
    with pytest.raises(BadRecord, match=f'"{kind}" record without "{name}"'):
        parse_record(line(without(kind, name)))


@pytest.mark.parametrize("kind, name, value", [(kind, name, value) for kind, name, type_ in fields()
                                               for value in WRONG[type_]])
def test_a_field_of_another_type_is_bad(kind, name, value):
    with pytest.raises(BadRecord, match=f'"{name}" of a "{kind}" record is not'):
        parse_record(line({**SAMPLES[kind], name: value}))


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])  # json.loads: inf for 1e400
@pytest.mark.parametrize("kind, name", [(kind, name) for kind, name, _ in fields(NUMBER, NUMBER_OR_NULL)])
def test_a_number_that_is_not_finite_is_bad(kind, name, value):
    with pytest.raises(BadRecord, match=f'"{name}" of a "{kind}" record is not a finite number'):
        parse_record(line({**SAMPLES[kind], name: "@"}).replace(b'"@"', value))


@pytest.mark.parametrize("command", ["info", "plot"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_records_are_skipped_counted_and_told_of_once(run, tmp_path, command, damage):
    bad = DAMAGE[damage]
    folder = damaged(run, tmp_path / "run", bad, last=damage == "truncated last line")
    if command == "info":
        result = invoke("info", folder, "--json")
        clean, read = info_json(run), json.loads(result.stdout)
        for key in ("training", "validation", "data", "model", "tokenizer", "languages"):
            assert read[key] == clean[key], key  # from the good records alone
        assert read["training"]["updates"] == 10
    else:
        out = tmp_path / "curves.png"
        result = invoke("plot", folder, "-o", out, "--width", WIDTH, "--height", HEIGHT)
        assert png_size(out) == (WIDTH, HEIGHT)
        assert plotted(read_curves(folder, "a", "steps")) == plotted(read_curves(run, "a", "steps"))
    records = "record" if len(bad) == 1 else "records"
    expected = f"warning: skipped {len(bad)} bad {records} in {folder / 'metrics.jsonl'} (the first on line "
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("command", ["info", "plot"])
def test_a_good_run_warns_of_nothing(run, tmp_path, command):
    result = invoke(command, run, *(["-o", tmp_path / "c.svg"] if command == "plot" else []))
    assert result.stderr == ""


def test_nan_losses_are_not_drawn_but_warned_of(run, tmp_path):
    """The trainer never logs a NaN loss (a non-finite update is left out of the average): one in
    the file is damage, and the curves are drawn without it."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    records = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    first_train = next(r for r in records if r["event"] == "train")
    first_train["loss"] = math.nan
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = invoke("plot", folder, "-o", tmp_path / "c.png")
    assert "skipped 1 bad record in" in result.stderr and '"loss" of a "train" record is not a finite number' \
        in result.stderr
    curves = read_curves(folder, "a", "steps")
    assert first_train["step"] not in [step for step, _, _ in curves.train_loss]
    assert all(math.isfinite(value) for points in plotted(curves) for _, _, value in points)


def test_no_finite_point_at_all_is_one_error_line(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    records = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for name in ("loss", "valid_loss"):
            if name in record:
                record[name] = math.inf
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plotted = [line for line, r in enumerate(records, 1) if r["event"] in ("train", "valid", "average")]
    result = runner.invoke(app, ["plot", str(folder), "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(f"error: {folder / 'metrics.jsonl'}: no train or valid records to plot "
                                    f"(skipped {len(plotted)} bad records, the first on line {plotted[0]}:")
    assert not (tmp_path / "c.png").exists()


def test_tensorboard_scalars_are_numbers_the_records_have():
    for kind, scalars in SCALARS.items():
        for name in scalars:
            assert RECORDS[kind].types[name] in (NUMBER, NUMBER_OR_NULL, COUNT), (kind, name)


def test_printable():
    assert printable(os.fsdecode(b"run-\xff\xfe")) == "run-\\xff\\xfe"
    assert printable("a\tb\nc\x1b[31m\x85") == "a\\tb\\nc\\x1b[31m\\x85"
    assert printable("lone \ud800") == "lone \\ud800"
    assert printable("Übersetzung, 翻訳 [/b] $x$") == "Übersetzung, 翻訳 [/b] $x$"


# Folder names that no UTF-8 output takes, that break a line, that rich would read as markup, or
# that matplotlib would read as mathtext (which fails to parse).
ODD_FOLDERS = {"not UTF-8": [b"r\xff"], "control characters": [b"tab\tnew\nline"], "markup": [b"x[", b"b]"],
               "mathtext": [b"a$\\frac$b"]}


def odd_copy(run: Path, tmp_path: Path, parts: list[bytes]) -> Path:
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), *parts)))
    shutil.copytree(run, folder)
    return folder


@pytest.mark.parametrize("case", list(ODD_FOLDERS))
def test_plot_of_an_odd_folder_name(run, tmp_path, case):
    folder = odd_copy(run, tmp_path, ODD_FOLDERS[case])
    out = tmp_path / "curves.png"
    result = invoke("plot", folder, "-o", out, "--width", WIDTH, "--height", HEIGHT)
    assert result.stderr == "" and png_size(out) == (WIDTH, HEIGHT)
    label = run_labels([folder], None)[0]
    assert label == printable(folder.name) and label.isprintable()
    loss, _ = draw([read_curves(folder, label, "steps")], "steps", WIDTH, HEIGHT).axes
    assert [text.get_text() for text in loss.get_legend().get_texts()] == [f"{label} train", f"{label} valid"]


@pytest.mark.parametrize("case", list(ODD_FOLDERS))
def test_info_of_an_odd_folder_name(run, tmp_path, case):
    folder = odd_copy(run, tmp_path, ODD_FOLDERS[case])
    shown = printable(str(folder))
    info = info_json(folder)
    assert info["folder"] == shown and shown in info["translate"]
    assert invoke("info", folder).stdout.startswith("╭")
    console = Console(record=True, width=400)
    console.print(render(info))
    assert f"s2s info {shown}" in console.export_text()
    assert describe(folder)["folder"] == str(folder)  # the library keeps the real path; only output is printable


def test_an_interval_of_only_skipped_updates_logs_no_loss_and_is_not_plotted(tmp_path):
    """A log interval whose every update was skipped as non-finite has no loss: the trainer writes null,
    never a made-up number; readers take the record, and the loss curve has no point there."""
    import torch

    from seq2seq.inspection.curves import read_curves
    from seq2seq.training.events import LogInterval
    from seq2seq.training.trainer import UpdateOutcome

    interval = LogInterval(torch.device("cpu"))
    nothing = torch.zeros(())
    interval.add(UpdateOutcome(tokens=10, flops=100, ran=True, loss=nothing, loss_tokens=nothing))
    skipped = {"event": "train", "step": 50, "epoch": 0.5, **interval.close(interval.started + 1.0, 1e-3),
               "time": 1.7e9}
    assert skipped["loss"] is None
    assert parse_record(line(skipped)) == skipped
    (tmp_path / "metrics.jsonl").write_bytes(line(skipped) + b"\n" + line({**SAMPLES["train"], "step": 100}) + b"\n")
    curves = read_curves(tmp_path, "run", "steps")
    assert [step for step, _, _ in curves.train_loss] == [100] and curves.source.skipped == 0
