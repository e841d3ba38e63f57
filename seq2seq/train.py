"""The training loop: teacher forcing with label smoothing, AdamW, inverse-sqrt warm-up.

`train()` turns a `TrainConfig` and a `ModelConfig` into a run directory (see
`seq2seq.checkpoint`). It reports progress by calling `on_event` with plain
dicts, so the CLI can draw them and tests can read them; the same records go
to `metrics.jsonl`.

Under `torchrun` every rank trains on its own shard of each epoch's batches
through DistributedDataParallel; rank 0 alone writes files and validates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .average import list_snapshots, prune_snapshots, save_snapshot, write_average
from .batching import Batch, EpochBatches, TokenStore, collate, token_batches
from .checkpoint import (CHECKPOINTS_DIR, CONFIG_FILE, RUN_FILES, TRAINING_AVERAGE_FILE, WEIGHTS_FILE, MetricsLog, has_trainer_state, load_trainer_state,
                         load_weights, read_run_config, remove_unfinished_writes, save_trainer_state,
                         save_weights)
from .config import RESUME_BUDGET_FIELDS, DecodeConfig, ModelConfig, RunConfig, TrainConfig
from .data import encode_corpus, filter_pairs, load_corpus, resolve_corpus_spec
from .device import mixed_precision
from .errors import ConfigError, RunDirError, TrainingDiverged
from .evaluate import score_corpus
from .clobber import Reads, is_inside, refuse_clobbering
from .files import RunLock, atomic_write, atomic_write_text, new_folder
from .flops import training_flops
from .interrupt import StopSignals
from .model import Seq2SeqTransformer, build_model, count_parameters
from .tokenizer import TokenizerPair, load_tokenizers, train_tokenizer
from .translator import Translator

Event = dict[str, Any]
# Validation sentences translated between checks for a stop signal or the --max-time deadline.
VALIDATION_CHUNK = 128


class ValidationCut(Exception):
    """A validation stopped part-way by a signal or by --max-time; its scores would not be comparable."""

    def __init__(self, reason: str, stage: str, done: int):
        super().__init__(reason)
        self.reason, self.stage, self.done = reason, stage, done


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM during training; a resumable state was saved first."""

    def __init__(self, run_dir: Path, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; a resumable checkpoint is saved. "
                         f"Resume with: s2s train --run {run_dir} --resume")
        self.run_dir, self.step = run_dir, step
        self.exit_code = 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


@dataclass
class UpdateOutcome:
    tokens: int  # target tokens the update processed
    flops: int  # model FLOPs of the update (seq2seq.flops), padding not counted
    ran: bool  # False when nothing fitted memory; a non-finite update still ran (see NonFiniteUpdates)
    # On the device, both 0 for an update skipped as non-finite: what the logged loss averages.
    loss: torch.Tensor  # summed label-smoothed loss over the update's target tokens
    loss_tokens: torch.Tensor  # those target tokens


class NonFiniteUpdates:
    """Updates skipped for a non-finite loss or gradient, counted on the device.

    Whether an update is finite is known only on the device. Asking the host
    every update would make it wait for the accelerator each step, so the
    verdict goes to the optimizer as a tensor (fused AdamW's `found_inf`, the
    hook GradScaler uses), and these counts are read only at log intervals and
    before checkpoints.
    """

    def __init__(self, device: torch.device):
        self.skipped = torch.zeros((), dtype=torch.long, device=device)  # since the run began
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)  # the current run of bad updates
        self.longest_run = torch.zeros((), dtype=torch.long, device=device)  # since the last read
        self.skipped_at_last_read = 0

    def record(self, bad: torch.Tensor) -> None:
        """Count one update; `bad` is a bool scalar tensor."""
        bad = bad.long()
        self.skipped += bad
        self.in_a_row.mul_(bad).add_(bad)  # +1 on a bad update, back to 0 on a good one
        torch.maximum(self.longest_run, self.in_a_row, out=self.longest_run)

    def read(self) -> tuple[int, int, int]:
        """(skipped since the last read, bad in a row now, longest run since the last read): one host sync."""
        skipped, in_a_row, longest_run = torch.stack([self.skipped, self.in_a_row, self.longest_run]).tolist()
        new, self.skipped_at_last_read = skipped - self.skipped_at_last_read, skipped
        self.longest_run.copy_(self.in_a_row)
        return new, in_a_row, longest_run

    def state(self) -> dict[str, int]:
        skipped, in_a_row = torch.stack([self.skipped, self.in_a_row]).tolist()
        return {"skipped_updates": skipped, "bad_in_a_row": in_a_row}

    def restore(self, state: dict[str, int]) -> None:
        self.skipped.fill_(state["skipped_updates"])
        self.in_a_row.fill_(state["bad_in_a_row"])
        self.longest_run.fill_(state["bad_in_a_row"])
        self.skipped_at_last_read = state["skipped_updates"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer updates done
    epochs: float  # epochs of data consumed
    best: dict[str, Any] | None  # the validation record of the best model, if validated
    stop_reason: str  # "epochs", "max_steps", "max_time" or "early_stopping"


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


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, pad_id: int,
                        smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL over non-pad targets.

    logits (B, T, V), target (B, T). One log-softmax serves both sums: the
    smoothed loss is (1 - eps) * NLL + eps * (mean over the vocabulary of -log p).
    """
    lprobs = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1))  # (B*T, V)
    flat_target = target.reshape(-1, 1)  # (B*T, 1)
    keep = flat_target.ne(pad_id)
    nll = -lprobs.gather(1, flat_target).masked_fill(~keep, 0.0).sum()
    uniform = -lprobs.mean(dim=-1, keepdim=True).masked_fill(~keep, 0.0).sum()
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach()


def distributed_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class PreparedData:
    tokenizers: TokenizerPair
    train_src: TokenStore
    train_tgt: TokenStore
    valid_src: TokenStore | None
    valid_tgt: TokenStore | None
    valid_src_lines: list[str]  # raw validation text for BLEU
    valid_ref_lines: list[str]


class Trainer:
    """One training run into one run directory."""

    def __init__(self, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig,
                 device: torch.device, on_event: Callable[[Event], None], started: float | None = None):
        self.run_dir, self.cfg, self.device = Path(run_dir), cfg, device
        # --max-time bounds the whole command, data preparation and validation included.
        started = time.monotonic() if started is None else started
        self.deadline = started + cfg.max_time if cfg.max_time else math.inf
        self.validation_seconds = 0.0  # how long the last complete validation took
        self.pending_validation = False  # a validation was cut short by a signal: redo it on resume
        self.rank, self.world_size = distributed_rank_and_size()
        self.is_main = self.rank == 0
        self.on_event = on_event
        self.metrics = MetricsLog(self.run_dir)
        self.data = self.prepare_data()
        self.model_cfg = dataclasses.replace(
            model_cfg,
            src_vocab_size=self.data.tokenizers.src.vocab_size,
            tgt_vocab_size=self.data.tokenizers.tgt.vocab_size,
            share_embeddings=model_cfg.share_embeddings and self.data.tokenizers.shared,
            pad_id=self.data.tokenizers.tgt.pad_id, unk_id=self.data.tokenizers.tgt.unk_id,
            bos_id=self.data.tokenizers.tgt.bos_id, eos_id=self.data.tokenizers.tgt.eos_id)
        if cfg.max_len > self.model_cfg.max_positions:
            raise ConfigError(f"train.max_len ({cfg.max_len}) exceeds model.max_positions "
                              f"({self.model_cfg.max_positions})")
        torch.manual_seed(cfg.seed)
        self.model: Seq2SeqTransformer = build_model(self.model_cfg).to(device)
        # Fused: one kernel for the whole update (7% faster than foreach on 2 CPU cores), and
        # it skips an update on a tensor verdict (found_inf), without a host sync.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.batches = EpochBatches(self.data.train_src.lengths, self.data.train_tgt.lengths,
                                    cfg.max_tokens, cfg.seed, self.rank, self.world_size)
        self.early_stopping = EarlyStopping(cfg.early_stop_metric, cfg.patience)
        self.step, self.epoch, self.position = 0, 1, 0
        self.validated_step = -1
        self.non_finite = NonFiniteUpdates(device)
        self.counters = {"oom_splits": 0, "oom_skipped_sentences": 0}
        # After an out-of-memory error, the smaller budget applies from the next
        # epoch on: changing this epoch's batches would break exact resume.
        self.next_max_tokens = cfg.max_tokens
        self.signals = StopSignals()
        self.autocast = mixed_precision(device)
        self.forward_loss = self.eager_forward_loss
        if cfg.compile:
            # dynamic=True makes batch size and lengths symbolic from the first compile, so
            # token-budget batches of every shape reuse one graph instead of recompiling. Duck
            # shaping would tie source and target length together whenever the first batch
            # has them equal, and recompile at the first batch where they differ.
            torch.fx.experimental._config.use_duck_shape = False
            self.forward_loss = torch.compile(self.eager_forward_loss, dynamic=True)

    # ------------------------------------------------------------------ data

    def emit(self, event: Event) -> None:
        if not self.is_main:
            return
        if event["event"] in ("train", "valid", "valid_cut", "skip", "oom", "resume", "average"):
            # Wall-clock time too: bench/quality.py measures time to quality from it.
            self.metrics.write({**event, "time": time.time()})
        self.on_event(event)

    def prepare_data(self) -> PreparedData:
        cfg = self.cfg
        train_corpus = load_corpus(cfg.train, cfg.src_lang, cfg.tgt_lang)
        tokenizers = self.prepare_tokenizers(train_corpus)
        train_ids = self.encode_split("train", cfg.train, train_corpus, tokenizers)
        # Token ids live on the training device; batches are gathered there.
        data = PreparedData(tokenizers, TokenStore(train_ids.data.column("src_ids"), self.device),
                            TokenStore(train_ids.data.column("tgt_ids"), self.device), None, None, [], [])
        if cfg.valid:
            valid_corpus = load_corpus(cfg.valid, cfg.src_lang, cfg.tgt_lang)
            valid_ids = self.encode_split("valid", cfg.valid, valid_corpus, tokenizers)
            data.valid_src = TokenStore(valid_ids.data.column("src_ids"), self.device)
            data.valid_tgt = TokenStore(valid_ids.data.column("tgt_ids"), self.device)
            # BLEU is scored on the raw text of every pair, filtered or not.
            limit = cfg.valid_bleu_sentences or len(valid_corpus)
            data.valid_src_lines = valid_corpus["src"][:limit]
            data.valid_ref_lines = valid_corpus["tgt"][:limit]
        return data

    def encode_split(self, split: str, spec: str, corpus, tokenizers: TokenizerPair):
        """Token ids of `corpus` without empty or over-long pairs; reports what was dropped."""
        encoded = encode_corpus(corpus, tokenizers, num_proc=self.cfg.num_proc)
        kept, report = filter_pairs(encoded, self.cfg.max_len, num_proc=self.cfg.num_proc, name=spec)
        self.emit({"event": "data", "split": split, "corpus": spec, "pairs": len(corpus),
                   "kept": report.kept, "too_long": report.too_long, "empty": report.empty,
                   "max_len": self.cfg.max_len})
        return kept

    def prepare_tokenizers(self, train_corpus) -> TokenizerPair:
        """The run's own tokenizer: copied from --tokenizer, or trained here on a sample.

        Rank 0 writes it; the other ranks wait, then read the same files.
        """
        resuming = (self.run_dir / CONFIG_FILE).is_file()
        if self.is_main and not resuming:
            if self.cfg.tokenizer:
                source = load_tokenizers(self.cfg.tokenizer)
                for path in source.files():
                    atomic_write(self.run_dir / path.name, lambda tmp, path=path: shutil.copyfile(path, tmp))
            else:
                self.emit({"event": "tokenizer", "vocab_size": self.cfg.vocab_size})
                train_tokenizer(train_corpus, self.run_dir, vocab_size=self.cfg.vocab_size,
                                seed=self.cfg.seed)
        if self.world_size > 1:
            dist.barrier()
        return load_tokenizers(self.run_dir)

    def batch(self, index: np.ndarray, src: TokenStore, tgt: TokenStore) -> Batch:
        return collate(src, tgt, index, self.model_cfg.pad_id, self.model_cfg.bos_id)

    # -------------------------------------------------------------- training

    def update(self, group: list[np.ndarray]) -> UpdateOutcome:
        """One optimizer update over `group`, the pair indices of its accumulated batches."""
        self.train_model.train()
        if self.cfg.lr_schedule == "cosine":
            lr = cosine_lr(self.step + 1, self.cfg.lr, self.cfg.warmup_steps, self.planned_updates())
        else:
            lr = inverse_sqrt_lr(self.step + 1, self.cfg.lr, self.cfg.warmup_steps)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        parts = list(group)
        while True:
            try:
                loss_sum, tokens = self.accumulate_gradients(parts)
                break
            except torch.OutOfMemoryError:
                if self.world_size > 1:  # ranks would fall out of step; let torchrun see it
                    raise
            # Outside the except block, so the failed attempt's tensors are freed.
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            parts = self.split_after_oom(parts)
            if not parts:
                nothing = torch.zeros((), device=self.device)
                return UpdateOutcome(0, 0, ran=False, loss=nothing, loss_tokens=nothing)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or math.inf)
        # A non-finite gradient must never reach the weights: fused AdamW leaves weights,
        # moments and its step count alone when found_inf is 1.
        bad = ~torch.isfinite(norm)
        self.optimizer.found_inf = bad.float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.non_finite.record(bad)
        self.step += 1
        self.maybe_redraw_features()
        # The loss of a skipped update is not finite: keep it out of the logged average.
        return UpdateOutcome(tokens, self.update_flops(parts), ran=True, loss=torch.where(bad, 0.0, loss_sum),
                             loss_tokens=torch.where(bad, 0, tokens))

    def update_flops(self, parts: list[np.ndarray]) -> int:
        index = np.concatenate(parts)
        return training_flops(self.model_cfg, self.data.train_src.lengths[index],
                              self.data.train_tgt.lengths[index])

    def check_non_finite(self) -> None:
        """Report skipped updates since the last check; stop after too many in a row, or on
        non-finite weights. Syncs the host: called at log intervals and before anything is saved."""
        new, in_a_row, longest_run = self.non_finite.read()
        if new:
            self.emit({"event": "skip", "step": self.step, "reason": "non-finite loss or gradients",
                       "skipped": new, "in_a_row": in_a_row})
        if longest_run >= self.cfg.max_bad_updates:
            raise TrainingDiverged(
                f"loss or gradients were not finite for {longest_run} updates in a row by step {self.step}; "
                f"stopped. Skipped updates leave the weights unchanged; the last checkpoint is in "
                f"{self.run_dir}. Try a lower --lr or a longer --warmup-steps")
        # A finite gradient can still make a finite weight overflow (a huge learning rate);
        # such weights must never be saved as a checkpoint or as the model.
        if not bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()):
            kept = (f"the last checkpoint in {self.run_dir} holds finite weights" if has_trainer_state(self.run_dir)
                    else "no checkpoint had been saved yet")
            raise TrainingDiverged(f"the weights became non-finite by step {self.step}; stopped without saving "
                                   f"them ({kept}). Try a lower --lr or a longer --warmup-steps")

    def maybe_redraw_features(self) -> None:
        """Fresh FAVOR+ random features every `performer_redraw_every` updates.

        The draw is seeded by the run's seed and the step, so every DDP rank
        draws the same features, and a resumed run draws what an uninterrupted
        one would have.
        """
        every = self.model_cfg.performer_redraw_every
        if self.model_cfg.attention == "performer" and every and self.step % every == 0:
            generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
            self.model.redraw_random_features(generator)

    def accumulate_gradients(self, parts: list[np.ndarray]) -> tuple[torch.Tensor, int]:
        """Forward and backward over each batch; returns the summed loss and target tokens."""
        batches = [self.batch(index, self.data.train_src, self.data.train_tgt) for index in parts]
        # Normalise by the tokens of the whole update, so accumulation equals one big batch
        # (and so does a batch split in two after running out of memory).
        tokens = sum(b.n_tgt_tokens for b in batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            # Under DDP, all-reduce gradients only on the last micro-batch.
            sync = (i == len(batches) - 1 or self.world_size == 1)
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                loss = self.forward_loss(batch.src, batch.tgt_in, batch.tgt_out)
                (loss / tokens).backward()
            loss_sum += loss.detach()
        return loss_sum, tokens

    def eager_forward_loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Summed label-smoothed loss of one batch: src (B, S), tgt_in and tgt_out (B, T)."""
        with self.autocast:
            logits = self.train_model(src, tgt_in)  # (B, T, V)
        return label_smoothed_loss(logits, tgt_out, self.model_cfg.pad_id, self.cfg.label_smoothing)[0]

    def split_after_oom(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Halve the batches of an update that ran out of memory; drop a lone sentence that cannot fit."""
        if all(len(part) == 1 for part in parts):
            lengths = self.data.train_src.lengths + self.data.train_tgt.lengths
            parts = sorted(parts, key=lambda part: lengths[part[0]])[:-1]  # drop the longest
            self.counters["oom_skipped_sentences"] += 1
            action = "skipped one sentence that does not fit in memory"
        else:
            parts = [half for part in parts
                     for half in (np.array_split(part, 2) if len(part) > 1 else [part])]
            self.counters["oom_splits"] += 1
            action = f"split the update into {len(parts)} batches"
        current = min(self.next_max_tokens, self.batches.max_tokens)
        self.next_max_tokens = max(self.cfg.max_len, int(current * 0.75))
        self.emit({"event": "oom", "step": self.step, "action": action,
                   "max_tokens_from_next_epoch": self.next_max_tokens})
        return parts

    @torch.no_grad()
    def validate(self) -> Event | None:
        """Validation loss and BLEU of the current weights, recorded for early stopping; None if cut short."""
        started = time.monotonic()
        try:
            scores = self.measure(self.model)
        except ValidationCut as cut:
            # Part of the set would not be comparable with other validations: nothing is recorded,
            # and a resumed run validates this step again before it trains on.
            self.pending_validation = True
            self.emit({"event": "valid_cut", "step": self.step, "reason": cut.reason, "stage": cut.stage,
                       "done": cut.done, "sentences": len(self.data.valid_src_lines)})
            return None
        self.validation_seconds = time.monotonic() - started
        self.pending_validation = False
        record = {"event": "valid", "step": self.step, "epoch": self.epochs_done, **scores}
        record["best"] = self.early_stopping.improved(record)
        return record

    def check_validation_cut(self, stage: str, done: int) -> None:
        """Stop a validation part-way for a signal, or when the --max-time deadline has passed."""
        if self.signals.received:
            raise ValidationCut("a stop signal", stage, done)
        if time.monotonic() >= self.deadline:
            raise ValidationCut("--max-time", stage, done)

    @torch.no_grad()
    def measure(self, model: Seq2SeqTransformer) -> dict[str, Any]:
        """Validation loss (NLL per target token), perplexity and BLEU of `model`."""
        model.eval()
        cfg, data = self.cfg, self.data
        nll_sum = torch.zeros((), device=self.device)
        tokens = 0
        lengths = (data.valid_src.lengths, data.valid_tgt.lengths)
        for index in token_batches(*lengths, cfg.max_tokens, rng=None):
            self.check_validation_cut("loss", 0)
            batch = self.batch(index, data.valid_src, data.valid_tgt)
            with self.autocast:
                logits = model(batch.src, batch.tgt_in)
            nll_sum += label_smoothed_loss(logits, batch.tgt_out, self.model_cfg.pad_id, 0.0)[1]
            tokens += batch.n_tgt_tokens
        nll = nll_sum.item() / max(tokens, 1)
        # The same path as `s2s translate`: empty lines, long lines and detokenising alike.
        translator = Translator(model, data.tokenizers, DecodeConfig(beam=cfg.valid_beam))
        hyps: list[str] = []
        # A chunk at a time, so that a signal or --max-time is answered within seconds.
        for start in range(0, len(data.valid_src_lines), VALIDATION_CHUNK):
            self.check_validation_cut("BLEU", len(hyps))
            hyps += translator.translate(data.valid_src_lines[start:start + VALIDATION_CHUNK])
        bleu = score_corpus(hyps, [data.valid_ref_lines], metrics=("bleu",))[0]
        return {"valid_loss": nll, "valid_ppl": math.exp(min(nll, 50.0)), "valid_bleu": bleu.score,
                "bleu_signature": bleu.signature, "valid_beam": cfg.valid_beam}

    @property
    def epochs_done(self) -> float:
        """Epochs of data consumed, fractional: 1.0 right after the first epoch."""
        return round(self.epoch - 1 + self.position / max(len(self.batches), 1), 3)

    def save(self) -> None:
        save_trainer_state(self.run_dir, self.model, self.optimizer, {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "early_stopping": self.early_stopping.state(),
            "counters": {**self.counters, **self.non_finite.state()},
            "max_tokens": self.batches.max_tokens, "next_max_tokens": self.next_max_tokens,
            "pending_validation": self.pending_validation})

    def validate_and_save(self) -> None:
        """Validate (if there is a validation set), keep the best weights, save the trainer state."""
        self.check_non_finite()
        self.validated_step = self.step  # on every rank: finish() must agree on whether to call this
        if self.is_main:
            has_valid = self.data.valid_src is not None
            record = self.validate() if has_valid else None
            if record is not None or not has_valid:
                # With nothing to choose by, the latest weights are the model.
                if record is None or record["best"]:
                    save_weights(self.model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(self.step)})
                if record is not None:
                    self.emit(record)
                if self.cfg.keep_snapshots:
                    save_snapshot(self.model, self.run_dir, self.step, record and record["valid_bleu"])
                    prune_snapshots(self.run_dir, self.cfg.keep_snapshots)
            self.save()
        if self.world_size > 1:
            dist.barrier()
        self.stop_if_signalled()  # a signal that cut the validation short ends the run here

    def out_of_time(self) -> bool:
        """True once training must stop for a final validation, as long as the last one, to end by
        the --max-time deadline."""
        reserve = self.validation_seconds if self.data.valid_src is not None else 0.0
        return time.monotonic() >= self.deadline - reserve

    def agree(self, decision: int) -> int:
        """Rank 0's decision, on every rank: ranks that disagree on stopping would hang DDP."""
        if self.world_size == 1:
            return decision
        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, src=0)
        return int(flag.item())

    def resume(self) -> None:
        progress = load_trainer_state(self.run_dir, self.model, self.optimizer)
        self.step, self.epoch, self.position = progress["step"], progress["epoch"], progress["position"]
        self.early_stopping.restore(progress["early_stopping"])
        self.non_finite.restore(progress["counters"])
        self.counters = {name: progress["counters"][name] for name in self.counters}
        for group in self.optimizer.param_groups:  # in case the state was saved by an unfused optimizer
            group["fused"], group["foreach"] = True, None
        self.batches.set_max_tokens(progress["max_tokens"])
        self.next_max_tokens = progress["next_max_tokens"]
        self.validated_step = self.step
        self.pending_validation = progress.get("pending_validation", False)
        self.emit({"event": "resume", "step": self.step, "epoch": self.epochs_done})

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(len(self.batches) / self.cfg.accum_steps)

    def planned_updates(self) -> int:
        """Updates until epochs or max_steps runs out, whichever is first; 0 if neither is set."""
        total = self.updates_per_epoch * self.cfg.epochs if self.cfg.epochs else 0
        if self.cfg.max_steps:
            total = min(total, self.cfg.max_steps) if total else self.cfg.max_steps
        return total

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.emit({"event": "start", "run_dir": str(self.run_dir), "step": self.step,
                   "total_steps": self.planned_updates(), "updates_per_epoch": self.updates_per_epoch,
                   "params": count_parameters(self.model), "device": str(self.device),
                   "world_size": self.world_size, "max_time": cfg.max_time})
        start = time.monotonic()
        interval_start, interval_tokens, interval_flops = start, 0, 0
        loss_sum = torch.zeros((), device=self.device)
        loss_tokens = torch.zeros((), device=self.device)
        with self.signals:
            if self.pending_validation:  # cut short before the run was stopped
                self.validate_and_save()
            if cfg.max_steps and self.step >= cfg.max_steps:  # resumed after its last update
                return self.finish("max_steps")
            while not cfg.epochs or self.epoch <= cfg.epochs:
                batches = self.batches.epoch(self.epoch)
                while self.position < len(batches):
                    group = batches[self.position:self.position + cfg.accum_steps]
                    outcome = self.update(group)
                    self.position += len(group)
                    if outcome.ran:
                        loss_sum += outcome.loss
                        loss_tokens += outcome.loss_tokens
                        interval_tokens += outcome.tokens
                        interval_flops += outcome.flops
                    if outcome.ran and self.step % cfg.log_every == 0:
                        now = time.monotonic()
                        # The host syncs with the device here and at checkpoints only.
                        self.check_non_finite()
                        loss, tokens = torch.stack([loss_sum, loss_tokens]).tolist()
                        self.emit({"event": "train", "step": self.step, "epoch": self.epochs_done,
                                   "loss": loss / max(tokens, 1),
                                   "lr": self.optimizer.param_groups[0]["lr"],
                                   "tgt_tokens_per_s": interval_tokens * self.world_size / (now - interval_start),
                                   "model_tflops_per_s": interval_flops * self.world_size / (now - interval_start) / 1e12,
                                   "elapsed": now - start})
                        loss_sum.zero_()
                        loss_tokens.zero_()
                        interval_start, interval_tokens, interval_flops = now, 0, 0
                    if outcome.ran and cfg.valid_every and self.step % cfg.valid_every == 0:
                        self.validate_and_save()
                        if self.agree(self.early_stopping.should_stop):
                            return self.finish("early_stopping")
                    if cfg.max_steps and self.step >= cfg.max_steps:
                        return self.finish("max_steps")
                    self.stop_if_signalled()
                    if cfg.max_time and self.agree(self.out_of_time()):
                        return self.finish("max_time")
                self.epoch, self.position = self.epoch + 1, 0
                if self.next_max_tokens < self.batches.max_tokens:
                    self.batches.set_max_tokens(self.next_max_tokens)
                if not cfg.valid_every:
                    self.validate_and_save()
                    if self.agree(self.early_stopping.should_stop):
                        return self.finish("early_stopping")
                self.stop_if_signalled()
            return self.finish("epochs")

    def average_last_snapshots(self) -> None:
        """Average the last snapshots; keep the average as the model if it validates at least as well."""
        snapshots = list_snapshots(self.run_dir)[-self.cfg.average_last:]
        if len(snapshots) < 2:
            return
        steps = ",".join(str(s.step) for s in snapshots)
        path = self.run_dir / TRAINING_AVERAGE_FILE
        write_average([s.path for s in snapshots], path, metadata={"averaged_steps": steps})
        record: Event = {"event": "average", "step": self.step, "averaged_steps": steps, "kept": True}
        if self.data.valid_src is not None:
            averaged = build_model(self.model_cfg).to(self.device)
            load_weights(averaged, path)
            try:
                record.update(self.measure(averaged))
            except ValidationCut as cut:  # unmeasured, it cannot be shown to be better
                record.update(kept=False, cut=cut.reason)
            else:
                best = self.early_stopping.best
                record["kept"] = best is None or record["valid_bleu"] >= best["valid_bleu"]
        if record["kept"]:
            atomic_write(self.run_dir / WEIGHTS_FILE, lambda tmp: shutil.copyfile(path, tmp))
        self.emit(record)

    def stop_if_signalled(self) -> None:
        """After a SIGINT or SIGTERM: save a resumable state, then leave the loop."""
        signum = self.agree(self.signals.received or 0)
        if signum:
            if self.is_main:
                self.check_non_finite()
                self.save()
            raise TrainingInterrupted(self.run_dir, self.step, signum)

    def finish(self, reason: str) -> TrainResult:
        if self.validated_step != self.step:
            self.validate_and_save()
        if self.cfg.average_last and self.is_main:
            self.average_last_snapshots()
        unvalidated = self.is_main and not (self.run_dir / WEIGHTS_FILE).is_file()
        if unvalidated:  # every validation was cut short: the latest weights are all there is
            save_weights(self.model, self.run_dir / WEIGHTS_FILE, metadata={"step": str(self.step)})
        result = TrainResult(self.run_dir, self.step, self.epochs_done, self.early_stopping.best, reason)
        self.emit({"event": "stop", "reason": reason, "step": self.step, "best": self.early_stopping.best,
                   "unvalidated_model": unvalidated})
        return result


def with_resolved_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its corpus and tokenizer paths absolute: a run resumes from any working
    directory, and a run directory copied elsewhere still finds its data."""
    tokenizer = str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else ""
    return dataclasses.replace(cfg, train=resolve_corpus_spec(cfg.train), valid=resolve_corpus_spec(cfg.valid),
                               tokenizer=tokenizer)


def refuse_run_over_inputs(run_dir: Path, cfg: TrainConfig) -> None:
    """ConfigError if a file training writes in `run_dir` is one of the files it reads."""
    langs = (cfg.src_lang, cfg.tgt_lang)
    reads = (Reads().corpus("the training corpus", cfg.train, langs)
             .corpus("the validation corpus", cfg.valid, langs)
             .folder("the --tokenizer folder", cfg.tokenizer or None))
    for name in RUN_FILES:
        refuse_clobbering("--run", run_dir / name, reads)
    for label, path in reads.files:
        if is_inside(path, run_dir / CHECKPOINTS_DIR):
            raise ConfigError(f"{label} {path} lies inside {run_dir / CHECKPOINTS_DIR}, which training "
                              "rewrites; move it elsewhere")


def train(run_dir: Path | str, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
          *, resume: bool = False, on_event: Callable[[Event], None] = lambda event: None) -> TrainResult:
    """Train a model into `run_dir`, or continue the run there with `resume=True`.

    On resume, `model_cfg` and `train_cfg` must equal the saved configs except
    for the stopping budget (epochs, max_steps, max_time, patience). A run
    stopped before its first checkpoint starts again from step 0.
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    train_cfg = with_resolved_paths(train_cfg)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir}: nothing to resume (no {CONFIG_FILE})")
        saved = read_run_config(run_dir)
        saved.train = with_resolved_paths(saved.train)  # runs saved with paths relative to where they began
        budget = {name: getattr(train_cfg, name) for name in RESUME_BUDGET_FIELDS}
        if model_cfg != saved.model or train_cfg != dataclasses.replace(saved.train, **budget):
            raise ConfigError(f"{run_dir}: resuming with a config other than the saved one; "
                              f"only {', '.join(RESUME_BUDGET_FIELDS)} may change")
        model_cfg = saved.model
    model_cfg.validate()
    train_cfg.validate()
    refuse_run_over_inputs(run_dir, train_cfg)
    is_main = distributed_rank_and_size()[0] == 0
    # Rank 0 alone writes the run directory, so it alone holds the lock.
    with new_folder(run_dir, "--run"), RunLock(run_dir) if is_main else contextlib.nullcontext():
        if not resume and (run_dir / CONFIG_FILE).exists():
            raise RunDirError(f"{run_dir}: already holds a run; pass --resume to continue it "
                              "or choose another --run directory")
        if is_main:
            remove_unfinished_writes(run_dir)
            if resume:  # the new budget, so that config.json says what the run was last asked to do
                atomic_write_text(run_dir / CONFIG_FILE, dataclasses.replace(saved, train=train_cfg).to_json())
        trainer = Trainer(run_dir, model_cfg, train_cfg, device, on_event, started)
        if resume:
            # A run stopped before its first checkpoint has none: it starts again at step 0.
            if has_trainer_state(run_dir):
                trainer.resume()
        elif trainer.is_main:
            tokenizers = trainer.data.tokenizers
            config = RunConfig(model=trainer.model_cfg, train=train_cfg, tokenizer_sha256={
                t.path.name: t.sha256 for t in (tokenizers.src, tokenizers.tgt)})
            atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
        return trainer.run()
