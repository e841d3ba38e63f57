import dataclasses
import json
import subprocess
import sys

import pytest

from seq2seq.config import FORMAT_VERSION, DecodeConfig, ModelConfig, RunConfig, TrainConfig
from seq2seq.config_fields import settable_fields
from seq2seq.config_merge import from_dict, resolve_train_configs, run_config_from_json
from seq2seq.errors import ConfigError


def test_round_trip_through_json():
    config = RunConfig(model=ModelConfig(d_model=64, n_heads=2), train=TrainConfig(lr=5e-4, betas=(0.9, 0.99)),
                       tokenizer_sha256={"tokenizer.model": "ab"})
    again = run_config_from_json(json.loads(config.to_json()), "config.json")
    assert again == config
    assert again.train.betas == (0.9, 0.99)
    assert json.loads(config.to_json())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("data, message", [
    ({"d_model": 64, "n_heads": 5}, "must divide"),
    ({"d_model": -1}, "must be positive"),
    ({"d_modle": 64}, "unknown key"),
    ({"d_model": "big"}, "must be of type int"),
    ({"share_embeddings": 1}, "must be of type bool"),
    ({"norm": "middle"}, "must be one of"),
    ({"dropout": 1.5}, r"in \[0, 1\)"),
    ({"positions": "alibi"}, "must be one of"),
    ({"attention": "performer", "performer_in": ""}, "performer_in must list"),
    ({"attention": "performer", "performer_redraw_every": -1}, "must not be negative"),
    ({"positions": "rope", "d_model": 6, "n_heads": 2}, "must be even"),
])
def test_bad_model_config_is_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data)


def test_bad_train_config_is_refused():
    with pytest.raises(ConfigError, match="same|both"):
        from_dict(TrainConfig, {"src_lang": "en", "tgt_lang": "en"})
    with pytest.raises(ConfigError, match="max_tokens"):
        from_dict(TrainConfig, {"max_tokens": 10, "max_len": 100})


@pytest.mark.parametrize("beam, message", [(0, "at least 1"), (-3, "at least 1")])
def test_bad_decode_config(beam, message):
    with pytest.raises(ConfigError, match=message):
        DecodeConfig(beam=beam)


def test_future_format_version_is_refused():
    with pytest.raises(ConfigError, match="format version 99"):
        run_config_from_json({"format_version": 99}, "config.json")


def test_flags_beat_preset_beats_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"d_model": 64, "n_heads": 2, "dropout": 0.3},
                                "train": {"lr": 0.01, "epochs": 3}}))
    model, train = resolve_train_configs(path, "tiny", {"dropout": 0.2}, {"epochs": 7})
    assert model.d_model == 128  # preset over file
    assert model.dropout == 0.2  # flag over file
    assert train.lr == 0.01 and train.epochs == 7


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match=r"c\.json: train: unknown key\(s\) learning_rate"):
        resolve_train_configs(path, None, {}, {})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_train_configs(path, None, {}, {})
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_train_configs(None, "huge", {}, {})


def test_a_config_from_before_the_variants_loads_with_their_defaults():
    model = from_dict(ModelConfig, {"d_model": 64, "n_heads": 2})
    assert (model.positions, model.attention, model.performer_places()) == ("sinusoidal", "softmax", set())


def test_performer_options_need_performer_attention():
    with pytest.raises(ConfigError, match="performer_features only applies to Performer attention; add attention performer"):
        resolve_train_configs(None, None, {"performer_features": 64}, {})
    model, _ = resolve_train_configs(None, None, {"attention": "performer", "performer_in": "cross,encoder"}, {})
    assert model.performer_places() == {"cross", "encoder"}


def test_a_version_1_run_config_loads_with_renamed_keys():
    loaded = run_config_from_json({"format_version": 1, "train": {"valid_bleu_max": 50}}, "config.json")
    assert loaded.train.valid_bleu_sentences == 50 and loaded.format_version == FORMAT_VERSION
    with pytest.raises(ConfigError, match="unknown key"):
        run_config_from_json({"format_version": 2, "train": {"valid_bleu_max": 50}}, "config.json")


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig, DecodeConfig])
def test_every_field_is_described_beside_it(cls):
    """The command line's flags, defaults and help come from these (cli/options.py)."""
    for field in dataclasses.fields(cls):
        assert field.metadata["help"].strip() and field.metadata["group"], field.name
    derived = {f.name for f in dataclasses.fields(cls)} - {f.name for f in settable_fields(cls)}
    assert derived == ({"src_vocab_size", "tgt_vocab_size", "pad_id", "unk_id", "bos_id", "eos_id"}
                       if cls is ModelConfig else set())


def test_config_and_errors_load_without_torch():
    """The CLI imports these to build its options; they must not make `s2s --help` load torch."""
    check = "import sys, seq2seq.config, seq2seq.errors; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
