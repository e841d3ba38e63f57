"""Word alignments from cross-attention (`s2s translate --alignment`): pieces mapped to words,
every index in range, the diagonal on a learnt copy task, and the refusals."""

import json
import random

import numpy as np
import pytest
import torch
from helpers import make_untrained_run, one_error_line
from typer.testing import CliRunner

from cli.main import app
from seq2seq.config import DecodeConfig, ModelConfig, TrainConfig
from seq2seq.data.tokenizer import load_tokenizers
from seq2seq.errors import ConfigError
from seq2seq.inspection.alignment import (
    default_alignment_layer,
    format_alignment,
    hard_alignment,
    output_words,
    word_of_each_byte,
    words_of_pieces,
)
from seq2seq.model.attention import MultiHeadAttention
from seq2seq.model.transformer import build_model
from seq2seq.search.translator import Translator, split_sentences

runner = CliRunner()
CPU = torch.device("cpu")
# The last line has four sentences: well over the 63 pieces that `trained_run` takes, whatever
# vocabulary its tokenizer learnt, so it is always split.
SOURCES = ["A man in a blue shirt is riding a bike.", "", "Zwei  Männer, ﬁne\u00a0spielen.", "   leading spaces",
           "Two dogs are playing in the snow. A group of people are standing in front of a building. "
           "A woman is sitting on a bench while a boy runs past her with a red kite. "
           "The sun is shining on the old house by the water."]


def parse(alignment: str) -> list[tuple[int, int]]:
    return [tuple(map(int, pair.split("-"))) for pair in alignment.split()]


def check_in_range(source: str, output: str, alignment: str) -> None:
    """Every index is a word of its side, and every output word is aligned (each piece is)."""
    pairs = parse(alignment)
    assert format_alignment(pairs) == alignment
    source_words, output_words_ = len(source.split()), len(output.split())
    assert all(0 <= i < source_words and 0 <= j < output_words_ for i, j in pairs), (source, output, alignment)
    assert {j for _, j in pairs} == set(range(output_words_)) if source.strip() else pairs == []
    assert pairs == sorted(set(pairs), key=lambda pair: (pair[1], pair[0]))


# ---------------------------------------------------------------------------
# Pieces to words.

def test_each_byte_knows_its_word():
    assert word_of_each_byte(" ab  ä c ") == [-1, 0, 0, -1, -1, 1, 1, -1, 2, -1]


def test_pieces_map_to_the_words_of_the_line_as_given(trained_run):
    tokenizer = load_tokenizers(trained_run).src
    for line in SOURCES:
        (ids, starts), = tokenizer.encode_with_offsets([line])
        assert ids == tokenizer.encode([line])[0]
        words = words_of_pieces(line, starts)
        pieces = tokenizer.id_pieces(ids)
        assert len(words) == len(ids) and words == sorted(words)
        if ids:
            assert words[0] == 0 and words[-1] == len(line.split()) - 1
        # A piece opening a word is where a new word starts, whatever NFKC made of its text.
        for k in range(1, len(pieces)):
            if words[k] != words[k - 1]:
                assert pieces[k].startswith("▁") or pieces[k - 1] == "▁", (line, pieces, words)


def test_a_lone_word_marker_goes_with_the_word_after_it():
    # "a ," as sentencepiece cuts it: "▁a", "▁", ","; the "▁" begins at the space.
    assert words_of_pieces("a ,", [0, 1, 2]) == [0, 1, 1]
    assert words_of_pieces("a", [0, 1]) == [0, 0]  # a piece past the end goes with the last word
    assert words_of_pieces("  ", [0, 1]) == [-1, -1]  # no word at all


def test_output_words_count_the_line_as_written():
    # U+2028 becomes a space in the output line (clean_output): two words, not one.
    text = "ab\u2028cd"
    assert output_words(text, [0, 2, 5]) == ([0, 1, 1], 2)


def test_hard_alignment_is_the_argmax_without_the_eos_column():
    attention = np.array([[0.1, 0.2, 0.7],  # EOS column largest: ignored, source piece 1 wins
                          [0.6, 0.3, 0.1],
                          [0.2, 0.5, 0.3]])
    assert hard_alignment(attention, [0, 1], [0, 0, 1]) == [(0, 0), (1, 0), (1, 1)]
    assert hard_alignment(np.zeros((0, 3)), [0, 1], []) == []
    assert hard_alignment(attention, [0, 1], [-1, 0, -1]) == [(0, 0)]  # pieces of no word (spaces) are left out
    with pytest.raises(ValueError):
        hard_alignment(attention, [0], [0, 0, 1])


def test_default_layer_is_the_penultimate():
    assert [default_alignment_layer(n) for n in (1, 2, 3, 6)] == [1, 1, 2, 5]


# ---------------------------------------------------------------------------
# The attention weights are what the model computes with.

def test_probabilities_are_what_sdpa_weighs_the_values_with():
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 4, 0.0).eval()
    query, source = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    q, k, v = attention.project(query, source)
    weights = attention.probabilities(q, k, mask)  # (B, H, T, L)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 5), atol=1e-6)
    assert weights[1, :, :, 4:].abs().max() == 0
    torch.testing.assert_close(weights @ v, attention._softmax(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_cross_attention_of_the_model_follows_its_padding():
    torch.manual_seed(0)
    model = build_model(ModelConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, ffn_dim=64,
                                    encoder_layers=1, decoder_layers=2)).eval()
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    tgt_in = torch.tensor([[2, 10, 11], [2, 12, 0]])
    logits = model(src, tgt_in)
    weights = model.cross_attention(src, tgt_in, 1)  # (B, H, T, S)
    assert weights.shape == (2, 4, 3, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 3), atol=1e-6)
    assert weights[1, :, :, 3].abs().max() == 0
    assert all(layer.cross_attn.recorded is None for layer in model.decoder_layers)
    # Recording the weights leaves the model computing what it computed before.
    torch.testing.assert_close(model(src, tgt_in), logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------
# The rule: every alignment of every output mode names words that exist.

SEARCHES = {"greedy": dict(beam=1), "beam": dict(beam=4), "sampling": dict(sampling=True, seed=3),
            "truncate": dict(beam=2, long_lines="truncate"), "short limit": dict(beam=3, max_len_b=2, max_len_a=0.0)}


@pytest.mark.parametrize("search, layer", [(search, 1) for search in SEARCHES] + [("greedy", 2), ("beam", 2)])
def test_every_alignment_is_in_range_whatever_the_search(trained_run, search, layer):
    translator = Translator.from_run(trained_run, CPU, DecodeConfig(**SEARCHES[search]))
    hypotheses = translator.translate_best(SOURCES, alignment_layer=layer)
    assert [h.text for h in hypotheses] == Translator.from_run(
        trained_run, CPU, DecodeConfig(**SEARCHES[search])).translate(SOURCES)
    assert translator.stats.split == (search != "truncate") and translator.stats.truncated == (search == "truncate")
    for source, hypothesis in zip(SOURCES, hypotheses):
        check_in_range(source, hypothesis.text, hypothesis.alignment)


def test_nbest_and_prefixes_are_aligned_too(trained_run):
    translator = Translator.from_run(trained_run, CPU, DecodeConfig(beam=4))
    prefixes = ["Ein Mann", "", "Zwei", "", "Zwei Hunde"]
    for source, hypotheses in zip(SOURCES, translator.translate_nbest(SOURCES, 3, prefixes, alignment_layer=1)):
        assert len(hypotheses) == (3 if source.strip() and len(source) < 100 else 1)
        for hypothesis in hypotheses:
            check_in_range(source, hypothesis.text, hypothesis.alignment)


def test_a_split_line_numbers_its_words_through_its_pieces(trained_run):
    """Each piece of a split line aligns its own output words to its own source sentence's words."""
    translator = Translator.from_run(trained_run, CPU, DecodeConfig(beam=1))
    # The line's sentences as the splitter cuts them, each keeping its full stop: the last
    # already ends with one.
    sentences = [s if s.endswith(".") else s + "." for s in SOURCES[4].split(". ")]
    assert split_sentences(SOURCES[4]) == sentences
    whole = translator.translate_best([SOURCES[4]], alignment_layer=1)[0]
    alone = translator.translate(sentences)
    assert translator.stats.split == 1 and whole.text == " ".join(alone)
    source_before = output_before = 0
    pairs = parse(whole.alignment)
    for sentence, text in zip(sentences, alone):
        sources = range(source_before, source_before + len(sentence.split()))
        outputs = range(output_before, output_before + len(text.split()))
        assert {j for _, j in pairs if j in outputs} == set(outputs)
        assert all(i in sources for i, j in pairs if j in outputs), (sentence, text, whole.alignment)
        source_before, output_before = sources.stop, outputs.stop


def run_cli(*args: str) -> str:
    result = runner.invoke(app, ["translate", *map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("nbest", ["", "jsonl", "tsv"])
def test_the_command_writes_one_line_and_one_alignment_per_line(trained_run, tmp_path, nbest):
    source = tmp_path / "in.en"
    source.write_text("".join(line + "\n" for line in SOURCES + ["tab\there"]))
    plain = run_cli("-m", trained_run, "-i", source, "--beam", "3").splitlines()
    extra = ["--nbest", "2", "--nbest-format", nbest] if nbest else []
    out = run_cli("-m", trained_run, "-i", source, "--beam", "3", "--alignment", *extra).splitlines()
    lines = SOURCES + ["tab\there"]
    if not nbest:
        assert len(out) == len(lines)
        for source_line, plain_line, row in zip(lines, plain, out):
            text, alignment = row.split("\t")
            assert text == plain_line.replace("\t", " ")
            check_in_range(source_line, text, alignment)
    elif nbest == "jsonl":
        records = [json.loads(row) for row in out]
        assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
        for record in records:
            for hypothesis in record["hypotheses"]:
                check_in_range(record["source"], hypothesis["text"], hypothesis["alignment"])
    else:
        for row in out:
            number, rank, score, text, alignment = row.split("\t")
            check_in_range(lines[int(number) - 1], text, alignment)


# ---------------------------------------------------------------------------
# A copy task learnt by a tiny model: each output word reads its own source word.

COPY_WORDS = "red blue green dog cat bird runs sits near under tree house sun car".split()


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    from seq2seq.training.run import train

    folder = tmp_path_factory.mktemp("copy")
    rng = random.Random(0)
    lines = [" ".join(rng.sample(COPY_WORDS, rng.randint(3, 7))) for _ in range(3000)]
    for side in ("src", "tgt"):
        (folder / f"copy.{side}").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    # One decoder layer: its cross-attention is the only way a source word reaches the output.
    model = ModelConfig(d_model=64, n_heads=4, ffn_dim=128, encoder_layers=1, decoder_layers=1, dropout=0.0,
                        max_positions=64)
    cfg = TrainConfig(train=str(folder / "copy"), valid="", src_lang="src", tgt_lang="tgt", vocab_size=34,
                      max_len=60, max_tokens=1000, epochs=0, max_steps=400, lr=3e-3, warmup_steps=50,
                      log_every=100, patience=0, seed=1, label_smoothing=0.0, keep_snapshots=0)
    train(folder / "run", model, cfg, CPU)
    return folder / "run"


def test_a_learnt_copy_task_aligns_on_the_diagonal(copy_run):
    rng = random.Random(1)
    tests = [" ".join(rng.sample(COPY_WORDS, rng.randint(3, 7))) for _ in range(40)]
    translator = Translator.from_run(copy_run, CPU, DecodeConfig(beam=1))
    # Each word is one piece here; the rule of words made of several pieces is tested above.
    assert all(len(ids) == len(line.split()) for line, ids in zip(tests, translator.tokenizers.src.encode(tests)))
    hypotheses = translator.translate_best(tests, alignment_layer=translator.alignment_layer())
    copied = [(line, h) for line, h in zip(tests, hypotheses) if h.text == line]
    assert len(copied) >= 36, "the copy task was not learnt"
    diagonal = [h.alignment == " ".join(f"{i}-{i}" for i in range(len(line.split()))) for line, h in copied]
    assert sum(diagonal) >= 0.95 * len(copied), [h.alignment for (_, h), ok in zip(copied, diagonal) if not ok]


# ---------------------------------------------------------------------------
# What cannot be aligned is refused, with one error line.

def fails(*args) -> str:
    return one_error_line(runner.invoke(app, ["translate", *map(str, args)], input="a dog\n"))


@pytest.mark.parametrize("layer", ["0", "3", "-1"])
def test_a_layer_the_decoder_does_not_have(trained_run, layer):
    assert "--alignment-layer must be a decoder layer from 1 to 2" in fails(
        "-m", trained_run, "--alignment", "--alignment-layer", layer, "--device", "cpu")


def test_a_layer_without_alignment(trained_run):
    assert "add --alignment" in fails("-m", trained_run, "--alignment-layer", "1", "--device", "cpu")


def test_the_ctranslate2_engine_has_no_weights_to_align_with(exported_run):
    assert "no attention weights" in fails("-m", exported_run, "--alignment")


@pytest.mark.parametrize("places, refused", [("cross", True), ("encoder,decoder,cross", True),
                                             ("encoder,decoder", False)])
def test_performer_cross_attention_is_refused_and_softmax_is_not(tmp_path, places, refused):
    run = make_untrained_run(tmp_path / "run", attention="performer", performer_in=places, performer_features=16)
    if refused:
        assert "Performer (FAVOR+), which never forms attention weights" in fails(
            "-m", run, "--alignment", "--device", "cpu")
    else:
        translator = Translator.from_run(run, CPU, DecodeConfig(beam=1, max_len_b=3))
        (hypothesis,) = translator.translate_best(["a dog runs"], alignment_layer=1)
        check_in_range("a dog runs", hypothesis.text, hypothesis.alignment)


def test_the_library_refuses_a_layer_where_it_is_chosen(trained_run):
    translator = Translator.from_run(trained_run, CPU, DecodeConfig(beam=1))
    with pytest.raises(ConfigError, match="alignment_layer must be a decoder layer from 1 to 2, got 5"):
        translator.alignment_layer(5)
    assert translator.alignment_layer() == 1  # the penultimate of 2
