"""The batches a run trains on, and the one token budget they are cut to.

An update that runs out of memory shrinks the budget
(seq2seq.training.bad_updates.OutOfMemorySplits), but only from the next
epoch on: cutting the epoch under way again would move the batches that a
resumed run counts its position in, and break exact resume.
"""

from __future__ import annotations

import numpy as np

from ..data.batching import EpochBatches


class TrainingBatches(EpochBatches):
    """`EpochBatches` whose budget can shrink from the next epoch on: `max_tokens` is the budget of
    the epoch under way, `next_max_tokens` that of the epochs to come (never larger)."""

    def __init__(self, src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        super().__init__(src_lens, tgt_lens, max_tokens, seed, rank, world_size)
        self.next_max_tokens = max_tokens

    def shrink_from_next_epoch(self, max_tokens: int) -> None:
        self.next_max_tokens = max_tokens

    def start_next_epoch(self) -> None:
        """The budget of the epochs to come becomes the current one; called as an epoch ends."""
        if self.next_max_tokens < self.max_tokens:
            self.set_max_tokens(self.next_max_tokens)

    def update_tokens(self, epoch: int, position: int, accum_steps: int) -> int:
        """Target tokens of the update at `position` in `epoch` on every rank together. Each rank
        knows them without asking: the order is a function of (seed, epoch)."""
        groups = [batches[position:position + accum_steps] for batches in self.shards(epoch)]
        return int(sum(self.tgt_lens[index].sum() for group in groups for index in group))

    def budget(self) -> dict[str, int]:
        """The budget as the trainer state saves it."""
        return {"max_tokens": self.max_tokens, "next_max_tokens": self.next_max_tokens}

    def restore_budget(self, saved: dict[str, int]) -> None:
        """The budget of a saved trainer state (`budget()`'s keys, among others)."""
        self.set_max_tokens(saved["max_tokens"])
        self.next_max_tokens = saved["next_max_tokens"]
