"""Translation engines: the torch search and CTranslate2 over an exported folder give the same outputs
behind one Translator, and the line contract holds through the real CLI with either."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from helpers import MULTI30K, make_untrained_run
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError
from seq2seq.search.hypotheses import check_nbest
from seq2seq.search.translator import Translator

CPU = torch.device("cpu")
SENTENCES = 30
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(trained_run) -> Path:
    return trained_run


@pytest.fixture(scope="module")
def exported(exported_run) -> Path:
    return exported_run


@pytest.fixture(scope="module")
def sources() -> list[str]:
    with gzip.open(MULTI30K / "val.en.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(SENTENCES)]


def both(run: Path, exported: Path, cfg: DecodeConfig) -> tuple[Translator, Translator]:
    torch_side = Translator.from_run(run, CPU, cfg)
    ct2_side = Translator.from_run(exported, CPU, cfg, threads=1)
    assert torch_side.engine.name == "torch" and ct2_side.engine.name == "ctranslate2"
    return torch_side, ct2_side


@pytest.mark.parametrize("beam", [1, 5])
def test_both_engines_give_the_same_translations(run, exported, sources, beam):
    torch_side, ct2_side = both(run, exported, DecodeConfig(beam=beam))
    expected, got = torch_side.translate(sources), ct2_side.translate(sources)
    same = sum(a == b for a, b in zip(expected, got))
    if beam == 1:
        assert expected == got
    else:
        assert same >= 0.99 * len(sources), f"{same}/{len(sources)} identical"
    assert len(set(expected)) >= 5  # not one output for every line
    assert torch_side.stats == ct2_side.stats and ct2_side.stats.length_limited < len(sources)
    # Short limits cut most outputs: both engines cut them alike, and count them.
    torch_side, ct2_side = both(run, exported, DecodeConfig(beam=beam, max_len_a=0.25, max_len_b=2))
    assert torch_side.translate(sources) == ct2_side.translate(sources)
    assert torch_side.stats == ct2_side.stats and ct2_side.stats.length_limited > 0


def test_nbest_lists_agree(run, exported, sources):
    torch_side, ct2_side = both(run, exported, DecodeConfig(beam=4))
    lines = sources[:10] + ["", "   "]
    expected, got = torch_side.translate_nbest(lines, 3), ct2_side.translate_nbest(lines, 3)
    assert [[h.text for h in hs] for hs in expected] == [[h.text for h in hs] for hs in got]
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            assert b.score == pytest.approx(a.score, abs=1e-3) and b.logprob == pytest.approx(a.logprob, abs=1e-3)
    assert got[-1][0].text == "" and got[-1][0].score == 0.0
    assert torch_side.stats == ct2_side.stats


def test_long_lines_are_split_or_truncated_alike(run, exported, sources):
    long_line = " ".join(sources[:6])
    for long_lines in ("split", "truncate"):
        torch_side, ct2_side = both(run, exported, DecodeConfig(beam=2, long_lines=long_lines))
        assert torch_side.translate([long_line, "A dog."]) == ct2_side.translate([long_line, "A dog."])
        assert ct2_side.stats.split + ct2_side.stats.truncated == 1
        assert torch_side.stats == ct2_side.stats


def test_sampling_maps_onto_ctranslate2_and_a_seed_repeats_it(exported, sources):
    cfg = DecodeConfig(sampling=True, seed=11, top_k=0, temperature=1.5)
    first = Translator.from_run(exported, CPU, cfg).translate(sources[:10])
    assert first == Translator.from_run(exported, CPU, cfg).translate(sources[:10])
    other = Translator.from_run(exported, CPU, DecodeConfig(sampling=True, seed=12, top_k=0,
                                                            temperature=1.5)).translate(sources[:10])
    assert other != first
    greedy = Translator.from_run(exported, CPU, DecodeConfig(beam=1)).translate(sources[:10])
    # top_k 1 is greedy whatever the seed.
    assert Translator.from_run(exported, CPU, DecodeConfig(sampling=True, seed=1, top_k=1)).translate(
        sources[:10]) == greedy
    with pytest.raises(ConfigError, match="nbest needs beam search; sampling gives one output per line"):
        check_nbest(1, cfg)


def test_threads(run, exported, sources):
    reference = Translator.from_run(exported, CPU, DecodeConfig(beam=2)).translate(sources[:5])
    assert Translator.from_run(exported, CPU, DecodeConfig(beam=2), threads=2).translate(sources[:5]) == reference
    before = torch.get_num_threads()
    try:
        Translator.from_run(run, CPU, DecodeConfig(beam=2), threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads must be at least 1, got 0"):
        Translator.from_run(exported, CPU, DecodeConfig(), threads=0)


def test_the_wrong_engine_for_the_folder_is_refused(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="not an exported model.*export first"):
        Translator.from_run(run, CPU, DecodeConfig(), engine="ctranslate2")
    with pytest.raises(ConfigError, match="engine must be torch or ctranslate2, got 'onnx'"):
        Translator.from_run(run, CPU, DecodeConfig(), engine="onnx")
    result = runner.invoke(app, ["translate", "-m", str(run), "--engine", "ctranslate2", "--device", "cpu"],
                           input=b"A dog.\n")
    assert result.exit_code == 1 and result.stderr.startswith("error:") and "export first" in result.stderr
    result = runner.invoke(app, ["translate", "-m", str(run), "--threads", "0", "--device", "cpu"], input=b"A.\n")
    assert result.exit_code == 1 and "--threads must be at least 1" in result.stderr


def test_the_torch_engine_refuses_an_exported_folder(exported):
    with pytest.raises(ConfigError, match="exported to CTranslate2.*run directory it was exported from"):
        Translator.from_run(exported, CPU, DecodeConfig(), engine="torch")
    result = runner.invoke(app, ["translate", "-m", str(exported), "--engine", "torch", "--device", "cpu"],
                           input=b"A dog.\n")
    assert result.exit_code == 1 and result.stderr.startswith("error:") and "torch engine" in result.stderr


def cli_translate(model: Path, data: bytes, *options: str):
    result = runner.invoke(app, ["translate", "-m", str(model), "--device", "cpu", "--beam", "3", *options],
                           input=data)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_the_line_contract_through_the_cli_with_an_exported_model(run, exported, sources):
    lines = [sources[0], "", "   \t", " ".join(sources[1:7]), sources[7]]
    data = ("\n".join(lines) + "\n").encode("utf-8") + b"caf\xe9 \xff dog\n" + b"no final newline"
    got = cli_translate(exported, data, "--threads", "1")
    out = got.stdout_bytes.decode("utf-8").split("\n")
    assert len(out) - 1 == len(lines) + 2 and out[-1] == ""
    assert out[1] == "" and out[2] == "" and out[0] and out[3]
    assert "were translated in pieces" in got.stderr and "not UTF-8" in got.stderr
    # Exactly what the torch engine writes and reports.
    expected = cli_translate(run, data)
    assert got.stdout_bytes == expected.stdout_bytes and got.stderr == expected.stderr


def test_many_lines_streamed_one_at_a_time(run, exported, sources):
    data = "".join(line + "\n" for line in sources + [""] + sources[:9]).encode("utf-8")
    got = cli_translate(exported, data, "--buffer-lines", "1")
    assert got.stdout.count("\n") == 40
    assert got.stdout == cli_translate(exported, data).stdout == cli_translate(run, data).stdout


def test_nbest_through_the_cli(run, exported, sources):
    data = (sources[0] + "\n\n" + sources[1] + "\n").encode("utf-8")
    for fmt in ("jsonl", "tsv"):
        got = cli_translate(exported, data, "--nbest", "2", "--nbest-format", fmt).stdout
        expected = cli_translate(run, data, "--nbest", "2", "--nbest-format", fmt).stdout
        if fmt == "tsv":  # scores to 6 decimals may differ in the last digit between engines
            got, expected = ([[row.split("\t")[i] for i in (0, 1, 3)] for row in text.splitlines()]
                             for text in (got, expected))
            assert got == expected and len(got) == 5
        else:
            records = [json.loads(line) for line in got.splitlines()]
            assert [[h["text"] for h in r["hypotheses"]] for r in records] == \
                [[h["text"] for h in json.loads(line)["hypotheses"]] for line in expected.splitlines()]


def test_eval_with_an_exported_model(run, exported, sources, tmp_path):
    (tmp_path / "src.en").write_text("".join(s + "\n" for s in sources[:10]))
    common = ["eval", "--src", str(tmp_path / "src.en"), "--ref", str(tmp_path / "src.en"), "--json",
              "--device", "cpu", "--beam", "2"]
    got = runner.invoke(app, [*common, "-m", str(exported), "--threads", "1", "-o", str(tmp_path / "out.txt")])
    assert got.exit_code == 0, got.output
    expected = runner.invoke(app, [*common, "-m", str(run)])
    assert json.loads(got.stdout)["bleu"] == json.loads(expected.stdout)["bleu"]
    assert (tmp_path / "out.txt").read_text().count("\n") == 10
    refused = runner.invoke(app, [*common, "-m", str(exported), "--engine", "torch"])
    assert refused.exit_code == 1 and "torch engine" in refused.stderr


def test_no_output_inside_an_exported_folder(exported, tmp_path):
    before = sorted(path.name for path in exported.iterdir())
    (tmp_path / "src.en").write_text("A dog.\n")
    for args in (["translate", "-m", str(exported), "-i", str(tmp_path / "src.en"), "-o",
                  str(exported / "out.txt")],
                 ["eval", "-m", str(exported), "--src", str(tmp_path / "src.en"), "--ref",
                  str(tmp_path / "src.en"), "-o", str(exported / "out.txt")]):
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 1 and "inside the exported model folder" in result.stderr, result.output
    assert sorted(path.name for path in exported.iterdir()) == before


@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_with_config_shares_the_loaded_model(run, exported, sources, engine):
    folder = run if engine == "torch" else exported
    greedy = Translator.from_run(folder, CPU, DecodeConfig(beam=1))
    beam = greedy.with_config(DecodeConfig(beam=4))
    assert beam.engine.name == engine and beam.cfg.beam == 4 and greedy.cfg.beam == 1
    assert beam.translate(sources[:8]) == Translator.from_run(folder, CPU, DecodeConfig(beam=4)).translate(sources[:8])
    assert greedy.translate(sources[:8]) == Translator.from_run(folder, CPU, DecodeConfig(beam=1)).translate(
        sources[:8])
    assert beam.stats.lines == 8 and greedy.stats.lines == 8  # each keeps its own count
    wide = greedy.tokenizers.tgt.vocab_size + 1
    with pytest.raises(ConfigError, match=f"beam {wide} is more than the target vocabulary"):
        greedy.with_config(DecodeConfig(beam=wide))  # opening an engine checks the search against the model


def test_an_exported_model_runs_without_loading_torch(exported, tmp_path):
    """The CTranslate2 path of `s2s translate` never imports torch (nor datasets): it starts in a fraction
    of the time and memory."""
    import subprocess
    import sys

    (tmp_path / "in.txt").write_text("A dog runs.\n\nTwo men talk.\n")
    code = ("import sys\nfrom cli.main import app\n"
            f"sys.argv = ['s2s', 'translate', '-m', {str(exported)!r}, '-i', {str(tmp_path / 'in.txt')!r}, "
            "'--device', 'cpu', '--beam', '2']\n"
            "try:\n    app()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
            "loaded = [name for name in ('torch', 'datasets') if name in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 3 and done.stdout.split("\n")[1] == ""


@pytest.mark.parametrize(("name", "expected"), [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:1", ("cuda", 1))])
def test_ctranslate2_devices_by_name(name, expected):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from seq2seq.search.engines.ctranslate2_engine import ctranslate2_device

    assert ctranslate2_device(name, ctranslate2) == expected
    assert ctranslate2_device("auto", ctranslate2)[0] == ("cuda" if ctranslate2.get_cuda_device_count() else "cpu")
    for bad in ("mps", "gpu", "cuda:x"):
        with pytest.raises(ConfigError, match="CTranslate2 runs on the CPU or CUDA"):
            ctranslate2_device(bad, ctranslate2)
