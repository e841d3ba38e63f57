from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_train_config

from seq2seq.training.schedule import cosine_lr, inverse_sqrt_lr, learning_rate, planned_updates, redraw_features_if_due


def test_schedule_warms_up_then_decays():
    assert inverse_sqrt_lr(1, 1.0, 100) == pytest.approx(0.01)
    assert inverse_sqrt_lr(100, 1.0, 100) == pytest.approx(1.0)
    assert inverse_sqrt_lr(400, 1.0, 100) == pytest.approx(0.5)


def test_cosine_schedule_warms_up_then_falls_to_zero_at_the_last_update():
    assert cosine_lr(50, 1.0, 100, 1100) == pytest.approx(0.5)
    assert cosine_lr(100, 1.0, 100, 1100) == pytest.approx(1.0)
    assert cosine_lr(600, 1.0, 100, 1100) == pytest.approx(0.5, abs=1e-3)  # halfway through the decay
    assert 0 < cosine_lr(1100, 1.0, 100, 1100) < 1e-5
    assert cosine_lr(5000, 1.0, 100, 1100) == 0.0  # past the plan (a resumed run with more steps)


def test_the_config_chooses_the_schedule():
    cfg = tiny_train_config("t", "", lr=2.0, warmup_steps=10)
    assert learning_rate(cfg, 40, planned=100) == inverse_sqrt_lr(40, 2.0, 10)
    cosine = tiny_train_config("t", "", lr=2.0, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate(cosine, 40, planned=100) == cosine_lr(40, 2.0, 10, 100)


@pytest.mark.parametrize("epochs, max_steps, planned", [(3, 0, 30), (0, 25, 25), (3, 25, 25), (2, 25, 20), (0, 0, 0)])
def test_planned_updates_end_at_the_first_budget_to_run_out(epochs, max_steps, planned):
    cfg = tiny_train_config("t", "", epochs=epochs, max_steps=max_steps)
    assert planned_updates(cfg, updates_per_epoch=10) == planned


def test_features_are_redrawn_on_schedule_from_the_seed_and_step():
    draws = []
    model = SimpleNamespace(redraw_random_features=lambda generator: draws.append(torch.rand(1, generator=generator)))
    performer = SimpleNamespace(attention="performer", performer_redraw_every=5)
    for step in range(1, 11):
        redraw_features_if_due(model, performer, seed=3, step=step)
    assert len(draws) == 2 and not torch.equal(draws[0], draws[1])
    again = []
    model.redraw_random_features = lambda generator: again.append(torch.rand(1, generator=generator))
    redraw_features_if_due(model, performer, seed=3, step=10)  # a resumed run draws what it would have
    assert torch.equal(again[0], draws[1])
    redraw_features_if_due(model, SimpleNamespace(attention="softmax", performer_redraw_every=5), seed=3, step=10)
    redraw_features_if_due(model, SimpleNamespace(attention="performer", performer_redraw_every=0), seed=3, step=10)
    assert len(again) == 1
