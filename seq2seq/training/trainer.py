"""The training loop: teacher forcing with label smoothing, AdamW, a warmed-up learning rate.

A `Trainer` trains one run on data prepared before it is made
(seq2seq.training.prepare) and reports through the run's events
(seq2seq.training.events). `seq2seq.training.run.train()` makes it, gives it
the weights it starts from (fresh, --init-from's, or a checkpoint's) and runs it.

Under `torchrun` every rank trains on its own shard of each epoch's batches
through DistributedDataParallel; rank 0 alone writes files and validates.

This module is the loop and what it alone needs. Its parts answer their own
questions elsewhere: batches (the token budget), schedule (the learning rate,
planned updates), loss, bad_updates (non-finite updates, running out of
memory), validation (scores, early stopping, the weights kept as the model),
events (what the run reports), distributed (ranks), seq2seq.runs.checkpoint
(trainer state for exact resume).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data.shape_ladder import shape_ladder
from ..device import Precision
from ..errors import TrainingInterrupted
from ..model.flops import training_flops
from ..model.transformer import Seq2SeqTransformer, build_model, count_parameters
from ..runs.checkpoint import TrainerState, restore_trainer_state, rng_tensors, save_trainer_state
from .bad_updates import NonFiniteUpdates, OutOfMemorySplits, check_finite_weights
from .batches import TrainingBatches
from .distributed import (
    StopAgreement,
    data_parallel,
    gather_for_checkpoint,
    rank_and_world_size,
    rank_zeros_decision,
    rank_zeros_signal,
    seed_dropout,
    wait_for_all_ranks,
)
from .epoch_start import EpochStart
from .events import LogInterval, RunEvents
from .loss import TrainingObjective, UpdateGradients
from .prepare import PreparedData
from .schedule import TrainingTime, learning_rate, planned_updates, redraw_features_if_due
from .stop_signals import StopSignals
from .validation import Validation


@dataclass
class UpdateOutcome:
    tokens: int  # target tokens the update processed
    flops: int  # model FLOPs of the update (seq2seq.model.flops), padding not counted
    ran: bool  # False when nothing fitted memory; a non-finite update still ran (see NonFiniteUpdates)
    # On the device, both 0 for an update skipped as non-finite: what the logged loss averages.
    loss: torch.Tensor  # summed label-smoothed loss over the update's target tokens
    loss_tokens: torch.Tensor  # those target tokens

    @classmethod
    def nothing(cls, device: torch.device) -> "UpdateOutcome":
        """An update that did not run: not even one sentence fitted memory."""
        zero = torch.zeros((), device=device)
        return cls(0, 0, ran=False, loss=zero, loss_tokens=zero)


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer updates done
    epochs: float  # epochs of data consumed
    best: dict[str, Any] | None  # the validation record of the best model, if validated
    stop_reason: str  # "epochs", "max_steps", "max_time" or "early_stopping"


class Trainer:
    """One training run into one run directory: the loop, its updates, and the state it saves."""

    def __init__(self, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
                 data: PreparedData, precision: Precision, events: RunEvents, deadline: float = math.inf):
        """`model_cfg`: fitted to `data`'s tokenizers; `deadline`: when --max-time ends the command (monotonic)."""
        self.run_dir, self.model_cfg, self.cfg, self.device = Path(run_dir), model_cfg, cfg, device
        self.data, self.precision, self.events = data, precision, events
        self.emit = events.emit
        self.rank, self.world_size = rank_and_world_size()
        self.is_main = self.rank == 0
        torch.manual_seed(cfg.seed)
        self.model: Seq2SeqTransformer = build_model(model_cfg).to(device)
        seed_dropout(cfg.seed)
        # Fused: one kernel for the whole update rather than one per tensor (bench/RESULTS.md), and
        # it skips an update on a tensor verdict (found_inf), without a host sync.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
        # The model with its loss: DDP sees every use of the weights in one forward.
        self.train_model: nn.Module = data_parallel(TrainingObjective(self.model, cfg.label_smoothing), device)
        ladder = shape_ladder(cfg.shape_ladder, device, cfg.max_len)
        self.batches = TrainingBatches.for_data(data, cfg, self.rank, self.world_size, ladder)
        self.step, self.epoch, self.position = 0, 1, 0
        self.validated_step = -1
        self.signals, self.stop_agreement = StopSignals(), StopAgreement()
        self.rank_digests: tuple[str, ...] = ()  # every rank's weights_digest at the last save (with several)
        self.validation = Validation(self.run_dir, data, cfg, self.signals, deadline)
        self.non_finite = NonFiniteUpdates(device, cfg.max_bad_updates)
        self.oom = OutOfMemorySplits(self.batches, cfg.max_len)
        self.gradients = UpdateGradients(self.train_model, data.train_src, data.train_tgt, model_cfg, cfg, device,
                                         self.world_size, ladder)
        self.epoch_start = EpochStart(data, self.batches, self.gradients, cfg, self.emit)

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.batches) / self.cfg.accum_steps)

    @property
    def epochs_done(self) -> float:
        return self.batches.epochs_done(self.epoch, self.position)

    def run(self) -> TrainResult:
        cfg, tensorboard = self.cfg, self.events.tensorboard
        self.emit({"event": "start", "run_dir": str(self.run_dir), "step": self.step,
                   "total_steps": planned_updates(cfg, self.updates_per_epoch), "updates_per_epoch": self.updates_per_epoch,
                   "params": count_parameters(self.model), "device": str(self.device), "world_size": self.world_size,
                   "max_time": cfg.max_time, "precision": self.precision.description, "init_from": cfg.init_from,
                   "tensorboard": str(tensorboard.folder) if tensorboard is not None else None})
        interval = LogInterval(self.device)
        with self.signals:
            if self.validation.pending:  # cut short before the run was stopped
                self.validate_and_save()
            if cfg.max_steps and self.step >= cfg.max_steps:  # resumed after its last update
                return self.finish("max_steps")
            while not cfg.epochs or self.epoch <= cfg.epochs:
                self.epoch_start(self.epoch)
                self.stop_agreement.start(self.validation.time_used())
                stop_reason = self.train_epoch(interval)
                if stop_reason:
                    return self.finish(stop_reason)
                self.epoch, self.position = self.epoch + 1, 0
                self.batches.start_next_epoch()
                if not cfg.valid_every and self.validation_says_stop():
                    return self.finish("early_stopping")
                self.stop_if_signalled()
            return self.finish("epochs")

    def train_epoch(self, interval: LogInterval) -> str | None:
        """Train on the epoch's batches from `self.position` on; the reason to stop the run before
        the epoch's end, if one comes ("early_stopping", "max_steps" or "max_time")."""
        cfg = self.cfg
        batches = self.batches.epoch(self.epoch)
        while self.position < len(batches):
            group = batches[self.position:self.position + cfg.accum_steps]
            upcoming = self.position + cfg.accum_steps
            self.gradients.expect(batches[upcoming] if upcoming < len(batches) else None)
            outcome = self.update(group, self.batches.update_tokens(self.epoch, self.position, cfg.accum_steps))
            self.position += len(group)
            if outcome.ran:
                interval.add(outcome)
                if self.step % cfg.log_every == 0:
                    now = time.monotonic()
                    # The host syncs with the device here and at checkpoints only.
                    self.check_non_finite()
                    record = interval.close(now, self.optimizer.param_groups[0]["lr"])
                    self.emit({"event": "train", "step": self.step, "epoch": self.epochs_done, **record})
                if cfg.valid_every and self.step % cfg.valid_every == 0 and self.validation_says_stop():
                    return "early_stopping"
            if cfg.max_steps and self.step >= cfg.max_steps:
                return "max_steps"
            # Agreed without a host sync: every rank acts on it at the same update.
            signum, out_of_time = self.stop_agreement.exchange(
                self.signals.received, bool(cfg.max_time) and self.validation.time_is_up(), self.validation.time_used())
            if signum:
                self.interrupt(signum)
            if out_of_time:
                return "max_time"
        return None

    def update(self, group: list[np.ndarray], update_tokens: int) -> UpdateOutcome:
        """One optimizer update over `group`, the pair indices of this rank's accumulated batches;
        `update_tokens`: the target tokens of the update on every rank together."""
        self.train_model.train()
        lr = learning_rate(self.cfg, self.step + 1, planned_updates(self.cfg, self.updates_per_epoch),
                           self.stop_agreement.time_used)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        accumulated = self.oom.accumulate(self.gradients, self.optimizer, list(group), update_tokens, self.step,
                                          self.emit)
        if accumulated is None:  # not even one sentence fitted
            return UpdateOutcome.nothing(self.device)
        parts, loss_sum, tokens = accumulated
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or math.inf)
        # A non-finite gradient must never reach the weights: fused AdamW leaves weights,
        # moments and its step count alone when found_inf is 1.
        bad = ~torch.isfinite(norm)
        self.optimizer.found_inf = bad.float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.non_finite.record(bad)
        self.step += 1
        redraw_features_if_due(self.model, self.model_cfg, self.cfg.seed, self.step)
        index = np.concatenate(parts)
        flops = training_flops(self.model_cfg, self.data.train_src.lengths[index], self.data.train_tgt.lengths[index])
        # The loss of a skipped update is not finite: keep it out of the logged average.
        return UpdateOutcome(tokens, flops, ran=True, loss=torch.where(bad, 0.0, loss_sum),
                             loss_tokens=torch.where(bad, 0, tokens))

    def check_non_finite(self) -> None:
        """Report skipped updates; stop after too many in a row, or on non-finite weights (a host sync)."""
        self.non_finite.check(self.step, self.run_dir, self.emit)
        check_finite_weights(self.model, self.step, self.run_dir)

    def validation_says_stop(self) -> bool:
        """`validate_and_save`, then whether early stopping ends the run: rank 0's verdict, on every rank."""
        self.validate_and_save()
        return rank_zeros_decision(self.validation.early_stopping.should_stop)

    def validate_and_save(self) -> None:
        """Validate (if there is a validation set), keep the best weights, save the trainer state."""
        self.check_non_finite()
        self.validated_step = self.step  # on every rank: finish() must agree on whether to call this
        if self.is_main:
            self.validation.validate_and_keep(self.model, self.step, self.epochs_done, self.emit)
        self.save()
        wait_for_all_ranks()
        self.stop_if_signalled()  # a signal that cut the validation short ends the run here

    def save(self) -> None:
        """Save the trainer state; called on every rank, since rank 0 writes every rank's RNG. Every
        rank's weights must be the same as rank 0's (RanksDisagree), or the state would be wrong."""
        rank_rng, self.rank_digests = gather_for_checkpoint(self.model, rng_tensors(), self.step)
        if not self.is_main:
            return
        save_trainer_state(self.run_dir, self.model, self.optimizer, rank_rng=rank_rng, progress={
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "early_stopping": self.validation.early_stopping.state(),
            "counters": {**self.oom.counters(), **self.non_finite.state()},
            **self.batches.budget(), "pending_validation": self.validation.pending,
            "training_seconds": self.validation.training_time.seconds(time.monotonic())})

    def resume(self, state: TrainerState) -> None:
        progress = restore_trainer_state(state, self.model, self.optimizer, self.rank)
        if not progress["rng_restored"]:  # saved by fewer processes: this rank has no state of its own
            seed_dropout(self.cfg.seed, progress["step"])
        self.step, self.epoch, self.position = progress["step"], progress["epoch"], progress["position"]
        self.validation.early_stopping.restore(progress["early_stopping"])
        self.non_finite.restore(progress["counters"])
        self.oom.restore(progress["counters"])
        self.batches.restore_budget(progress)
        self.validated_step = self.step
        self.validation.pending = progress.get("pending_validation", False)
        # A state saved before training time was counted: the run's time starts over here.
        self.validation.training_time = TrainingTime(progress.get("training_seconds", 0.0))
        self.emit({"event": "resume", "step": self.step, "epoch": self.epochs_done})

    def stop_if_signalled(self) -> None:
        """After a SIGINT or SIGTERM that rank 0 received: save a resumable state, then leave the loop."""
        if signum := rank_zeros_signal(self.signals.received):
            self.interrupt(signum)

    def interrupt(self, signum: int) -> None:
        """Save a resumable state and leave the loop; every rank calls it at the same update."""
        self.stop_agreement.drain()
        self.epoch_start.close()
        self.check_non_finite()  # the weights are the same on every rank, so all raise or none
        self.save()
        raise TrainingInterrupted(self.run_dir, self.step, signum)

    def finish(self, reason: str) -> TrainResult:
        self.stop_agreement.drain()
        self.epoch_start.close()  # a draw for an epoch that will not train stops
        if self.validated_step != self.step:
            self.validate_and_save()
        unvalidated = self.is_main and self.validation.keep_final_model(self.model, self.step, self.emit)
        result = TrainResult(self.run_dir, self.step, self.epochs_done, self.validation.early_stopping.best, reason)
        self.emit({"event": "stop", "reason": reason, "step": self.step, "best": self.validation.early_stopping.best,
                   "unvalidated_model": unvalidated, "rank_weights_sha256": list(self.rank_digests)})
        return result

