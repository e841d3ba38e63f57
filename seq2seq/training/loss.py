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

from ..config import ModelConfig, TrainConfig
from ..data.batching import Batch, collate
from ..data.token_store import TokenStore
from ..device import mixed_precision


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


# Rows of logits worked out at a time by `projected_smoothed_loss`: 2M float32 numbers (8 MB).
# The whole (tokens x vocabulary) logits of a 2,500-token batch over 8,000 pieces are 80 MB,
# and so are their gradient and log-probabilities: above glibc's largest mmap threshold
# (32 MB), each was mmap'd, faulted in page by page and unmapped again at every update. A
# block this size is reused from the heap, and stays in the CPU's cache between its uses.
LOSS_BLOCK_ELEMENTS = 1 << 21


class _ProjectedSmoothedLoss(torch.autograd.Function):
    """The tied output projection and label-smoothed cross-entropy, fused, a block of rows at a time.

    Forward works out each block's logits, its loss and, when a gradient is
    wanted, at once the gradient of the loss with respect to the states and
    the weight (as Liger-Kernel's fused linear cross-entropy does); backward
    only scales them. So the (N, V) logits, their log-probabilities and their
    gradient never exist whole, and no matrix product is done twice.
    """

    @staticmethod
    def forward(ctx, states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                smoothing: float, matmul_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # states (N, D) float32, weight (V, D) float32, target (N,). The three matrix products run
        # in matmul_dtype (float32, or bf16 under bf16 autocast); everything else in float32.
        vocab = weight.size(0)
        rows = max(1, LOSS_BLOCK_ELEMENTS // vocab)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        low = matmul_dtype != torch.float32
        mm_states, mm_weight = (states.to(matmul_dtype), weight.to(matmul_dtype)) if low else (states, weight)
        loss, nll = states.new_zeros(()), states.new_zeros(())
        grad_states = torch.empty_like(states) if want_grad else None  # (N, D)
        grad_weight = torch.zeros_like(weight) if want_grad else None  # (V, D)
        for start in range(0, states.size(0), rows):
            block, block_target = mm_states[start:start + rows], target[start:start + rows]  # (C, D), (C,)
            logits = block @ mm_weight.t()  # (C, V)
            logits = logits.float() if low else logits
            lse = torch.logsumexp(logits, dim=1)  # (C,)
            block_nll = (lse - logits.gather(1, block_target[:, None]).squeeze(1)).sum()
            # -mean over the vocabulary of log p = lse - mean logit.
            block_uniform = (lse - logits.mean(dim=1)).sum()
            nll += block_nll
            loss += (1.0 - smoothing) * block_nll + smoothing * block_uniform
            if want_grad:
                # d loss / d logits = softmax - (1 - eps) onehot(target) - eps / V, in place in the logits.
                grad = logits.sub_(lse[:, None]).exp_().sub_(smoothing / vocab)  # (C, V)
                grad[torch.arange(block.size(0), device=grad.device), block_target] -= 1.0 - smoothing
                if low:
                    grad = grad.to(matmul_dtype)
                    grad_states[start:start + rows] = grad @ mm_weight
                    grad_weight += grad.t() @ block
                else:
                    torch.mm(grad, weight, out=grad_states[start:start + rows])
                    grad_weight.addmm_(grad.t(), block)
        ctx.save_for_backward(grad_states, grad_weight)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_nll: torch.Tensor):
        grad_states, grad_weight = ctx.saved_tensors
        return grad_states * grad_loss, grad_weight * grad_loss, None, None, None


# Eager under torch.compile: its block loop over a data-dependent number of rows would break
# the graph and recompile for every batch shape; the model's layers around it still compile.
@torch.compiler.disable
def projected_smoothed_loss(states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, pad_id: int,
                            smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`label_smoothed_loss` of the logits `states @ weight.T`, without forming them whole.

    states (B, T, D): decoder states; weight (V, D): the output projection;
    target (B, T). Padding rows are dropped before the projection, so they cost
    nothing. Under bf16 autocast its matrix products run in bf16, on the
    hardware's bf16 instructions; the log-sum-exp, the loss and the
    gradient of the logits are float32 whatever autocast says. Returns the
    summed smoothed loss and the summed NLL (not differentiable).
    """
    device_type = states.device.type
    matmul_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    keep = target.ne(pad_id)  # (B, T)
    with torch.autocast(device_type, enabled=False):
        return _ProjectedSmoothedLoss.apply(states[keep].float(), weight.float(), target[keep], smoothing,
                                            matmul_dtype)


class TrainingObjective(nn.Module):
    """The model and its loss as one module: what DistributedDataParallel wraps, so that every use
    of a weight (the tied output projection too) happens inside its forward."""

    def __init__(self, model: nn.Module, smoothing: float):
        super().__init__()
        self.model, self.smoothing = model, smoothing

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Summed label-smoothed loss of a batch: src (B, S), tgt_in and tgt_out (B, T)."""
        return projected_smoothed_loss(self.model.teacher_forced_states(src, tgt_in), self.model.tgt_embed.weight,
                                       tgt_out, self.model.cfg.pad_id, self.smoothing)[0]


class UpdateGradients:
    """Forward and backward passes of the training model over the batches of one update.

    `train_model` is the model with its loss as it trains (a TrainingObjective,
    wrapped in DistributedDataParallel under torchrun); `src` and `tgt` hold the
    training pairs' token ids.
    """

    def __init__(self, train_model: nn.Module, src: TokenStore, tgt: TokenStore, model_cfg: ModelConfig,
                 cfg: TrainConfig, device: torch.device, world_size: int):
        self.train_model, self.src, self.tgt = train_model, src, tgt
        self.pad_id, self.bos_id = model_cfg.pad_id, model_cfg.bos_id
        self.device, self.world_size = device, world_size
        self.autocast = mixed_precision(device, cfg.precision)
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

    def accumulate(self, parts: list[np.ndarray], update_tokens: int | None = None) -> tuple[torch.Tensor, int]:
        """Forward and backward over each batch (the pair indices in `parts`); returns the summed
        loss, on the device, and this process's target tokens.

        `update_tokens`: the target tokens of the update on every rank together, which
        normalise the loss under DDP; with one process, the tokens of `parts`.
        """
        batches = [self.collate_batch(index) for index in parts]
        # Normalise by the tokens of the whole update, so accumulation equals one big batch
        # (and so does a batch split in two after running out of memory). Under DDP, which
        # averages the ranks' gradients, each rank's loss is scaled by world_size / (the
        # tokens of all ranks): the mean is then the summed loss of all ranks over all their
        # tokens, as one process accumulating the same batches would have it.
        tokens = sum(b.n_tgt_tokens for b in batches)
        normaliser = tokens if self.world_size == 1 or update_tokens is None else update_tokens / self.world_size
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            # Under DDP, all-reduce gradients only on the last micro-batch.
            sync = (i == len(batches) - 1 or self.world_size == 1)
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                loss = self.forward_loss(batch.src, batch.tgt_in, batch.tgt_out)
                (loss / normaliser).backward()
            loss_sum += loss.detach()
        return loss_sum, tokens

    def eager_forward_loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Summed label-smoothed loss of one batch: src (B, S), tgt_in and tgt_out (B, T)."""
        with self.autocast:
            return self.train_model(src, tgt_in, tgt_out)
