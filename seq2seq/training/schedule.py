"""What the update count and the clock decide: the learning rate of each update, how many updates a
run plans, and when Performer's random features are redrawn.

inverse_sqrt is a pure function of the config and the step, which is what lets
a resumed run do exactly what an uninterrupted one would have. cosine and linear
decay to 0 at the end of the run: its last planned update, or with max_time the
moment training must stop for its final validations, whichever is further along.
The same recipe then anneals fully on a slow CPU, a fast one and a GPU. By
updates, a resumed run is still exact; by time, it goes on from the training time
its checkpoint saved (`TrainingTime`), though no two runs spend time alike.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..config import ModelConfig, TrainConfig
from ..model.transformer import Seq2SeqTransformer

# How cosine and linear fall, from 1 at progress 0 to 0 at progress 1.
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
}


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` updates, then decay with 1/sqrt(step)."""
    step = max(step, 1)
    if warmup == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def warmup_ramp(step: int, warmup: int) -> float:
    """The share of the peak that warm-up gives update `step`: step / warmup, then 1."""
    return min(max(step, 1) / warmup, 1.0) if warmup else 1.0


def update_fraction(step: int, warmup: int, total: int) -> float:
    """How far update `step` is through a decay planned to end after update `total`: 0 until warm-up
    ends, then (step - warmup) / (total - warmup + 1), so that the last planned update still learns
    a little and the one after it would get 0; 1 after warm-up for a plan that ends within it; always
    0 without a plan (`total` 0)."""
    if not total:
        return 0.0
    if total <= warmup:
        return 1.0 if step > warmup else 0.0
    return min(max(step - warmup, 0) / (total - warmup + 1), 1.0)


def decayed_lr(shape: str, step: int, peak: float, warmup: int, progress: float) -> float:
    """Linear warm-up to `peak` over `warmup` updates, times `shape`'s decay (DECAYS) at `progress`:
    the peak at 0, nothing at 1. The product keeps the rate continuous when a time budget's
    progress has begun before warm-up ends."""
    return peak * warmup_ramp(step, warmup) * DECAYS[shape](progress)


def cosine_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """By updates alone: linear warm-up to `peak` over `warmup` updates, then half a cosine down to 0
    after update `total`."""
    return decayed_lr("cosine", step, peak, warmup, update_fraction(step, warmup, total))


def learning_rate(cfg: TrainConfig, step: int, planned: int, time_used: float = 0.0) -> float:
    """The learning rate of update `step` (counted from 1) under `cfg.lr_schedule`.

    `planned` is the run's total updates (`planned_updates`; 0 for no plan) and
    `time_used` the share of its training time the run had used when the update
    began (`TrainingTime.fraction`; 0 without max_time). inverse_sqrt uses neither.
    cosine and linear decay by whichever is further along: `update_fraction` or
    `time_used`, so the rate reaches 0 at the end of the run, whatever ends it.
    """
    if cfg.lr_schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, cfg.lr, cfg.warmup_steps)
    progress = max(update_fraction(step, cfg.warmup_steps, planned), time_used)
    return decayed_lr(cfg.lr_schedule, step, cfg.lr, cfg.warmup_steps, progress)


def planned_updates(cfg: TrainConfig, updates_per_epoch: int) -> int:
    """Updates until epochs or max_steps runs out, whichever is first; 0 if neither is set."""
    total = updates_per_epoch * cfg.epochs if cfg.epochs else 0
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if total else cfg.max_steps
    return total


class TrainingTime:
    """How long a run has trained, across resumes, and what share of its training time that is.

    Counted on time.monotonic() from when this process began to train (made
    after data preparation, which counts against max_time too and has already
    shortened the time left), plus the seconds the resumed checkpoint had saved
    (`earlier`). Validations and checkpoints count; the time between an
    interruption and its resume does not.
    """

    def __init__(self, earlier: float = 0.0):
        self.started = time.monotonic()
        self.earlier = earlier  # seconds trained before this process took the run over

    def seconds(self, now: float) -> float:
        """Seconds of training up to `now`, a time.monotonic() value."""
        return self.earlier + now - self.started

    def fraction(self, now: float, ends: float) -> float:
        """seconds(now) / seconds(ends): the share of the run's training time used by `now`, when
        training must stop at `ends` (time.monotonic(); math.inf for no time budget, which gives 0).
        A resumed run's share counts its earlier seconds against its earlier seconds plus the time
        it has left now. 1 at and after `ends`."""
        available = self.seconds(ends)
        return min(self.seconds(now) / available, 1.0) if available > 0 else 1.0


def redraw_features_if_due(model: Seq2SeqTransformer, model_cfg: ModelConfig, seed: int, step: int) -> None:
    """Fresh FAVOR+ random features every `performer_redraw_every` updates.

    The draw is seeded by the run's seed and the step, so every DDP rank
    draws the same features, and a resumed run draws what an uninterrupted
    one would have.
    """
    every = model_cfg.performer_redraw_every
    if model_cfg.attention == "performer" and every and step % every == 0:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        model.redraw_random_features(generator)
