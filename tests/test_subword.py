"""Subword regularization: each epoch trains on a segmentation drawn afresh, validation on the best one;
the draws are seeded, resume exactly, and keep every batch within its token budget."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_resumes_exactly, tiny_model_config, tiny_train_config, write_slice

from seq2seq.data.corpora import load_corpus
from seq2seq.data.encode import Sampling, encode_corpus, filter_pairs, kept_rows, sample_corpus, token_lengths
from seq2seq.data.tokenizer import EOS_ID, load_tokenizers, train_tokenizer
from seq2seq.errors import TokenizerError
from seq2seq.training.batches import TrainingBatches
from seq2seq.training.prepare import prepare_data
from seq2seq.training.run import train

CPU = torch.device("cpu")
MODEL_TYPES = pytest.mark.parametrize("model_type", ["unigram", "bpe"])  # Kudo's sampling; BPE-dropout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 300, "train"), write_slice(folder, "val", 40, "val")


@pytest.fixture(scope="module")
def tokenizer_folders(corpus, tmp_path_factory):
    """A 200-piece shared tokenizer of each model type, trained on the training slice."""
    texts = load_corpus(corpus[0], "en", "de")
    folders = {}
    for model_type in ("unigram", "bpe"):
        folders[model_type] = tmp_path_factory.mktemp(model_type)
        train_tokenizer(texts, folders[model_type], vocab_size=200, model_type=model_type)
    return folders


def sampled_config(corpus, tokenizer_folders, model_type, **overrides):
    values = {"valid": corpus[1], "tokenizer": str(tokenizer_folders[model_type]), "subword_alpha": 0.1, **overrides}
    return tiny_train_config(corpus[0], **values)


def rows(store) -> list[list[int]]:
    """Every row of a token store, as id lists."""
    padded = store.padded(np.arange(len(store)), 0)
    return [row[:n].tolist() for row, n in zip(padded, store.lengths)]


@MODEL_TYPES
def test_a_draw_is_a_function_of_its_seed_and_spells_the_same_text(corpus, tokenizer_folders, model_type):
    tokenizer = load_tokenizers(tokenizer_folders[model_type]).src
    lines = load_corpus(corpus[0], "en", "de")["src"][:100]
    draw = tokenizer.sample(lines, 0.1, -1, seed=5)
    assert tokenizer.sample(lines, 0.1, -1, seed=5) == draw
    assert tokenizer.sample(lines, 0.1, -1, seed=6) != draw
    assert draw != tokenizer.encode(lines)  # another segmentation than the best
    assert tokenizer.decode(draw) == tokenizer.decode(tokenizer.encode(lines))  # of the same text


@MODEL_TYPES
def test_an_epochs_draw_is_repeatable_differs_by_epoch_and_keeps_every_pair_within_max_len(
        corpus, tokenizer_folders, model_type, tmp_path):
    tokenizers = load_tokenizers(tokenizer_folders[model_type])
    texts = load_corpus(corpus[0], "en", "de")
    best_src, best_tgt = token_lengths(encode_corpus(texts, tokenizers))
    # A max_len that the best segmentation of most pairs fits and many draws would not.
    max_len = int(np.percentile(np.maximum(best_src, best_tgt), 90))
    texts = texts.select(kept_rows(encode_corpus(texts, tokenizers), max_len))
    sampling = Sampling(alpha=0.1, nbest_size=-1, seed=3, epoch=2, max_len=max_len)

    def draw(name, sampling=sampling, num_proc=1):
        return sample_corpus(texts, tokenizers, sampling, tmp_path / name / "ids.arrow", num_proc=num_proc)

    first = draw("a")
    assert first["src_ids"] == draw("b")["src_ids"] and first["tgt_ids"] == draw("b")["tgt_ids"]
    assert draw("c", num_proc=2)["tgt_ids"] == draw("d", num_proc=2)["tgt_ids"]
    assert draw("e", replace(sampling, epoch=3))["src_ids"] != first["src_ids"]
    best = encode_corpus(texts, tokenizers)
    for side, column in (("src", "src_ids"), ("tgt", "tgt_ids")):
        ids = first[column]
        assert all(row[-1] == EOS_ID and 1 < len(row) <= max_len for row in ids)
        assert tokenizers.src.decode(ids) == tokenizers.src.decode(best[column])
        # Draws are longer than the best segmentation, and those over max_len keep the best one.
        assert sum(map(len, ids)) > sum(map(len, best[column]))
        kept_best = [row == best_row for row, best_row in zip(ids, best[column])]
        assert any(kept_best)


def test_validation_has_the_best_segmentation_and_training_a_drawn_one(corpus, tokenizer_folders, tmp_path):
    cfg = sampled_config(corpus, tokenizer_folders, "unigram")
    (tmp_path / "run").mkdir()
    data = prepare_data(tmp_path / "run", cfg, CPU, lambda event: None)
    try:
        best_valid, _ = filter_pairs(encode_corpus(load_corpus(corpus[1], "en", "de"), data.tokenizers), cfg.max_len)
        assert rows(data.valid_src) == best_valid["src_ids"] and rows(data.valid_tgt) == best_valid["tgt_ids"]
        best_train, _ = filter_pairs(encode_corpus(load_corpus(corpus[0], "en", "de"), data.tokenizers), cfg.max_len)
        drawn = rows(data.train_tgt)
        assert len(drawn) == len(best_train) and drawn != best_train["tgt_ids"]
        # The same pairs, in the same order: each row spells the text of the best segmentation's row.
        assert data.tokenizers.tgt.decode(drawn) == data.tokenizers.tgt.decode(best_train["tgt_ids"])
    finally:
        data.segmentations.close()


@MODEL_TYPES
def test_every_epochs_batches_hold_the_budget_of_its_own_lengths(corpus, tokenizer_folders, model_type, tmp_path):
    cfg = sampled_config(corpus, tokenizer_folders, model_type, max_tokens=300)
    (tmp_path / "run").mkdir()
    data = prepare_data(tmp_path / "run", cfg, CPU, lambda event: None)
    segmentations = data.segmentations
    assert segmentations.scratch in scratch_folders()  # beside the corpus's cache
    try:
        batches = TrainingBatches(data.train_src.lengths, data.train_tgt.lengths, cfg.max_tokens, cfg.seed)
        planned = len(batches)
        epochs = []
        for epoch in (1, 2, 3):
            src, tgt = segmentations.stores(epoch)
            batches.use_lengths(src.lengths, tgt.lengths)
            epochs.append(rows(tgt))
            cut = batches.epoch(epoch)
            assert sorted(np.concatenate(cut).tolist()) == list(range(len(src)))  # every pair, once
            for index in cut:
                padded = len(index) * max(src.padded(index, 0).shape[1], tgt.padded(index, 0).shape[1])
                assert padded <= cfg.max_tokens
            assert len(batches) == planned  # the run plans by the first epoch's batches
        assert epochs[0] != epochs[1] != epochs[2]
    finally:
        segmentations.close()
    assert not segmentations.scratch.exists()


def test_a_sampled_run_trains_each_epoch_on_its_own_draw_and_leaves_no_scratch(corpus, tokenizer_folders, tmp_path):
    events = []
    cfg = sampled_config(corpus, tokenizer_folders, "unigram", valid="", epochs=3, max_tokens=1200)
    result = train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    assert [e["epoch"] for e in events if e["event"] == "segmentation"] == [1, 2, 3]
    assert result.stop_reason == "epochs" and result.epochs == 3.0
    assert not scratch_folders()


def scratch_folders() -> list[Path]:
    """The subword scratch folders in this test session's datasets cache."""
    import datasets

    return list(Path(datasets.config.HF_DATASETS_CACHE).rglob("s2s-subword-*"))


def test_a_run_that_stops_before_the_epoch_it_drew_removes_its_scratch(corpus, tokenizer_folders, tmp_path):
    """max_steps ends the run in its first epoch, once the second is drawn or being drawn."""
    before = set(scratch_folders())
    train(tmp_path / "run", tiny_model_config(), sampled_config(corpus, tokenizer_folders, "unigram", epochs=0,
                                                                max_steps=2), CPU)
    assert set(scratch_folders()) <= before


@MODEL_TYPES
def test_a_resumed_sampled_run_equals_one_that_never_stopped(corpus, tokenizer_folders, model_type, tmp_path):
    """N steps, stop in the second epoch, resume to 2N == 2N straight: same losses, same weights."""
    cfg = sampled_config(corpus, tokenizer_folders, model_type, valid="", epochs=0, log_every=1, max_tokens=1200)

    def mid_second_epoch(straight: list[dict]) -> int:
        per_epoch = next(e for e in straight if e["event"] == "start")["updates_per_epoch"]
        assert 30 > 2 * per_epoch  # the resumed run draws a third epoch too
        return per_epoch + per_epoch // 2  # mid-way through the second epoch, whose draw is not the first's

    assert_resumes_exactly(cfg, tmp_path, stop=mid_second_epoch, end=30)


def test_a_sampled_epoch_has_more_batches_than_the_best_segmentation(corpus, tokenizer_folders, tmp_path):
    """Batches are cut from the drawn lengths, which are longer: more of them fill an epoch."""
    cfg = sampled_config(corpus, tokenizer_folders, "unigram", valid="", epochs=0, max_steps=1)
    sampled, best = [], []
    train(tmp_path / "sampled", tiny_model_config(), cfg, CPU, on_event=sampled.append)
    train(tmp_path / "best", tiny_model_config(), replace(cfg, subword_alpha=0.0), CPU, on_event=best.append)
    assert not [e for e in best if e["event"] == "segmentation"]
    per_epoch = lambda events: next(e for e in events if e["event"] == "start")["updates_per_epoch"]
    assert per_epoch(sampled) > per_epoch(best)


@pytest.mark.parametrize("flags, fragment", [
    (["--subword-alpha", "-0.1"], "--subword-alpha must be in [0, 1]"),
    (["--subword-alpha", "1.5"], "--subword-alpha must be in [0, 1]"),
    (["--subword-alpha", "0.1", "--subword-nbest", "0"], "--subword-nbest must be -1 (all)"),
    (["--subword-alpha", "0.1", "--subword-nbest", "-2"], "--subword-nbest must be -1 (all)"),
    (["--subword-alpha", "0.1", "--subword-nbest", "1"], "--subword-nbest must be -1 (all) or at least 2"),
])
def test_bad_subword_flags_are_refused_before_training(corpus, tmp_path, flags, fragment):
    from test_bad_input import fails_cleanly

    fails_cleanly(["train", "--run", tmp_path / "r", "--train", corpus[0], "--valid", "", "--vocab-size", "150",
                   "--device", "cpu", *flags], fragment)
    assert not (tmp_path / "r" / "checkpoints").exists()


@MODEL_TYPES
@pytest.mark.parametrize("nbest_size", [1, 0, -2])
def test_sampling_among_fewer_than_two_segmentations_is_refused(tokenizer_folders, model_type, nbest_size):
    """Sampling among the single best segmentation would train on the best one, unannounced."""
    with pytest.raises(TokenizerError, match=r"-1 \(all\) or at least 2"):
        load_tokenizers(tokenizer_folders[model_type]).src.sample(["a dog runs"], 0.1, nbest_size, seed=1)
