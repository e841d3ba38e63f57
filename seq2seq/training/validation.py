"""How good the model is on the validation set, and whether it is the best yet.

A validation measures loss, perplexity and BLEU (through the same Translator
as `s2s translate`), a chunk at a time so that a stop signal or the --max-time
deadline is answered within seconds; a validation cut short records nothing
(`ValidationCut`) and is redone on resume. Early stopping counts validations
without improvement. The run's model is the best validated weights (the
latest, with no validation set); at the end of a run, the average of the last
snapshots replaces it only if it validates at least as well.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import DecodeConfig, TrainConfig
from ..data.batching import collate, token_batches
from ..data.encode import given_target_tokens
from ..data.shape_ladder import shape_ladder
from ..device import mixed_precision
from ..files.atomic import atomic_write
from ..files.run_layout import TRAINING_AVERAGE_FILE, WEIGHTS_FILE, Event
from ..model.transformer import Seq2SeqTransformer, build_model
from ..runs.snapshots import list_snapshots, prune_snapshots, save_snapshot, write_average
from ..runs.weights import load_weights, save_weights
from ..scores import score_corpus
from ..search.translator import Translator
from .loss import projected_smoothed_loss
from .prepare import PreparedData
from .schedule import TrainingTime
from .stop_signals import StopSignals

# Validation sentences translated between checks for a stop signal or the --max-time deadline.
VALIDATION_CHUNK = 128

# The time a final validation is given, in multiples of the last validation's: on a shared host one
# validation takes longer than the one before, and the average's also writes and loads the averaged
# weights. With exactly one each, `make demo` (2026-12-05, bench/RESULTS.md) reached the deadline
# while validating the average, and the average was not kept.
FINAL_VALIDATION_MARGIN = 1.5


class ValidationCut(Exception):
    """A validation stopped part-way by a signal or by --max-time; its scores would not be comparable."""

    def __init__(self, reason: str, stage: str, done: int):
        super().__init__(reason)
        self.reason, self.stage, self.done = reason, stage, done


class EarlyStopping:
    """Tracks the best validation score and how many validations since it improved."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.best: dict[str, Any] | None = None
        self.bad_validations = 0

    def improved(self, record: dict[str, Any]) -> bool:
        """Record a validation; True if it is the best so far."""
        value = record[f"valid_{self.metric}"]
        if self.best is not None:
            best = self.best[f"valid_{self.metric}"]
            if (value <= best) if self.metric == "bleu" else (value >= best):
                self.bad_validations += 1
                return False
        self.best, self.bad_validations = record, 0
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_validations >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations}

    def restore(self, state: dict[str, Any]) -> None:
        self.best, self.bad_validations = state["best"], state["bad_validations"]


class Validation:
    """The validations of one run: each measured in chunks, the best remembered and kept as the
    run's model, a cut one redone.

    Between chunks, a validation stops for a signal in `signals` or once the
    --max-time `deadline` (a time.monotonic() value) has passed.
    """

    def __init__(self, run_dir: Path, data: PreparedData, cfg: TrainConfig, signals: StopSignals,
                 deadline: float = math.inf):
        self.run_dir, self.data, self.cfg, self.signals, self.deadline = run_dir, data, cfg, signals, deadline
        self.early_stopping = EarlyStopping(cfg.early_stop_metric, cfg.patience)
        self.seconds = 0.0  # how long the last complete validation took
        self.pending = False  # a validation was cut short by a signal: redo it on resume
        self.training_time = TrainingTime()  # a resume gives it the seconds its checkpoint saved

    @property
    def has_data(self) -> bool:
        return self.data.valid_src is not None

    def validate(self, model: Seq2SeqTransformer, step: int, epoch: float) -> Event:
        """The "valid" record of `model`'s scores, with "best" from early stopping; or, for a
        validation cut short, the "valid_cut" event, and nothing is recorded."""
        started = time.monotonic()
        try:
            scores = self.measure(model)
        except ValidationCut as cut:
            # Part of the set would not be comparable with other validations: nothing is recorded,
            # and a resumed run validates this step again before it trains on.
            self.pending = True
            return {"event": "valid_cut", "step": step, "reason": cut.reason, "stage": cut.stage,
                    "done": cut.done, "sentences": sum(len(lines.src_lines) for lines in self.data.valid_lines)}
        self.seconds = time.monotonic() - started
        self.pending = False
        record = {"event": "valid", "step": step, "epoch": epoch, **scores}
        record["best"] = self.early_stopping.improved(record)
        return record

    def check_cut(self, stage: str, done: int) -> None:
        """Stop a validation part-way (`done` sentences into `stage`) for a signal, or when the
        --max-time deadline has passed."""
        if self.signals.received:
            raise ValidationCut("a stop signal", stage, done)
        if time.monotonic() >= self.deadline:
            raise ValidationCut("the time budget", stage, done)

    @torch.no_grad()
    def measure(self, model: Seq2SeqTransformer) -> dict[str, Any]:
        """Validation loss (NLL per target token), perplexity and BLEU of `model`. With several
        directions, the loss is over all their pairs, "valid_bleu" is the mean of their BLEU (what
        early stopping and the choice of the model go by) and "valid_bleu_by_direction" has each."""
        model.eval()
        cfg, data = self.cfg, self.data
        device = next(model.parameters()).device
        autocast = mixed_precision(device, cfg.precision)
        nll_sum = torch.zeros((), device=device)
        tokens = 0
        lengths = (data.valid_src.lengths, data.valid_tgt.lengths)
        ladder = shape_ladder(cfg.shape_ladder, device, cfg.max_len)  # on a GPU, shapes as training's
        for index in token_batches(*lengths, cfg.max_tokens, rng=None, ladder=ladder):
            self.check_cut("loss", 0)
            batch = collate(data.valid_src, data.valid_tgt, index, model.cfg.pad_id, model.cfg.bos_id, ladder,
                            given_target_tokens(cfg.lang_tag, cfg.tgt_lang))
            with autocast:
                states = model.teacher_forced_states(batch.src, batch.tgt_in)  # (B, T, D)
            nll_sum += projected_smoothed_loss(states, model.tgt_embed.weight, batch.tgt_out, model.cfg.pad_id,
                                               0.0)[1]
            tokens += batch.n_tgt_tokens
        nll = nll_sum.item() / max(tokens, 1)
        by_direction, done = {}, 0
        for lines in data.valid_lines:
            # The same path as `s2s translate --tgt`: tags, empty lines, long lines and detokenising alike.
            decode = DecodeConfig(beam=cfg.valid_beam, tgt_lang=lines.tgt_lang)
            translator = Translator.for_model(model, data.tokenizers, decode, cfg.precision, train=cfg)
            hyps: list[str] = []
            # A chunk at a time, so that a signal or --max-time is answered within seconds.
            for start in range(0, len(lines.src_lines), VALIDATION_CHUNK):
                self.check_cut("BLEU", done + len(hyps))
                hyps += translator.translate(lines.src_lines[start:start + VALIDATION_CHUNK])
            done += len(hyps)
            bleu = score_corpus(hyps, [lines.ref_lines], metrics=("bleu",))[0]
            by_direction[lines.name] = bleu.score
        scores = {"valid_loss": nll, "valid_ppl": math.exp(min(nll, 50.0)),
                  "valid_bleu": sum(by_direction.values()) / len(by_direction), "bleu_signature": bleu.signature,
                  "valid_beam": cfg.valid_beam}
        return {**scores, "valid_bleu_by_direction": by_direction} if len(by_direction) > 1 else scores

    def training_ends(self) -> float:
        """When training must stop (time.monotonic()) for its final validations, each given
        FINAL_VALIDATION_MARGIN times the last one's seconds, to end by the --max-time deadline: the
        last weights', and with train.average_last the average's (unvalidated, it could not be
        kept). math.inf without a deadline."""
        if not self.has_data:
            return self.deadline
        validations = 2 if self.cfg.average_last >= 2 else 1
        return self.deadline - validations * self.seconds * FINAL_VALIDATION_MARGIN

    def time_used(self) -> float:
        """This rank's share of the run's training time used (TrainingTime.fraction), training ending
        at `training_ends`: what a time-based learning-rate schedule decays by."""
        return self.training_time.fraction(time.monotonic(), self.training_ends())

    def time_is_up(self) -> bool:
        """True once training must stop for its final validations (`training_ends`)."""
        return time.monotonic() >= self.training_ends()

    def validate_and_keep(self, model: Seq2SeqTransformer, step: int, epoch: float,
                          emit: Callable[[Event], None]) -> None:
        """Validate `model` (if there is a validation set) and report it; keep its weights as the
        run's model when they are the best yet, or when there is nothing to choose by; snapshot
        them (train.keep_snapshots). A validation cut short keeps nothing."""
        record = self.validate(model, step, epoch) if self.has_data else None
        if record is not None and record["event"] == "valid_cut":
            emit(record)  # nothing was measured: no weights to choose, no snapshot
            return
        # With nothing to choose by, the latest weights are the model.
        if record is None or record["best"]:
            save_weights(model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(step)})
        if record is not None:
            emit(record)
        if self.cfg.keep_snapshots:
            save_snapshot(model, self.run_dir, step, record and record["valid_bleu"])
            prune_snapshots(self.run_dir, self.cfg.keep_snapshots)

    def keep_final_model(self, model: Seq2SeqTransformer, step: int, emit: Callable[[Event], None]) -> bool:
        """At the end of a run: the average of the last snapshots replaces the model if it validates
        at least as well (train.average_last); if every validation was cut short, the latest
        weights are the model, and the answer is True: the model is unvalidated."""
        if self.cfg.average_last:
            record = self.average_last_snapshots(model, step)
            if record is not None:
                emit(record)
        unvalidated = not (self.run_dir / WEIGHTS_FILE).is_file()
        if unvalidated:
            save_weights(model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(step)})
        return unvalidated

    def average_last_snapshots(self, model: Seq2SeqTransformer, step: int) -> Event | None:
        """Average the last train.average_last snapshots (a model like `model`, on its device); keep the
        average as the model if it validates at least as well. Returns the "average" event, or None
        with fewer than two snapshots."""
        run_dir = self.run_dir
        snapshots = list_snapshots(run_dir)[-self.cfg.average_last:]
        if len(snapshots) < 2:
            return None
        steps = ",".join(str(s.step) for s in snapshots)
        path = run_dir / TRAINING_AVERAGE_FILE
        write_average([s.path for s in snapshots], path, metadata={"averaged_steps": steps})
        record: Event = {"event": "average", "step": step, "averaged_steps": steps, "kept": True}
        if self.has_data:
            averaged = build_model(model.cfg).to(next(model.parameters()).device)
            load_weights(averaged, path)
            try:
                record.update(self.measure(averaged))
            except ValidationCut as cut:  # unmeasured, it cannot be shown to be better
                record.update(kept=False, cut=cut.reason)
            else:
                best = self.early_stopping.best
                record["kept"] = best is None or record["valid_bleu"] >= best["valid_bleu"]
        if record["kept"]:
            atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: shutil.copyfile(path, tmp))
        return record
