"""`s2s train --init-from RUN`: a new run from another run's weights, tokenizer and model shape."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from helpers import one_error_line, tiny_model_config, tiny_train_config, write_slice
from typer.testing import CliRunner

from cli.main import app
from seq2seq.data.batching import collate
from seq2seq.data.token_store import DeviceTokenStore
from seq2seq.errors import ConfigError
from seq2seq.runs import run_dir as run_dir_module
from seq2seq.runs.run_dir import load_run, read_run_config
from seq2seq.training.init_from import new_run_configs
from seq2seq.training.loss import projected_smoothed_loss
from seq2seq.training.run import train

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny run trained on the first 300 training pairs, and an "in-domain" slice it never saw."""
    folder = tmp_path_factory.mktemp("init")
    corpus = write_slice(folder / "corpus", "train", 300, "general")
    domain = write_slice(folder / "corpus", "test_2016_flickr", 120, "domain")
    torch.manual_seed(0)
    train(folder / "source", tiny_model_config(), tiny_train_config(corpus, "", epochs=0, max_steps=40), CPU)
    return folder / "source", domain


def init_from_configs(run, corpus, model_flags=None, **train_fields):
    """The configs of a new run from `run` on `corpus`, as `s2s train --init-from RUN` makes them."""
    train_flags = asdict(tiny_train_config(corpus, "", init_from=str(run), **train_fields))
    return new_run_configs(None, None, model_flags or {}, train_flags)


def slice_loss(run, prefix) -> float:
    """NLL per target token of the pairs `prefix`.{en,de} under the run's model."""
    model, tokenizers, _ = load_run(run, CPU)
    src = [line.rstrip("\n") for line in open(f"{prefix}.en", encoding="utf-8")]
    tgt = [line.rstrip("\n") for line in open(f"{prefix}.de", encoding="utf-8")]
    store = lambda ids: DeviceTokenStore(pa.array(ids, type=pa.list_(pa.int32())), CPU)
    eos = tokenizers.src.eos_id
    batch = collate(store([ids + [eos] for ids in tokenizers.src.encode(src)]),
                    store([ids + [eos] for ids in tokenizers.tgt.encode(tgt)]),
                    torch.arange(len(src)).numpy(), model.cfg.pad_id, model.cfg.bos_id)
    with torch.no_grad():
        nll = projected_smoothed_loss(model.teacher_forced_states(batch.src, batch.tgt_in), model.tgt_embed.weight,
                                      batch.tgt_out, model.cfg.pad_id, 0.0)[1]
    return nll.item() / batch.n_tgt_tokens


def test_fine_tuning_on_an_in_domain_slice_lowers_its_loss(source, tmp_path):
    run, domain = source
    events = []
    model_cfg, cfg = init_from_configs(run, domain, epochs=0, max_steps=30, log_every=1)
    train(tmp_path / "tuned", model_cfg, cfg, CPU, on_event=events.append)
    assert slice_loss(tmp_path / "tuned", domain) < slice_loss(run, domain) - 0.3
    # It started from the run's weights: its first update's loss is the run's, far below a fresh model's.
    fresh = []
    train(tmp_path / "fresh", tiny_model_config(), replace(cfg, init_from="", tokenizer=str(run)), CPU,
          on_event=fresh.append)
    first = lambda records: next(r["loss"] for r in records if r["event"] == "train")
    assert first(events) < first(fresh) - 1.0
    # A fresh optimizer and schedule: the first update is at the first warm-up step's learning rate.
    assert next(r for r in events if r["event"] == "train")["step"] == 1
    assert first_lr(events) == pytest.approx(cfg.lr / cfg.warmup_steps)
    tuned, original = read_run_config(tmp_path / "tuned"), read_run_config(run)
    assert tuned.model == original.model and tuned.tokenizer_sha256 == original.tokenizer_sha256
    assert tuned.train.init_from == str(run.resolve()) and tuned.train.tokenizer == str(run.resolve())


def first_lr(events) -> float:
    return next(r["lr"] for r in events if r["event"] == "train")


def test_the_command_takes_the_runs_model_and_lets_dropout_change(source, tmp_path):
    run, domain = source
    result = runner.invoke(app, ["train", "--init-from", str(run), "--run", str(tmp_path / "tuned"), "--train", domain,
                                 "--valid", "", "--max-steps", "3", "--epochs", "0", "--max-tokens", "600",
                                 "--max-len", "64", "--dropout", "0.3", "--log-every", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "starting from the weights of" in result.stderr
    tuned, original = read_run_config(tmp_path / "tuned"), read_run_config(run)
    assert tuned.model == replace(original.model, dropout=0.3)
    # And --resume of that run continues it, with the same command.
    more = runner.invoke(app, ["train", "--init-from", str(run), "--run", str(tmp_path / "tuned"), "--train", domain,
                               "--valid", "", "--max-steps", "5", "--epochs", "0", "--max-tokens", "600",
                               "--max-len", "64", "--dropout", "0.3", "--log-every", "1", "--device", "cpu", "--resume"])
    assert more.exit_code == 0, more.output
    steps = [json.loads(line).get("step") for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 5


def fails(*args) -> str:
    return one_error_line(runner.invoke(app, ["train", *map(str, args), "--device", "cpu", "--max-steps", "1"]))


@pytest.mark.parametrize("flags, fragment", [
    (["--d-model", "64"], "d_model (the run has 32, given 64)"),
    (["--preset", "tiny"], "these differ: d_model"),
    (["--decoder-layers", "2", "--positions", "rope"], "decoder_layers (the run has 1, given 2); positions"),
    (["--n-heads", "4"], "n_heads"),
])
def test_another_model_shape_is_refused_naming_it(source, tmp_path, flags, fragment):
    run, domain = source
    message = fails("--init-from", run, "--run", tmp_path / "tuned", "--train", domain, "--valid", "", *flags)
    assert fragment in message and "--init-from" in message
    assert not (tmp_path / "tuned").exists()


def test_another_tokenizer_is_refused(source, tmp_path):
    run, domain = source
    other = tmp_path / "other"
    assert runner.invoke(app, ["tokenizer", "train", "--corpus", domain, "-o", str(other), "--vocab-size", "150"]
                         ).exit_code == 0
    assert "is not the tokenizer of --init-from" in fails("--init-from", run, "--run", tmp_path / "tuned", "--train",
                                                          domain, "--valid", "", "--tokenizer", other)
    assert not (tmp_path / "tuned").exists()


def test_what_is_not_a_run_is_refused(source, tmp_path, exported_run):
    run, domain = source
    for folder in (tmp_path, tmp_path / "missing", exported_run):
        assert "run directory" in fails("--init-from", folder, "--run", tmp_path / "tuned", "--train", domain,
                                        "--valid", "")


@pytest.mark.parametrize("inside", ["", "sub"])
def test_the_new_run_never_lands_in_the_run_it_starts_from(source, tmp_path, inside):
    run, domain = source
    before = sorted(p.name for p in run.rglob("*"))
    fails("--init-from", run, "--run", run / inside, "--train", domain, "--valid", "")
    assert sorted(p.name for p in run.rglob("*")) == before


def test_the_library_refuses_as_the_command_does(source, tmp_path):
    run, domain = source
    with pytest.raises(ConfigError, match="ffn_dim"):
        init_from_configs(run, domain, {"ffn_dim": 128})


def test_the_configs_are_the_runs_with_what_is_given_over_them(source, tmp_path):
    """One resolution: the run's model config in the defaults' place, under a config file, a preset's
    absence and flags alike; its tokenizer as the new run's; without init_from, the plain merge."""
    run, domain = source
    original = read_run_config(run)
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"model": {"dropout": 0.25}, "train": {"lr": 1e-4}}))
    model_cfg, train_cfg = new_run_configs(config_file, None, {"attention_dropout": 0.05},
                                           {"train": domain, "init_from": str(run)})
    assert model_cfg == replace(original.model, dropout=0.25, attention_dropout=0.05)
    assert (train_cfg.lr, train_cfg.tokenizer, train_cfg.init_from) == (1e-4, str(run), str(run))
    plain_model, plain_train = new_run_configs(config_file, None, {}, {"train": domain})
    assert plain_model.d_model != original.model.d_model and plain_train.tokenizer == ""


def test_the_command_opens_the_run_it_starts_from_once(source, tmp_path, monkeypatch):
    run, domain = source
    opened = []
    real_open_run = run_dir_module.open_run

    def counting_open_run(folder, *args, **kwargs):
        opened.append(Path(folder).resolve())
        return real_open_run(folder, *args, **kwargs)

    monkeypatch.setattr(run_dir_module, "open_run", counting_open_run)
    result = runner.invoke(app, ["train", "--init-from", str(run), "--run", str(tmp_path / "tuned"), "--train", domain,
                                 "--valid", "", "--max-steps", "1", "--epochs", "0", "--max-tokens", "600",
                                 "--max-len", "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert opened.count(run.resolve()) == 1
