"""The batches a run trains on, and the one token budget they are cut to.

An update that runs out of memory shrinks the budget
(seq2seq.training.bad_updates.OutOfMemorySplits), but only from the next
epoch on: cutting the epoch under way again would move the batches that a
resumed run counts its position in, and break exact resume.

With subword sampling each epoch has lengths of its own (seq2seq.training.resampling): its
batches are cut from them, so that they hold the budget however long the draw made the pairs.
A run still plans by the first epoch's batches, whichever epoch it is in.

A run of several directions mixes them in every batch; with a temperature above 1, each epoch
draws how many pairs of each direction it trains on (seq2seq.data.batching.sample_directions),
a function of (seed, epoch) like the rest of its order, so that resuming stays exact.
"""

from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from ..data.batching import EpochBatches
from ..data.encode import given_target_tokens
from ..data.shape_ladder import ShapeLadder
from .prepare import PreparedData


class TrainingBatches(EpochBatches):
    """`EpochBatches` whose budget can shrink from the next epoch on: `max_tokens` is the budget of
    the epoch under way, `next_max_tokens` that of the epochs to come (never larger)."""

    def __init__(self, src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1, ladder: ShapeLadder | None = None,
                 directions: np.ndarray | None = None, temperature: float = 1.0, given: int = 0):
        """`directions`, `temperature`: as EpochBatches takes them; `given`: the ids each target starts
        with that carry no loss (seq2seq.data.batching.collate), which no update counts as its tokens."""
        super().__init__(src_lens, tgt_lens, max_tokens, seed, rank, world_size, ladder, directions, temperature)
        self.given = given
        self.next_max_tokens = max_tokens
        self.first_lengths = src_lens, tgt_lens  # the first epoch's: what len() counts batches of

    def use_lengths(self, src_lens: np.ndarray, tgt_lens: np.ndarray) -> None:
        """The lengths of the epoch about to be trained, when its segmentation is its own: every
        epoch's batches are cut from its own lengths."""
        if src_lens is not self.src_lens or tgt_lens is not self.tgt_lens:
            self.src_lens, self.tgt_lens = src_lens, tgt_lens
            self._last = None  # an epoch cut from another epoch's lengths

    def __len__(self) -> int:
        """Batches per epoch for this rank: those of the first epoch. Without subword sampling,
        every epoch has as many; with it, each epoch's count varies a little with its draw."""
        if self.src_lens is self.first_lengths[0] and self.tgt_lens is self.first_lengths[1]:
            return super().__len__()
        if self._per_epoch is None:
            self._per_epoch = len(EpochBatches(*self.first_lengths, self.max_tokens, self.seed, self.rank,
                                               self.world_size, self.ladder, self.directions, self.temperature))
        return self._per_epoch

    @classmethod
    def for_data(cls, data: PreparedData, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 ladder: ShapeLadder | None = None) -> "TrainingBatches":
        """The batches of a run's prepared training pairs: its directions mixed at its temperature, its
        target tags given, not predicted."""
        return cls(data.train_src.lengths, data.train_tgt.lengths, cfg.max_tokens, cfg.seed, rank, world_size,
                   ladder, data.train_directions, cfg.lang_temperature, given_target_tokens(cfg.lang_tag, cfg.tgt_lang))

    def epochs_done(self, epoch: int, position: int) -> float:
        """Epochs of data consumed at batch `position` of `epoch`, fractional: 1.0 right after the first.
        An epoch's own batches count: with subword sampling, epochs differ a little in their count."""
        if not position:
            return float(epoch - 1)
        return round(epoch - 1 + position / max(len(self.epoch(epoch)), 1), 3)

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
        return int(sum(self.tgt_lens[index].sum() - self.given * len(index) for group in groups for index in group))

    def budget(self) -> dict[str, int]:
        """The budget as the trainer state saves it."""
        return {"max_tokens": self.max_tokens, "next_max_tokens": self.next_max_tokens}

    def restore_budget(self, saved: dict[str, int]) -> None:
        """The budget of a saved trainer state (`budget()`'s keys, among others)."""
        self.set_max_tokens(saved["max_tokens"])
        self.next_max_tokens = saved["next_max_tokens"]
