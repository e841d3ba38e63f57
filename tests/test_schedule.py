import json
import math
import time
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_model_config, tiny_train_config, write_slice

from seq2seq.config import ModelConfig, TrainConfig
from seq2seq.runs.checkpoint import CHECKPOINTS_DIR, LAST_POINTER, TRAINER_JSON, read_trainer_state
from seq2seq.runs.weights import shape_of
from seq2seq.training.run import make_trainer, train
from seq2seq.training.schedule import (
    DECAYS,
    TrainingTime,
    cosine_lr,
    inverse_sqrt_lr,
    learning_rate,
    planned_updates,
    redraw_features_if_due,
)
from seq2seq.training.validation import FINAL_VALIDATION_MARGIN

CPU = torch.device("cpu")
DECAYING = ["cosine", "linear"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 300, "train"), write_slice(folder, "val", 30, "val")


def decaying_config(shape: str, **budget) -> TrainConfig:
    return tiny_train_config("t", "", lr=2.0, warmup_steps=10, lr_schedule=shape, **{"epochs": 0, **budget})


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


def test_the_decays_fall_from_the_peak_to_zero_cosine_slow_then_fast_linear_evenly():
    for decay in DECAYS.values():
        assert (decay(0.0), decay(0.5), decay(1.0)) == pytest.approx((1.0, 0.5, 0.0))
    assert DECAYS["linear"](0.25) == 0.75 and DECAYS["linear"](0.75) == 0.25
    assert DECAYS["cosine"](0.25) == pytest.approx(0.8536, abs=1e-4)
    assert DECAYS["cosine"](0.75) == pytest.approx(0.1464, abs=1e-4)


def test_the_config_chooses_the_schedule():
    cfg = tiny_train_config("t", "", lr=2.0, warmup_steps=10)
    assert learning_rate(cfg, 40, planned=100) == inverse_sqrt_lr(40, 2.0, 10)
    assert learning_rate(cfg, 40, planned=100, time_used=0.9) == inverse_sqrt_lr(40, 2.0, 10)  # no clock
    cosine = tiny_train_config("t", "", lr=2.0, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate(cosine, 40, planned=100) == pytest.approx(cosine_lr(40, 2.0, 10, 100))


@pytest.mark.parametrize("shape", DECAYING)
def test_by_updates_the_rate_warms_up_then_decays_to_zero_after_the_last_planned_update(shape):
    cfg = decaying_config(shape, max_steps=110)
    lrs = [learning_rate(cfg, step, planned=110) for step in range(1, 112)]
    assert lrs[:10] == pytest.approx([2.0 * step / 10 for step in range(1, 11)])  # linear warm-up
    assert all(later < earlier for earlier, later in pairwise(lrs[9:110]))
    assert lrs[59] == pytest.approx(2.0 * DECAYS[shape](50 / 101))  # update 60: 50 of 101 decay updates
    assert 0 < lrs[109] < 0.02 * 2.0  # the last planned update still learns a little
    assert lrs[110] == 0.0  # past the plan (a resumed run given more updates)


@pytest.mark.parametrize("shape", DECAYING)
def test_by_time_the_rate_decays_with_the_share_of_the_training_time_used(shape):
    cfg = decaying_config(shape, max_time=100.0)
    assert learning_rate(cfg, 500, planned=0, time_used=0.0) == 2.0
    assert learning_rate(cfg, 500, planned=0, time_used=0.25) == pytest.approx(2.0 * DECAYS[shape](0.25))
    assert learning_rate(cfg, 500, planned=0, time_used=0.5) == pytest.approx(1.0)
    assert learning_rate(cfg, 500, planned=0, time_used=1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", DECAYING)
def test_with_updates_and_time_the_rate_follows_whichever_is_further_along(shape):
    cfg = decaying_config(shape, max_steps=110, max_time=100.0)
    by_updates = 2.0 * DECAYS[shape](50 / 101)  # update 60 of 110, after 10 of warm-up
    assert learning_rate(cfg, 60, planned=110, time_used=0.2) == pytest.approx(by_updates)
    assert learning_rate(cfg, 60, planned=110, time_used=0.8) == pytest.approx(2.0 * DECAYS[shape](0.8))
    assert learning_rate(cfg, 110, planned=110, time_used=1.0) == pytest.approx(0.0, abs=1e-12)  # time ran out


@pytest.mark.parametrize("shape", DECAYING)
def test_warm_up_stays_linear_in_updates_and_the_time_decay_multiplies_it(shape):
    """Time used during warm-up already decays the rate, so it never jumps when warm-up ends."""
    cfg = decaying_config(shape, max_time=100.0)
    assert learning_rate(cfg, 5, planned=0, time_used=0.3) == pytest.approx(2.0 * 0.5 * DECAYS[shape](0.3))
    end_of_warm_up, after = (learning_rate(cfg, step, planned=0, time_used=0.3) for step in (10, 11))
    assert end_of_warm_up == pytest.approx(after) == pytest.approx(2.0 * DECAYS[shape](0.3))
    # A warm-up longer than the time budget still ends at 0.
    assert learning_rate(cfg, 5, planned=0, time_used=1.0) == pytest.approx(0.0, abs=1e-12)


def test_training_time_counts_from_the_start_of_training_against_the_time_left_then():
    clock = TrainingTime()
    start = clock.started
    assert clock.seconds(start + 25) == pytest.approx(25)
    assert clock.fraction(start, start + 100) == 0.0
    assert clock.fraction(start + 25, start + 100) == pytest.approx(0.25)
    assert clock.fraction(start + 100, start + 100) == clock.fraction(start + 150, start + 100) == 1.0
    assert clock.fraction(start + 25, math.inf) == 0.0  # no time budget
    assert clock.fraction(start, start) == 1.0  # data preparation took all the time there was


def test_a_resumed_run_continues_the_curve_against_its_new_budget():
    straight = TrainingTime()
    # Stopped after 40 of its 100 s, then resumed with the 60 s that were left: the same curve.
    resumed = TrainingTime(earlier=straight.seconds(straight.started + 40))
    for t in (0, 10, 30, 60):
        assert resumed.fraction(resumed.started + t, resumed.started + 60) == pytest.approx(
            straight.fraction(straight.started + 40 + t, straight.started + 100))
    # Resumed with 160 s more: its 40 s count against 200.
    assert resumed.fraction(resumed.started + 20, resumed.started + 160) == pytest.approx(60 / 200)


@pytest.mark.parametrize("epochs, max_steps, planned", [(3, 0, 30), (0, 25, 25), (3, 25, 25), (2, 25, 20), (0, 0, 0)])
def test_planned_updates_end_at_the_first_budget_to_run_out(epochs, max_steps, planned):
    cfg = tiny_train_config("t", "", epochs=epochs, max_steps=max_steps)
    assert planned_updates(cfg, updates_per_epoch=10) == planned


@pytest.mark.parametrize("with_validation, average_last, final_validations", [(True, 0, 1), (True, 2, 2), (False, 2, 0)])
def test_the_time_budget_ends_where_training_stops_for_its_final_validations(
        corpus, tmp_path, with_validation, average_last, final_validations):
    """The schedule's end is the moment `Validation.time_is_up` stops training: the deadline less
    the final validations (the last weights', and the average's), each given the last one's seconds
    with a margin."""
    train_prefix, valid_prefix = corpus
    cfg = tiny_train_config(train_prefix, valid_prefix if with_validation else "", max_time=100.0,
                            lr_schedule="cosine", average_last=average_last)
    (tmp_path / "run").mkdir()
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), cfg, CPU)
    trainer.validation.training_time = TrainingTime(earlier=9.5)  # as if resumed after 9.5 s of training
    trainer.validation.seconds = 10.0
    reserved = final_validations * 10.0 * FINAL_VALIDATION_MARGIN
    trainer.validation.deadline = trainer.validation.training_time.started + reserved + 0.5  # 0.5 s of training left
    assert not trainer.validation.time_is_up()
    assert trainer.validation.time_used() == pytest.approx(0.95, abs=0.01)  # 9.5 s of 10
    trainer.validation.deadline = time.monotonic() + reserved - 0.01
    assert trainer.validation.time_is_up() and trainer.validation.time_used() == 1.0


def test_a_cosine_run_with_a_time_budget_anneals_to_near_zero_by_its_last_update(corpus, tmp_path,
                                                                              one_torch_thread):
    """No update count at all: the rate falls with the clock, and the last update, just before the
    final validation, is taken in the last tenth of the training time. One torch thread: a model
    this small only waits on more, and many updates fit in the budget even on a busy machine."""
    train_prefix, valid_prefix = corpus
    cfg = tiny_train_config(train_prefix, valid_prefix, epochs=0, max_time=6.0, warmup_steps=5, log_every=1,
                            lr_schedule="cosine")
    events = []
    result = train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    assert result.stop_reason == "max_time" and result.step > 20
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    after_warm_up = lrs[5:]
    assert after_warm_up[0] > 0.8 * cfg.lr
    # A validation that ran faster than the one before moves the end a little later.
    assert all(later <= earlier + 0.01 * cfg.lr for earlier, later in pairwise(after_warm_up))
    assert lrs[-1] < cfg.lr * DECAYS["cosine"](0.9)


def test_the_training_time_is_saved_and_a_resume_goes_on_from_it(corpus, tmp_path):
    train_prefix, _ = corpus
    run = tmp_path / "run"
    cfg = tiny_train_config(train_prefix, "", epochs=0, max_steps=3)
    train(run, tiny_model_config(), cfg, CPU)
    model_cfg = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    state = read_trainer_state(run, shape_of(model_cfg))
    assert state.progress["training_seconds"] > 0
    trainer = make_trainer(run, model_cfg, cfg, CPU)
    trainer.resume(state)
    assert trainer.validation.training_time.earlier == state.progress["training_seconds"]
    # A trainer state saved before training time was counted still resumes; its time starts at 0.
    trainer_json = state.folder / TRAINER_JSON
    progress = json.loads(trainer_json.read_text())
    del progress["training_seconds"]
    trainer_json.write_text(json.dumps(progress))
    result = train(run, model_cfg, tiny_train_config(train_prefix, "", epochs=0, max_steps=5), CPU, resume=True)
    assert result.step == 5
    last = json.loads((run / CHECKPOINTS_DIR / LAST_POINTER).read_text())["dir"]
    assert json.loads((run / CHECKPOINTS_DIR / last / TRAINER_JSON).read_text())["training_seconds"] > 0


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
