"""The searches that choose one token per row and step, greedy and sampling, and what every search
over the model's decoder cache shares (beam search is seq2seq.search.beam's; batching rows for them,
seq2seq.search.decode's).

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

import torch
from torch import Tensor

from ..model.transformer import DecoderCache, Seq2SeqTransformer
from .hypotheses import Hypothesis
from .next_token import next_token_selection
from .prefix import ForcedPrefix


def empty_cut() -> Hypothesis:
    """The output of a row whose length limit is 0: nothing, cut by the limit, scored 0."""
    return Hypothesis(tokens=[], score=0.0, logprob=0.0, hit_limit=True)


def require_eval_mode(model: Seq2SeqTransformer) -> None:
    """Dropout in training mode would make the search random."""
    if model.training:
        raise ValueError("decoding needs the model in eval mode; call model.eval() first")


Found = TypeVar("Found")


# The searches' common signature: rows (B, S), their limits, their prefixes (or None).
Search = Callable[[Tensor, list[int], "list[list[int]] | None"], list[Found]]


def search_rows_with_room(src: Tensor, max_len: Tensor, prefixes: list[list[int]] | None, search: Search,
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
                        min_len: int, choose: TokenChoice, whole_batch: bool = False,
                        check_every: int = 1) -> list[Hypothesis]:
    """The loop shared by greedy search and sampling: one chosen token per row and step.

    src: (B, S) padded source ids. limits: the most tokens of each row's
    output, each at least 1 and at least its prefix's length; a row that
    reaches it without EOS is cut there (hit_limit). EOS may not end an output
    of fewer than `min_len` tokens. Each row's output starts with its prefix
    (`prefixes`, or none). Each Hypothesis' score and logprob are the model's
    log-probability of the chosen tokens after the prefix, whatever `choose`
    did to pick them. `whole_batch`: as in `seq2seq.search.next_token.next_token_selection`.

    Which rows have ended is known on the device; the host asks every
    `check_every` steps (a synchronisation), takes the ended rows' outputs and
    drops them from the batch. In between, an ended row goes on decoding, its
    tokens and log-probabilities not counted: rows are independent, so every
    output is the same whatever `check_every` is (on a CPU, 1 saves the most
    work; on a GPU, steps launched without waiting for the one before hide
    the host's launch time).
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
    decoding = torch.ones(n_rows, dtype=torch.bool, device=src.device)  # (N,): neither ended nor cut yet
    length = torch.zeros(n_rows, dtype=torch.long, device=src.device)  # (N,): an ended row's tokens, EOS included
    results: list[Hypothesis | None] = [None] * n_rows
    forced = ForcedPrefix(prefixes, src.device) if prefixes else None

    def choose_with_logprob(logprobs: Tensor) -> tuple[Tensor, Tensor]:
        token = choose(logprobs)  # (C,)
        return token, logprobs.gather(1, token[:, None]).squeeze(1)  # (C,), (C,)

    steps = max(limits)
    for step in range(steps):
        # The cache summarises the source on the first step; memory is not needed after it.
        token, token_logprob = next_token_selection(
            model, history[:, -1:], memory if step == 0 else None, src_mask, cache, step,
            eos_allowed=step >= min_len, forced=forced, select=choose_with_logprob,
            whole_batch=whole_batch)  # (N,), (N,)
        if forced is not None and step + 1 >= forced.width:
            forced = None  # every prefix is out
        total_logprob = total_logprob + token_logprob.masked_fill(~decoding, 0.0)  # (N,)
        history = torch.cat([history, token[:, None]], dim=1)  # (N, step + 2)
        done = decoding & (token.eq(eos_id) | row_max_len.eq(step + 1))  # (N,): ended, or cut at the limit
        length = torch.where(done, step + 1, length)  # (N,)
        decoding = decoding & ~done  # (N,)
        if (step + 1) % check_every and step + 1 < steps:
            continue
        done_rows = (~decoding).nonzero().squeeze(1)  # (E,): the host waits for the device here
        if done_rows.numel() == 0:
            continue
        for row, tokens, n, logprob in zip(done_rows.tolist(), history[done_rows, 1:].tolist(),
                                           length[done_rows].tolist(), total_logprob[done_rows].tolist()):
            ended = tokens[n - 1] == eos_id
            results[origin[row]] = Hypothesis(tokens=tokens[:n - 1] if ended else tokens[:n], score=logprob,
                                              logprob=logprob, hit_limit=not ended)
        # Set finished rows aside so later steps only pay for the rows still decoding.
        keep = decoding.nonzero().squeeze(1)  # (N',)
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
        decoding, length = decoding.index_select(0, keep), length.index_select(0, keep)  # (N',), (N',)
    return results  # every row has ended or been cut by its limit


# Greedy steps between the host's checks for ended rows, by device type (`_one_token_per_step`): on
# CUDA the host launches the next steps while the GPU runs, instead of waiting on every step.
CHECK_EVERY = {"cuda": 8}


@torch.inference_mode()
def greedy_search(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, *, min_len: int = 1,
                  prefixes: list[list[int]] | None = None, check_every: int | None = None) -> list[Hypothesis]:
    """The most probable next token at each step, for each source row.

    src: (B, S) padded source ids. max_len: (B,) long, the most tokens each
    output may have, its prefix included; an output that reaches it is cut
    there (hit_limit). EOS may not end an output of fewer than `min_len` tokens
    (so min_len above a row's max_len gives exactly max_len tokens). Each
    output starts with its row's prefix (`prefixes`: target ids per row, as
    `seq2seq.search.prefix` says). Returns one `Hypothesis` per row, in row order,
    with score equal to logprob. `check_every`: steps between the host's checks
    for ended rows (None: CHECK_EVERY for src's device, else 1); outputs are the same whatever it is.
    """
    require_eval_mode(model)
    check_every = check_every or CHECK_EVERY.get(src.device.type, 1)
    return search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _one_token_per_step(model, rows, limits, forced, min_len,
                                                         lambda logprobs: logprobs.argmax(dim=1),
                                                         check_every=check_every),
        empty_cut)


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

    require_eval_mode(model)
    # One block of rows: the draws take the generator's numbers in the same order whatever the batch.
    return search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _one_token_per_step(model, rows, limits, forced, min_len, draw,
                                                         whole_batch=True),
        empty_cut)
