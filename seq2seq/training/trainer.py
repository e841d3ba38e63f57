"""The training loop: teacher forcing with label smoothing, AdamW, a warmed-up learning rate.

`train()` turns a `TrainConfig` and a `ModelConfig` into a run directory (see
`seq2seq.runs.run_dir`). It reports progress by calling `on_event` with plain
dicts, so the CLI can draw them and tests can read them; the same records go
to `metrics.jsonl`.

Under `torchrun` every rank trains on its own shard of each epoch's batches
through DistributedDataParallel; rank 0 alone writes files and validates.

This module is the loop and what it alone needs. Its parts answer their own
questions elsewhere: prepare (tokenizers and encoded data), schedule (the
learning rate, planned updates), loss, guards (non-finite updates, running
out of memory), validation (scores, early stopping, the final average),
distributed (ranks), checkpoint (trainer state for exact resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import RESUME_BUDGET_FIELDS, ModelConfig, RunConfig, TrainConfig
from ..data.batching import EpochBatches
from ..data.corpora import resolve_corpus_spec
from ..device import precision_policy
from ..errors import ConfigError, RunDirError, TrainingInterrupted
from ..files.atomic import atomic_write_text
from ..files.outputs import new_folder
from ..files.reads import Reads, is_inside, refuse_clobbering
from ..files.run_layout import CHECKPOINTS_DIR, CONFIG_FILE, RUN_FILES, WEIGHTS_FILE, Event
from ..files.run_lock import RunLock
from ..inspection.metrics_records import MetricsLog
from ..inspection.tensorboard import TensorBoardSink, refuse_tensorboard_folder, require_tensorboard, tensorboard_folder
from ..model.flops import training_flops
from ..model.transformer import Seq2SeqTransformer, build_model, count_parameters
from ..runs.checkpoint import (
    TrainerState,
    files_to_start_over,
    has_trainer_state,
    read_trainer_state,
    remove_unfinished_writes,
    restore_trainer_state,
    rng_tensors,
    save_trainer_state,
)
from ..runs.run_dir import open_run
from ..runs.snapshots import prune_snapshots, save_snapshot
from ..runs.weights import save_weights, shape_of
from .bad_updates import NonFiniteUpdates, OutOfMemorySplits, check_finite_weights
from .distributed import (
    StopAgreement,
    all_ranks_objects,
    check_same_weights,
    data_parallel,
    is_main_process,
    lost_processes_as_errors,
    rank_and_world_size,
    rank_zeros_decision,
    rank_zeros_signal,
    sum_over_ranks,
    wait_for_all_ranks,
    weights_digest,
)
from .init_from import check_init_model, init_tokenizer, load_init_weights, source_run
from .loss import TrainingObjective, UpdateGradients
from .prepare import fit_to_tokenizers, prepare_data
from .schedule import learning_rate, planned_updates, redraw_features_if_due
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


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer updates done
    epochs: float  # epochs of data consumed
    best: dict[str, Any] | None  # the validation record of the best model, if validated
    stop_reason: str  # "epochs", "max_steps", "max_time" or "early_stopping"


class LogInterval:
    """The "train" records: the loss and throughput of the updates since the last record.

    The loss stays on the device until a record is made, so logging costs one host sync per interval.
    """

    def __init__(self, device: torch.device):
        self.run_started = self.started = time.monotonic()
        self.loss_sum = torch.zeros((), device=device)
        self.loss_tokens = torch.zeros((), device=device)
        self.tokens, self.flops = 0, 0

    def add(self, outcome: UpdateOutcome) -> None:
        self.loss_sum += outcome.loss
        self.loss_tokens += outcome.loss_tokens
        self.tokens += outcome.tokens
        self.flops += outcome.flops

    def close(self, now: float, lr: float) -> dict[str, float]:
        """The interval's loss per target token and its rates, over every rank; the learning rate,
        and the seconds since the run began. The next interval starts at `now`. Every rank calls it."""
        own = torch.stack([self.loss_sum, self.loss_tokens]).tolist() + [self.tokens, self.flops]
        loss, loss_tokens, tokens, flops = sum_over_ranks(own)
        seconds = now - self.started
        # An interval whose every update was skipped as non-finite has no loss: None, never a made-up 0.
        record = {"loss": loss / loss_tokens if loss_tokens else None, "lr": lr, "tgt_tokens_per_s": tokens / seconds,
                  "model_tflops_per_s": flops / seconds / 1e12, "elapsed": now - self.run_started}
        self.loss_sum.zero_()
        self.loss_tokens.zero_()
        self.started, self.tokens, self.flops = now, 0, 0
        return record


class Trainer:
    """One training run into one run directory: the loop, its updates, and the state it saves."""

    def __init__(self, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig,
                 device: torch.device, on_event: Callable[[Event], None], started: float | None = None):
        self.run_dir, self.cfg, self.device = Path(run_dir), cfg, device
        self.precision = precision_policy(device, cfg.precision)  # refused here, before any work, if lacking
        # --max-time bounds the whole command, data preparation and validation included.
        started = time.monotonic() if started is None else started
        self.deadline = started + cfg.max_time if cfg.max_time else math.inf
        self.rank, self.world_size = rank_and_world_size()
        self.is_main = self.rank == 0
        self.on_event = on_event
        self.metrics = MetricsLog(self.run_dir)
        self.tensorboard: TensorBoardSink | None = None  # opened by train(), once the resumed step is known
        self.data = prepare_data(self.run_dir, cfg, device, self.emit)
        self.model_cfg = fit_to_tokenizers(model_cfg, self.data.tokenizers)
        if cfg.max_len > self.model_cfg.max_positions:
            raise ConfigError(f"train.max_len ({cfg.max_len}) exceeds model.max_positions "
                              f"({self.model_cfg.max_positions})")
        torch.manual_seed(cfg.seed)
        self.model: Seq2SeqTransformer = build_model(self.model_cfg).to(device)
        if cfg.init_from:  # a resumed run's checkpoint then replaces them
            load_init_weights(self.model, cfg.init_from)
        self.seed_dropout()
        # Fused: one kernel for the whole update (7% faster than foreach on 2 CPU cores), and
        # it skips an update on a tensor verdict (found_inf), without a host sync.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
        # The model with its loss: DDP sees every use of the weights in one forward.
        self.train_model: nn.Module = data_parallel(
            TrainingObjective(self.model, cfg.label_smoothing), device)
        self.batches = EpochBatches(self.data.train_src.lengths, self.data.train_tgt.lengths,
                                    cfg.max_tokens, cfg.seed, self.rank, self.world_size)
        self.step, self.epoch, self.position = 0, 1, 0
        self.validated_step = -1
        self.signals = StopSignals()
        self.stop_agreement = StopAgreement()
        self.rank_digests: tuple[str, ...] = ()  # every rank's weights_digest at the last save (with several)
        self.validation = Validation(self.data, cfg, self.signals, self.deadline)
        self.non_finite = NonFiniteUpdates(device, cfg.max_bad_updates)
        self.oom = OutOfMemorySplits(self.data.train_src.lengths, self.data.train_tgt.lengths,
                                     cfg.max_tokens, cfg.max_len, self.world_size)
        self.gradients = UpdateGradients(self.train_model, self.data.train_src, self.data.train_tgt,
                                         self.model_cfg, cfg, device, self.world_size)

    def emit(self, event: Event) -> None:
        if not self.is_main:
            return
        if event["event"] in ("data", "train", "valid", "valid_cut", "skip", "oom", "resume", "average", "stop"):
            # Wall-clock time too: bench/quality.py measures time to quality from it.
            record = {**event, "time": time.time()}
            self.metrics.write(record)
            if self.tensorboard is not None:  # the same record, so the two never disagree
                self.tensorboard.write(record)
        self.on_event(event)

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.batches) / self.cfg.accum_steps)

    @property
    def epochs_done(self) -> float:
        """Epochs of data consumed, fractional: 1.0 right after the first epoch."""
        return round(self.epoch - 1 + self.position / max(len(self.batches), 1), 3)

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.emit({"event": "start", "run_dir": str(self.run_dir), "step": self.step,
                   "total_steps": planned_updates(cfg, self.updates_per_epoch),
                   "updates_per_epoch": self.updates_per_epoch,
                   "params": count_parameters(self.model), "device": str(self.device),
                   "world_size": self.world_size, "max_time": cfg.max_time,
                   "precision": self.precision.description, "init_from": cfg.init_from,
                   "tensorboard": str(self.tensorboard.folder) if self.tensorboard is not None else None})
        interval = LogInterval(self.device)
        with self.signals:
            if self.validation.pending:  # cut short before the run was stopped
                self.validate_and_save()
            if cfg.max_steps and self.step >= cfg.max_steps:  # resumed after its last update
                return self.finish("max_steps")
            while not cfg.epochs or self.epoch <= cfg.epochs:
                shards = self.batches.shards(self.epoch)
                batches = shards[self.rank]
                while self.position < len(batches):
                    group = batches[self.position:self.position + cfg.accum_steps]
                    outcome = self.update(group, self.update_tokens(shards))
                    self.position += len(group)
                    if outcome.ran:
                        interval.add(outcome)
                    if outcome.ran and self.step % cfg.log_every == 0:
                        now = time.monotonic()
                        # The host syncs with the device here and at checkpoints only.
                        self.check_non_finite()
                        record = interval.close(now, self.optimizer.param_groups[0]["lr"])
                        self.emit({"event": "train", "step": self.step, "epoch": self.epochs_done, **record})
                    if outcome.ran and cfg.valid_every and self.step % cfg.valid_every == 0:
                        self.validate_and_save()
                        if rank_zeros_decision(self.validation.early_stopping.should_stop):
                            return self.finish("early_stopping")
                    if cfg.max_steps and self.step >= cfg.max_steps:
                        return self.finish("max_steps")
                    # Agreed without a host sync: every rank acts on it at the same update.
                    signum, out_of_time = self.stop_agreement.exchange(
                        self.signals.received, bool(cfg.max_time) and self.out_of_time())
                    if signum:
                        self.interrupt(signum)
                    if out_of_time:
                        return self.finish("max_time")
                self.epoch, self.position = self.epoch + 1, 0
                if self.oom.next_max_tokens < self.batches.max_tokens:
                    self.batches.set_max_tokens(self.oom.next_max_tokens)
                if not cfg.valid_every:
                    self.validate_and_save()
                    if rank_zeros_decision(self.validation.early_stopping.should_stop):
                        return self.finish("early_stopping")
                self.stop_if_signalled()
            return self.finish("epochs")

    def update_tokens(self, shards: list[list[np.ndarray]]) -> int:
        """Target tokens of the update at `self.position` on every rank together (`shards`: every
        rank's batches of the epoch). Each rank knows them without asking: the order is a function
        of (seed, epoch)."""
        groups = [batches[self.position:self.position + self.cfg.accum_steps] for batches in shards]
        return int(sum(self.data.train_tgt.lengths[index].sum() for group in groups for index in group))

    def update(self, group: list[np.ndarray], update_tokens: int) -> UpdateOutcome:
        """One optimizer update over `group`, the pair indices of this rank's accumulated batches;
        `update_tokens`: the target tokens of the update on every rank together."""
        self.train_model.train()
        lr = learning_rate(self.cfg, self.step + 1, planned_updates(self.cfg, self.updates_per_epoch))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        accumulated = self.oom.accumulate(self.gradients, self.optimizer, list(group), update_tokens,
                                          self.batches.max_tokens, self.step, self.emit)
        if accumulated is None:  # not even one sentence fitted
            nothing = torch.zeros((), device=self.device)
            return UpdateOutcome(0, 0, ran=False, loss=nothing, loss_tokens=nothing)
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
        """Report skipped updates since the last check; stop after too many in a row, or on
        non-finite weights. Syncs the host: called at log intervals and before anything is saved."""
        self.non_finite.check(self.step, self.run_dir, self.emit)
        check_finite_weights(self.model, self.step, self.run_dir)

    def validate_and_save(self) -> None:
        """Validate (if there is a validation set), keep the best weights, save the trainer state."""
        self.check_non_finite()
        self.validated_step = self.step  # on every rank: finish() must agree on whether to call this
        if self.is_main:
            has_valid = self.validation.has_data
            record = self.validation.validate(self.model, self.step, self.epochs_done) if has_valid else None
            if record is not None and record["event"] == "valid_cut":
                self.emit(record)  # nothing was measured: no weights to choose, no snapshot
            else:
                # With nothing to choose by, the latest weights are the model.
                if record is None or record["best"]:
                    save_weights(self.model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(self.step)})
                if record is not None:
                    self.emit(record)
                if self.cfg.keep_snapshots:
                    save_snapshot(self.model, self.run_dir, self.step, record and record["valid_bleu"])
                    prune_snapshots(self.run_dir, self.cfg.keep_snapshots)
        self.save()
        wait_for_all_ranks()
        self.stop_if_signalled()  # a signal that cut the validation short ends the run here

    def out_of_time(self) -> bool:
        """True once training must stop for its final validations, each as long as the last one,
        to end by the --max-time deadline: the last weights', and with --average-last the
        average's (unvalidated, it could not be kept)."""
        if not self.validation.has_data:
            return time.monotonic() >= self.deadline
        validations = 2 if self.cfg.average_last >= 2 else 1
        return time.monotonic() >= self.deadline - validations * self.validation.seconds

    def seed_dropout(self, step: int = 0) -> None:
        """Every rank built the same initial weights from the run's seed; from here on each draws
        its own dropout masks, or the ranks' batches would all be masked alike. Rank 0 goes on
        with the run's stream, so one process trains as it always did. `step`: a resumed rank
        that has no saved stream starts a fresh one there."""
        if self.rank:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.rank + 7_919 * step)

    def save(self) -> None:
        """Save the trainer state; called on every rank, since rank 0 writes every rank's RNG. Every
        rank's weights must be the same as rank 0's (RanksDisagree), or the state would be wrong."""
        # The digests cost a pass over the weights: only worth it with ranks that could differ.
        digest = weights_digest(self.model) if self.world_size > 1 else None
        rank_rng, digests = zip(*all_ranks_objects((rng_tensors(), digest)))
        if self.world_size > 1:
            check_same_weights(list(digests), self.step)
            self.rank_digests = digests
        if not self.is_main:
            return
        save_trainer_state(self.run_dir, self.model, self.optimizer, rank_rng=list(rank_rng), progress={
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "early_stopping": self.validation.early_stopping.state(),
            "counters": {**self.oom.counters(), **self.non_finite.state()},
            "max_tokens": self.batches.max_tokens, "next_max_tokens": self.oom.next_max_tokens,
            "pending_validation": self.validation.pending})

    def resume(self, state: TrainerState) -> None:
        progress = restore_trainer_state(state, self.model, self.optimizer, self.rank)
        if not progress["rng_restored"]:  # saved by fewer processes: this rank has no state of its own
            self.seed_dropout(progress["step"])
        self.step, self.epoch, self.position = progress["step"], progress["epoch"], progress["position"]
        self.validation.early_stopping.restore(progress["early_stopping"])
        self.non_finite.restore(progress["counters"])
        self.oom.restore(progress["counters"], progress["next_max_tokens"])
        for group in self.optimizer.param_groups:  # in case the state was saved by an unfused optimizer
            group["fused"], group["foreach"] = True, None
        self.batches.set_max_tokens(progress["max_tokens"])
        self.validated_step = self.step
        self.validation.pending = progress.get("pending_validation", False)
        self.emit({"event": "resume", "step": self.step, "epoch": self.epochs_done})

    def stop_if_signalled(self) -> None:
        """After a SIGINT or SIGTERM that rank 0 received: save a resumable state, then leave the loop."""
        signum = rank_zeros_signal(self.signals.received)
        if signum:
            self.interrupt(signum)

    def interrupt(self, signum: int) -> None:
        """Save a resumable state and leave the loop; every rank calls it at the same update."""
        self.stop_agreement.drain()
        self.check_non_finite()  # the weights are the same on every rank, so all raise or none
        self.save()
        raise TrainingInterrupted(self.run_dir, self.step, signum)

    def finish(self, reason: str) -> TrainResult:
        self.stop_agreement.drain()
        if self.validated_step != self.step:
            self.validate_and_save()
        if self.cfg.average_last and self.is_main:
            record = self.validation.average_last_snapshots(self.run_dir, self.cfg.average_last, self.step,
                                                            self.model_cfg, self.device)
            if record is not None:
                self.emit(record)
        unvalidated = self.is_main and not (self.run_dir / WEIGHTS_FILE).is_file()
        if unvalidated:  # every validation was cut short: the latest weights are all there is
            save_weights(self.model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(self.step)})
        result = TrainResult(self.run_dir, self.step, self.epochs_done, self.validation.early_stopping.best, reason)
        self.emit({"event": "stop", "reason": reason, "step": self.step, "best": self.validation.early_stopping.best,
                   "unvalidated_model": unvalidated, "rank_weights_sha256": list(self.rank_digests)})
        return result


def with_resolved_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its corpus and tokenizer paths absolute: a run resumes from any working
    directory, and a run directory copied elsewhere still finds its data."""
    tokenizer = str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else ""
    init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from else ""
    return dataclasses.replace(cfg, train=resolve_corpus_spec(cfg.train), valid=resolve_corpus_spec(cfg.valid),
                               tokenizer=tokenizer, init_from=init_from)


def training_reads(cfg: TrainConfig) -> Reads:
    """What training reads: the corpora and the --tokenizer folder."""
    langs = (cfg.src_lang, cfg.tgt_lang)
    return (Reads().corpus("the training corpus", cfg.train, langs)
            .corpus("the validation corpus", cfg.valid, langs)
            .folder("the --tokenizer folder", cfg.tokenizer or None)
            .folder("the --init-from run", cfg.init_from or None))


def refuse_run_over_inputs(run_dir: Path, cfg: TrainConfig) -> None:
    """ConfigError if a file training writes in `run_dir` is one of the files it reads."""
    reads = training_reads(cfg)
    for name in RUN_FILES:
        refuse_clobbering("--run", run_dir / name, reads)
    for label, path in reads.files:
        if is_inside(path, run_dir / CHECKPOINTS_DIR):
            raise ConfigError(f"{label} {path} lies inside {run_dir / CHECKPOINTS_DIR}, which training "
                              "rewrites; move it elsewhere")


def check_resume_config(run_dir: Path, saved: RunConfig, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """ConfigError, naming each field with its saved and given values, unless `model_cfg` and
    `train_cfg` equal the saved configs outside the stopping budget (RESUME_BUDGET_FIELDS).

    Paths are compared as the files they name: both sides go through `with_resolved_paths`.
    """
    saved_train, given_train = with_resolved_paths(saved.train), with_resolved_paths(train_cfg)
    changed = [f"{field.name} (saved {getattr(saved_section, field.name)!r}, given {getattr(given, field.name)!r})"
               for saved_section, given in ((saved.model, model_cfg), (saved_train, given_train))
               for field in dataclasses.fields(given)
               if field.name not in RESUME_BUDGET_FIELDS
               and getattr(saved_section, field.name) != getattr(given, field.name)]
    if changed:
        *others, last = RESUME_BUDGET_FIELDS
        raise ConfigError(f"{run_dir}: resuming with a config other than the saved one; only {', '.join(others)} "
                          f"and {last} may change, but these differ: {'; '.join(changed)}")


def train(run_dir: Path | str, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
          *, resume: bool = False, on_event: Callable[[Event], None] = lambda event: None,
          tensorboard: Path | str | None = None) -> TrainResult:
    """Train a model into `run_dir`, or continue the run there with `resume=True`.

    On resume, `model_cfg` and `train_cfg` must equal the saved configs except
    for the stopping budget (epochs, max_steps, max_time, patience); see
    `check_resume_config`. A run stopped before its first checkpoint starts
    again from step 0. The run resumed, and the run `init_from` names, are
    opened as every command opens a run (`seq2seq.runs.run_dir.open_run`) before any work.

    Without `resume`, `run_dir` must not hold a run, unless that run stopped
    before its first checkpoint: a new run then starts over it
    (`seq2seq.runs.checkpoint.files_to_start_over`).

    `tensorboard` is a folder to write TensorBoard event files to as well
    (seq2seq.inspection.tensorboard); None writes none, except that a resumed run that
    has RUN/tensorboard goes on writing there. It is how the run is watched,
    not what it computes, so it is an argument here and not a TrainConfig
    field (those are compared on resume).
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    train_cfg = with_resolved_paths(train_cfg)
    if train_cfg.init_from:  # its tokenizer and model shape, checked before any work
        source = source_run(train_cfg.init_from)
        check_init_model(train_cfg.init_from, source.model, model_cfg)
        train_cfg = init_tokenizer(train_cfg.init_from, source, train_cfg)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no {CONFIG_FILE})")
        saved = open_run(run_dir, need_weights=False).config
        check_resume_config(run_dir, saved, model_cfg, train_cfg)
        model_cfg = saved.model
    model_cfg.validate()
    train_cfg.validate()
    refuse_run_over_inputs(run_dir, train_cfg)
    tensorboard = tensorboard_folder(run_dir, tensorboard, resume)
    if tensorboard is not None:  # before any work: a wrong folder or a missing extra is one error line
        refuse_tensorboard_folder(tensorboard, run_dir, training_reads(train_cfg))
        require_tensorboard()
    is_main = is_main_process()
    # Rank 0 alone writes the run directory, so it alone holds the lock.
    with new_folder(run_dir, "--run"), RunLock(run_dir) if is_main else contextlib.nullcontext():
        # Every rank looks, and refuses alike; rank 0's removals only ever leave fewer files to see.
        start_over = [] if resume or not (run_dir / CONFIG_FILE).exists() else files_to_start_over(run_dir)
        if is_main:
            remove_unfinished_writes(run_dir)
            for path in start_over:
                path.unlink(missing_ok=True)
            if start_over:
                on_event({"event": "start_over", "run_dir": str(run_dir)})
        # A run stopped before its first checkpoint has none: it starts again at step 0. One that has
        # one is checked before any work (data preparation can take long), under the lock.
        state = read_trainer_state(run_dir, shape_of(model_cfg)) if resume and has_trainer_state(run_dir) else None
        if is_main and resume:  # the new budget, so that config.json says what the run was last asked to do
            atomic_write_text(run_dir / CONFIG_FILE, dataclasses.replace(saved, train=train_cfg).to_json())
        with lost_processes_as_errors("data preparation"):
            trainer = Trainer(run_dir, model_cfg, train_cfg, device, on_event, started)
        if state is not None:
            trainer.resume(state)
            del state  # the checkpoint's tensors: not held on the host for the whole run
        elif not resume and trainer.is_main:
            tokenizers = trainer.data.tokenizers
            config = RunConfig(model=trainer.model_cfg, train=train_cfg, tokenizer_sha256={
                t.path.name: t.sha256 for t in (tokenizers.src, tokenizers.tgt)})
            atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
        if tensorboard is not None and trainer.is_main:
            # Resumed or started over: TensorBoard hides what the earlier run logged after this step.
            trainer.tensorboard = TensorBoardSink(tensorboard,
                                                  purge_step=trainer.step + 1 if resume or start_over else None)
        # Closed however the run ends (a stop, an error, a signal), which flushes the events.
        with (contextlib.closing(trainer.tensorboard) if trainer.tensorboard else contextlib.nullcontext(),
              lost_processes_as_errors(f"training; the last complete checkpoint in {run_dir} is intact")):
            return trainer.run()
