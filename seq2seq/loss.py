"""What an update minimises: label-smoothed cross-entropy over its target tokens, and its gradients.

The loss of a batch is summed over the target tokens that are not padding;
an update's gradients are those of the summed loss of all its batches divided
by all their target tokens, so accumulating batches equals one big batch (and
so does a batch split in two after running out of memory).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batching import Batch, TokenStore, collate
from .config import ModelConfig, TrainConfig
from .device import mixed_precision


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


class UpdateGradients:
    """Forward and backward passes of the training model over the batches of one update.

    `train_model` is the model as it trains (wrapped in DistributedDataParallel
    under torchrun); `src` and `tgt` hold the training pairs' token ids.
    """

    def __init__(self, train_model: nn.Module, src: TokenStore, tgt: TokenStore, model_cfg: ModelConfig,
                 cfg: TrainConfig, device: torch.device, world_size: int):
        self.train_model, self.src, self.tgt = train_model, src, tgt
        self.pad_id, self.bos_id, self.smoothing = model_cfg.pad_id, model_cfg.bos_id, cfg.label_smoothing
        self.device, self.world_size = device, world_size
        self.autocast = mixed_precision(device)
        self.forward_loss = self.eager_forward_loss
        if cfg.compile:
            # dynamic=True makes batch size and lengths symbolic from the first compile, so
            # token-budget batches of every shape reuse one graph instead of recompiling. Duck
            # shaping would tie source and target length together whenever the first batch
            # has them equal, and recompile at the first batch where they differ.
            torch.fx.experimental._config.use_duck_shape = False
            self.forward_loss = torch.compile(self.eager_forward_loss, dynamic=True)

    def collate_batch(self, index: np.ndarray) -> Batch:
        """Training pairs `index` as one padded batch on the device."""
        return collate(self.src, self.tgt, index, self.pad_id, self.bos_id)

    def accumulate(self, parts: list[np.ndarray]) -> tuple[torch.Tensor, int]:
        """Forward and backward over each batch (the pair indices in `parts`); returns the summed
        loss, on the device, and the target tokens."""
        batches = [self.collate_batch(index) for index in parts]
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
        return label_smoothed_loss(logits, tgt_out, self.pad_id, self.smoothing)[0]
