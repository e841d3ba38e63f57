import json
import math
import time
from dataclasses import replace

import pytest
import torch
from helpers import assert_resumes_exactly, tiny_model_config, tiny_train_config, write_slice
from safetensors.torch import load_file

from seq2seq.config import ModelConfig
from seq2seq.errors import ConfigError, RunDirError
from seq2seq.training.run import train
from seq2seq.training.schedule import cosine_lr

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 300, "train"), write_slice(folder, "val", 60, "val")


def test_training_writes_a_complete_run_and_the_loss_falls(corpus, tmp_path):
    train_prefix, valid_prefix = corpus
    events = []
    result = train(tmp_path / "run", tiny_model_config(), tiny_train_config(train_prefix, valid_prefix, epochs=3),
                   CPU, on_event=events.append)
    run = tmp_path / "run"
    for name in ("config.json", "tokenizer.model", "model.safetensors", "metrics.jsonl", "checkpoints/last.json"):
        assert (run / name).is_file(), name
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    valids = [e for e in events if e["event"] == "valid"]
    assert len(valids) == 3 and all("valid_bleu" in v for v in valids)
    assert result.stop_reason == "epochs" and result.best is not None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["event"] for r in records} == {"data", "batch_shapes", "train", "valid", "stop"}  # data: the pairs of each split
    stop = records[-1]  # why and where the run ended; ranks' weight hashes only under torchrun
    assert (stop["event"], stop["reason"], stop["step"], stop["rank_weights_sha256"]) == (
        "stop", "epochs", result.step, [])
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["src_vocab_size"] == 200
    assert "tokenizer.model" in config["tokenizer_sha256"]
    with pytest.raises(RunDirError, match="already holds a run"):
        train(run, tiny_model_config(), tiny_train_config(train_prefix, valid_prefix), CPU)


@pytest.mark.parametrize("valid_every", [0, 4])  # at each epoch's end; every 4 updates
def test_early_stopping_ends_the_run_wherever_it_validates(corpus, tmp_path, valid_every):
    """A learning rate too small to change a translation: the second validation is no better than
    the first, and with patience 1 the run stops right there, its model the first one's."""
    train_prefix, valid_prefix = corpus
    events = []
    cfg = tiny_train_config(train_prefix, valid_prefix, epochs=0, max_steps=200, lr=1e-9, warmup_steps=1,
                            valid_every=valid_every, patience=1, early_stop_metric="bleu", valid_beam=1,
                            valid_bleu_sentences=10)
    result = train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    every = valid_every or next(e for e in events if e["event"] == "start")["updates_per_epoch"]
    assert [e["step"] for e in events if e["event"] == "valid"] == [every, 2 * every]
    assert (result.stop_reason, result.step, result.best["step"]) == ("early_stopping", 2 * every, every)


def test_resume_is_exact(corpus, tmp_path):
    """N steps, stop, resume N more == 2N steps straight: same losses, same weights."""
    train_prefix, valid_prefix = corpus
    cfg = tiny_train_config(train_prefix, valid_prefix, epochs=0, log_every=1)
    # 9 steps stops mid-epoch, so resume must restore the position inside the epoch.
    assert_resumes_exactly(cfg, tmp_path, stop=9, end=16)


def test_a_compiled_step_computes_what_the_eager_one_does(corpus, tmp_path):
    """--compile changes how the step runs, not what it computes (dropout off to compare)."""
    train_prefix, _ = corpus
    cfg = tiny_train_config(train_prefix, "", epochs=0, max_steps=4, log_every=1)
    model = replace(tiny_model_config(), dropout=0.0)
    eager, compiled = [], []
    train(tmp_path / "eager", model, cfg, CPU, on_event=eager.append)
    # Dynamo's counters are global to the process: start from zero, whatever ran before.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(tmp_path / "compiled", model, replace(cfg, compile=True), CPU, on_event=compiled.append)
    losses = lambda events: [e["loss"] for e in events if e["event"] == "train"]
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    # Four batches of different shapes, one graph: dynamic shapes do not recompile per shape.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_cosine_run_follows_its_schedule_to_the_last_update(corpus, tmp_path):
    train_prefix, _ = corpus
    cfg = tiny_train_config(train_prefix, "", epochs=0, max_steps=6, warmup_steps=2, log_every=1,
                            lr_schedule="cosine")
    events = []
    train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    assert lrs == pytest.approx([cosine_lr(step, cfg.lr, 2, 6) for step in range(1, 7)])
    assert lrs[-1] < 0.1 * cfg.lr  # 0.095 x peak: the last update still learns a little


def test_resume_refuses_a_changed_config(corpus, tmp_path):
    train_prefix, valid_prefix = corpus
    cfg = tiny_train_config(train_prefix, "", max_steps=3)
    train(tmp_path / "run", tiny_model_config(), cfg, CPU)
    with pytest.raises(ConfigError, match="only epochs"):
        train(tmp_path / "run", tiny_model_config(), replace(cfg, lr=1.0), CPU, resume=True)
    # Each changed field is named with its saved and given values; the budget may change.
    saved_model = ModelConfig(**json.loads((tmp_path / "run" / "config.json").read_text())["model"])
    with pytest.raises(ConfigError) as refused:
        train(tmp_path / "run", replace(saved_model, d_model=64), replace(cfg, lr=1.0, max_steps=5, patience=2),
              CPU, resume=True)
    assert str(refused.value) == (
        f"{tmp_path / 'run'}: resuming with a config other than the saved one; only epochs, max_steps, max_time "
        "and patience may change, but these differ: d_model (saved 32, given 64); lr (saved 0.003, given 1.0)")
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(tmp_path / "other", tiny_model_config(), cfg, CPU, resume=True)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(tmp_path / "run", tiny_model_config(), cfg, CPU)


def test_max_time_stops_cleanly_and_keeps_a_model(corpus, tmp_path):
    train_prefix, valid_prefix = corpus
    result = train(tmp_path / "run", tiny_model_config(),
                   tiny_train_config(train_prefix, valid_prefix, epochs=0, max_time=0.5), CPU)
    assert result.stop_reason == "max_time"
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_separate_vocabularies_untie_the_embeddings_and_translate(corpus, tmp_path):
    from seq2seq.config import DecodeConfig
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer
    from seq2seq.search.translator import Translator

    train_prefix, valid_prefix = corpus
    train_tokenizer(load_corpus(train_prefix, "en", "de"), tmp_path / "tok", vocab_size=150, shared=False)
    cfg = tiny_train_config(train_prefix, valid_prefix, tokenizer=str(tmp_path / "tok"), max_steps=3)
    train(tmp_path / "run", tiny_model_config(), cfg, CPU)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["share_embeddings"] is False
    assert set(config["tokenizer_sha256"]) == {"tokenizer.src.model", "tokenizer.tgt.model"}
    translator = Translator.from_run(tmp_path / "run", CPU, DecodeConfig(beam=2, max_len_b=5))
    assert translator.model.src_embed is not translator.model.tgt_embed
    out = translator.translate(["A dog runs.", "", "Two men."])
    assert len(out) == 3 and out[1] == ""


@pytest.fixture(scope="module")
def shared_tokenizer(corpus, tmp_path_factory):
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(load_corpus(corpus[0], "en", "de"), folder, vocab_size=200)
    return str(folder)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("attention", ["softmax", "performer"])
def test_every_position_and_attention_variant_trains(corpus, shared_tokenizer, tmp_path, positions, attention):
    model_cfg = replace(tiny_model_config(), positions=positions, attention=attention,
                        performer_features=32, performer_redraw_every=5)
    events = []
    train(tmp_path / "run", model_cfg,
          tiny_train_config(corpus[0], "", tokenizer=shared_tokenizer, epochs=0, max_steps=25, log_every=1),
          CPU, on_event=events.append)
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 25 and all(map(math.isfinite, losses))
    # Single batches are noisy: compare the mean of the first and last five updates.
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"]["positions"], config["model"]["attention"]) == (positions, attention)


def test_a_performer_run_translates_with_the_features_it_saved(corpus, shared_tokenizer, tmp_path):
    from seq2seq.config import DecodeConfig
    from seq2seq.search.translator import Translator

    model_cfg = replace(tiny_model_config(), positions="rope", attention="performer",
                        performer_in="encoder,decoder", performer_features=16, performer_redraw_every=4)
    train(tmp_path / "run", model_cfg,
          tiny_train_config(corpus[0], corpus[1], tokenizer=shared_tokenizer, epochs=0, max_steps=8,
                            valid_every=4, valid_bleu_sentences=10), CPU)
    snapshots = sorted((tmp_path / "run" / "checkpoints" / "weights").glob("*.safetensors"))
    features = [{k: v for k, v in load_file(str(path)).items() if k.endswith("random_features")}
                for path in snapshots]
    # Encoder and decoder self-attention have features; softmax cross-attention has none.
    assert len(features) == 2 and len(features[0]) == 2
    assert not any("cross_attn" in name for name in features[0])
    # Redrawn between the snapshots at steps 4 and 8.
    assert all(not torch.equal(features[0][k], features[1][k]) for k in features[0])

    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    translator = Translator.from_run(tmp_path / "run", CPU, DecodeConfig(beam=3, max_len_b=8))
    loaded = translator.model.state_dict()
    for name, value in saved.items():
        if name.endswith("random_features"):
            assert torch.equal(loaded[name], value), name
    lines = ["A dog runs in the park.", "", "Two men are talking."]
    out = translator.translate(lines)
    assert len(out) == 3 and out[1] == ""
    assert out == Translator.from_run(tmp_path / "run", CPU, DecodeConfig(beam=3, max_len_b=8)).translate(lines)


@pytest.mark.parametrize("average_last, validations_reserved", [(0, 1), (1, 1), (2, 2), (5, 2)])
def test_the_time_budget_leaves_room_for_each_final_validation(average_last, validations_reserved):
    """--max-time stops training early enough for the last weights' validation and, with
    --average-last, the average's: an average left unvalidated at the deadline is never kept."""
    from types import SimpleNamespace

    from seq2seq.training.validation import FINAL_VALIDATION_MARGIN, Validation

    assert FINAL_VALIDATION_MARGIN > 1  # a validation may take longer than the one before
    now = time.monotonic()
    for has_data, reserved in ((True, validations_reserved * 30.0 * FINAL_VALIDATION_MARGIN), (False, 0.0)):
        validation = SimpleNamespace(cfg=SimpleNamespace(average_last=average_last), has_data=has_data, seconds=30.0,
                                     deadline=now + 1000.0)
        # time_is_up and the time-based schedule both end training where training_ends says.
        assert Validation.training_ends(validation) == now + 1000.0 - reserved
        validation.training_ends = lambda: Validation.training_ends(validation)
        validation.deadline = now + reserved + 5  # 5 s before training must stop
        assert not Validation.time_is_up(validation)
        validation.deadline = now + reserved - 5  # 5 s after
        assert Validation.time_is_up(validation)
