"""What training does when an update goes wrong: a non-finite loss, gradient or weight, or running
out of memory.

A non-finite update is skipped (the optimizer leaves the weights alone) and
counted; too many in a row, or a weight that became non-finite anyway, stop
the run before such weights are saved. An update that runs out of memory is
split into smaller batches and retried; a lone sentence that never fits is
dropped; and the token budget shrinks from the next epoch on
(seq2seq.training.batches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import TrainingDiverged
from ..files.run_layout import Event
from ..runs.checkpoint import has_trainer_state
from .batches import TrainingBatches
from .loss import UpdateGradients


class NonFiniteUpdates:
    """Updates skipped for a non-finite loss or gradient, counted on the device.

    Whether an update is finite is known only on the device. Asking the host
    every update would make it wait for the accelerator each step, so the
    verdict goes to the optimizer as a tensor (fused AdamW's `found_inf`, the
    hook GradScaler uses), and these counts are read only at log intervals and
    before checkpoints.
    """

    def __init__(self, device: torch.device, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row  # train.max_bad_updates
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

    def check(self, step: int, run_dir: Path, emit: Callable[[Event], None]) -> None:
        """Report the updates skipped since the last check; TrainingDiverged after too many in a row."""
        new, in_a_row, longest_run = self.read()
        if new:
            emit({"event": "skip", "step": step, "reason": "non-finite loss or gradients",
                  "skipped": new, "in_a_row": in_a_row})
        if longest_run >= self.max_in_a_row:
            raise TrainingDiverged(
                f"loss or gradients were not finite for {longest_run} updates in a row by step {step}; "
                f"stopped. Skipped updates leave the weights unchanged; {what_is_kept(run_dir)}. "
                "Try a lower {lr} or a longer {warmup_steps}", ("lr", "warmup_steps"))

    def state(self) -> dict[str, int]:
        skipped, in_a_row = torch.stack([self.skipped, self.in_a_row]).tolist()
        return {"skipped_updates": skipped, "bad_in_a_row": in_a_row}

    def restore(self, state: dict[str, int]) -> None:
        self.skipped.fill_(state["skipped_updates"])
        self.in_a_row.fill_(state["bad_in_a_row"])
        self.longest_run.fill_(state["bad_in_a_row"])
        self.skipped_at_last_read = state["skipped_updates"]


def check_finite_weights(model: nn.Module, step: int, run_dir: Path) -> None:
    """TrainingDiverged if any weight is not finite: one host sync.

    A finite gradient can still make a finite weight overflow (a huge learning
    rate); such weights must never be saved as a checkpoint or as the model.
    """
    if not bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all()):
        raise TrainingDiverged(f"the weights became non-finite by step {step}; stopped without saving "
                               f"them ({what_is_kept(run_dir)}). Try a lower {{lr}} or a longer {{warmup_steps}}",
                               ("lr", "warmup_steps"))


def what_is_kept(run_dir: Path) -> str:
    """What a run that stops on bad numbers leaves: its last checkpoint, or (none saved yet) a folder
    that the same command starts over (seq2seq.runs.checkpoint.files_to_start_over)."""
    if has_trainer_state(run_dir):
        return f"the last checkpoint in {run_dir} holds finite weights"
    return f"no checkpoint had been saved yet, so training into {run_dir} again starts it over"


class OutOfMemorySplits:
    """The policy for an update that ran out of memory, and its counts.

    Each time, the update's batches are halved (it is retried with the same
    pairs, so the update is the one without the error); once every batch is a
    single pair, the longest pair is dropped. The token budget of `batches`
    shrinks by a quarter for the epochs to come. Under torchrun (several
    ranks) the error is raised instead: one rank retrying would fall out of
    step with the others.
    """

    def __init__(self, batches: TrainingBatches, max_len: int):
        self.batches = batches
        self.max_len = max_len  # the budget never falls below one pair of the longest kept length
        self.splits = 0
        self.skipped_sentences = 0

    def accumulate(self, gradients: UpdateGradients, optimizer: torch.optim.Optimizer, parts: list[np.ndarray],
                   update_tokens: int, step: int, emit: Callable[[Event], None],
                   ) -> tuple[list[np.ndarray], torch.Tensor, int] | None:
        """`gradients.accumulate(parts, update_tokens)`, with the batches split again each time they run
        out of memory: (the batches that ran, their summed loss, their target tokens), or None if
        nothing fitted."""
        while True:
            try:
                return parts, *gradients.accumulate(parts, update_tokens)
            except torch.OutOfMemoryError:
                if self.batches.world_size > 1:  # ranks would fall out of step; let torchrun see it
                    raise
            # Outside the except block, so the failed attempt's tensors are freed.
            optimizer.zero_grad(set_to_none=True)
            if gradients.device.type == "cuda":
                torch.cuda.empty_cache()
            parts, event = self.split(parts, step)
            emit(event)
            if not parts:
                return None

    def split(self, parts: list[np.ndarray], step: int) -> tuple[list[np.ndarray], Event]:
        """Halve the batches of an update that ran out of memory; drop a lone sentence that cannot fit.

        `parts` are the pair indices of the update's batches; returns the new
        parts (none when the last sentence was dropped) and the event to report.
        """
        if all(len(part) == 1 for part in parts):
            lengths = self.batches.src_lens + self.batches.tgt_lens
            parts = sorted(parts, key=lambda part: lengths[part[0]])[:-1]  # drop the longest
            self.skipped_sentences += 1
            action = "skipped one sentence that does not fit in memory"
        else:
            parts = [half for part in parts
                     for half in (np.array_split(part, 2) if len(part) > 1 else [part])]
            self.splits += 1
            action = f"split the update into {len(parts)} batches"
        self.batches.shrink_from_next_epoch(max(self.max_len, int(self.batches.next_max_tokens * 0.75)))
        return parts, {"event": "oom", "step": step, "action": action,
                       "max_tokens_from_next_epoch": self.batches.next_max_tokens}

    def counters(self) -> dict[str, int]:
        return {"oom_splits": self.splits, "oom_skipped_sentences": self.skipped_sentences}

    def restore(self, counters: dict[str, int]) -> None:
        self.splits, self.skipped_sentences = counters["oom_splits"], counters["oom_skipped_sentences"]
