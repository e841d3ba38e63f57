"""Tokenizer training and loading, with real sentencepiece runs on Multi30k val."""

import hashlib
import re

import datasets
import pytest
import sentencepiece as spm

from seq2seq.data.corpora import load_corpus
from seq2seq.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerPair,
    load_tokenizers,
    train_tokenizer,
)
from seq2seq.errors import TokenizerError
from seq2seq.files.run_layout import SHARED_FILE, SRC_FILE, TGT_FILE

VOCAB = 200


@pytest.fixture(scope="module")
def corpus(multi30k, tmp_path_factory) -> datasets.Dataset:
    """Multi30k val, en-de: 1,014 pairs, so 2,028 sentences for a shared model."""
    return load_corpus(str(multi30k / "val"), "en", "de", cache_dir=str(tmp_path_factory.mktemp("hf")))


@pytest.fixture(scope="module")
def shared(corpus, tmp_path_factory) -> TokenizerPair:
    return train_tokenizer(corpus, tmp_path_factory.mktemp("shared"), vocab_size=VOCAB)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
@pytest.mark.parametrize("is_shared", [True, False])
def test_train_writes_models_that_load_back(corpus, tmp_path, model_type, is_shared):
    pair = train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type=model_type, shared=is_shared)

    expected = [SHARED_FILE] if is_shared else [SRC_FILE, TGT_FILE]
    vocab_files = [name.replace(".model", ".vocab") for name in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected + vocab_files)
    assert pair.shared is is_shared
    assert pair.files() == [tmp_path / name for name in expected]
    for tokenizer in (pair.src, pair.tgt):
        assert tokenizer.vocab_size == VOCAB
        assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    for vocab_file in vocab_files:
        lines = (tmp_path / vocab_file).read_text(encoding="utf-8").splitlines()
        assert len(lines) == VOCAB
        assert [line.split("\t")[0] for line in lines[:4]] == ["<pad>", "<unk>", "<s>", "</s>"]

    reloaded = load_tokenizers(tmp_path)
    assert reloaded.shared is is_shared
    assert [t.sha256 for t in (reloaded.src, reloaded.tgt)] == [t.sha256 for t in (pair.src, pair.tgt)]


def test_separate_models_learn_their_own_language(corpus, tmp_path):
    pair = train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type="bpe", shared=False)
    german = "Männer"
    # A German word costs fewer pieces under the German model.
    assert len(pair.tgt.encode([german])[0]) < len(pair.src.encode([german])[0])


def test_encode_decode_round_trip(shared, corpus):
    lines = corpus["src"][:50] + corpus["tgt"][:50] + ["", "Zwei Hunde springen über den Zaun."]
    ids = shared.src.encode(lines)
    assert len(ids) == len(lines)
    assert all(isinstance(i, int) for seq in ids for i in seq)
    assert not {BOS_ID, EOS_ID, PAD_ID} & {i for seq in ids for i in seq}
    assert ids[len(lines) - 2] == []
    assert shared.src.decode(ids) == lines
    assert shared.src.encode([]) == [] and shared.src.decode([]) == []


def test_decode_drops_pad_bos_eos(shared):
    ids = shared.tgt.encode(["Ein Hund läuft."])[0]
    padded = [[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID], [PAD_ID]]
    assert shared.tgt.decode(padded) == ["Ein Hund läuft.", ""]


def test_unknown_characters_map_to_unk(shared):
    assert UNK_ID in shared.src.encode(["\u4e2d\u6587"])[0]


def test_decode_refuses_ids_outside_the_vocabulary(shared):
    with pytest.raises(TokenizerError, match=f"cannot decode id {VOCAB}"):
        shared.src.decode([[5, VOCAB]])


def test_sha256_is_the_file_digest_and_training_is_reproducible(shared, corpus, tmp_path):
    path = shared.src.path
    assert shared.src.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert Tokenizer(path).sha256 == shared.src.sha256
    # Same data and seed give the same bytes, wherever the model is written.
    again = train_tokenizer(corpus, tmp_path / "elsewhere", vocab_size=VOCAB)
    assert again.src.sha256 == shared.src.sha256


def test_sample_size_bounds_the_training_sample(corpus, tmp_path):
    small = train_tokenizer(corpus, tmp_path / "small", vocab_size=VOCAB, sample_size=100)
    assert small.src.vocab_size == VOCAB
    # A sample of 100 sentences supports far fewer pieces than all 2,028.
    limits = {}
    for sample_size in (100, 1_000_000):
        with pytest.raises(TokenizerError, match="vocab size") as err:
            train_tokenizer(corpus, tmp_path / "big", vocab_size=100_000, sample_size=sample_size,
                            model_type="bpe")
        limits[sample_size] = int(re.search(r"at most (\d+)", str(err.value)).group(1))
    assert limits[100] < limits[1_000_000] / 3
    # The seed picks which sentences are sampled.
    reseeded = train_tokenizer(corpus, tmp_path / "reseeded", vocab_size=VOCAB, sample_size=100, seed=2)
    assert reseeded.src.sha256 != small.src.sha256


def test_vocab_size_too_large_for_the_corpus(corpus, tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab size 50000 is larger than this corpus supports "
                                             r"\(at most \d+\); lower vocab_size"):
        train_tokenizer(corpus, tmp_path, vocab_size=50_000, model_type="bpe")
    assert list(tmp_path.iterdir()) == []


def test_failed_training_leaves_the_previous_model(shared, corpus, tmp_path):
    first = train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type="bpe")
    with pytest.raises(TokenizerError):
        train_tokenizer(corpus, tmp_path, vocab_size=50_000, model_type="bpe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]
    assert Tokenizer(tmp_path / SHARED_FILE).sha256 == first.src.sha256


def test_switching_layout_removes_the_stale_files(corpus, tmp_path):
    train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type="bpe", shared=True)
    pair = train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type="bpe", shared=False)
    assert not (tmp_path / SHARED_FILE).exists()
    assert load_tokenizers(tmp_path).files() == pair.files()
    train_tokenizer(corpus, tmp_path, vocab_size=VOCAB, model_type="bpe", shared=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]


@pytest.mark.parametrize("option, message", [
    (dict(model_type="word"), "unknown tokenizer model type 'word'; choose from unigram, bpe"),
    (dict(character_coverage=0.5), "character coverage must be between 0.98 and 1, got 0.5"),
    (dict(character_coverage=1.5), "character coverage must be between 0.98 and 1, got 1.5"),
    (dict(vocab_size=4), "vocab size 4 leaves no room for text"),
    (dict(vocab_size=20), "vocab size 20 is too small to hold the \\d+ distinct characters"),
    (dict(sample_size=0), "sample size must be positive"),
])
def test_invalid_training_options(corpus, tmp_path, option, message):
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(corpus, tmp_path, **{"vocab_size": VOCAB, **option})


def test_corpus_without_text(tmp_path):
    blank = datasets.Dataset.from_dict({"src": ["", "  "], "tgt": ["\t", ""]})
    with pytest.raises(TokenizerError, match="no non-empty sentences to train the tokenizer on"):
        train_tokenizer(blank, tmp_path, vocab_size=VOCAB)
    one_sided = datasets.Dataset.from_dict({"src": ["a b c"] * 50, "tgt": [""] * 50})
    with pytest.raises(TokenizerError, match="no non-empty target sentences"):
        train_tokenizer(one_sided, tmp_path, vocab_size=8, shared=False)


def test_load_tokenizers_needs_the_expected_files(shared, tmp_path):
    with pytest.raises(TokenizerError, match=f"no tokenizer folder {tmp_path / 'missing'}"):
        load_tokenizers(tmp_path / "missing")
    with pytest.raises(TokenizerError, match=f"no tokenizer in {tmp_path}: expected {SHARED_FILE}, "
                                             f"or {SRC_FILE} and {TGT_FILE}"):
        load_tokenizers(tmp_path)
    (tmp_path / SRC_FILE).write_bytes(shared.src.path.read_bytes())
    with pytest.raises(TokenizerError, match=f"has no {TGT_FILE}"):
        load_tokenizers(tmp_path)


def test_tokenizer_refuses_files_that_are_not_models(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer model"):
        Tokenizer(tmp_path / "absent.model")
    with pytest.raises(TokenizerError, match="is a folder"):
        Tokenizer(tmp_path)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"definitely not a protobuf \xff\xfe")
    with pytest.raises(TokenizerError, match="is not a sentencepiece model"):
        Tokenizer(garbage)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="is not a sentencepiece model"):
        Tokenizer(empty)


def test_tokenizer_refuses_other_special_ids(corpus, tmp_path):
    # sentencepiece's defaults: unk=0, bos=1, eos=2, no pad.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus["src"]),
                                   model_prefix=str(tmp_path / "m"), vocab_size=VOCAB,
                                   model_type="bpe", minloglevel=2)
    with pytest.raises(TokenizerError, match="special token ids are pad=-1 unk=0 bos=1 eos=2 but s2s "
                                             "needs pad=0 unk=1 bos=2 eos=3"):
        Tokenizer(tmp_path / "m.model")
