import pytest
import torch
from helpers import tiny_model_config, tiny_train_config, write_slice
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.main import app
from seq2seq.errors import ConfigError
from seq2seq.runs.snapshots import Snapshot, average_weights, list_snapshots, select_snapshots
from seq2seq.training.run import train

CPU = torch.device("cpu")


def test_average_is_the_elementwise_mean(tmp_path):
    save_file({"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.0])}, str(tmp_path / "b.safetensors"))
    mean = average_weights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert mean["w"].tolist() == [2.0, 4.0] and mean["b"].tolist() == [0.5]


def test_performer_random_features_are_copied_from_the_last_snapshot_not_averaged(tmp_path):
    features = "encoder_layers.0.self_attn.favor.random_features"
    save_file({"w": torch.tensor([1.0]), features: torch.tensor([[1.0, -1.0]])}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.tensor([3.0]), features: torch.tensor([[0.5, 2.0]])}, str(tmp_path / "b.safetensors"))
    mean = average_weights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert mean["w"].tolist() == [2.0] and mean[features].tolist() == [[0.5, 2.0]]


def test_select_last_or_best():
    snaps = [Snapshot(None, step, bleu) for step, bleu in [(2, 10.0), (4, 30.0), (6, 20.0), (8, 25.0)]]
    assert [s.step for s in select_snapshots(snaps, last=2)] == [6, 8]
    assert [s.step for s in select_snapshots(snaps, best=2)] == [4, 8]
    with pytest.raises(ConfigError, match="exactly one"):
        select_snapshots(snaps, last=2, best=2)
    with pytest.raises(ConfigError, match="has 4"):
        select_snapshots(snaps, last=5)


def test_training_keeps_snapshots_and_averages_at_the_end(tmp_path):
    train_prefix = write_slice(tmp_path / "c", "train", 300, "train")
    valid_prefix = write_slice(tmp_path / "c", "val", 40, "val")
    events = []
    cfg = tiny_train_config(train_prefix, valid_prefix, epochs=0, max_steps=16, valid_every=2,
                            keep_snapshots=3, average_last=3)
    train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    valids = [e for e in events if e["event"] == "valid"]
    snapshots = list_snapshots(tmp_path / "run")
    newest = {e["step"] for e in valids[-3:]}
    best = {e["step"] for e in sorted(valids, key=lambda e: e["valid_bleu"], reverse=True)[:3]}
    assert {s.step for s in snapshots} == newest | best
    averages = [e for e in events if e["event"] == "average"]
    assert len(averages) == 1 and averages[0]["averaged_steps"] == "12,14,16"
    assert "valid_bleu" in averages[0]
    model = load_file(str(tmp_path / "run" / "model.safetensors"))
    average = load_file(str(tmp_path / "run" / "average.safetensors"))
    same = all(torch.equal(model[k], average[k]) for k in model)
    assert same == averages[0]["kept"]

    runner = CliRunner()
    result = runner.invoke(app, ["average", "-m", str(tmp_path / "run"), "--best", "2", "-o", "best2.safetensors"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best2.safetensors").is_file()
    translated = runner.invoke(app, ["translate", "-m", str(tmp_path / "run"), "--weights", "best2.safetensors",
                                     "--device", "cpu", "--beam", "2"], input="A dog.\n\nTwo men.\n")
    assert translated.exit_code == 0, translated.output
    assert len(translated.stdout.split("\n")) == 4
    refused = runner.invoke(app, ["average", "-m", str(tmp_path / "run"), "--last", "2", "-o", "model.safetensors"])
    assert refused.exit_code == 1 and "a file the trainer writes" in refused.stderr
