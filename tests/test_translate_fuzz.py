"""`s2s translate` in-process on arbitrary input: one output line per input line, always.

Random Unicode (line separators, NUL, tabs, very long lines) and random bytes
(invalid UTF-8 included) go through the real command with a tiny untrained
model whose short max_positions makes long lines take the splitting path.
The property is checked through both engines: the run directory (torch) and
its CTranslate2 export (skipped without ctranslate2). The n-best output
formats are checked here too, on the same model.
"""

import json
from pathlib import Path

import pytest
from helpers import make_untrained_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained run whose sources may be at most 31 tokens."""
    return make_untrained_run(tmp_path_factory.mktemp("run"), max_positions=32)


@pytest.fixture(scope="module", params=["torch", "ctranslate2"])
def model_folder(request, run, tmp_path_factory) -> Path:
    """The run itself (torch engine), or its CTranslate2 export (ctranslate2 engine)."""
    if request.param == "torch":
        return run
    pytest.importorskip("ctranslate2", reason="the CTranslate2 engine needs the optional ctranslate2 package: "
                                              "pip install 's2s[ctranslate2]'")
    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    return export_ctranslate2(run, tmp_path_factory.mktemp("exported") / "ct2")


def translate(run: Path, data: bytes, *options: str):
    result = runner.invoke(app, ["translate", "-m", str(run), "--beam", "2", "--device", "cpu",
                                 "--max-len-b", "3", "--max-len-a", "0.5", *options], input=data)
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def input_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


lines = st.lists(st.one_of(st.text(), st.text(st.sampled_from("ab .!?\r\t\u2028\x00\x85\u3002")),
                           st.text(min_size=200, max_size=600)), max_size=6)
inputs = st.one_of(lines.map(lambda ls: "\n".join(ls).encode("utf-8")),
                   lines.map(lambda ls: ("\n".join(ls) + "\n").encode("utf-8")),
                   st.binary(max_size=300))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs)
def test_one_output_line_per_input_line_whatever_the_input(model_folder, data):
    out = translate(model_folder, data).stdout_bytes.decode("utf-8").split("\n")
    assert out[-1] == ""
    assert len(out) - 1 == input_lines(data)
    assert all(line.splitlines() == [line] for line in out[:-1] if line)


def test_nbest_jsonl_has_one_object_per_line(run):
    data = "A dog runs.\n\nTwo men \u2028 talk.\n".encode("utf-8")
    records = [json.loads(line) for line in translate(run, data, "--nbest", "2").stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert [r["source"] for r in records] == ["A dog runs.", "", "Two men \u2028 talk."]
    assert records[1]["hypotheses"] == [{"text": "", "score": 0.0, "logprob": 0.0}]
    for record in (records[0], records[2]):
        scores = [h["score"] for h in record["hypotheses"]]
        assert 1 <= len(scores) <= 2 and scores == sorted(scores, reverse=True)


def test_nbest_tsv_has_one_row_per_hypothesis(run):
    data = b"A dog runs.\n\nTwo men talk.\n"
    rows = [line.split("\t") for line in
            translate(run, data, "--nbest", "2", "--nbest-format", "tsv").stdout.split("\n")[:-1]]
    assert all(len(row) == 4 for row in rows)
    assert sorted({int(row[0]) for row in rows}) == [1, 2, 3]
    assert [row for row in rows if row[0] == "2"] == [["2", "1", "0.000000", ""]]
    for line in ("1", "3"):
        ranked = [row for row in rows if row[0] == line]
        assert [row[1] for row in ranked] == [str(rank) for rank in range(1, len(ranked) + 1)]
        assert [float(row[2]) for row in ranked] == sorted((float(row[2]) for row in ranked), reverse=True)


def test_sampling_with_a_seed_is_repeatable(run):
    data = b"A dog runs.\nTwo men talk.\nA dog runs.\n"
    first = translate(run, data, "--sample", "--seed", "3", "--top-p", "0.9").stdout
    assert first == translate(run, data, "--sample", "--seed", "3", "--top-p", "0.9").stdout
    assert first.count("\n") == 3


@pytest.mark.parametrize("options, message", [
    (["--nbest", "3"], "more than --beam"),
    (["--nbest", "1", "--sample"], "--nbest needs beam search; --sampling gives one output per line"),
    (["--nbest", "1", "--nbest-format", "csv"], "jsonl or tsv"),
    (["--long-lines", "drop"], "--long-lines must be one of 'split', 'truncate'"),
    (["--sample", "--temperature", "0"], "temperature"),
])
def test_bad_translate_options_are_one_error_line(run, options, message):
    result = runner.invoke(app, ["translate", "-m", str(run), "--beam", "2", "--device", "cpu", *options],
                           input=b"A dog.\n")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error:") and message in result.stderr


# Text as a file can hold it: no lone surrogates (UTF-8 cannot encode them), no line breaks or tabs.
_cell = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\t")
pairs = st.lists(st.tuples(st.text(_cell), st.text(_cell, max_size=8)), max_size=5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=pairs)
def test_with_prefixes_one_line_per_line_each_starting_with_its_prefix(model_folder, rows):
    from seq2seq.data.tokenizer import load_tokenizers
    from seq2seq.files.lines import clean_output

    data = "".join(f"{source}\t{prefix}\n" for source, prefix in rows).encode("utf-8")
    out = translate(model_folder, data, "--prefix-tsv").stdout_bytes.decode("utf-8").split("\n")
    assert len(out) - 1 == data.count(b"\n") and out[-1] == ""
    tgt = load_tokenizers(model_folder).tgt
    for (_, prefix), line in zip(rows, out):
        assert line.splitlines() == [line] or not line
        if prefix.strip():
            assert line.startswith(clean_output(tgt.decode(tgt.encode([prefix]))[0]))
