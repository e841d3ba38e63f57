import json

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.errors import RunDirError
from seq2seq.files.run_layout import CHECKPOINTS_DIR
from seq2seq.model.transformer import build_model
from seq2seq.runs.checkpoint import (
    LAST_POINTER,
    has_trainer_state,
    load_trainer_state,
    remove_unfinished_writes,
    rng_tensors,
    save_trainer_state,
)

CFG = ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, ffn_dim=32,
                  encoder_layers=1, decoder_layers=1)


def trained_a_little(seed: int):
    torch.manual_seed(seed)
    model = build_model(CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_trainer_state_round_trips_weights_optimizer_rng_and_progress(tmp_path):
    model, optimizer = trained_a_little(0)
    save_trainer_state(tmp_path, model, optimizer, {"step": 1, "epoch": 1, "position": 5})
    expected_draw = torch.rand(3)
    other, other_optimizer = trained_a_little(1)
    assert load_trainer_state(tmp_path, other, other_optimizer) == {"step": 1, "epoch": 1, "position": 5,
                                                                 "rng_restored": True}
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where the saved run was
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    saved, loaded = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert all(torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) for i in saved)


def test_each_rank_resumes_its_own_random_stream(tmp_path):
    """Under torchrun rank 0 writes the state of every rank; each rank reads back its own, and a
    rank the saving run did not have is told so (the trainer seeds it)."""
    model, optimizer = trained_a_little(0)
    streams, next_draws = [], []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        streams.append(rng_tensors())
        next_draws.append(torch.rand(3))
    save_trainer_state(tmp_path, model, optimizer, {"step": 1}, rank_rng=streams)
    for rank in (1, 0):
        torch.manual_seed(7)
        assert load_trainer_state(tmp_path, model, optimizer, rank)["rng_restored"] is True
        assert torch.equal(torch.rand(3), next_draws[rank])
    assert load_trainer_state(tmp_path, model, optimizer, rank=2)["rng_restored"] is False


def test_only_the_newest_states_are_kept_and_last_json_points_at_the_newest(tmp_path):
    model, optimizer = trained_a_little(0)
    for step in (2, 4, 6):
        save_trainer_state(tmp_path, model, optimizer, {"step": step}, keep=2)
    root = tmp_path / CHECKPOINTS_DIR
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000004", "step_00000006"]
    assert json.loads((root / LAST_POINTER).read_text()) == {"dir": "step_00000006"}


def test_unfinished_writes_are_removed_and_the_last_state_is_kept(tmp_path):
    model, optimizer = trained_a_little(0)
    save_trainer_state(tmp_path, model, optimizer, {"step": 2})
    root = tmp_path / CHECKPOINTS_DIR
    (root / "step_00000004").mkdir()  # killed while writing a newer state
    (tmp_path / ".model.safetensors.tmp").write_text("half")
    remove_unfinished_writes(tmp_path)
    assert [p.name for p in root.glob("step_*")] == ["step_00000002"]
    assert not (tmp_path / ".model.safetensors.tmp").exists()
    assert has_trainer_state(tmp_path)


def test_a_missing_or_unreadable_state_is_a_clear_error(tmp_path):
    model, optimizer = trained_a_little(0)
    assert not has_trainer_state(tmp_path)
    with pytest.raises(RunDirError, match="nothing to resume"):
        load_trainer_state(tmp_path, model, optimizer)
    save_trainer_state(tmp_path, model, optimizer, {"step": 2})
    (tmp_path / CHECKPOINTS_DIR / "step_00000002" / "trainer.json").write_text("{")
    with pytest.raises(RunDirError, match="trainer state is unreadable"):
        load_trainer_state(tmp_path, model, optimizer)
