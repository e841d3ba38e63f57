"""Prefix-constrained translation: every output starts with its line's target prefix, on both engines,
whatever the search, the line or the prefix; and `s2s translate --prefix-file / --prefix-tsv` keep
the line contract and refuse what they cannot honour with one error line."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from helpers import MULTI30K, EosFirst
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import DecodeConfig
from seq2seq.errors import DataError
from seq2seq.files.lines import clean_output
from seq2seq.search.beam import beam_search
from seq2seq.search.stepwise import greedy_search
from seq2seq.search.translator import Translator

CPU = torch.device("cpu")
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEARCHES = {
    "greedy": DecodeConfig(beam=1),
    "beam": DecodeConfig(beam=4),
    "sampling": DecodeConfig(sampling=True, seed=3, top_k=10),
    "short-limit": DecodeConfig(beam=3, max_len_a=0.0, max_len_b=1),
    "min-len": DecodeConfig(beam=3, min_len=12),
}


@pytest.fixture(scope="module")
def sources() -> list[str]:
    with gzip.open(MULTI30K / "val.en.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(12)]


@pytest.fixture(scope="module", params=["torch", "ctranslate2"])
def model_folder(request, trained_run) -> Path:
    if request.param == "torch":
        return trained_run
    return request.getfixturevalue("exported_run")


def cases(sources: list[str]) -> tuple[list[str], list[str]]:
    """Lines and their prefixes: every kind of line with every kind of prefix."""
    long_line = " ".join(sources[:6])  # split into pieces: the prefix goes with the first
    lines = [sources[0], sources[1], sources[2], sources[3], "", "   ", long_line, sources[4], sources[5],
             sources[6], sources[7]]
    prefixes = ["Ein Mann", "", "Ein Ma", "Zwei  Hunde  ", "Eine Katze", "", "Eine Gruppe", "Mädchen",
                "ein", "Ein Hund rennt über eine Wiese und", "\u2028 Ein"]
    return lines, prefixes


def normalised(translator: Translator, prefix: str) -> str:
    """The prefix as the target tokenizer writes it back: what an output must start with."""
    if not prefix.strip():
        return ""
    return clean_output(translator.tokenizers.tgt.decode(translator.tokenizers.tgt.encode([prefix]))[0])


@pytest.mark.parametrize("search", SEARCHES)
def test_every_output_starts_with_its_prefix(model_folder, sources, search):
    translator = Translator.from_run(model_folder, CPU, SEARCHES[search])
    lines, prefixes = cases(sources)
    outputs = translator.translate(lines, prefixes)
    assert len(outputs) == len(lines)
    for line, prefix, output in zip(lines, prefixes, outputs):
        want = normalised(translator, prefix)
        assert output.startswith(want), (line, prefix, output)
        if not line.strip():  # an empty line gives its prefix, and nothing else
            assert output == want
    assert normalised(translator, "Zwei  Hunde  ") == "Zwei Hunde"
    if search == "short-limit":  # one token after the prefix: the prefix does not eat the room
        tgt = translator.tokenizers.tgt
        for line, prefix, output in zip(lines, prefixes, outputs):
            if line != lines[6]:  # (the split line has one token per piece)
                assert len(tgt.encode([output])[0]) <= len(tgt.encode([prefix])[0]) + 1
    # Without prefixes the same translator answers as a fresh one: nothing is left forced.
    if search != "sampling":  # (sampling draws on from where it was)
            assert translator.translate(lines[:2]) == Translator.from_run(model_folder, CPU,
                                                                      SEARCHES[search]).translate(lines[:2])


def test_nbest_hypotheses_all_start_with_the_prefix(model_folder, sources):
    translator = Translator.from_run(model_folder, CPU, DecodeConfig(beam=4))
    lines, prefixes = cases(sources)
    for prefix, hypotheses in zip(prefixes, translator.translate_nbest(lines, 3, prefixes)):
        assert hypotheses and all(h.text.startswith(normalised(translator, prefix)) for h in hypotheses)
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)


@pytest.mark.parametrize("beam", [1, 4])
def test_both_engines_agree_with_prefixes(trained_run, exported_run, sources, beam):
    cfg = DecodeConfig(beam=beam)
    lines, prefixes = cases(sources)
    torch_side = Translator.from_run(trained_run, CPU, cfg)
    ct2_side = Translator.from_run(exported_run, CPU, cfg, threads=1)
    assert torch_side.translate(lines, prefixes) == ct2_side.translate(lines, prefixes)
    assert torch_side.stats == ct2_side.stats
    # The scores leave the forced tokens out on both sides.
    for want, have in zip(torch_side.translate_nbest(lines, beam, prefixes),
                          ct2_side.translate_nbest(lines, beam, prefixes)):
        assert want[0].text == have[0].text
        assert have[0].score == pytest.approx(want[0].score, abs=2e-3)


def test_a_prefix_that_is_the_free_translation_changes_nothing(model_folder, sources):
    """Forcing the tokens the search would choose anyway gives the same output, scored on what follows."""
    translator = Translator.from_run(model_folder, CPU, DecodeConfig(beam=1))
    # Only lines the search ends itself: an output cut at the length limit may be spelled in
    # other pieces than the prefix's text encodes to, and then reaches the limit elsewhere.
    ended = []
    for line in sources:
        before = translator.stats.length_limited
        translator.translate([line])
        if translator.stats.length_limited == before:
            ended.append(line)
    assert len(ended) >= 3
    free = translator.translate_nbest(ended, 1)
    halves = [" ".join(h[0].text.split()[:3]) for h in free]
    forced = translator.translate_nbest(ended, 1, halves)
    assert [h[0].text for h in forced] == [h[0].text for h in free]
    # A forced token adds 0, so what is left is the log-probability of the rest: higher.
    assert all(f[0].logprob >= h[0].logprob - 1e-4 for f, h in zip(forced, free))


def test_prefix_lengths_at_and_over_the_model_limit(model_folder):
    translator = Translator.from_run(model_folder, CPU, DecodeConfig(beam=2))
    longest = translator.engine.max_positions - 1
    tgt = translator.tokenizers.tgt
    words = " ".join(["Hund"] * longest)
    fitting = tgt.decode([tgt.encode([words])[0][:longest]])[0]
    assert len(tgt.encode([fitting])[0]) == longest
    [output] = translator.translate(["A dog."], [fitting])
    assert output == fitting  # nothing fits after it: the prefix, cut at the limit
    assert translator.stats.length_limited == 1
    with pytest.raises(DataError, match="target prefix of line 12 is .* tokens long"):
        translator.translate(["A dog.", "A cat."], ["", fitting + " Hund Hund"], first_line=11)


def test_prefix_overrides_the_model_and_min_len_counts_it():
    """Even a model that wants to end at once writes the prefix; min_len counts the whole output."""
    import tempfile

    from helpers import make_untrained_run

    from seq2seq.runs.run_dir import load_run
    with tempfile.TemporaryDirectory() as folder:
        model, _, _ = load_run(make_untrained_run(Path(folder) / "run"), CPU)
    eos_first = EosFirst(model.eval()).eval()
    eos = model.cfg.eos_id
    src = torch.tensor([[7, 8, eos], [9, eos, 0]])
    limits = torch.tensor([10, 10])
    prefixes = [[11, 12, 13], []]
    for found in (greedy_search(eos_first, src, limits, min_len=1, prefixes=prefixes),
                  [hyps[0] for hyps in beam_search(eos_first, src, limits, 3, min_len=1, prefixes=prefixes)]):
        assert found[0].tokens == [11, 12, 13] and found[0].logprob == pytest.approx(found[0].score, abs=30)
        assert len(found[1].tokens) == 1  # min_len 1, no prefix: one token, then EOS
    found = greedy_search(eos_first, src, limits, min_len=5, prefixes=prefixes)
    assert found[0].tokens[:3] == [11, 12, 13] and len(found[0].tokens) == 5


# --- the command line -----------------------------------------------------------------------


def cli(model: Path, *args: str, data: bytes = b""):
    return runner.invoke(app, ["translate", "-m", str(model), "--device", "cpu", "--beam", "3", *args], input=data)


@pytest.mark.parametrize("buffer_lines", ["1", "1000"])
def test_prefix_file_and_tsv_give_the_same_lines_on_both_engines(trained_run, exported_run, sources, tmp_path,
                                                                  buffer_lines):
    lines, prefixes = cases(sources)
    prefixes = [p.replace("\u2028", " ") for p in prefixes]  # a prefix file is lines too
    (tmp_path / "src.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (tmp_path / "prefix.txt").write_text("".join(p + "\n" for p in prefixes), encoding="utf-8")
    tsv = "".join(f"{line}\t{p}\n" for line, p in zip(lines, prefixes)).encode("utf-8")
    outputs = set()
    for model in (trained_run, exported_run):
        by_file = cli(model, "-i", str(tmp_path / "src.txt"), "--prefix-file", str(tmp_path / "prefix.txt"),
                      "--buffer-lines", buffer_lines)
        by_tsv = cli(model, "--prefix-tsv", "--buffer-lines", buffer_lines, data=tsv)
        assert by_file.exit_code == 0 and by_tsv.exit_code == 0, (by_file.output, by_tsv.output)
        assert by_file.stdout == by_tsv.stdout
        outputs.add(by_file.stdout)
    [out] = outputs
    translator = Translator.from_run(trained_run, CPU, DecodeConfig(beam=3))
    rows = out.split("\n")
    assert len(rows) == len(lines) + 1 and rows[-1] == ""
    assert all(row.startswith(normalised(translator, p)) for row, p in zip(rows, prefixes))


def test_nbest_records_carry_the_prefix(trained_run):
    result = cli(trained_run, "--prefix-tsv", "--nbest", "2", data="A dog runs.\tEin Hund\n\t\n".encode())
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["source"], r["prefix"]) for r in records] == [("A dog runs.", "Ein Hund"), ("", "")]
    assert all(h["text"].startswith("Ein Hund") for h in records[0]["hypotheses"])


def test_prefix_options_refuse_what_they_cannot_honour(trained_run, tmp_path):
    src, prefix = tmp_path / "src.txt", tmp_path / "prefix.txt"
    src.write_text("A dog.\nA cat.\nA bird.\n")
    prefix.write_text("Ein\nEine\n")
    long_prefix = tmp_path / "long.txt"
    long_prefix.write_text("\n\n" + " ".join(["Hund"] * 80) + "\n")
    cases = {
        "both ways at once": (["-i", str(src), "--prefix-file", str(prefix), "--prefix-tsv"],
                              "--prefix-file and --prefix-tsv"),
        "prefix file short": (["-i", str(src), "--prefix-file", str(prefix)], f"{prefix}: has 2 lines, fewer"),
        "prefix file long": (["-i", str(prefix), "--prefix-file", str(src)], f"{src}: has more lines than"),
        "missing prefix file": (["-i", str(src), "--prefix-file", str(tmp_path / "nope.txt")], "no such file"),
        "prefix too long": (["-i", str(src), "--prefix-file", str(long_prefix), "--buffer-lines", "1"],
                            "target prefix of line 3 is"),
        "output over the prefix file": (["-i", str(src), "--prefix-file", str(prefix), "-o", str(prefix)],
                                        "--prefix-file"),
    }
    for name, (args, message) in cases.items():
        result = cli(trained_run, *args)
        assert result.exit_code == 1, name
        assert result.stderr.startswith("error:") and message in result.stderr, (name, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output, name
    assert prefix.read_text() == "Ein\nEine\n"  # never written over
    no_tab = cli(trained_run, "--prefix-tsv", data=b"A dog.\tEin\nA cat.\n")
    assert no_tab.exit_code == 1 and "stdin: line 2 has no tab" in no_tab.stderr
