"""What a training run reports, and where it goes: every event to the caller, the records among them
to metrics.jsonl and TensorBoard; and the "train" record's loss and rates over an interval of updates.

Rank 0 alone reports: the other ranks train the same updates and would say the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..files.run_layout import Event
from ..inspection.metrics_records import RECORDS, MetricsLog
from ..inspection.tensorboard import TensorBoardSink
from .distributed import is_main_process, sum_over_ranks

if TYPE_CHECKING:
    from .trainer import UpdateOutcome


class RunEvents:
    """Where a run's events go: each one to `on_event` (the CLI draws them, tests read them), and
    the records of metrics.jsonl among them (seq2seq.inspection.metrics_records.RECORDS), with
    their wall-clock time, there and to TensorBoard when it is asked for."""

    def __init__(self, run_dir: Path, on_event: Callable[[Event], None]):
        self.is_main = is_main_process()
        self.on_event = on_event
        self.metrics = MetricsLog(run_dir)
        self.tensorboard: TensorBoardSink | None = None  # opened by train(), once the resumed step is known

    def emit(self, event: Event) -> None:
        if not self.is_main:
            return
        if event["event"] in RECORDS:
            # Wall-clock time too: bench/quality.py measures time to quality from it.
            record = {**event, "time": time.time()}
            self.metrics.write(record)
            if self.tensorboard is not None:  # the same record, so the two never disagree
                self.tensorboard.write(record)
        self.on_event(event)


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
