"""Training one model for several directions (issue 28): the shared balanced tokenizer, the tags
encoded as inference reads them, batches that mix directions at a temperature, BLEU per direction,
and the rules of bilingual runs (inputs never written over, exact resume) for multilingual ones."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import ROOT, assert_resumes_exactly, make_untrained_multilingual_run, tiny_model_config, tiny_train_config, write_slice

from seq2seq.config import DecodeConfig, TrainConfig
from seq2seq.data.batching import EpochBatches, collate, direction_shares, sample_directions
from seq2seq.data.corpora import language_texts, load_directions
from seq2seq.data.directions import language_tag
from seq2seq.data.encode import TAG_COLUMNS, encode_corpus, filter_pairs, given_target_tokens, tag_lengths
from seq2seq.data.token_store import DeviceTokenStore
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, _balanced_sample, load_tokenizers, train_balanced_tokenizer
from seq2seq.errors import TokenizerError
from seq2seq.inspection.metrics_records import BadRecord, check_record
from seq2seq.inspection.summary import describe
from seq2seq.inspection.tensorboard import scalars
from seq2seq.runs.run_dir import read_run_config
from seq2seq.search.translator import Translator
from seq2seq.training.batches import TrainingBatches
from seq2seq.training.inputs import refuse_run_over_inputs, training_reads
from seq2seq.training.run import train

CPU = torch.device("cpu")
LANGS = ("en", "de", "fr")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    """Aligned en, de, fr slices of Multi30k: (train prefix, valid prefix)."""
    folder = tmp_path_factory.mktemp("multilingual-corpus")
    return (write_slice(folder, "train", 200, "train", LANGS), write_slice(folder, "val", 24, "val", LANGS))


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory) -> Path:
    """An untrained en->{de,fr} run with source tags, whose tokenizer has <2de> and <2fr>."""
    return make_untrained_multilingual_run(tmp_path_factory.mktemp("tagged"), lang_tag="source")


# ---------------------------------------------------------------------------
# The shared tokenizer


def test_each_language_gives_the_tokenizer_as_many_sentences(tmp_path):
    """A language with less text is repeated up to the others' share, never outweighed."""
    en = datasets.Dataset.from_dict({"src": [f"english sentence {i}" for i in range(90)]})
    cs = datasets.Dataset.from_dict({"tgt": [f"česká věta {i}" for i in range(15)]})
    sample = _balanced_sample({"en": (en, "src"), "cs": (cs, "tgt")}, 1000, random.Random(1))
    assert sum(s.startswith("english") for s in sample) == sum(s.startswith("česká") for s in sample) == 90
    assert {s for s in sample if s.startswith("česká")} == set(cs["tgt"])
    # A sample size below the corpus: an equal share each.
    small = _balanced_sample({"en": (en, "src"), "cs": (cs, "tgt")}, 20, random.Random(1))
    assert sum(s.startswith("english") for s in small) == sum(s.startswith("česká") for s in small) == 10


def test_a_multilingual_tokenizer_reads_each_language_once_and_has_each_tag(corpus, tmp_path):
    directions = [("en", "de"), ("en", "fr")]
    parts = load_directions(corpus[0], directions)
    sources, targets = language_texts(directions, parts)
    assert list(sources) == ["en"] and list(targets) == ["de", "fr"]
    tokenizers = train_balanced_tokenizer(sources, targets, tmp_path, vocab_size=300,
                                          control_symbols=[language_tag("de"), language_tag("fr")])
    tokenizer = tokenizers.src
    assert tokenizers.shared
    assert [tokenizer.piece_id(language_tag(lang)) for lang in ("de", "fr")] == [4, 5]
    # Text never encodes to a tag: a source line cannot choose the language.
    assert not {4, 5} & set(sum(tokenizer.encode(["<2fr> a dog <2de>"]), []))
    with pytest.raises(TokenizerError, match="<2cs>"):
        tokenizer.piece_id(language_tag("cs"))


def test_the_tokenizer_command_trains_a_balanced_tagged_tokenizer(corpus, tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "s2s"), "tokenizer", "train", "--corpus", corpus[0],
                           "--src", "en", "--tgt", "de,fr", "--vocab-size", "300", "-o", str(tmp_path / "tok")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pieces = load_tokenizers(tmp_path / "tok").src.pieces()
    assert language_tag("de") in pieces and language_tag("fr") in pieces


# ---------------------------------------------------------------------------
# Encoding: the tag where inference puts it


@pytest.mark.parametrize("lang_tag", ["source", "target"])
def test_training_encodes_the_tag_where_translating_puts_it(tagged_run, corpus, lang_tag):
    """Source tag: tag, pieces, EOS in the source; target tag: tag, pieces, EOS in the target (the decoder
    is then fed BOS, tag, y1, ... as the search forces it)."""
    tokenizers = load_tokenizers(tagged_run)
    parts = load_directions(corpus[1], [("en", "de"), ("en", "fr")], tag_column=TAG_COLUMNS[lang_tag])
    joined = datasets.concatenate_datasets(parts)
    encoded = encode_corpus(joined, tokenizers)
    for row, lang in ((0, "de"), (len(parts[0]), "fr")):
        tag = [tokenizers.src.piece_id(language_tag(lang))]
        src_pieces, tgt_pieces = tokenizers.src.encode([joined[row]["src"]])[0], tokenizers.tgt.encode([joined[row]["tgt"]])[0]
        assert encoded[row]["src_ids"] == (tag if lang_tag == "source" else []) + src_pieces + [EOS_ID]
        assert encoded[row]["tgt_ids"] == (tag if lang_tag == "target" else []) + tgt_pieces + [EOS_ID]


def test_the_translator_reads_the_tag_id_training_wrote(tagged_run, corpus):
    """The run's Translator (what validation and `s2s translate` use) asks with the same id."""
    translator = Translator.from_run(tagged_run, "cpu", DecodeConfig(tgt_lang="fr"))
    assert translator.tag.on_source
    assert translator.tag.id == load_tokenizers(tagged_run).src.piece_id(language_tag("fr"))


def test_a_side_with_only_its_tag_is_empty_and_dropped(tagged_run, tmp_path):
    (tmp_path / "c.en").write_text("a dog runs\n\nthe cat\n")
    (tmp_path / "c.de").write_text("ein hund\nnichts\n\n")
    (tmp_path / "c.fr").write_text("un chien\nrien\nun chat\n")
    parts = load_directions(str(tmp_path / "c"), [("en", "de"), ("en", "fr")], tag_column="tgt_tag")
    joined = datasets.concatenate_datasets(parts)
    assert tag_lengths(joined) == (0, 1)
    kept, report = filter_pairs(encode_corpus(joined, load_tokenizers(tagged_run)), 64, tags=tag_lengths(joined))
    assert (report.kept, report.empty) == (3, 3)
    assert len(kept) == 3


def test_a_bilingual_corpus_gets_no_tag_column(corpus):
    [pairs] = load_directions(corpus[0], [("en", "de")], tag_column="")
    assert pairs.column_names == ["src", "tgt"]
    assert tag_lengths(pairs) == (0, 0)


# ---------------------------------------------------------------------------
# Batches: the forced target tag is fed, never predicted; directions mixed at a temperature


def store(rows: list[list[int]]) -> DeviceTokenStore:
    import pyarrow as pa

    return DeviceTokenStore(pa.array(rows, type=pa.list_(pa.int32())))


def test_the_decoder_is_fed_the_forced_tag_and_no_loss_falls_on_it():
    src = store([[7, 8, EOS_ID], [9, EOS_ID]])
    tgt = store([[5, 10, 11, EOS_ID], [4, 12, EOS_ID]])  # a tag (5, 4), then the pieces
    index = np.array([0, 1])
    batch = collate(src, tgt, index, PAD_ID, BOS_ID, given=1)
    # What inference feeds: BOS, the tag, then the output so far.
    assert batch.tgt_in.tolist() == [[BOS_ID, 5, 10, 11], [BOS_ID, 4, 12, PAD_ID]]
    assert batch.tgt_out.tolist() == [[PAD_ID, 10, 11, EOS_ID], [PAD_ID, 12, EOS_ID, PAD_ID]]
    assert batch.n_tgt_tokens == 5
    plain = collate(src, tgt, index, PAD_ID, BOS_ID)
    assert plain.tgt_out[:, 0].tolist() == [5, 4] and plain.n_tgt_tokens == 7


@pytest.mark.parametrize(("lang_tag", "tgt_lang", "given"),
                         [("target", "de,fr", 1), ("source", "de,fr", 0), ("target", "de", 0)])
def test_only_a_forced_target_tag_is_given(lang_tag, tgt_lang, given):
    assert given_target_tokens(lang_tag, tgt_lang) == given


def test_a_direction_share_goes_as_its_size_to_the_one_over_t():
    sizes = np.array([900, 100])
    assert np.allclose(direction_shares(sizes, 1.0), [0.9, 0.1])
    assert np.allclose(direction_shares(sizes, 2.0), [30 / 40, 10 / 40])
    assert np.allclose(direction_shares(sizes, 1e9), [0.5, 0.5], atol=1e-6)


def test_an_epoch_at_a_temperature_upsamples_the_small_direction():
    directions = np.array([0] * 900 + [1] * 100, dtype=np.int16)
    rows = sample_directions(directions, 2.0, np.random.default_rng(3))
    assert len(rows) == 1000
    counts = np.bincount(directions[rows])
    assert counts.tolist() == [750, 250]
    small = rows[directions[rows] == 1]
    assert set(small.tolist()) == set(range(900, 1000))  # every pair of the small direction, twice or three times
    assert np.bincount(small - 900).min() >= 2


def lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, 30, n).astype(np.int32), rng.integers(3, 30, n).astype(np.int32)


def test_temperature_one_trains_every_pair_once_as_a_bilingual_run_does():
    src, tgt = lengths(500)
    directions = np.repeat(np.arange(2, dtype=np.int16), [400, 100])
    mixed = EpochBatches(src, tgt, 300, seed=5, directions=directions, temperature=1.0)
    plain = EpochBatches(src, tgt, 300, seed=5)
    assert [b.tolist() for b in mixed.epoch(2)] == [b.tolist() for b in plain.epoch(2)]


def test_an_epoch_drawn_at_a_temperature_is_a_function_of_seed_and_epoch():
    src, tgt = lengths(500)
    directions = np.repeat(np.arange(2, dtype=np.int16), [400, 100])
    first = EpochBatches(src, tgt, 300, seed=5, directions=directions, temperature=3.0)
    again = EpochBatches(src, tgt, 300, seed=5, directions=directions, temperature=3.0)
    assert [b.tolist() for b in first.epoch(4)] == [b.tolist() for b in again.epoch(4)]
    assert [b.tolist() for b in first.epoch(4)] != [b.tolist() for b in first.epoch(5)]
    trained = np.concatenate(first.epoch(4))
    assert np.bincount(directions[trained]).tolist() == np.round(
        direction_shares(np.array([400, 100]), 3.0) * 500).astype(int).tolist()


def test_training_batches_of_a_run_mix_its_directions_at_its_temperature_and_count_no_tag(corpus, tmp_path):
    from seq2seq.training.prepare import prepare_data

    cfg = tiny_train_config(*corpus, tgt_lang="de,fr", lang_tag="target", lang_temperature=2.0)
    data = prepare_data(tmp_path, cfg, CPU, lambda event: None)
    assert len(data.train_directions) == len(data.train_src) and set(data.train_directions.tolist()) == {0, 1}
    batches = TrainingBatches.for_data(data, cfg)
    assert batches.directions is data.train_directions and batches.temperature == 2.0 and batches.given == 1
    group = batches.epoch(1)[:2]
    assert batches.update_tokens(1, 0, 2) == int(sum(data.train_tgt.lengths[i].sum() - len(i) for i in group))
    assert [lines.name for lines in data.valid_lines] == ["en-de", "en-fr"]


class Inspected(Exception):
    """Raised in place of training, once the trainer is built."""


def test_the_trainer_mixes_the_directions_and_feeds_the_tag_without_loss(corpus, tmp_path, monkeypatch):
    from seq2seq.training.trainer import Trainer

    def inspect(trainer: Trainer):
        raise Inspected(trainer)

    monkeypatch.setattr(Trainer, "run", inspect)
    cfg = tiny_train_config(corpus[0], "", tgt_lang="de,fr", lang_tag="target", lang_temperature=2.0)
    with pytest.raises(Inspected) as caught:
        train(tmp_path / "run", tiny_model_config(), cfg, CPU)
    trainer = caught.value.args[0]
    assert trainer.batches.directions is trainer.data.train_directions and trainer.batches.temperature == 2.0
    index = trainer.batches.epoch(1)[0]
    batch = trainer.gradients.collate_batch(index)
    tags = {trainer.data.tokenizers.tgt.piece_id(language_tag(lang)) for lang in ("de", "fr")}
    assert set(batch.tgt_in[:, 1].tolist()) <= tags and batch.tgt_in[:, 0].eq(BOS_ID).all()
    assert batch.tgt_out[:, 0].eq(PAD_ID).all()
    assert batch.n_tgt_tokens == int(trainer.data.train_tgt.lengths[index].sum()) - len(index)


# ---------------------------------------------------------------------------
# Training end to end: BLEU per direction, wherever a validation is read


@pytest.fixture(scope="module", params=["source", "target"])
def multilingual_run(request, corpus, tmp_path_factory) -> tuple[Path, list[dict]]:
    run = tmp_path_factory.mktemp(f"run-{request.param}") / "run"
    events: list[dict] = []
    cfg = tiny_train_config(*corpus, tgt_lang="de,fr", lang_tag=request.param, epochs=1, max_len=48)
    train(run, tiny_model_config(), cfg, CPU, on_event=events.append)
    return run, events


def test_validation_reports_bleu_per_direction_and_their_mean(multilingual_run):
    run, events = multilingual_run
    [valid] = [e for e in events if e["event"] == "valid"]
    assert list(valid["valid_bleu_by_direction"]) == ["en-de", "en-fr"]
    assert valid["valid_bleu"] == pytest.approx(sum(valid["valid_bleu_by_direction"].values()) / 2)
    written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [check_record(r)["valid_bleu_by_direction"] for r in written if r["event"] == "valid"] == \
        [valid["valid_bleu_by_direction"]]
    tags = dict(scalars(valid))
    assert tags["valid/bleu"] == valid["valid_bleu"]
    assert tags["valid/bleu_en-de"] == valid["valid_bleu_by_direction"]["en-de"]
    assert tags["valid/bleu_en-fr"] == valid["valid_bleu_by_direction"]["en-fr"]
    info = describe(run)["validation"]
    assert info["best_bleu_by_direction"] == valid["valid_bleu_by_direction"]


def test_info_shows_the_best_models_bleu_per_direction(multilingual_run):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["info", str(multilingual_run[0])])
    assert result.exit_code == 0, result.output
    assert "(mean of en-de" in result.output and "en-fr" in result.output


def test_a_multilingual_run_translates_each_language_one_line_per_line(multilingual_run, corpus):
    run, _ = multilingual_run
    lines = ["A dog runs.", "", "Two men are talking outside a building with a red door."]
    for lang in ("de", "fr"):
        assert len(Translator.from_run(run, "cpu", DecodeConfig(tgt_lang=lang)).translate(lines)) == len(lines)


@pytest.mark.parametrize("bad", [{"en-de": "high"}, ["en-de", 1.0], {"en-de": float("nan")}])
def test_a_valid_record_with_a_bad_per_direction_field_is_skipped(bad):
    record = {"event": "valid", "step": 1, "epoch": 1.0, "valid_loss": 1.0, "valid_ppl": 2.7, "valid_bleu": 3.0,
              "bleu_signature": "s", "valid_beam": 1, "best": True, "time": 1.0}
    assert check_record(record) == record  # an older record, without it, is still read
    with pytest.raises(BadRecord, match="valid_bleu_by_direction"):
        check_record({**record, "valid_bleu_by_direction": bad})


def test_several_sources_into_one_target_train_without_tags(tmp_path):
    folder = tmp_path / "c"
    train_prefix = write_slice(folder, "train", 120, "train", LANGS)
    valid_prefix = write_slice(folder, "val", 12, "val", LANGS)
    events: list[dict] = []
    cfg = tiny_train_config(train_prefix, valid_prefix, src_lang="de,fr", tgt_lang="en", epochs=1, max_len=48)
    train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    [valid] = [e for e in events if e["event"] == "valid"]
    assert list(valid["valid_bleu_by_direction"]) == ["de-en", "fr-en"]
    assert not any(piece.startswith("<2") for piece in load_tokenizers(tmp_path / "run").src.pieces())


def test_a_tokenizer_without_the_tags_is_refused_before_training(corpus, tmp_path):
    from seq2seq.data.tokenizer import train_tokenizer
    from seq2seq.data.corpora import load_corpus

    train_tokenizer(load_corpus(corpus[0], "en", "de"), tmp_path / "tok", vocab_size=200)
    cfg = tiny_train_config(*corpus, tgt_lang="de,fr", tokenizer=str(tmp_path / "tok"))
    with pytest.raises(TokenizerError, match="<2de>, <2fr>"):
        train(tmp_path / "run", tiny_model_config(), cfg, CPU)


# ---------------------------------------------------------------------------
# The rules of every run hold for multilingual ones


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("lang", ["en", "de", "fr", "cs"])
def test_every_language_file_of_a_multilingual_run_is_an_input(corpus, tmp_path, split, lang):
    cfg = TrainConfig(train=corpus[0], valid=corpus[1], src_lang="en", tgt_lang="de,fr,cs")
    prefix = corpus[0] if split == "train" else corpus[1]
    read = {str(path) for _, path in training_reads(cfg).files}
    assert f"{prefix}.{lang}" in read and f"{prefix}.{lang}.gz" in read


@pytest.mark.parametrize("lang", ["en", "de", "fr"])
def test_a_run_never_writes_over_a_language_file_it_reads(tmp_path, lang):
    """The run's metrics.jsonl a symlink onto PREFIX.LANG of any of its languages: refused."""
    run = tmp_path / "run"
    run.mkdir()
    corpus_file = tmp_path / f"c.{lang}"
    corpus_file.write_text("x\n")
    (run / "metrics.jsonl").symlink_to(corpus_file)
    cfg = TrainConfig(train=str(tmp_path / "c"), valid="", src_lang="en", tgt_lang="de,fr")
    with pytest.raises(Exception, match=f"c.{lang}"):
        refuse_run_over_inputs(run, cfg)


def test_a_resumed_multilingual_run_equals_one_that_never_stopped(corpus, tmp_path):
    """N updates, stop, resume to 2N == 2N straight, with forced target tags and directions drawn at a temperature."""
    cfg = tiny_train_config(corpus[0], "", tgt_lang="de,fr", lang_tag="target", lang_temperature=2.0, epochs=0,
                            log_every=1)
    assert_resumes_exactly(cfg, tmp_path, stop=9, end=14)


# ---------------------------------------------------------------------------
# The bench


def test_the_bench_measures_both_tag_schemes_quickly(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "multilingual.py"), "--quick", "--device", "cpu",
                           "--out", str(tmp_path / "bench")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["measure"] == "tag_scheme" and result["quick"]
    for scheme in ("source", "target"):
        assert set(result["result"][scheme]["by_direction"]) == {"en-de", "en-fr"}
        assert read_run_config(tmp_path / "bench" / f"tag-{scheme}").train.lang_tag == scheme


@pytest.mark.parametrize(("args", "fragment"), [
    (["--tgt", "de,de"], "--tgt names a language twice"),
    (["--src", "en,en", "--tgt", "de"], "--src names a language twice"),
    (["--tgt", "de,"], "--tgt must be a language code"),
    (["--src", "de", "--tgt", "de"], "source and target language are both"),
])
def test_the_tokenizer_command_refuses_bad_languages_naming_its_options(tmp_path, args, fragment):
    from test_bad_input import fails_cleanly

    fails_cleanly(["tokenizer", "train", *args, "-o", tmp_path / "tok"], fragment)
    assert not (tmp_path / "tok").exists()
