"""Translating with a model that writes several languages (seq2seq.data.directions): the tag chooses the
target for both engines, the line contract and the no-clobber rules hold as for a bilingual model, and a
target the model does not write is refused wherever one is asked for.

The runs are hand-made and untrained (tests/helpers.py `make_untrained_multilingual_run`): their outputs
are garbage, but what the rules say of them can be checked.
"""

import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import MULTI30K, ROOT, EosFirst, make_untrained_multilingual_run, make_untrained_run, one_error_line
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import DecodeConfig
from seq2seq.data.directions import language_tag
from seq2seq.errors import ConfigError, RunDirError
from seq2seq.inspection.alignment import format_alignment, hard_alignment, output_words, words_of_pieces
from seq2seq.runs.run_dir import load_run
from seq2seq.search.translator import Translator

CPU = torch.device("cpu")
LANG_TAGS = ["source", "target"]
# Short outputs: an untrained model runs every output to its limit.
SHORT = dict(max_len_a=0.5, max_len_b=6)
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sources() -> list[str]:
    with gzip.open(MULTI30K / "val.en.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(12)]


@pytest.fixture(scope="module", params=LANG_TAGS)
def run(request, tmp_path_factory) -> Path:
    """An untrained English -> German, French run for each lang_tag; max_positions 48, so that a few
    sentences joined make a line that must be split."""
    return make_untrained_multilingual_run(tmp_path_factory.mktemp(f"multilingual-{request.param}"),
                                           lang_tag=request.param, max_positions=48)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    pytest.importorskip("ctranslate2", reason="the CTranslate2 engine needs the optional ctranslate2 package")
    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    return export_ctranslate2(run, tmp_path_factory.mktemp("exported") / "ct2")


@pytest.fixture(scope="module")
def bilingual(tmp_path_factory) -> Path:
    return make_untrained_run(tmp_path_factory.mktemp("bilingual"))


def lang_tag_of(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["train"]["lang_tag"]


# ---------------------------------------------------------------------------
# Which language: refused unless the model writes it.

@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
@pytest.mark.parametrize("tgt, fragment", [("", "this model writes de, fr: give tgt_lang"),
                                           ("cs", "this model writes de, fr, not 'cs'"),
                                           ("en", "this model writes de, fr, not 'en'")])
def test_a_multilingual_model_needs_a_language_it_writes(run, engine, tgt, fragment, request):
    folder = run if engine == "torch" else request.getfixturevalue("exported")
    with pytest.raises(ConfigError, match=fragment):
        Translator.from_run(folder, CPU, DecodeConfig(tgt_lang=tgt))
    translator = Translator.from_run(folder, CPU, DecodeConfig(tgt_lang="fr"))
    with pytest.raises(ConfigError, match=fragment):  # the same check for a search opened on a loaded model
        translator.with_config(DecodeConfig(tgt_lang=tgt))


def test_a_bilingual_model_takes_its_own_language_or_none(bilingual, sources):
    lines = sources[:4]
    without = Translator.from_run(bilingual, CPU, DecodeConfig(**SHORT)).translate(lines)
    assert Translator.from_run(bilingual, CPU, DecodeConfig(tgt_lang="de", **SHORT)).translate(lines) == without
    with pytest.raises(ConfigError, match=r"this model writes de, not 'fr': give tgt_lang de, or leave it out"):
        Translator.from_run(bilingual, CPU, DecodeConfig(tgt_lang="fr"))


def test_a_model_in_memory_without_its_run_takes_no_language(bilingual):
    model, tokenizers, _ = load_run(bilingual, CPU)
    Translator.for_model(model, tokenizers, DecodeConfig())
    with pytest.raises(ConfigError, match="the languages of this model are not known"):
        Translator.for_model(model, tokenizers, DecodeConfig(tgt_lang="de"))


def cli_args(command: str, model: Path, tmp_path: Path) -> list[str]:
    """`command` on `model` with everything else it needs, on the CPU."""
    (tmp_path / "s.en").write_text("A dog runs.\n")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return {"translate": ["translate", "-m", model, "-i", tmp_path / "s.en", "-o", tmp_path / "out.txt"],
            "eval": ["eval", "-m", model, "--src", tmp_path / "s.en", "--ref", tmp_path / "s.en",
                     "-o", tmp_path / "out.txt"],
            "attention": ["attention", "-m", model, "A dog runs.", "-o", tmp_path / "out.png"],
            "serve": ["serve", "-m", model, "--port", str(port)]}[command] + ["--device", "cpu"]


COMMANDS = ["translate", "eval", "attention", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("tgt, fragment", [(None, "this model writes de, fr: give --tgt-lang"),
                                           ("cs", "this model writes de, fr, not 'cs': give --tgt-lang")])
def test_every_command_refuses_a_language_the_model_does_not_write(run, tmp_path, command, tgt, fragment):
    if command == "serve":
        pytest.importorskip("fastapi")
    args = cli_args(command, run, tmp_path) + ([] if tgt is None else ["--tgt", tgt])
    message = one_error_line(runner.invoke(app, [str(arg) for arg in args]))
    assert fragment in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.en"]  # nothing written


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_another_language_for_a_bilingual_model(bilingual, tmp_path, command):
    if command == "serve":
        pytest.importorskip("fastapi")
    args = cli_args(command, bilingual, tmp_path) + ["--tgt", "fr"]
    assert "this model writes de, not 'fr'" in one_error_line(runner.invoke(app, [str(arg) for arg in args]))


def test_a_run_whose_tokenizer_lacks_the_tags_is_refused(bilingual, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in bilingual.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["train"]["tgt_lang"] = "de,fr"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match=r"train.tgt_lang de,fr needs a source tag .* no piece <2de>, <2fr>"):
        Translator.from_run(folder, CPU, DecodeConfig(tgt_lang="de"))


def test_an_export_whose_tokenizer_lacks_a_tag_is_refused(exported, tmp_path):
    folder = tmp_path / "edited"
    folder.mkdir()
    for path in exported.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    info = json.loads((folder / "s2s_export.json").read_text())
    info["run_config"]["train"]["tgt_lang"] = "de,fr,cs"
    (folder / "s2s_export.json").write_text(json.dumps(info))
    with pytest.raises(RunDirError, match=r"tokenizer.model: has no piece <2cs>, the tag that asks this model for cs"):
        Translator.from_run(folder, CPU, DecodeConfig(tgt_lang="cs"))
    Translator.from_run(folder, CPU, DecodeConfig(tgt_lang="fr"))


def test_a_tag_in_the_text_is_not_the_tag(run):
    """The tags are control symbols: no input text encodes to one, and one decodes to nothing."""
    _, tokenizers, _ = load_run(run, CPU)
    tag = tokenizers.src.pieces().index(language_tag("fr"))
    assert tag not in tokenizers.src.encode(["<2fr> A dog."])[0]
    assert tokenizers.tgt.decode([[tag]]) == [""]


# ---------------------------------------------------------------------------
# The tag chooses the language, and is no part of the output.

def test_the_tag_chooses_the_output(run, sources):
    outputs = {tgt: Translator.from_run(run, CPU, DecodeConfig(tgt_lang=tgt, beam=2, **SHORT)).translate(sources)
               for tgt in ("de", "fr")}
    assert outputs["de"] != outputs["fr"]
    assert not any("<2" in line for lines in outputs.values() for line in lines)


def test_the_forced_tag_is_not_counted_in_the_output_or_its_score(tmp_path_factory, sources):
    """lang_tag "target": the tag is forced after BOS, the output is what follows it, min_len counts its
    tokens only, and the score is the output's and its EOS's log-probability after the tag."""
    run = make_untrained_multilingual_run(tmp_path_factory.mktemp("forced"), lang_tag="target", max_positions=48)
    model, tokenizers, config = load_run(run, CPU)
    line = sources[0]
    for min_len in (0, 2):
        translator = Translator.for_model(EosFirst(model), tokenizers, DecodeConfig(tgt_lang="fr", min_len=min_len),
                                          train=config.train)
        shown = translator.attention_map(line)
        assert len(shown.output_pieces) == min_len + 1 and shown.output_pieces[-1] == "</s>"
        assert language_tag("fr") not in shown.output_pieces
    translator = Translator.for_model(model, tokenizers, DecodeConfig(tgt_lang="fr", **SHORT), train=config.train)
    best = translator.translate_best([line])[0]
    pieces = translator.attention_map(line).output_pieces
    ended = pieces[-1] == "</s>"
    vocabulary = tokenizers.tgt.pieces()
    tokens = [vocabulary.index(piece) for piece in pieces[:-1 if ended else None]]
    tag = vocabulary.index(language_tag("fr"))
    src = torch.tensor([tokenizers.src.encode([line])[0] + [tokenizers.src.eos_id]])
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        logits = model.decode(torch.tensor([[model.cfg.bos_id, tag] + tokens]), memory, src_mask)
    chosen = tokens + ([tokenizers.tgt.eos_id] if ended else [])
    logprobs = torch.log_softmax(logits[0, 1:1 + len(chosen)].float(), dim=-1)
    assert best.logprob == pytest.approx(sum(logprobs[i, token].item() for i, token in enumerate(chosen)), abs=1e-4)


def test_the_attention_map_shows_a_source_tag_and_hides_a_forced_one(run, sources):
    translator = Translator.from_run(run, CPU, DecodeConfig(tgt_lang="de", beam=1, **SHORT))
    shown = translator.attention_map(sources[0])
    source_tag = lang_tag_of(run) == "source"
    assert (shown.source_pieces[0] == "<2de>") == source_tag
    assert "<2de>" not in shown.output_pieces
    assert shown.weights.shape[1:] == (len(shown.output_pieces), len(shown.source_pieces))


def test_alignments_number_the_lines_words_not_the_tag(run, sources):
    """The alignment is the attention map's weights over the line's own pieces: a source tag's column
    is left out, and a forced tag's step."""
    translator = Translator.from_run(run, CPU, DecodeConfig(tgt_lang="fr", beam=1, **SHORT))
    tokenizers, offset = translator.tokenizers, int(lang_tag_of(run) == "source")
    for line in sources[:4]:
        best = translator.translate_best([line], alignment_layer=1)[0]
        shown = translator.attention_map(line, layer=1)
        vocabulary = tokenizers.tgt.pieces()
        tokens = [vocabulary.index(piece) for piece in shown.output_pieces if piece != "</s>"]
        _, starts = tokenizers.src.encode_with_offsets([line])[0]
        text, output_starts = tokenizers.tgt.decode_with_offsets(tokens)
        weights = shown.weights.mean(axis=0)[:len(tokens), offset:]
        expected = hard_alignment(weights, words_of_pieces(line, starts), output_words(text, output_starts)[0])
        assert best.alignment == format_alignment(expected)
        source_words = len(line.split())
        assert all(int(pair.split("-")[0]) < source_words for pair in best.alignment.split())


# ---------------------------------------------------------------------------
# The line contract, as for a bilingual model.

@pytest.mark.parametrize("search", ["greedy", "beam", "sampling"])
def test_one_line_out_per_line_in_with_empty_and_long_lines(run, sources, search):
    cfg = DecodeConfig(tgt_lang="fr", beam=3 if search == "beam" else 1, sampling=search == "sampling", seed=3,
                       **SHORT)
    sentences = [line for line in sources if line.endswith(".")][:4]  # each its own piece of the long line
    long_line = " ".join(sentences)
    lines = [sources[0], "", "   ", long_line, sources[1]]
    translator = Translator.from_run(run, CPU, cfg)
    out = translator.translate(lines)
    assert len(out) == len(lines) and out[1] == out[2] == "" and out[3]
    assert translator.stats.split == 1 and translator.stats.empty == 2
    if search != "sampling":
        # Each piece of the split line is its sentence translated alone: each piece got the tag.
        assert out[3] == " ".join(translator.translate(sentences))
    else:
        assert Translator.from_run(run, CPU, cfg).translate(lines) == out  # the seed repeats it


def test_a_prefix_follows_the_tag(run, sources):
    translator = Translator.from_run(run, CPU, DecodeConfig(tgt_lang="de", beam=2, **SHORT))
    lines = [sources[0], "", " ".join(sources[:5])]
    out = translator.translate(lines, ["Ein Mann", "Zwei", "Eine Frau"])
    assert out[0].startswith("Ein Mann") and out[1] == "Zwei" and out[2].startswith("Eine Frau")
    nbest = translator.translate_nbest(lines[:2], 2, ["Ein Mann", "Zwei"])
    assert all(h.text.startswith("Ein Mann") for h in nbest[0]) and nbest[1][0].text == "Zwei"
    assert nbest[1][0].score == 0.0  # forced steps, the tag's among them, score nothing


def assert_alike(want: list[str], got: list[str], beam: int) -> None:
    """The same lines; beam searches may part on one, as in tests/test_engines.py: CTranslate2 keeps
    a hypothesis at the length limit that s2s's search has given up on, which with an all but
    untrained model may score best."""
    same = sum(a == b for a, b in zip(want, got))
    assert len(want) == len(got) and same >= len(want) - (beam > 1), list(zip(want, got))


@pytest.mark.parametrize("beam", [1, 4])
def test_both_engines_translate_every_direction_alike(run, exported, sources, beam):
    lines = sources + ["", " ".join(sources[:5])]
    prefixes = ["Ein" if i % 3 == 0 else "" for i in range(len(lines))]
    for tgt in ("de", "fr"):
        cfg = DecodeConfig(tgt_lang=tgt, beam=beam, **SHORT)
        torch_side, ct2_side = Translator.from_run(run, CPU, cfg), Translator.from_run(exported, CPU, cfg, threads=1)
        assert ct2_side.engine.name == "ctranslate2"
        assert_alike(torch_side.translate(lines), ct2_side.translate(lines), beam)
        assert torch_side.stats.split == ct2_side.stats.split >= 1
        assert_alike(torch_side.translate(lines, prefixes), ct2_side.translate(lines, prefixes), beam)
        if beam > 1:
            want, got = torch_side.translate_nbest(lines, 2), ct2_side.translate_nbest(lines, 2)
            alike = [(a, b) for a, b in zip(want, got) if [h.text for h in a] == [h.text for h in b]]
            assert len(alike) >= len(lines) - 1
            for a, b in ((a, b) for hs, gs in alike for a, b in zip(hs, gs)):
                # float32 sums of dozens of steps: equal to a few in 10^5
                assert b.score == pytest.approx(a.score, rel=1e-4, abs=1e-3)
                assert b.logprob == pytest.approx(a.logprob, rel=1e-4, abs=1e-3)


def test_the_export_keeps_the_tags(run, exported):
    info = json.loads((exported / "s2s_export.json").read_text())
    assert info["tgt_lang"] == "de,fr" and info["lang_tag"] == lang_tag_of(run)
    assert info["language_tags"] == {"de": "<2de>", "fr": "<2fr>"}
    _, tokenizers, _ = load_run(run, CPU)
    vocabulary = json.loads((exported / "shared_vocabulary.json").read_text())  # the tokenizer's pieces, in id order
    assert vocabulary == tokenizers.src.pieces() and {"<2de>", "<2fr>"} <= set(vocabulary)


# ---------------------------------------------------------------------------
# Through the CLI.

def test_translate_and_eval_choose_the_direction(run, sources, tmp_path):
    (tmp_path / "s.en").write_text("".join(line + "\n" for line in sources[:6]) + "\n")
    for tgt in ("de", "fr"):
        expected = Translator.from_run(run, CPU, DecodeConfig(tgt_lang=tgt, beam=2)).translate(sources[:6] + [""])
        result = runner.invoke(app, ["translate", "-m", str(run), "-i", str(tmp_path / "s.en"), "--tgt", tgt,
                                     "--beam", "2", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert result.stdout.split("\n")[:-1] == expected
        result = runner.invoke(app, ["eval", "-m", str(run), "--src", str(tmp_path / "s.en"), "--ref",
                                     str(tmp_path / "s.en"), "--tgt-lang", tgt, "--beam", "2", "--device", "cpu",
                                     "-o", str(tmp_path / f"out.{tgt}"), "--json"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"out.{tgt}").read_text().split("\n")[:-1] == expected
        assert "bleu" in json.loads(result.stdout)


@pytest.mark.parametrize("command, target", [("translate", "input"), ("translate", "model.safetensors"),
                                             ("eval", "src"), ("eval", "config.json"),
                                             ("attention", "tokenizer.model")])
def test_no_command_writes_over_what_it_reads(run, tmp_path, command, target):
    args = cli_args(command, run, tmp_path)
    aimed = tmp_path / "s.en" if target in ("input", "src") else run / target
    args[args.index("-o") + 1] = aimed
    before = {path: path.read_bytes() for path in [tmp_path / "s.en", *run.iterdir()] if path.is_file()}
    message = one_error_line(runner.invoke(app, [str(arg) for arg in args] + ["--tgt", "de"]))
    assert any(fragment in message for fragment in ("input file", "source file", "run directory")), message
    assert {path: path.read_bytes() for path in before} == before


def test_info_names_the_languages(run, tmp_path):
    result = runner.invoke(app, ["info", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["languages"] == {"source": "en", "target": "de,fr", "lang_tag": lang_tag_of(run)}
    result = runner.invoke(app, ["info", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "en -> de, fr" in result.stdout and f"lang_tag {lang_tag_of(run)}" in result.stdout


# ---------------------------------------------------------------------------
# s2s serve: "tgt" per request.

def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/translate", data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_serve_translates_each_request_into_its_own_language(run, sources):
    pytest.importorskip("fastapi")
    lines = sources + [""]
    expected = {tgt: dict(zip(lines, Translator.from_run(run, CPU, DecodeConfig(tgt_lang=tgt, beam=2, **SHORT))
                              .translate(lines))) for tgt in ("de", "fr")}
    assert expected["de"] != expected["fr"]  # a request answered in the other language would show
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "-m", str(run), "--port", str(port),
                                "--device", "cpu", "--threads", "1", "--beam", "2", "--max-len-a", "0.5",
                                "--max-len-b", "6", "--tgt", "de", "--max-wait-ms", "30", "--log-level", "warning"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.2)

        def client(number: int) -> list:
            problems = []
            for i in range(6):
                tgt = [None, "de", "fr"][(number + i) % 3]
                asked = [lines[(number * 5 + i * 3 + j) % len(lines)] for j in range(1 + i % 3)]
                status, answer = post(url, {"text": asked} | ({} if tgt is None else {"tgt": tgt}))
                want = [expected[tgt or "de"][line] for line in asked]
                if status != 200 or answer.get("translations") != want:
                    problems.append((tgt, asked, status, answer, want))
            return problems

        with ThreadPoolExecutor(8) as pool:
            problems = [problem for found in pool.map(client, range(8)) for problem in found]
        assert not problems, problems[:2]
        status, answer = post(url, {"text": "A dog.", "tgt": "cs"})
        assert status == 422 and "this model writes de, fr, not 'cs': give tgt one of them" in answer["detail"]
        status, answer = post(url, {"text": "A dog.", "tgt": "de,fr"})
        assert status == 422 and "tgt names one target language" in answer["detail"]
        with urllib.request.urlopen(url + "/info", timeout=5) as response:
            model = json.loads(response.read())["model"]
        assert (model["tgt_lang"], model["lang_tag"]) == ("de,fr", lang_tag_of(run))
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stderr.close()
