"""All source rows searched: sorted by length, cut into token-budget batches, and each batch searched
as the DecodeConfig says (seq2seq.search.stepwise for greedy search and sampling, seq2seq.search.beam
for beam search).

On CUDA a batch's source is padded to a rung of the shape ladder (seq2seq.data.shape_ladder), so
that the encoder and the cross-attention see few shapes. Rows are not rounded: a full batch has
its rung's capacity already, and cutting the last one into smaller ones would add whole searches
of their own, while every search drops its finished rows step by step anyway. The decoder cache
grows one position a step (seq2seq.model.transformer.DecoderCache), so every step has a shape of
its own. A cache of a fixed size would need the keys and values preallocated to the output
limit, each step written in place at its position, a mask over the positions not yet written,
and finished rows kept (masked) instead of dropped: then one step's shape would hold for the
whole search and could be captured as a CUDA graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import DecodeConfig
from ..data.batching import cut_batches
from ..data.shape_ladder import ShapeLadder, shape_ladder
from ..model.transformer import Seq2SeqTransformer
from .beam import beam_search
from .hypotheses import Hypothesis, check_rows, unsearched
from .prefix import output_limit
from .stepwise import greedy_search, sample_search


def _search_batch(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, prefixes: list[list[int]] | None,
                  cfg: DecodeConfig, generator: torch.Generator | None) -> list[list[Hypothesis]]:
    """Sampling, greedy or beam search, as `cfg` says, on one padded batch (B, S)."""
    if cfg.sampling:
        return [[hypothesis] for hypothesis in sample_search(model, src, max_len, cfg.temperature, cfg.top_k,
                                                             cfg.top_p, generator, min_len=cfg.min_len,
                                                             prefixes=prefixes)]
    if cfg.beam == 1:
        return [[hypothesis] for hypothesis in greedy_search(model, src, max_len, min_len=cfg.min_len,
                                                             prefixes=prefixes)]
    return beam_search(model, src, max_len, cfg.beam, cfg.length_penalty, cfg.alpha, min_len=cfg.min_len,
                       prefixes=prefixes)


def length_batches(lengths: list[int], max_tokens: int, ladder: ShapeLadder | None = None) -> list[list[int]]:
    """Indices into `lengths`, longest first, grouped so rows x longest <= max_tokens; with a
    `ladder`, lengths count as their rungs.

    A single row longer than `max_tokens` forms a batch of its own.
    """
    widths = np.asarray(lengths, dtype=np.int64)  # (N,)
    if ladder is not None:
        widths = ladder.rungs(widths)
    # Longest first (ties in input order): a batch's first row sets its padded width.
    order = np.argsort(-widths, kind="stable")
    return [batch.tolist() for batch in cut_batches(order, widths, max_tokens)]


def nbest_ids(model: Seq2SeqTransformer, src_ids: list[list[int]], cfg: DecodeConfig,
              generator: torch.Generator | None = None,
              prefixes: list[list[int]] | None = None, *, ladder: str = "auto") -> list[list[Hypothesis]]:
    """All finished hypotheses for each source row, best first, in input order.

    src_ids: token ids per row, each ending in EOS. Rows are sorted by length
    and batched so that rows x longest source <= cfg.max_tokens. Each output may
    have at most `output_limit` tokens: min(int(max_len_a * len(src) +
    max_len_b) + len(prefix), max_positions - 1), len(src) counting EOS, and is
    cut there if it gets that far (hit_limit); it has at least cfg.min_len
    tokens, or as many as that limit allows. `prefixes`, target ids per row,
    start the outputs (`seq2seq.search.prefix`). An empty row (not even EOS) gets its
    prefix, or the empty output, with score 0, without running the model.
    Greedy search (cfg.beam 1) and sampling (cfg.sampling) give one hypothesis
    per row; sampling draws from `generator`, or from one seeded with cfg.seed
    when it is None. The search fits the model: engines check it when they open
    (seq2seq.search.hypotheses.check_search). `ladder` ("auto": on CUDA; "on" or "off"): batches are
    cut by their sources' rungs on the shape ladder and padded to them; the padding is masked.
    """
    limit = model.cfg.max_positions
    check_rows(src_ids, prefixes, limit)
    device = next(model.parameters()).device
    if cfg.sampling and generator is None:
        generator = seeded_generator(cfg.seed, device)
    pad_id = model.cfg.pad_id
    rungs = shape_ladder(ladder, device, limit)
    results = [unsearched(ids, prefixes[i] if prefixes else None) for i, ids in enumerate(src_ids)]
    nonempty = [i for i, ids in enumerate(src_ids) if ids]
    for batch in length_batches([len(src_ids[i]) for i in nonempty], cfg.max_tokens, rungs):
        rows = [nonempty[j] for j in batch]
        width = len(src_ids[rows[0]]) if rungs is None else rungs.rung(max(len(src_ids[i]) for i in rows))
        src = torch.tensor([src_ids[i] + [pad_id] * (width - len(src_ids[i])) for i in rows],
                           dtype=torch.long, device=device)  # (B, S)
        batch_prefixes = [prefixes[i] for i in rows] if prefixes else None
        max_len = torch.tensor([output_limit(len(src_ids[i]), len(prefixes[i]) if prefixes else 0, cfg, limit)
                                for i in rows], dtype=torch.long, device=device)  # (B,)
        for i, hypotheses in zip(rows, _search_batch(model, src, max_len, batch_prefixes, cfg, generator)):
            results[i] = hypotheses
    return results


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator on `device` for sampling; a fresh random seed when `seed` is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
