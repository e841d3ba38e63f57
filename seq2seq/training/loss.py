"""What an update minimises: label-smoothed cross-entropy over its target tokens, and its gradients.

The loss of a batch is summed over the target tokens that are not padding;
an update's gradients are those of the summed loss of all its batches divided
by all their target tokens, so accumulating batches equals one big batch (and
so does a batch split in two after running out of memory).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..data.batching import Batch, collate
from ..data.encode import given_target_tokens
from ..data.shape_ladder import ShapeLadder
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
# On a GPU each block is a dozen kernel launches, which the host pays for: far fewer, larger
# blocks (256 MB of float32 logits), from the caching allocator.
GPU_LOSS_BLOCK_ELEMENTS = 1 << 26


class _ProjectedSmoothedLoss(torch.autograd.Function):
    """The tied output projection and label-smoothed cross-entropy, fused, a block of rows at a time.

    Forward works out each block's logits, its loss and, when a gradient is
    wanted, at once the gradient of the loss with respect to the states and
    the weight (as Liger-Kernel's fused linear cross-entropy does); backward
    only scales them. So the (N, V) logits, their log-probabilities and their
    gradient never exist whole, and no matrix product is done twice.

    `keep` (N,) bool, or None for every row: the rows that count. The others
    add nothing to the loss and get no gradient.
    """

    @staticmethod
    def forward(ctx, states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                smoothing: float, matmul_dtype: torch.dtype, keep: torch.Tensor | None = None,
                block_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # states (N, D) float32, weight (V, D) float32, target (N,). The three matrix products run
        # in matmul_dtype (float32, or bf16 under bf16 autocast); everything else in float32.
        vocab = weight.size(0)
        rows = max(1, (block_elements or LOSS_BLOCK_ELEMENTS) // vocab)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        low = matmul_dtype != torch.float32
        mm_states, mm_weight = (states.to(matmul_dtype), weight.to(matmul_dtype)) if low else (states, weight)
        loss, nll = states.new_zeros(()), states.new_zeros(())
        grad_states = torch.empty_like(states) if want_grad else None  # (N, D)
        grad_weight = torch.zeros_like(weight) if want_grad else None  # (V, D)
        for start in range(0, states.size(0), rows):
            block, block_target = mm_states[start:start + rows], target[start:start + rows]  # (C, D), (C,)
            block_keep = None if keep is None else keep[start:start + rows, None]  # (C, 1)
            if block_keep is not None:  # a row left out may hold anything, even a NaN: zeroed, it adds nothing
                block = block.masked_fill(~block_keep, 0.0)
            logits = block @ mm_weight.t()  # (C, V)
            logits = logits.float() if low else logits
            lse = torch.logsumexp(logits, dim=1)  # (C,)
            row_nll = lse - logits.gather(1, block_target[:, None]).squeeze(1)  # (C,)
            # -mean over the vocabulary of log p = lse - mean logit.
            row_uniform = lse - logits.mean(dim=1)  # (C,)
            if block_keep is not None:
                row_nll = row_nll.masked_fill(~block_keep[:, 0], 0.0)
                row_uniform = row_uniform.masked_fill(~block_keep[:, 0], 0.0)
            block_nll, block_uniform = row_nll.sum(), row_uniform.sum()
            nll += block_nll
            loss += (1.0 - smoothing) * block_nll + smoothing * block_uniform
            if want_grad:
                # d loss / d logits = softmax - (1 - eps) onehot(target) - eps / V, in place in the logits.
                grad = logits.sub_(lse[:, None]).exp_().sub_(smoothing / vocab)  # (C, V)
                grad[torch.arange(block.size(0), device=grad.device), block_target] -= 1.0 - smoothing
                if block_keep is not None:
                    grad.masked_fill_(~block_keep, 0.0)
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
        return grad_states * grad_loss, grad_weight * grad_loss, None, None, None, None, None


# Eager under torch.compile: its block loop over a data-dependent number of rows would break
# the graph and recompile for every batch shape; the model's layers around it still compile.
@torch.compiler.disable
def projected_smoothed_loss(states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, pad_id: int,
                            smoothing: float, fixed_shape: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`label_smoothed_loss` of the logits `states @ weight.T`, without forming them whole.

    states (B, T, D): decoder states; weight (V, D): the output projection;
    target (B, T). Padding rows are dropped before the projection, so they cost
    nothing; with `fixed_shape` (None: on CUDA) they are projected and masked
    out instead, in fewer, larger blocks (GPU_LOSS_BLOCK_ELEMENTS). Dropping
    them needs their count on the host, which waits for the device, and gives
    every batch its own shape. Under bf16 autocast its matrix products run in
    bf16, on the hardware's bf16 instructions; the log-sum-exp, the loss and
    the gradient of the logits are float32 whatever autocast says. Returns the
    summed smoothed loss and the summed NLL (not differentiable).
    """
    device_type = states.device.type
    matmul_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    keep = target.ne(pad_id)  # (B, T)
    if fixed_shape is None:
        fixed_shape = device_type == "cuda"
    with torch.autocast(device_type, enabled=False):
        if fixed_shape:
            return _ProjectedSmoothedLoss.apply(states.reshape(-1, states.size(-1)).float(), weight.float(),
                                                target.reshape(-1), smoothing, matmul_dtype, keep.reshape(-1),
                                                GPU_LOSS_BLOCK_ELEMENTS)  # (B*T, D), (B*T,)
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


def uses_cuda_graphs(device: torch.device, world_size: int) -> bool:
    """Whether a compiled training step is captured as CUDA graphs (torch.compile's "reduce-overhead"):
    on CUDA, in one process. Under DDP the gradient all-reduce runs from hooks inside the backward,
    between the pieces a graph would replay, so several processes compile without graphs."""
    return device.type == "cuda" and world_size == 1


class UpdateGradients:
    """Forward and backward passes of the training model over the batches of one update.

    `train_model` is the model with its loss as it trains (a TrainingObjective,
    wrapped in DistributedDataParallel under torchrun); `src` and `tgt` hold the
    training pairs' token ids; `ladder`, if any, the shape ladder batches are
    padded to (seq2seq.data.shape_ladder).

    On CUDA the next update's first batch is gathered during this update
    (`expect`), and with train.compile each batch shape's compiled forward and
    backward are captured as CUDA graphs, warmed up before training
    (`warm_up`) and replayed, so that the host's kernel launches do not set
    the pace.
    """

    def __init__(self, train_model: nn.Module, src: TokenStore, tgt: TokenStore, model_cfg: ModelConfig,
                 cfg: TrainConfig, device: torch.device, world_size: int, ladder: ShapeLadder | None = None):
        self.train_model, self.src, self.tgt = train_model, src, tgt
        self.pad_id, self.bos_id = model_cfg.pad_id, model_cfg.bos_id
        # A forced target tag is fed to the decoder but carries no loss (seq2seq.data.batching.collate).
        self.given = given_target_tokens(cfg.lang_tag, cfg.tgt_lang)
        self.device, self.world_size, self.ladder = device, world_size, ladder
        self.autocast = mixed_precision(device, cfg.precision)
        self.forward_loss = self.eager_forward_loss
        self.cuda_graphs = cfg.compile and uses_cuda_graphs(device, world_size)
        if cfg.compile:
            # dynamic=True makes batch size and lengths symbolic from the first compile, so
            # token-budget batches of every shape reuse one graph instead of recompiling; CUDA
            # graphs are still captured per shape, which the ladder keeps few. Duck shaping
            # would tie source and target length together whenever the first batch has them
            # equal, and recompile at the first batch where they differ.
            torch.fx.experimental._config.use_duck_shape = False
            self.forward_loss = torch.compile(self.eager_forward_loss, dynamic=True,
                                              mode="reduce-overhead" if self.cuda_graphs else None)
        self.upcoming: np.ndarray | None = None  # the pairs of the next update's first batch, if known
        self.gathered: tuple[np.ndarray, Batch] | None = None  # those pairs' batch, gathered ahead
        self.warm_shapes: set[tuple[int, int, int]] = set()  # (rows, source width, target width) warmed up

    def collate_batch(self, index: np.ndarray) -> Batch:
        """Training pairs `index` as one padded batch on the device."""
        if self.gathered is not None and self.gathered[0] is index:
            batch, self.gathered = self.gathered[1], None
            return batch
        return collate(self.src, self.tgt, index, self.pad_id, self.bos_id, self.ladder, self.given)

    def expect(self, index: np.ndarray | None) -> None:
        """The pairs of the next update's first batch (None: not known): on CUDA, `accumulate` gathers
        them during this update, after its last forward, so that they are on the device before the
        GPU needs them. Elsewhere the batch is gathered when its update starts, as it always was."""
        self.upcoming = index if self.device.type == "cuda" else None

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
                if i == len(batches) - 1 and self.upcoming is not None:
                    # Queued before the backward: the host gathers it while the GPU runs the forward.
                    self.gathered, self.upcoming = (self.upcoming, self.collate_batch(self.upcoming)), None
                (loss / normaliser).backward()
            loss_sum += loss.detach()
        return loss_sum, tokens

    def warm_up(self, examples: dict[tuple[int, int, int], np.ndarray]) -> float | None:
        """With CUDA graphs: forward and backward over one batch of each shape to come (`examples`, by
        shape) that was not warmed up before, so that it is compiled and captured now rather than in
        the middle of the run; the weights, their gradients and the random generators are left as
        they were. Its seconds, or None without CUDA graphs, which have nothing to warm up."""
        if not self.cuda_graphs:
            return None
        started = time.monotonic()
        self.train_model.train()
        new = [index for shape, index in examples.items() if shape not in self.warm_shapes]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for _ in range(2):  # a shape's first call runs it as it is; the second captures its graph
                for index in new:
                    batch = self.collate_batch(index)
                    self.forward_loss(batch.src, batch.tgt_in, batch.tgt_out).backward()
        self.warm_shapes.update(examples)
        self.train_model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.monotonic() - started

    def eager_forward_loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """Summed label-smoothed loss of one batch: src (B, S), tgt_in and tgt_out (B, T)."""
        with self.autocast:
            return self.train_model(src, tgt_in, tgt_out)
