"""Search tests: each result is checked against a simpler reference, not just run.

Greedy and beam search are compared with one-sentence-at-a-time runs, with
uncached references that recompute the whole prefix each step, and, on a
fake model with a fixed table of log-probabilities, with exhaustive search.
The references follow the same rules: no EOS before min_len tokens, and an
output that reaches max_len is cut there, scored without EOS.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import EosFirst, LogitsAsStates
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from seq2seq.config import DecodeConfig, ModelConfig
from seq2seq.errors import ConfigError
from seq2seq.model.attention import KeyValueState
from seq2seq.model.transformer import DecoderCache, LayerCache, build_model
from seq2seq.search.beam import beam_search
from seq2seq.search.decode import length_batches, nbest_ids
from seq2seq.search.hypotheses import Hypothesis, check_search, length_penalty_factor
from seq2seq.search.stepwise import greedy_search, sample_search, sampling_distribution

VOCAB = 24
PAD, BOS, EOS = 0, 2, 3


def tiny_model(seed: int = 0, max_positions: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=32, n_heads=4, ffn_dim=64,
                      encoder_layers=1, decoder_layers=1, dropout=0.0, max_positions=max_positions)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


def random_sources(n: int, seed: int, min_len: int = 1, max_len: int = 9) -> list[list[int]]:
    """Source rows of ordinary tokens (4 .. V-1), each ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(4, VOCAB, (length,), generator=g).tolist() + [EOS] for length in lengths]


def pad(rows: list[list[int]]) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])  # (B, S)


def step_logprobs(model, src: Tensor, prefix: list[int]) -> Tensor:
    """Uncached reference: log-probs (V,) after BOS + prefix for one source (1, S)."""
    memory, src_mask = model.encode(src)
    tgt_in = torch.tensor([[BOS] + prefix])  # (1, T)
    logits = model.decode(tgt_in, memory, src_mask)[0, -1]  # (V,)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    logprobs[[PAD, BOS]] = float("-inf")
    return logprobs


def reference_greedy(model, src_row: list[int], max_len: int, min_len: int = 1) -> Hypothesis:
    src = torch.tensor([src_row])
    tokens, total = [], 0.0
    with torch.inference_mode():
        while len(tokens) < max_len:
            logprobs = step_logprobs(model, src, tokens)
            if len(tokens) < min_len:
                logprobs[EOS] = float("-inf")
            token = int(logprobs.argmax())
            total += float(logprobs[token])
            if token == EOS:
                return Hypothesis(tokens, total, total)
            tokens.append(token)
    return Hypothesis(tokens, total, total, hit_limit=True)


def reference_beam(model, src_row: list[int], max_len: int, beam: int,
                   penalty: str, alpha: float, min_len: int = 1) -> list[Hypothesis]:
    """fairseq's beam search for one sentence, uncached, with Python lists; but at max_len
    the live beams are cut as they are, without EOS."""
    if max_len == 0:
        return [Hypothesis([], 0.0, 0.0, hit_limit=True)]
    src = torch.tensor([src_row])
    live = [([], 0.0)]
    finished: list[Hypothesis] = []
    with torch.inference_mode():
        for step in range(max_len):
            candidates = []
            for tokens, total in live:
                logprobs = step_logprobs(model, src, tokens)
                if step < min_len:
                    logprobs[EOS] = float("-inf")
                candidates += [(total + logprob, tokens + [t]) for t, logprob in enumerate(logprobs.tolist())
                               if logprob > float("-inf")]
            candidates.sort(key=lambda c: -c[0])
            factor = length_penalty_factor(step + 1, penalty, alpha)
            for total, tokens in candidates[:beam]:
                if tokens[-1] == EOS and len(finished) < beam:
                    finished.append(Hypothesis(tokens[:-1], total / factor, total))
            live = [(tokens, total) for total, tokens in candidates if tokens[-1] != EOS][:beam]
            if len(finished) >= beam:
                break
            if step + 1 == max_len:
                finished += [Hypothesis(tokens, total / factor, total, hit_limit=True)
                             for tokens, total in live][:beam - len(finished)]
    return sorted(finished, key=lambda h: -h.score)


# --- length penalty ---------------------------------------------------------------


def test_length_penalty_forms():
    assert length_penalty_factor(7, "gnmt", 0.6) == pytest.approx((12 / 6) ** 0.6)
    assert length_penalty_factor(1, "gnmt", 0.6) == pytest.approx(1.0)
    assert length_penalty_factor(7, "average", 0.6) == pytest.approx(7 ** 0.6)
    assert length_penalty_factor(7, "average", 1.0) == pytest.approx(7.0)
    assert length_penalty_factor(7, "none", 0.6) == 1.0
    assert length_penalty_factor(7, "gnmt", 0.0) == 1.0


def test_an_unknown_length_penalty_is_refused_where_it_is_set():
    with pytest.raises(ConfigError, match="length_penalty must be one of 'gnmt', 'average', 'none', got 'wu'"):
        DecodeConfig(length_penalty="wu")
    with pytest.raises(ValueError, match="gnmt"):
        length_penalty_factor(3, "wu", 0.6)


# --- equivalences on a tiny Transformer ---------------------------------------------


def test_beam_one_equals_greedy(model):
    rows = random_sources(6, seed=1)
    src, max_len = pad(rows), torch.full((6,), 12)
    greedy = greedy_search(model, src, max_len)
    beam = beam_search(model, src, max_len, beam=1)
    assert [h.tokens for h in greedy] == [hyps[0].tokens for hyps in beam]
    assert [h.logprob for h in greedy] == pytest.approx([hyps[0].logprob for hyps in beam], abs=1e-5)


# check_every: the host looks for ended rows every step (as on the CPU), every 8 (as on CUDA), or at odd
# intervals; an ended row that goes on decoding in between must change nothing.
@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize("min_len", [0, 1, 4])
def test_greedy_cached_equals_uncached_reference(model, min_len, check_every):
    rows = random_sources(5, seed=2)
    max_len = torch.tensor([12, 3, 0, 8, 12])
    found = greedy_search(model, pad(rows), max_len, min_len=min_len, check_every=check_every)
    for row, limit, hyp in zip(rows, max_len.tolist(), found):
        expected = reference_greedy(model, row, limit, min_len)
        assert (hyp.tokens, hyp.hit_limit) == (expected.tokens, expected.hit_limit)
        assert hyp.logprob == pytest.approx(expected.logprob, abs=1e-4)
        assert hyp.score == hyp.logprob
        assert min(min_len, limit) <= len(hyp.tokens) <= limit
        assert hyp.hit_limit == (len(hyp.tokens) == limit)


@pytest.mark.parametrize(("penalty", "min_len"), [("gnmt", 1), ("none", 0), ("gnmt", 3)])
def test_beam_equals_uncached_reference_beam(model, penalty, min_len):
    rows = random_sources(4, seed=3)
    max_len = torch.tensor([6, 10, 2, 8])
    found = beam_search(model, pad(rows), max_len, beam=3, length_penalty=penalty, alpha=0.6, min_len=min_len)
    for row, limit, hyps in zip(rows, max_len.tolist(), found):
        expected = reference_beam(model, row, limit, 3, penalty, 0.6, min_len)
        assert [(h.tokens, h.hit_limit) for h in hyps] == [(h.tokens, h.hit_limit) for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


VARIANTS = {"performer": dict(attention="performer", performer_in="encoder,decoder,cross", performer_features=16),
            "performer-cross": dict(attention="performer", performer_in="cross", performer_features=16),
            "rope": dict(positions="rope"), "learned-post-norm": dict(positions="learned", norm="post")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_equals_uncached_reference_beam_for_every_model_variant(variant):
    """The cache (a self-attention state per beam, a source summary per sentence read by all its
    beams) computes what the uncached model does, whatever the attention kernel and positions."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=32, n_heads=4,
                                    ffn_dim=64, encoder_layers=1, decoder_layers=2, dropout=0.0,
                                    max_positions=64, **VARIANTS[variant])).eval()
    rows = random_sources(4, seed=5)
    max_len = torch.tensor([6, 9, 3, 8])
    found = beam_search(model, pad(rows), max_len, beam=3, length_penalty="gnmt", alpha=0.6)
    for row, limit, hyps in zip(rows, max_len.tolist(), found):
        expected = reference_beam(model, row, limit, 3, "gnmt", 0.6)
        assert [(h.tokens, h.hit_limit) for h in hyps] == [(h.tokens, h.hit_limit) for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


@pytest.mark.parametrize("check_every", [1, 2, 3, 8, 16])
def test_greedy_rows_that_end_between_checks_keep_their_own_outputs(model, check_every):
    """Rows end by EOS at different steps (1, 7, 9) and others are cut at their limits, between the
    host's checks: each output is the uncached reference's, however seldom the host checks."""
    eos_sometimes = EosFirst(model, bias=5.5).eval()  # found to end some rows early, some late, some never
    rows = random_sources(8, seed=2)
    max_len = torch.tensor([12, 3, 0, 8, 12, 12, 12, 12])
    found = greedy_search(eos_sometimes, pad(rows), max_len, check_every=check_every)
    expected = [reference_greedy(eos_sometimes, row, limit) for row, limit in zip(rows, max_len.tolist())]
    assert [(h.tokens, h.hit_limit) for h in found] == [(h.tokens, h.hit_limit) for h in expected]
    assert [h.logprob for h in found] == pytest.approx([h.logprob for h in expected], abs=1e-4)
    ended = [len(h.tokens) for h in expected if not h.hit_limit]
    assert len(set(ended)) >= 3 and sum(h.hit_limit for h in expected) >= 3  # what the test is about
    # With prefixes, forced past some rows' ends: the same as checking every step.
    prefixes = [[5, 6], [7], [], [8, 9, 10], [], [11], [4, 4, 4, 4], []]
    seldom, every_step = (greedy_search(eos_sometimes, pad(rows), max_len, prefixes=prefixes, check_every=every)
                          for every in (check_every, 1))
    assert [(h.tokens, h.hit_limit) for h in seldom] == [(h.tokens, h.hit_limit) for h in every_step]
    assert [h.logprob for h in seldom] == pytest.approx([h.logprob for h in every_step], abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_equals_one_at_a_time(model, beam):
    rows = random_sources(7, seed=4, min_len=1, max_len=12)  # different lengths: padding
    max_len = torch.tensor([min(2 * len(r), 15) for r in rows])
    cfg = DecodeConfig(beam=beam)

    def search(src: Tensor, limits: Tensor) -> list[list[Hypothesis]]:
        if beam == 1:
            return [[h] for h in greedy_search(model, src, limits)]
        return beam_search(model, src, limits, beam, cfg.length_penalty, cfg.alpha)

    batched = search(pad(rows), max_len)
    for i, row in enumerate(rows):
        alone = search(pad([row]), max_len[i:i + 1])[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_beam_hypotheses_are_ranked_and_scored(model):
    rows = random_sources(3, seed=5)
    found = beam_search(model, pad(rows), torch.full((3,), 10), beam=4, length_penalty="gnmt", alpha=1.0)
    for hyps in found:
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert EOS not in h.tokens and BOS not in h.tokens and PAD not in h.tokens
            assert 1 <= len(h.tokens) <= 10  # min_len 1 by default
            assert h.hit_limit == (len(h.tokens) == 10)  # an output that ends with EOS has at most 9
            length = len(h.tokens) + (0 if h.hit_limit else 1)  # EOS counts, when there is one
            assert h.score == pytest.approx(h.logprob / length_penalty_factor(length, "gnmt", 1.0))


def test_search_refuses_a_model_in_training_mode():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="eval"):
        greedy_search(model, pad([[5, EOS]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="eval"):
        beam_search(model.train(), pad([[5, EOS]]), torch.tensor([3]), beam=2)


def test_beam_size_must_be_positive():
    with pytest.raises(ConfigError, match="beam must be at least 1, got 0"):
        DecodeConfig(beam=0)


def test_beam_may_not_exceed_the_target_vocabulary(model):
    src, max_len = pad([[5, EOS]]), torch.tensor([3])
    assert len(beam_search(model, src, max_len, beam=VOCAB)[0]) == VOCAB
    check_search(DecodeConfig(beam=VOCAB), VOCAB)
    for beam in (VOCAB + 1, 10 ** 9):
        with pytest.raises(ConfigError, match=rf"beam {beam} is more than the target vocabulary \(24 pieces\); "
                                              "use at most 24"):
            check_search(DecodeConfig(beam=beam), VOCAB)
    # Sampling ignores the beam.
    check_search(DecodeConfig(beam=VOCAB + 1, sampling=True), VOCAB)
    assert len(nbest_ids(model, [[5, EOS]], DecodeConfig(beam=VOCAB + 1, sampling=True, seed=0))[0]) == 1


# --- min_len and the length limit -------------------------------------------------


@pytest.mark.parametrize("beam", [1, 5])
def test_min_len_keeps_an_eos_first_model_from_empty_outputs(model, beam):
    eos_first = EosFirst(model).eval()
    rows = random_sources(6, seed=14)
    # Allowed to, the model ends every output at once.
    for hyps in nbest_ids(eos_first, rows, DecodeConfig(beam=beam, min_len=0)):
        assert (hyps[0].tokens, hyps[0].hit_limit) == ([], False)
    # By default (min_len 1) every hypothesis has a token, and then the model ends it.
    for hyps in nbest_ids(eos_first, rows, DecodeConfig(beam=beam)):
        assert all(len(h.tokens) == 1 and not h.hit_limit for h in hyps)
        assert hyps[0].logprob < -25  # the model's own log-probability of a token it shunned
    for hyps in nbest_ids(eos_first, rows, DecodeConfig(beam=beam, min_len=3)):
        assert all(len(h.tokens) == 3 for h in hyps)


def test_min_len_holds_when_sampling(model):
    rows = random_sources(6, seed=15)
    for hyps in nbest_ids(EosFirst(model).eval(), rows, DecodeConfig(sampling=True, seed=0, min_len=2)):
        assert len(hyps[0].tokens) == 2


@pytest.mark.parametrize("beam", [1, 3])
def test_min_len_beyond_max_len_gives_max_len_tokens(model, beam):
    rows = random_sources(4, seed=16)
    cfg = DecodeConfig(beam=beam, max_len_a=0.0, max_len_b=2, min_len=5)
    for hyps in nbest_ids(EosFirst(model).eval(), rows, cfg):
        assert all(len(h.tokens) == 2 and h.hit_limit for h in hyps)


class StepModel(LogitsAsStates, nn.Module):
    """Next-token logits that depend only on how many tokens the output has: `logits[t]` (V,) after t."""

    def __init__(self, logits: Tensor):
        super().__init__()
        vocab = logits.size(1)
        self.cfg = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab)
        self.logits = nn.Parameter(logits, requires_grad=False)  # (T, V)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return src.float()[:, :, None], src.ne(PAD)  # memory (B, S, 1), mask (B, S)

    def decode(self, tgt_in: Tensor, memory: Tensor | None, src_mask: Tensor,
               cache: DecoderCache | None = None) -> Tensor:
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.length += tgt_in.size(1)
        return self.logits[start:start + tgt_in.size(1)].expand(tgt_in.size(0), -1, -1)  # (B, T, V)


def step_model(*probabilities: dict[int, float]) -> StepModel:
    """A StepModel whose output distribution after t tokens is probabilities[t]; ids not named get 1e-6."""
    table = torch.full((len(probabilities), 6), 1e-6)  # (T, V): PAD, UNK, BOS, EOS, A, B
    for t, probs in enumerate(probabilities):
        for token, p in probs.items():
            table[t, token] = p
    return StepModel(table.log()).eval()


A, B = 4, 5


@pytest.mark.parametrize("penalty", ["gnmt", "average", "none"])
@pytest.mark.parametrize("beam", [1, 3])
def test_an_output_cut_at_the_limit_beats_an_earlier_one_that_scores_lower(beam, penalty):
    # Empty output: log 0.3. [A, A] cut at the limit of 2: log 0.7 + log 0.999, far better;
    # it would lose to the empty output if it had to take the EOS at probability 1e-6 after it.
    model = step_model({EOS: 0.3, A: 0.7}, {EOS: 0.001, A: 0.999}, {EOS: 1e-6, A: 1.0})
    [hyps] = beam_search(model, pad([[A, EOS]]), torch.tensor([2]), beam, penalty, 0.6, min_len=0)
    best = hyps[0]
    assert (best.tokens, best.hit_limit) == ([A, A], True)
    assert best.logprob == pytest.approx(math.log(0.7) + math.log(0.999), abs=1e-4)
    assert best.score == pytest.approx(best.logprob / length_penalty_factor(2, penalty, 0.6))
    if beam == 3:
        empty = next(h for h in hyps if h.tokens == [])
        assert not empty.hit_limit and empty.score == pytest.approx(math.log(0.3), abs=1e-4)
        assert empty.score < best.score
    [greedy] = greedy_search(model, pad([[A, EOS]]), torch.tensor([2]), min_len=0)
    assert (greedy.tokens, greedy.hit_limit) == ([A, A], True)


def test_an_output_cut_at_the_limit_loses_to_an_earlier_one_that_scores_higher():
    # After A every continuation is improbable (padding and BOS take the mass): the empty
    # output, log 0.3, beats every cut one, at most log 0.7 + log 0.009.
    model = step_model({EOS: 0.3, A: 0.7}, {PAD: 0.6, BOS: 0.38, EOS: 0.001, A: 0.009, B: 0.007})
    [hyps] = beam_search(model, pad([[A, EOS]]), torch.tensor([2]), 3, "gnmt", 0.6, min_len=0)
    assert (hyps[0].tokens, hyps[0].hit_limit) == ([], False)
    assert (hyps[1].tokens, hyps[1].hit_limit) == ([A, A], True)


# --- exhaustive search on a fake model ---------------------------------------------


class TableModel(LogitsAsStates, nn.Module):
    """Stands in for the Transformer: next-token logits are a fixed random function of
    (source, prefix), looked up in a table by a hash of both.

    The prefix lives in the DecoderCache's self-attention slot and the source hash
    in its cross-attention slot, so wrong cache reordering changes the output.
    """

    SLOTS = 10007

    def __init__(self, vocab: int = 6, seed: int = 0, eos_bias: float = 0.0, max_positions: int = 32,
                 producible: int | None = None):
        super().__init__()
        self.cfg = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, max_positions=max_positions)
        # Ids from `producible` on get logit -inf: a vocabulary as wide as a beam
        # that prunes nothing, with few enough outputs to enumerate.
        self.producible = vocab if producible is None else producible
        g = torch.Generator().manual_seed(seed)
        table = 2.0 * torch.randn(self.SLOTS, vocab, generator=g)
        table[:, EOS] += eos_bias
        table[:, self.producible:] = float("-inf")
        self.table = nn.Parameter(table, requires_grad=False)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        src_mask = src.ne(PAD)  # (B, S)
        return src.float()[:, :, None], src_mask  # memory (B, S, 1)

    def source_hash(self, memory: Tensor, src_mask: Tensor) -> Tensor:
        weights = torch.arange(1, memory.size(1) + 1, dtype=torch.float32)
        return ((memory[:, :, 0] * src_mask) * weights).sum(1)  # (B,)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor,
               cache: DecoderCache | None = None) -> Tensor:
        if cache is None:
            prefix, source = tgt_in, self.source_hash(memory, src_mask)
        else:
            if not cache.layers:
                cache.layers = [LayerCache()]
            layer = cache.layers[0]
            if layer.cross_state is None:
                source = self.source_hash(memory, src_mask)[:, None, None, None]  # (B, 1, 1, 1)
                layer.cross_state = KeyValueState(source, source)
            past = (layer.self_state.k[:, 0, :, 0] if layer.self_state is not None
                    else tgt_in[:, :0].float())
            prefix = torch.cat([past, tgt_in.float()], dim=1).long()  # (B, T_all)
            stored = prefix.float()[:, None, :, None]  # (B, 1, T_all, 1)
            layer.self_state = KeyValueState(stored, stored)
            cache.length = prefix.size(1)
            # The cross slot has a row per sentence, shared by the sentence's beams.
            source = layer.cross_state.k[:, 0, 0, 0]  # (N,)
            source = source.repeat_interleave(prefix.size(0) // source.size(0))  # (B,)
        code = source.long() % self.SLOTS  # (B,)
        logits = []
        for t in range(prefix.size(1)):
            code = (code * 31 + prefix[:, t] + 1) % self.SLOTS
            logits.append(self.table[code])  # (B, V)
        logits = torch.stack(logits, dim=1)  # (B, T_all, V)
        return logits[:, -tgt_in.size(1):]  # (B, T, V)


def enumerate_all(model: TableModel, src_row: list[int], max_len: int, min_len: int = 1,
                  penalty: str = "none", alpha: float = 0.0) -> list[Hypothesis]:
    """Every output with its log-probability and score: those of min_len to max_len - 1 tokens
    ending in EOS, and those of max_len tokens, cut there."""
    src = torch.tensor([src_row])
    ordinary = [t for t in range(model.producible) if t not in (PAD, BOS, EOS)]
    outputs = []
    with torch.inference_mode():
        for length in range(min(min_len, max_len), max_len + 1):
            cut = length == max_len
            for tokens in itertools.product(ordinary, repeat=length):
                scored = list(tokens) if cut else list(tokens) + [EOS]
                total = sum(float(step_logprobs(model, src, list(tokens[:i]))[token])
                            for i, token in enumerate(scored))
                factor = length_penalty_factor(len(scored), penalty, alpha) if scored else 1.0
                outputs.append(Hypothesis(list(tokens), total / factor, total, hit_limit=cut))
    return outputs


@pytest.mark.parametrize("min_len", [0, 1])
@pytest.mark.parametrize("penalty", ["none", "gnmt", "average"])
def test_beam_without_pruning_equals_exhaustive_search(penalty, min_len):
    model = TableModel(vocab=40, producible=6, seed=7).eval()
    max_len = 3
    # 3 producible tokens: 1 + 3 + 9 outputs ending in EOS (the empty one only for min_len 0)
    # and 27 cut at the limit. A beam of 40 prunes nothing.
    rows = [[4, 5, EOS], [1, EOS], [5, 5, 4, 1, EOS]]
    found = beam_search(model, pad(rows), torch.full((3,), max_len), beam=40,
                        length_penalty=penalty, alpha=0.8, min_len=min_len)
    for row, hyps in zip(rows, found):
        everything = enumerate_all(model, row, max_len, min_len, penalty, 0.8)
        assert len(everything) == 40 - min_len
        expected = sorted(everything, key=lambda h: -h.score)
        assert [(h.tokens, h.hit_limit) for h in hyps] == [(h.tokens, h.hit_limit) for h in expected]
        assert [h.logprob for h in hyps] == pytest.approx([h.logprob for h in expected], abs=1e-4)
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), eos_bias=st.floats(-3.0, 3.0), max_len=st.integers(0, 3),
       min_len=st.integers(0, 4))
def test_best_beam_hypothesis_is_the_exhaustive_optimum(seed, eos_bias, max_len, min_len):
    model = TableModel(vocab=40, producible=6, seed=seed, eos_bias=eos_bias).eval()
    row = [4, 1, EOS]
    best = beam_search(model, pad([row]), torch.tensor([max_len]), beam=40, length_penalty="none",
                       min_len=min_len)[0][0]
    optimum = max(enumerate_all(model, row, max_len, min_len), key=lambda h: h.logprob)
    assert (best.tokens, best.hit_limit) == (optimum.tokens, optimum.hit_limit)
    assert best.score == pytest.approx(optimum.logprob, abs=1e-4)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), eos_bias=st.floats(-2.0, 4.0), beam=st.integers(1, 5),
       max_len=st.integers(0, 4), min_len=st.integers(0, 2),
       penalty=st.sampled_from(["gnmt", "average", "none"]))
def test_beam_equals_reference_beam_on_fake_models(seed, eos_bias, beam, max_len, min_len, penalty):
    # A positive EOS bias makes several beams end in the same step, which exercises
    # the cap of `beam` finished hypotheses per sentence.
    model = TableModel(vocab=7, seed=seed, eos_bias=eos_bias).eval()
    rows = [[4, 1, EOS], [6, EOS], [5, 5, 6, 4, EOS]]
    found = beam_search(model, pad(rows), torch.full((3,), max_len), beam=beam,
                        length_penalty=penalty, alpha=0.6, min_len=min_len)
    for row, hyps in zip(rows, found):
        expected = reference_beam(model, row, max_len, beam, penalty, 0.6, min_len)
        assert [(h.tokens, h.hit_limit) for h in hyps] == [(h.tokens, h.hit_limit) for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_small_beam_never_beats_the_optimum():
    model = TableModel(vocab=6, seed=3).eval()
    row = [5, 4, EOS]
    optimum = max(h.logprob for h in enumerate_all(model, row, 3))
    for beam in (1, 2, 3):
        best = beam_search(model, pad([row]), torch.tensor([3]), beam=beam, length_penalty="none")[0][0]
        assert best.score <= optimum + 1e-5


# --- nbest_ids -------------------------------------------------------------------------


def best_ids(model, rows, cfg):
    """The best output ids of each row, as nbest_ids finds them."""
    return [hypotheses[0].tokens for hypotheses in nbest_ids(model, rows, cfg)]


def test_translate_ids_keeps_order_and_matches_per_row_greedy(model):
    rows = random_sources(9, seed=8, max_len=14)
    cfg = DecodeConfig(beam=1, max_len_a=1.0, max_len_b=2, max_tokens=30)  # several batches
    out = best_ids(model, rows, cfg)
    assert len(out) == len(rows)
    for row, tokens in zip(rows, out):
        limit = int(1.0 * len(row) + 2)
        assert tokens == greedy_search(model, pad([row]), torch.tensor([limit]))[0].tokens
        assert len(tokens) <= limit


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_ids_does_not_depend_on_batching(model, beam):
    rows = random_sources(11, seed=9, max_len=14)
    one_batch = best_ids(model, rows, DecodeConfig(beam=beam, max_tokens=10_000))
    many = best_ids(model, rows, DecodeConfig(beam=beam, max_tokens=12))
    assert one_batch == many


def test_translate_ids_empty_rows(model):
    rows = [[], [5, 6, EOS], [], [7, EOS]]
    out = best_ids(model, rows, DecodeConfig(beam=2))
    assert out[0] == [] and out[2] == []
    assert out[1] == best_ids(model, [rows[1]], DecodeConfig(beam=2))[0]
    assert out[3] == best_ids(model, [rows[3]], DecodeConfig(beam=2))[0]
    assert best_ids(model, [], DecodeConfig()) == []
    assert best_ids(model, [[], []], DecodeConfig()) == [[], []]


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_ids_respects_max_len(beam):
    # EOS is strongly disfavoured, so outputs run to the limit.
    model = TableModel(vocab=6, seed=1, eos_bias=-20.0, max_positions=10).eval()
    rows = [[4, EOS], [4, 5, 1, 4, EOS], [5] * 9 + [EOS]]
    for cfg, lengths in [(DecodeConfig(beam=beam, max_len_a=1.0, max_len_b=1), [3, 6, 9]),  # a * len + b,
                         (DecodeConfig(beam=beam, max_len_a=0.0, max_len_b=2), [2, 2, 2])]:  # capped at 9
        best = [hyps[0] for hyps in nbest_ids(model, rows, cfg)]
        assert [len(h.tokens) for h in best] == lengths
        assert all(h.hit_limit for h in best)
        assert best_ids(model, rows, cfg) == [h.tokens for h in best]


def test_translate_ids_refuses_sources_beyond_max_positions():
    model = tiny_model(max_positions=8)
    with pytest.raises(ValueError, match="row 2 has 9 tokens"):
        best_ids(model, [[5, EOS], [5] * 8 + [EOS]], DecodeConfig(beam=1))


def test_translate_ids_validates_the_config(model):
    with pytest.raises(ConfigError):
        best_ids(model, [[5, EOS]], DecodeConfig(beam=0))


def test_nbest_ids_are_ranked_and_an_empty_row_is_answered_without_the_model(model):
    rows = random_sources(5, seed=10) + [[]]
    cfg = DecodeConfig(beam=4)
    nbest = nbest_ids(model, rows, cfg)
    for hyps in nbest[:-1]:
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert nbest[-1] == [Hypothesis(tokens=[], score=0.0, logprob=0.0)]


def test_length_batches():
    lengths = [3, 10, 4, 4, 1, 25, 6, 2]
    batches = length_batches(lengths, max_tokens=12)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) * longest <= 12 or len(batch) == 1
    assert [5] in batches  # longer than max_tokens: alone
    assert length_batches([], 10) == []


def test_max_len_zero_gives_empty_output(model):
    rows = random_sources(3, seed=11)
    cut = Hypothesis(tokens=[], score=0.0, logprob=0.0, hit_limit=True)  # no token fits: nothing to score
    max_len = torch.tensor([0, 4, 0])
    for found in (greedy_search(model, pad(rows), max_len),
                  [hyps[0] for hyps in beam_search(model, pad(rows), max_len, beam=3)],
                  sample_search(model, pad(rows), max_len, generator=torch.Generator().manual_seed(0))):
        assert found[0] == found[2] == cut
        assert len(found[1].tokens) >= 1
    assert beam_search(model, pad(rows), torch.tensor([0, 0, 0]), beam=3) == [[cut]] * 3


def test_sampling_with_top_k_one_equals_greedy(model):
    rows = random_sources(6, seed=11)
    src, max_len = pad(rows), torch.full((6,), 8)
    generator = torch.Generator().manual_seed(0)
    assert sample_search(model, src, max_len, temperature=0.7, top_k=1, generator=generator) == \
        greedy_search(model, src, max_len)


def test_sampling_is_repeatable_with_a_seed_and_varies_without(model):
    rows = random_sources(8, seed=12)
    cfg = DecodeConfig(sampling=True, seed=5, temperature=2.0, max_len_b=8)
    first, again = best_ids(model, rows, cfg), best_ids(model, rows, cfg)
    assert first == again
    other = best_ids(model, rows, DecodeConfig(sampling=True, seed=6, temperature=2.0, max_len_b=8))
    assert other != first  # 8 rows at temperature 2: equal draws would be a vanishing coincidence


def test_sampled_logprob_is_the_models(model):
    rows = random_sources(3, seed=13)
    generator = torch.Generator().manual_seed(1)
    for row, hypothesis in zip(rows, sample_search(model, pad(rows), torch.full((3,), 6),
                                                   temperature=3.0, generator=generator)):
        src = torch.tensor([row])
        scored = hypothesis.tokens if hypothesis.hit_limit else hypothesis.tokens + [EOS]
        with torch.inference_mode():
            expected = sum(float(step_logprobs(model, src, hypothesis.tokens[:i])[token])
                           for i, token in enumerate(scored))
        assert hypothesis.logprob == pytest.approx(expected, abs=1e-4)
        assert hypothesis.score == hypothesis.logprob


def test_top_p_keeps_the_smallest_set_reaching_p():
    logprobs = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # (1, 4)
    kept = lambda p: sampling_distribution(logprobs, 1.0, 0, p)[0].gt(0).nonzero().squeeze(1).tolist()
    assert kept(0.4) == [1]
    assert kept(0.7) == [1, 3]
    assert kept(0.9) == [0, 1, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    probs = sampling_distribution(logprobs, 1.0, 0, 0.7)[0]
    assert probs.tolist() == pytest.approx([0.0, 0.625, 0.0, 0.375])


def test_top_k_and_temperature():
    logprobs = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # (1, 4)
    assert sampling_distribution(logprobs, 1.0, 2, 1.0)[0].tolist() == pytest.approx([0, 0.625, 0, 0.375])
    flat = sampling_distribution(logprobs, 1e6, 0, 1.0)[0]  # a huge temperature flattens
    assert flat.tolist() == pytest.approx([0.25] * 4, abs=1e-4)


@pytest.mark.parametrize("changes", [{"temperature": 0.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_sampling_settings_are_validated(changes):
    with pytest.raises(ConfigError):
        DecodeConfig(sampling=True, **changes)


# --- the pieces of a search step ------------------------------------------------------


@pytest.mark.parametrize("width", [6, 64 * 40, 8000, 8000 + 37])
@pytest.mark.parametrize("k", [1, 2, 10])
def test_top_k_per_row_finds_what_topk_finds(width, k):
    from seq2seq.search.next_token import top_k_per_row

    k = min(k, width)
    g = torch.Generator().manual_seed(width + k)
    scores = torch.randn(33, width, generator=g).log_softmax(dim=1)
    scores[0] = float("-inf")  # a dead row
    scores[1, :] = float("-inf")
    scores[1, width - 1] = 0.0  # a forced token, in the columns after the last whole block
    scores[2, 5] = scores[2, width // 2] = 1.0  # a tie at the top
    values, index = top_k_per_row(scores, k)
    expected = scores.topk(k, dim=1)
    torch.testing.assert_close(values, expected.values, rtol=0, atol=0)
    torch.testing.assert_close(scores.gather(1, index), values, rtol=0, atol=0)
    assert index[1, 0] == width - 1
    rows = list(range(3, 33))  # no ties: the same indices too
    assert torch.equal(index[rows], expected.indices[rows])


def test_blocks_of_rows_do_not_change_the_search(monkeypatch):
    """Beam and greedy search give the same hypotheses whatever the number of rows projected at a time."""
    import seq2seq.search.next_token as next_token

    model = build_model(ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=16, n_heads=2, ffn_dim=32,
                                    encoder_layers=1, decoder_layers=1, max_positions=32)).eval()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, 40, (n,), generator=g).tolist() + [EOS] for n in (3, 7, 5, 9, 2, 6)]
    prefixes = [[5, 6], [], [7], [], [8, 9, 10], []]
    for cfg in (DecodeConfig(beam=1), DecodeConfig(beam=4), DecodeConfig(beam=3, length_penalty="none")):
        whole = nbest_ids(model, rows, cfg, prefixes=prefixes)
        monkeypatch.setattr(next_token, "BLOCK_ROWS", 3)
        blocks = nbest_ids(model, rows, cfg, prefixes=prefixes)
        monkeypatch.undo()
        # The matrix products of a few rows may round differently in the last bit.
        assert [[(h.tokens, h.hit_limit) for h in found] for found in blocks] == \
            [[(h.tokens, h.hit_limit) for h in found] for found in whole]
        for found, expected in zip(blocks, whole):
            assert [h.logprob for h in found] == pytest.approx([h.logprob for h in expected], abs=1e-4)
