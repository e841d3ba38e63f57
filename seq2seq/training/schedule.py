"""What the update count decides: the learning rate of each update, how many updates a run plans,
and when Performer's random features are redrawn.

Everything here is a pure function of the config and the step, which is what
lets a resumed run do exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig, TrainConfig
from ..model.transformer import Seq2SeqTransformer


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` updates, then decay with 1/sqrt(step)."""
    step = max(step, 1)
    if warmup == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def cosine_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak` over `warmup` updates, then half a cosine down to 0 after update `total`."""
    step = max(step, 1)
    if step <= warmup:
        return peak * step / warmup
    progress = min((step - warmup) / (total - warmup + 1), 1.0) if total > warmup else 1.0
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(cfg: TrainConfig, step: int, planned: int) -> float:
    """The learning rate of update `step` (counted from 1) under `cfg.lr_schedule`; `planned` is
    the run's total updates (`planned_updates`), where the cosine reaches 0."""
    if cfg.lr_schedule == "cosine":
        return cosine_lr(step, cfg.lr, cfg.warmup_steps, planned)
    return inverse_sqrt_lr(step, cfg.lr, cfg.warmup_steps)


def planned_updates(cfg: TrainConfig, updates_per_epoch: int) -> int:
    """Updates until epochs or max_steps runs out, whichever is first; 0 if neither is set."""
    total = updates_per_epoch * cfg.epochs if cfg.epochs else 0
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if total else cfg.max_steps
    return total


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
