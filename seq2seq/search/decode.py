"""Greedy search, sampling and beam search over the model's decoder cache.

Shapes: B sentences, K beam size, S source length, D d_model, V target
vocabulary. Beam search folds sentences and beams into one batch dimension
(B*K), as JoeyNMT does, so that each step is one call to `model.decode`.

All searches feed one new token per step through a `DecoderCache` and drop
sentences from the batch as soon as they are done, so the batch shrinks as
the search goes on. Padding and BOS are never produced: their log-probability
is set to -inf before a token is chosen (as fairseq does for padding). So is
EOS's before `min_len` output tokens, so that a non-empty source never gets an
empty output by accident (CTranslate2's min_decoding_length, Marian's default).

An output that reaches its length limit without EOS is cut there and finished
as it is (`Hypothesis.hit_limit`), scored by the log-probability of its tokens
alone, as CTranslate2 does at max_decoding_length. Forcing an EOS there instead
(as fairseq does) would add a log-probability the model never chose, often so
low that an early, short or empty output wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from ..config import DecodeConfig
from ..data.batching import cut_batches
from ..model.transformer import DecoderCache, Seq2SeqTransformer

# What the searches here share with every engine (`seq2seq.search.hypotheses`); tests and callers import them from here too.
from .hypotheses import (
    Hypothesis,
    check_beam_size,
    check_decode_config,
    check_rows,
    length_penalty_factor,
    penalised_score,  # noqa: F401
    unsearched,
)
from .next_token import next_token_selection, top_k_per_row
from .prefix import ForcedPrefix, output_limit


def _empty_cut() -> Hypothesis:
    """The output of a row whose length limit is 0: nothing, cut by the limit, scored 0."""
    return Hypothesis(tokens=[], score=0.0, logprob=0.0, hit_limit=True)


def _require_eval_mode(model: Seq2SeqTransformer) -> None:
    """Dropout in training mode would make the search random."""
    if model.training:
        raise ValueError("decoding needs the model in eval mode; call model.eval() first")


Found = TypeVar("Found")


# The searches' common signature: rows (B, S), their limits, their prefixes (or None).
Search = Callable[[Tensor, list[int], "list[list[int]] | None"], list[Found]]


def _search_rows_with_room(src: Tensor, max_len: Tensor, prefixes: list[list[int]] | None, search: Search,
                           empty: Callable[[], Found]) -> list[Found]:
    """What `search(rows, limits, prefixes)` finds for the rows of src (B, S) that have room for a
    token, and `empty()` for the others, in row order.

    max_len: (B,) long, read to the host once here, so that the searches keep
    their limits in a list. A row with max_len 0 can only give the empty
    output, cut by the limit: the model need not run for it. `prefixes`, one
    per row (see `seq2seq.search.prefix`), go to `search` only if one is not empty.
    """
    limits = max_len.tolist()
    if prefixes is not None and len(prefixes) != len(limits):
        raise ValueError(f"{len(prefixes)} prefixes for {len(limits)} source rows")
    room = [i for i, limit in enumerate(limits) if limit > 0]
    if len(room) < len(limits):
        src = src.index_select(0, torch.tensor(room, dtype=torch.long, device=src.device))  # (B', S)
    if prefixes is not None:
        for i in room:
            if len(prefixes[i]) > limits[i]:
                raise ValueError(f"the prefix of row {i + 1} has {len(prefixes[i])} tokens, more than its "
                                 f"length limit ({limits[i]})")
        prefixes = [prefixes[i] for i in room] if any(prefixes) else None
    found = iter(search(src, [limits[i] for i in room], prefixes))
    return [next(found) if limit > 0 else empty() for limit in limits]


# Picks the next token (N,) from the log-probabilities (N, V) of the rows still decoding.
TokenChoice = Callable[[Tensor], Tensor]


def _one_token_per_step(model: Seq2SeqTransformer, src: Tensor, limits: list[int], prefixes: list[list[int]] | None,
                        min_len: int, choose: TokenChoice, whole_batch: bool = False) -> list[Hypothesis]:
    """The loop shared by greedy search and sampling: one chosen token per row and step.

    src: (B, S) padded source ids. limits: the most tokens of each row's
    output, each at least 1 and at least its prefix's length; a row that
    reaches it without EOS is cut there (hit_limit). EOS may not end an output
    of fewer than `min_len` tokens. Each row's output starts with its prefix
    (`prefixes`, or none). Each Hypothesis' score and logprob are the model's
    log-probability of the chosen tokens after the prefix, whatever `choose`
    did to pick them. `whole_batch`: as in `seq2seq.search.next_token.next_token_selection`.
    """
    n_rows = src.size(0)
    if n_rows == 0:
        return []
    eos_id = model.cfg.eos_id
    memory, src_mask = model.encode(src)  # (B, S, D), (B, S)
    cache = DecoderCache()
    row_max_len = torch.tensor(limits, device=src.device)  # (N,): N rows still decoding, N <= B
    origin = list(range(n_rows))  # the input row of each row still decoding
    history = torch.full((n_rows, 1), model.cfg.bos_id, dtype=torch.long, device=src.device)  # (N, 1)
    total_logprob = torch.zeros(n_rows, device=src.device)  # (N,)
    results: list[Hypothesis | None] = [None] * n_rows
    forced = ForcedPrefix(prefixes, src.device) if prefixes else None

    def choose_with_logprob(logprobs: Tensor) -> tuple[Tensor, Tensor]:
        token = choose(logprobs)  # (C,)
        return token, logprobs.gather(1, token[:, None]).squeeze(1)  # (C,), (C,)

    for step in range(max(limits)):
        # The cache summarises the source on the first step; memory is not needed after it.
        token, token_logprob = next_token_selection(
            model, history[:, -1:], memory if step == 0 else None, src_mask, cache, step,
            eos_allowed=step >= min_len, forced=forced, select=choose_with_logprob,
            whole_batch=whole_batch)  # (N,), (N,)
        if forced is not None and step + 1 >= forced.width:
            forced = None  # every prefix is out
        total_logprob = total_logprob + token_logprob  # (N,)
        history = torch.cat([history, token[:, None]], dim=1)  # (N, step + 2)
        done = token.eq(eos_id) | row_max_len.eq(step + 1)  # (N,): ended, or cut at the limit
        if not done.any():
            continue
        done_rows = done.nonzero().squeeze(1)  # (E,)
        for row, tokens, logprob in zip(done_rows.tolist(),
                                        history[done_rows, 1:].tolist(),
                                        total_logprob[done_rows].tolist()):
            ended = tokens[-1] == eos_id
            results[origin[row]] = Hypothesis(tokens=tokens[:-1] if ended else tokens, score=logprob,
                                              logprob=logprob, hit_limit=not ended)
        # Set finished rows aside so later steps only pay for the rows still decoding.
        keep = (~done).nonzero().squeeze(1)  # (N',)
        if keep.numel() == 0:
            break
        origin = [origin[row] for row in keep.tolist()]
        cache.select(keep, sentences=keep)
        if forced is not None:
            forced.select(keep)
        src_mask = src_mask.index_select(0, keep)  # (N', S)
        history = history.index_select(0, keep)  # (N', step + 2)
        total_logprob = total_logprob.index_select(0, keep)  # (N',)
        row_max_len = row_max_len.index_select(0, keep)  # (N',)
    return results  # every row has ended or been cut by its limit


@torch.inference_mode()
def greedy_search(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, *, min_len: int = 1,
                  prefixes: list[list[int]] | None = None) -> list[Hypothesis]:
    """The most probable next token at each step, for each source row.

    src: (B, S) padded source ids. max_len: (B,) long, the most tokens each
    output may have, its prefix included; an output that reaches it is cut
    there (hit_limit). EOS may not end an output of fewer than `min_len` tokens
    (so min_len above a row's max_len gives exactly max_len tokens). Each
    output starts with its row's prefix (`prefixes`: target ids per row, as
    `seq2seq.search.prefix` says). Returns one `Hypothesis` per row, in row order,
    with score equal to logprob.
    """
    _require_eval_mode(model)
    return _search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _one_token_per_step(model, rows, limits, forced, min_len,
                                                         lambda logprobs: logprobs.argmax(dim=1)),
        _empty_cut)


def sampling_distribution(logprobs: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """The probabilities (N, V) to sample the next token from, given logprobs (N, V).

    Logprobs are divided by `temperature`; then only the `top_k` most probable
    tokens (0: all) are kept, and of those the smallest set whose probability
    mass reaches `top_p`; what is kept is renormalised. Tokens at -inf (padding,
    BOS, EOS before min_len) keep probability 0.
    """
    logits = logprobs / temperature  # (N, V)
    if 0 < top_k < logits.size(1):
        kth_best = logits.topk(top_k, dim=1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = logits.softmax(dim=1)  # (N, V)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=1, descending=True)  # (N, V), (N, V)
        # A token stays if the mass of the more probable tokens is still short of
        # top_p: this keeps the most probable token, and stops at the first that reaches p.
        mass_before = sorted_probs.cumsum(dim=1) - sorted_probs  # (N, V)
        drop_sorted = mass_before >= top_p  # (N, V)
        drop = drop_sorted.scatter(1, order, drop_sorted)  # (N, V), back in vocabulary order
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=1, keepdim=True)  # (N, V)
    return probs


@torch.inference_mode()
def sample_search(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None, *,
                  min_len: int = 1, prefixes: list[list[int]] | None = None) -> list[Hypothesis]:
    """One random output per source row, each token drawn from `sampling_distribution`.

    src: (B, S) padded source ids. max_len, min_len and prefixes: as in `greedy_search`.
    `generator` (on src's device) makes the draws repeatable. Returns one
    `Hypothesis` per row, in row order; its score and logprob are the model's
    log-probability of the drawn tokens, before temperature and filtering.
    """
    def draw(logprobs: Tensor) -> Tensor:
        probs = sampling_distribution(logprobs, temperature, top_k, top_p)  # (N, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)

    _require_eval_mode(model)
    # One block of rows: the draws take the generator's numbers in the same order whatever the batch.
    return _search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _one_token_per_step(model, rows, limits, forced, min_len, draw,
                                                         whole_batch=True),
        _empty_cut)


@torch.inference_mode()
def beam_search(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, beam: int,
                length_penalty: str = "gnmt", alpha: float = 0.6, *, min_len: int = 1,
                prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
    """Beam search with `beam` (K) hypotheses per sentence, batched over sentences.

    src: (B, S) padded source ids. max_len, min_len and prefixes: as in
    `greedy_search`. Hypotheses are ranked by logprob / `length_penalty_factor(
    length, length_penalty, alpha)`, where logprob and length leave out a
    prefix. Returns, for each of the B sentences, up to K finished hypotheses,
    best first. K may not exceed the target vocabulary.

    Stopping follows fairseq: a sentence is done as soon as it has K finished
    hypotheses, or at its max_len. This is cheaper than waiting until no live
    beam could still beat the worst finished one, and only EOS candidates that
    rank within the top K are finished, so beam 1 is exactly greedy search. At
    max_len, unlike fairseq, no EOS is forced: the live beams are cut as they
    are (hit_limit) and compete with the finished hypotheses, best first, until
    the sentence has K.
    """
    _require_eval_mode(model)
    check_beam_size(beam, model.cfg.tgt_vocab_size)
    length_penalty_factor(1, length_penalty, alpha)  # reject an unknown kind before any work
    return _search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _beam_search(model, rows, limits, forced, beam, length_penalty, alpha,
                                                  min_len),
        lambda: [_empty_cut()])


def _beam_search(model: Seq2SeqTransformer, src: Tensor, limits: list[int], prefixes: list[list[int]] | None,
                 k: int, length_penalty: str, alpha: float, min_len: int) -> list[list[Hypothesis]]:
    """`beam_search` on sentences src (B, S) whose length limits, each at least 1, are `limits`."""
    n_sentences = src.size(0)
    if n_sentences == 0:
        return []
    eos_id = model.cfg.eos_id
    device = src.device
    forced = ForcedPrefix(prefixes, device) if prefixes else None
    prefix_length = [len(ids) for ids in prefixes] if prefixes else [0] * n_sentences

    def score(logprob: float, sentence: int, length: int) -> float:
        """The penalised score of an output of `length` tokens; the prefix is not counted."""
        return penalised_score(logprob, length - prefix_length[sentence], length_penalty, alpha)

    memory, src_mask = model.encode(src)  # (B, S, D), (B, S)
    cache = DecoderCache()
    # N sentences are still searching (N <= B); `origin` maps each to its input sentence.
    origin = list(range(n_sentences))
    finished: list[list[Hypothesis]] = [[] for _ in range(n_sentences)]
    # Rows are sentences x beams, sentence i's beams in rows i*beams ... . All K beams
    # would start from the same BOS, so the first step runs one beam per sentence
    # (and summarises the source once per sentence); it fans out to K beams after it.
    history = torch.full((n_sentences, 1), model.cfg.bos_id, dtype=torch.long, device=device)  # (N*beams, 1)
    beam_logprob = torch.zeros(n_sentences, 1, device=device)  # (N, beams)
    sentence_index = torch.arange(n_sentences, device=device)[:, None]  # (B, 1)

    for step in range(max(limits)):
        n, beams = beam_logprob.shape
        # The sentence's best 2K continuations are among its beams' best 2K each,
        # so rank within each row first and only then across the beams.
        width = min(2 * k, model.cfg.tgt_vocab_size)
        row_logprob, row_token = next_token_selection(
            model, history[:, -1:], memory if step == 0 else None, src_mask, cache, step,
            eos_allowed=step >= min_len, forced=forced,
            select=lambda logprobs: top_k_per_row(logprobs, width))  # (N*beams, W) each
        row_logprob = beam_logprob.view(-1, 1) + row_logprob  # (N*beams, W)
        candidates = min(2 * k, beams * width)  # C
        top_logprob, top_index = row_logprob.view(n, beams * width).topk(candidates, dim=1)  # (N, C)
        top_row = top_index // width + sentence_index[:n] * beams  # (N, C): the row each candidate extends
        top_token = row_token.view(n, beams * width).gather(1, top_index)  # (N, C)
        ends = top_token.eq(eos_id)  # (N, C)
        # Whatever finishes in this step, by EOS after `step` tokens or cut at step + 1, has length
        # step + 1 (`length_penalty_factor`).

        # EOS candidates within the top K finish; -inf ones extend dead beams or padding,
        # or are EOS before min_len.
        finishing = ends[:, :k] & top_logprob[:, :k].isfinite()  # (N, K)
        if finishing.any():
            rows = top_row[:, :k][finishing]  # (E,), in the row-major order of nonzero()
            for (i, _), tokens, logprob in zip(finishing.nonzero().tolist(),
                                               history.index_select(0, rows)[:, 1:].tolist(),
                                               top_logprob[:, :k][finishing].tolist()):
                hypotheses = finished[origin[i]]
                if len(hypotheses) < k:
                    hypotheses.append(Hypothesis(tokens=tokens, score=score(logprob, origin[i], step + 1),
                                                 logprob=logprob))

        # The first K non-EOS candidates of each sentence, in rank order, live on. Only
        # when there are fewer than K (a vocabulary smaller than the beam) do EOS ones
        # fill the last places, as dead beams.
        live = ends.long().sort(dim=1, stable=True).indices[:, :k]  # (N, K)
        live_logprob = top_logprob.gather(1, live).masked_fill(ends.gather(1, live), float("-inf"))  # (N, K)
        live_row = top_row.gather(1, live)  # (N, K)
        live_token = top_token.gather(1, live)  # (N, K)

        at_limit = [i for i, s in enumerate(origin) if step + 1 == limits[s] and len(finished[s]) < k]
        if at_limit:
            # These sentences end here: their live beams are cut as they are and finish,
            # best first, until the sentence has K hypotheses. Only steps where some
            # sentence reaches its limit pay for this transfer.
            index = torch.tensor(at_limit, device=device)  # (L,)
            cut_rows = live_row.index_select(0, index).view(-1)  # (L*K,)
            cut_tokens = torch.cat([history.index_select(0, cut_rows)[:, 1:],
                                    live_token.index_select(0, index).view(-1, 1)], dim=1)  # (L*K, step + 1)
            for i, beam_tokens, beam_logprobs in zip(at_limit,
                                                     cut_tokens.view(len(at_limit), -1, step + 1).tolist(),
                                                     live_logprob.index_select(0, index).tolist()):
                hypotheses = finished[origin[i]]
                for tokens, logprob in zip(beam_tokens, beam_logprobs):
                    if len(hypotheses) == k or logprob == float("-inf"):  # dead beams come last
                        break
                    hypotheses.append(Hypothesis(tokens=tokens, score=score(logprob, origin[i], step + 1),
                                                 logprob=logprob, hit_limit=True))

        searching = [i for i, s in enumerate(origin) if len(finished[s]) < k and step + 1 < limits[s]]
        if not searching:
            break
        same_sentences = len(searching) == n
        if not same_sentences:
            # Drop finished sentences from the batch: later steps cost only what is left.
            keep = torch.tensor(searching, device=device)  # (N',)
            origin = [origin[i] for i in searching]
            live_logprob = live_logprob.index_select(0, keep)  # (N', K)
            live_row = live_row.index_select(0, keep)  # (N', K)
            live_token = live_token.index_select(0, keep)  # (N', K)
        rows = live_row.view(-1)  # (N'*K,)
        # The beams of a sentence share its source: the cross-attention summary and the
        # source mask have a row per sentence, and change only when sentences leave.
        cache.select(rows, sentences=None if same_sentences else keep)
        if not same_sentences:
            src_mask = src_mask.index_select(0, keep)  # (N', S)
        if forced is not None:
            forced.select(rows)
            if step + 1 >= forced.width:
                forced = None  # every prefix is out
        history = torch.cat([history.index_select(0, rows),
                             live_token.view(-1, 1)], dim=1)  # (N'*K, step + 2)
        beam_logprob = live_logprob  # (N', K)

    return [sorted(hypotheses, key=lambda h: h.score, reverse=True) for hypotheses in finished]


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


def length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, longest first, grouped so rows x longest <= max_tokens.

    A single row longer than `max_tokens` forms a batch of its own.
    """
    widths = np.asarray(lengths, dtype=np.int64)  # (N,)
    # Longest first (ties in input order): a batch's first row sets its padded width.
    order = np.argsort(-widths, kind="stable")
    return [batch.tolist() for batch in cut_batches(order, widths, max_tokens)]


def nbest_ids(model: Seq2SeqTransformer, src_ids: list[list[int]], cfg: DecodeConfig,
              generator: torch.Generator | None = None,
              prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
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
    when it is None.
    """
    check_decode_config(cfg, model.cfg.tgt_vocab_size)
    limit = model.cfg.max_positions
    check_rows(src_ids, prefixes, limit)
    device = next(model.parameters()).device
    if cfg.sampling and generator is None:
        generator = seeded_generator(cfg.seed, device)
    pad_id = model.cfg.pad_id
    results = [unsearched(ids, prefixes[i] if prefixes else None) for i, ids in enumerate(src_ids)]
    nonempty = [i for i, ids in enumerate(src_ids) if ids]
    for batch in length_batches([len(src_ids[i]) for i in nonempty], cfg.max_tokens):
        rows = [nonempty[j] for j in batch]
        width = len(src_ids[rows[0]])  # longest first
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


def translate_ids(model: Seq2SeqTransformer, src_ids: list[list[int]], cfg: DecodeConfig,
                  generator: torch.Generator | None = None,
                  prefixes: list[list[int]] | None = None) -> list[list[int]]:
    """The best output ids (no BOS, no EOS) for each source row, in input order.

    src_ids: token ids per row, each ending in EOS; an empty row gives [].
    Batching, length limits and search are those of `nbest_ids`.
    """
    return [hypotheses[0].tokens for hypotheses in nbest_ids(model, src_ids, cfg, generator, prefixes)]
