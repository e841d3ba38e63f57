import dataclasses

import pytest
import torch
from helpers import EosFirst, make_untrained_run

from seq2seq.config import DecodeConfig
from seq2seq.errors import ConfigError
from seq2seq.files.lines import clean_output
from seq2seq.search.decode import nbest_ids
from seq2seq.search.hypotheses import check_nbest
from seq2seq.search.translator import Translator, cut_ids, split_sentences

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """An untrained model whose sources may be at most 15 tokens: enough to test the contract."""
    folder = make_untrained_run(tmp_path_factory.mktemp("run"), max_positions=16)
    return Translator.from_run(folder, CPU, DecodeConfig(beam=2, max_len_b=4))


def test_one_line_out_per_line_in(translator):
    lines = ["A dog.", "", " \t ", "Two men are talking.", "x\u2028y"]
    out = translator.translate(lines)
    assert len(out) == len(lines)
    assert out[1] == "" and out[2] == ""
    assert all(line.splitlines() == [line] for line in out if line)
    assert translator.stats.empty == 2 and translator.stats.lines == 5


def make_translator(translator: Translator, **changes) -> Translator:
    """A Translator on the fixture's model and tokenizers with other decode settings."""
    cfg = DecodeConfig(**{**dataclasses.asdict(translator.cfg), **changes})
    return Translator.for_model(translator.model, translator.tokenizers, cfg)


def test_over_long_lines_are_truncated_and_counted_when_asked(translator):
    truncating = make_translator(translator, long_lines="truncate")
    out = truncating.translate(["a man " * 40, "A dog."])
    assert len(out) == 2
    assert truncating.stats.truncated == 1 and truncating.stats.split == 0
    assert truncating.max_source_tokens == 15


def test_long_line_is_split_into_sentences_translated_alone(translator):
    sentences = ["A dog runs.", "Two men talk!", "A girl sings?", "It rains;", "a cat sleeps:",
                 "A boy jumps.", "The sun shines."]
    assert len(translator.tokenizers.src.encode([" ".join(sentences)])[0]) > 15
    splitting = make_translator(translator)
    out = splitting.translate([" ".join(sentences), "A dog."])
    assert len(out) == 2 and out[0].splitlines() == [out[0]]
    assert splitting.stats.split == 1 and splitting.stats.truncated == 0
    assert out[0] == " ".join(splitting.translate(sentences))


def test_long_sentence_without_punctuation_is_cut_at_the_token_limit(translator):
    line = "a man " * 40
    splitting = make_translator(translator)
    out = splitting.translate([line])
    assert splitting.stats.split == 1 and len(out) == 1
    src = translator.tokenizers.src
    ids = src.encode([line])[0]
    assert len(ids) > 30  # at least three pieces
    pieces = [piece + [src.eos_id] for piece, _ in cut_ids(ids, None, 15)]
    expected = translator.tokenizers.tgt.decode(
        [hypotheses[0].tokens for hypotheses in nbest_ids(translator.model, pieces, translator.cfg)])
    assert out[0] == " ".join(clean_output(text) for text in expected)


def test_split_sentences():
    assert split_sentences("Hi there. Pi is 3.14!  Why?\tOk; a: b") == ["Hi there.", "Pi is 3.14!", "Why?",
                                                                        "Ok;", "a:", "b"]
    assert split_sentences("e.g.x. end.") == ["e.g.x.", "end."]
    assert split_sentences("\u4f60\u597d\u3002\u518d\u89c1\uff01 \u8c22\u8c22") == [
        "\u4f60\u597d\u3002", "\u518d\u89c1\uff01", "\u8c22\u8c22"]
    assert split_sentences(" . ") == [" ."]


def test_cut_ids():
    assert cut_ids([1, 2, 3, 4, 5], None, 2) == [([1, 2], None), ([3, 4], None), ([5], None)]
    assert cut_ids([1, 2], None, 2) == [([1, 2], None)]
    assert cut_ids([7, 8, 9], [0, 3, 5], 2) == [([7, 8], [0, 3]), ([9], [5])]


def test_long_lines_must_be_split_or_truncate():
    with pytest.raises(ConfigError, match="long_lines must be one of 'split', 'truncate', got 'drop'"):
        DecodeConfig(long_lines="drop")


def test_nbest_lists_are_ranked_and_in_order(translator):
    lines = ["A dog runs.", "", "Two men are talking.", "A girl."]
    nbest = make_translator(translator, beam=3).translate_nbest(lines, 3)
    assert len(nbest) == len(lines)
    assert [(h.text, h.score, h.logprob) for h in nbest[1]] == [("", 0.0, 0.0)]
    for line, hypotheses in zip(lines, nbest):
        if line:
            assert 1 <= len(hypotheses) <= 3
            scores = [h.score for h in hypotheses]
            assert scores == sorted(scores, reverse=True)
    # The first hypothesis is what `translate` gives.
    assert [h[0].text for h in nbest] == make_translator(translator, beam=3).translate(lines)


def test_nbest_of_a_split_line_is_its_joined_best_pieces(translator):
    sentences = ["A dog runs.", "Two men talk!", "A girl sings?", "It rains;", "a cat sleeps:",
                 "A boy jumps.", "The sun shines."]
    beam3 = make_translator(translator, beam=3)
    [joined] = beam3.translate_nbest([" ".join(sentences)], 2)
    alone = beam3.translate_nbest(sentences, 1)
    assert len(joined) == 1
    assert joined[0].text == " ".join(h[0].text for h in alone)
    assert joined[0].score == pytest.approx(sum(h[0].score for h in alone))
    assert joined[0].logprob == pytest.approx(sum(h[0].logprob for h in alone))


def test_nbest_larger_than_the_beam_is_refused():
    with pytest.raises(ConfigError, match="nbest 3 is more than beam 2; beam search finds at most beam hypotheses"):
        check_nbest(3, DecodeConfig(beam=2))
    with pytest.raises(ConfigError, match="nbest must be positive, got 0"):
        check_nbest(0, DecodeConfig(beam=2))
    with pytest.raises(ConfigError, match="nbest needs beam search; sampling gives one output per line"):
        check_nbest(1, DecodeConfig(sampling=True))
    check_nbest(2, DecodeConfig(beam=2))


def test_output_does_not_depend_on_the_other_lines_in_the_batch(translator):
    lines = ["A dog runs.", "Two men are talking in a park.", "A girl."]
    together = translator.translate(lines)
    assert [translator.translate([line])[0] for line in lines] == together


def test_beam_wider_than_the_target_vocabulary_is_refused(translator):
    with pytest.raises(ConfigError) as refused:
        make_translator(translator, beam=151)
    assert str(refused.value) == "beam 151 is more than the target vocabulary (150 pieces); use at most 150"
    make_translator(translator, beam=150)
    make_translator(translator, beam=151, sampling=True)  # sampling ignores the beam


LINES = ["A dog runs.", "", "Two men are talking.", " ", "A girl."]


def best_texts(translator: Translator, lines: list[str], nbest: bool) -> list[str]:
    """Each line's translation from `translate`, or the best of its `translate_nbest` list."""
    if nbest:
        return [hypotheses[0].text for hypotheses in translator.translate_nbest(lines, 2)]
    return translator.translate(lines)


@pytest.mark.parametrize("nbest", [False, True])
def test_outputs_cut_at_the_length_limit_are_counted(translator, nbest):
    # One output token at most, and at least one (min_len 1): every output is cut at the limit.
    cut = make_translator(translator, max_len_a=0.0, max_len_b=1)
    out = best_texts(cut, LINES, nbest)
    assert cut.stats.length_limited == 3
    assert cut.stats.empty_outputs == sum(1 for line, text in zip(LINES, out) if line.strip() and not text.strip())
    # A split line counts once, however many of its pieces were cut.
    best_texts(cut, ["A dog runs. Two men talk! A girl sings? It rains; a cat sleeps: A boy jumps."], nbest)
    assert cut.stats.split == 1 and cut.stats.length_limited == 4


@pytest.mark.parametrize("nbest", [False, True])
def test_empty_outputs_of_non_empty_lines_are_counted(translator, nbest):
    lines = LINES + ["a man " * 40]  # and a line split in pieces

    def eos_first(min_len: int) -> Translator:
        """The fixture's model, made to end every output at once where it may."""
        cfg = DecodeConfig(**{**dataclasses.asdict(translator.cfg), "min_len": min_len})
        return Translator.for_model(EosFirst(translator.model), translator.tokenizers, cfg)

    allowed = eos_first(min_len=0)
    out = best_texts(allowed, lines, nbest)
    assert out[:5] == ["", "", "", "", ""]
    assert out[5].strip() == ""  # the split line's empty pieces, joined with spaces
    assert allowed.stats.empty_outputs == 4 and allowed.stats.empty == 2
    assert allowed.stats.length_limited == 0

    barred = eos_first(min_len=1)
    out = best_texts(barred, lines, nbest)  # one token each, though one such as "▁" detokenizes to ""
    assert barred.stats.empty_outputs == sum(1 for line, text in zip(lines, out)
                                             if line.strip() and not text.strip())
    assert barred.stats.length_limited == 0
