"""One step of s2s's search: the next token's log-probabilities, worked out a block of rows
at a time, and what the search picks from them.

Shapes: N rows (sentences x beams), D d_model, V target vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..model.transformer import DecoderCache, Seq2SeqTransformer
from .prefix import ForcedPrefix

# Rows whose next-token distributions are worked out at a time. At beam 5 a batch
# has thousands of rows, and their (rows, V) logits would go through memory three
# times (projected, normalised, searched); a block of 256 rows stays in the CPU's
# cache meanwhile. Each row's numbers are the same, up to the rounding of the
# matrix product.
BLOCK_ROWS = 256

# The width of the blocks `top_k_per_row` ranks rows in.
TOP_K_BLOCK = 64


def top_k_per_row(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest values of each row of scores (R, W), and their indices, best first.

    The values are those of `scores.topk(k, dim=1)` (among equal values, the
    index may differ), found with a fraction of its work on long rows: on the
    CPU, ranking a row of a whole vocabulary costs twice its log-softmax. The
    k largest values of a row lie in the k blocks of TOP_K_BLOCK columns with
    the largest maxima, so only those blocks, and the columns after the last
    whole block, are ranked.
    """
    rows, width = scores.shape
    blocks = width // TOP_K_BLOCK
    if blocks < 4 * k:  # too few blocks to leave most of the row out
        return scores.topk(k, dim=1)
    body = width - width % TOP_K_BLOCK
    scores = scores.contiguous()
    grid = scores.as_strided((rows, blocks, TOP_K_BLOCK), (width, TOP_K_BLOCK, 1))  # (R, blocks, BLOCK)
    best_blocks = grid.amax(dim=2).topk(k, dim=1).indices  # (R, k)
    candidates = grid.gather(1, best_blocks[:, :, None].expand(-1, -1, TOP_K_BLOCK)).view(rows, -1)  # (R, k*BLOCK)
    candidates = torch.cat([candidates, scores[:, body:]], dim=1)  # (R, k*BLOCK + W % BLOCK)
    values, at = candidates.topk(k, dim=1)  # (R, k) each
    in_blocks = at < k * TOP_K_BLOCK
    block = best_blocks.gather(1, (at // TOP_K_BLOCK).clamp(max=k - 1))  # (R, k)
    index = torch.where(in_blocks, block * TOP_K_BLOCK + at % TOP_K_BLOCK, at - k * TOP_K_BLOCK + body)
    return values, index


# Picks from the log-probabilities (C, V) of a block of rows two tensors, each with C rows.
Selection = Callable[[Tensor], tuple[Tensor, Tensor]]


def next_token_selection(model: Seq2SeqTransformer, last_tokens: Tensor, memory: Tensor | None,
                          src_mask: Tensor, cache: DecoderCache, step: int, eos_allowed: bool,
                          forced: ForcedPrefix | None, select: Selection,
                          whole_batch: bool = False) -> tuple[Tensor, Tensor]:
    """What `select` picks from the log-probabilities (N, V), float32, of the token after
    `last_tokens` (N, 1), worked out BLOCK_ROWS rows at a time (or all at once, with
    `whole_batch`) and joined along the rows. The cache grows by one.

    Padding, BOS and, unless `eos_allowed`, EOS are set to -inf after
    normalising, so the other tokens keep the model's own log-probabilities;
    then the `forced` prefix tokens of `step` overrule everything.
    `memory` is read only on the first step, while the cache has no summary
    of the source yet.
    """
    states = model.decoder_states(last_tokens, memory, src_mask, cache)[:, -1]  # (N, D)
    block_rows = states.size(0) if whole_batch else BLOCK_ROWS
    picks = []
    for first_row in range(0, states.size(0), block_rows):
        # The projection and log-softmax in float32, whatever autocast says: bf16 logits
        # (8 bits of mantissa) flip near-ties, and a row's choice would then depend on the
        # rows batched with it.
        with torch.autocast(states.device.type, enabled=False):
            logits = model.output_logits(states[first_row:first_row + block_rows].float())  # (C, V)
            # One fused log-softmax: on the CPU it is faster than a logsumexp alone.
            logprobs = logits.float().log_softmax(dim=-1)
        logprobs[:, model.cfg.pad_id] = float("-inf")
        logprobs[:, model.cfg.bos_id] = float("-inf")
        if not eos_allowed:
            logprobs[:, model.cfg.eos_id] = float("-inf")
        if forced is not None:
            forced.force(logprobs, step, first_row)
        picks.append(select(logprobs))
    if len(picks) == 1:
        return picks[0]
    first, second = zip(*picks)
    return torch.cat(first), torch.cat(second)
