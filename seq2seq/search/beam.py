"""Beam search over the model's decoder cache, batched over sentences.

Shapes: B sentences, K beam size, S source length, D d_model, V target
vocabulary. Beam search folds sentences and beams into one batch dimension
(B*K), as JoeyNMT does, so that each step is one call to `model.decode`. What
it shares with greedy search and sampling (the decoder cache, EOS and limit
rules) is in seq2seq.search.stepwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import LengthPenalty
from ..model.transformer import DecoderCache, Seq2SeqTransformer
from .hypotheses import Hypothesis, penalised_score
from .next_token import next_token_selection, top_k_per_row
from .prefix import ForcedPrefix
from .stepwise import empty_cut, require_eval_mode, search_rows_with_room


@torch.inference_mode()
def beam_search(model: Seq2SeqTransformer, src: Tensor, max_len: Tensor, beam: int,
                length_penalty: LengthPenalty = "gnmt", alpha: float = 0.6, *, min_len: int = 1,
                prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
    """Beam search with `beam` (K) hypotheses per sentence, batched over sentences.

    src: (B, S) padded source ids. max_len, min_len and prefixes: as in
    `greedy_search`. Hypotheses are ranked by logprob / `length_penalty_factor(
    length, length_penalty, alpha)`, where logprob and length leave out a
    prefix. Returns, for each of the B sentences, up to K finished hypotheses,
    best first. K is at most the target vocabulary (seq2seq.search.hypotheses.check_search).

    Stopping follows fairseq: a sentence is done as soon as it has K finished
    hypotheses, or at its max_len. This is cheaper than waiting until no live
    beam could still beat the worst finished one, and only EOS candidates that
    rank within the top K are finished, so beam 1 is exactly greedy search. At
    max_len, unlike fairseq, no EOS is forced: the live beams are cut as they
    are (hit_limit) and compete with the finished hypotheses, best first, until
    the sentence has K.
    """
    require_eval_mode(model)
    return search_rows_with_room(
        src, max_len, prefixes,
        lambda rows, limits, forced: _beam_search(model, rows, limits, forced, beam, length_penalty, alpha,
                                                  min_len),
        lambda: [empty_cut()])


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
