"""Scores must be sacreBLEU's own numbers, with signatures that record the settings."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from seq2seq.errors import ConfigError, DataError, S2SError
from seq2seq.scores import METRICS, MetricScore, score_corpus, scores_to_json

HYPS = ["The cat sat on the mat.", "A dog runs in the park", "it is raining today"]
REFS_A = ["The cat sat on a mat.", "The dog runs in the park.", "It is raining today."]
REFS_B = ["A cat was sitting on the mat.", "A dog is running in a park.", "Today it rains."]


def by_name(scores: list[MetricScore]) -> dict[str, MetricScore]:
    return {s.name: s for s in scores}


def test_scores_equal_sacrebleu_called_directly():
    scores = by_name(score_corpus(HYPS, [REFS_A]))
    assert list(scores) == ["BLEU", "chrF", "TER"]
    assert scores["BLEU"].score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS_A]).score)
    assert scores["chrF"].score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS_A]).score)
    # Casing follows `lowercase` for TER too, so the default is case-sensitive.
    assert scores["TER"].score == pytest.approx(
        sacrebleu.corpus_ter(HYPS, [REFS_A], case_sensitive=True).score)
    assert scores["BLEU"].detail == str(sacrebleu.corpus_bleu(HYPS, [REFS_A]))
    assert scores["BLEU"].detail.startswith("BLEU = ")


def test_several_reference_sets():
    bleu = score_corpus(HYPS, [REFS_A, REFS_B], metrics=["bleu"])[0]
    assert bleu.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS_A, REFS_B]).score)
    assert "nrefs:2" in bleu.signature


def test_perfect_match():
    scores = by_name(score_corpus(REFS_A, [REFS_A]))
    assert scores["BLEU"].score == pytest.approx(100.0)
    assert scores["chrF"].score == pytest.approx(100.0)
    assert scores["TER"].score == pytest.approx(0.0)


def test_default_signatures():
    scores = by_name(score_corpus(HYPS, [REFS_A]))
    bleu = scores["BLEU"].signature
    assert "tok:13a" in bleu and "case:mixed" in bleu and "nrefs:1" in bleu
    assert f"version:{sacrebleu.__version__}" in bleu
    assert "case:mixed" in scores["chrF"].signature
    assert "case:mixed" in scores["TER"].signature


def test_lowercase_changes_scores_and_signatures():
    mixed = by_name(score_corpus(HYPS, [REFS_A]))
    lower = by_name(score_corpus(HYPS, [REFS_A], lowercase=True))
    for name in ("BLEU", "chrF", "TER"):
        assert "case:lc" in lower[name].signature
    assert lower["BLEU"].score == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS_A], lowercase=True).score)
    assert lower["BLEU"].score > mixed["BLEU"].score  # "it" vs "It" now match
    assert lower["TER"].score == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS_A]).score)


def test_tokenize_applies_to_bleu():
    bleu = score_corpus(HYPS, [REFS_A], metrics=["bleu"], tokenize="char")[0]
    assert "tok:char" in bleu.signature
    assert bleu.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS_A], tokenize="char").score)


def test_metric_selection_and_order():
    scores = score_corpus(HYPS, [REFS_A], metrics=["TER", "bleu", "ter"])
    assert [s.name for s in scores] == ["TER", "BLEU"]
    assert [s.name for s in score_corpus(HYPS, [REFS_A], metrics="chrf")] == ["chrF"]


def test_mismatched_counts_name_both():
    with pytest.raises(DataError, match=r"reference set 2 has 2 lines but there are 3 hypotheses"):
        score_corpus(HYPS, [REFS_A, REFS_B[:2]])


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="'meteor'.*bleu, chrf, ter"):
        score_corpus(HYPS, [REFS_A], metrics=["bleu", "meteor"])
    with pytest.raises(ConfigError):
        score_corpus(HYPS, [REFS_A], metrics=[])


def test_unknown_tokenizer_lists_sacrebleus():
    with pytest.raises(ConfigError, match="'moses'.*13a.*intl"):
        score_corpus(HYPS, [REFS_A], tokenize="moses")


def test_empty_input():
    with pytest.raises(DataError, match="no hypotheses"):
        score_corpus([], [[]])
    with pytest.raises(DataError, match="no references"):
        score_corpus(HYPS, [])
    assert issubclass(DataError, S2SError)


def test_scores_to_json_shape():
    scores = score_corpus(HYPS, [REFS_A])
    data = scores_to_json(scores)
    assert list(data) == list(METRICS)
    for entry, score in zip(data.values(), scores):
        assert entry == {"score": score.score, "signature": score.signature, "detail": score.detail}
    json.dumps(data)  # plain JSON types only
