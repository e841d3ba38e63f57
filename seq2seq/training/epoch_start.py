"""What happens before each epoch trains: its own segmentation of the training pairs (subword
regularization), and its batch shapes reported and, with CUDA graphs, captured.

Both change what the epoch's batches are made of, so both happen at the epoch's
start, before its first update, and both happen again on resume for the epoch
the run resumes in.
"""

from __future__ import annotations

import time
from typing import Callable

from ..config import TrainConfig
from .batches import TrainingBatches
from ..files.run_layout import Event
from .loss import UpdateGradients
from .prepare import PreparedData


class EpochStart:
    """Switches the run to an epoch's segmentation and shapes (`__call__`); `close` stops a draw
    for an epoch that will not train."""

    def __init__(self, data: PreparedData, batches: TrainingBatches, gradients: UpdateGradients,
                 cfg: TrainConfig, emit: Callable[[Event], None]):
        self.data, self.batches, self.gradients, self.cfg, self.emit = data, batches, gradients, cfg, emit

    def __call__(self, epoch: int) -> None:
        self.use_segmentation(epoch)
        self.warm_up(epoch)

    def use_segmentation(self, epoch: int) -> None:
        """With subword sampling: train on the epoch's own segmentation, and start drawing the next's."""
        segmentations = self.data.segmentations
        if segmentations is None:
            return
        started = time.monotonic()
        src, tgt = segmentations.stores(epoch)  # drawn while the last epoch trained
        self.emit({"event": "segmentation", "epoch": epoch, "waited_s": time.monotonic() - started})
        self.data.train_src, self.data.train_tgt = src, tgt
        self.gradients.src, self.gradients.tgt = src, tgt
        self.batches.use_lengths(src.lengths, tgt.lengths)
        if not self.cfg.epochs or epoch < self.cfg.epochs:
            segmentations.prefetch(epoch + 1)

    def warm_up(self, epoch: int) -> None:
        """Report the epoch's batch shapes (the "batch_shapes" record); with CUDA graphs, capture the
        step of each shape not seen before now (UpdateGradients.warm_up), within the run's time."""
        count = self.batches.shape_count(epoch)
        seconds = self.gradients.warm_up(count.examples)
        self.emit({"event": "batch_shapes", "epoch": epoch, "batches": count.batches, "shapes": count.shapes,
                   "padding": round(count.padding, 4), "shape_ladder": self.batches.ladder is not None,
                   **({"warmup_seconds": round(seconds, 2)} if seconds is not None else {})})

    def close(self) -> None:
        if self.data.segmentations is not None:
            self.data.segmentations.close()
