"""Search tests: each result is checked against a simpler reference, not just run.

Greedy and beam search are compared with one-sentence-at-a-time runs, with
uncached references that recompute the whole prefix each step, and, on a
fake model with a fixed table of log-probabilities, with exhaustive search.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from seq2seq.config import DecodeConfig, ModelConfig
from seq2seq.decode import (Hypothesis, _length_batches, beam_search, greedy_search,
                            length_penalty_factor, nbest_ids, sample_search, sampling_distribution,
                            translate_ids)
from seq2seq.errors import ConfigError
from seq2seq.attention import KeyValueState
from seq2seq.model import DecoderCache, LayerCache, build_model

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


def reference_greedy(model, src_row: list[int], max_len: int) -> Hypothesis:
    src = torch.tensor([src_row])
    tokens, total = [], 0.0
    with torch.inference_mode():
        while True:
            logprobs = step_logprobs(model, src, tokens)
            token = EOS if len(tokens) == max_len else int(logprobs.argmax())
            total += float(logprobs[token])
            if token == EOS:
                return Hypothesis(tokens, total, total)
            tokens.append(token)


def reference_beam(model, src_row: list[int], max_len: int, beam: int,
                   penalty: str, alpha: float) -> list[Hypothesis]:
    """fairseq's beam search for one sentence, uncached, with Python lists."""
    src = torch.tensor([src_row])
    live = [([], 0.0)]
    finished: list[Hypothesis] = []
    with torch.inference_mode():
        for step in range(max_len + 1):
            candidates = []
            for tokens, total in live:
                logprobs = step_logprobs(model, src, tokens).tolist()
                allowed = [EOS] if step == max_len else range(len(logprobs))
                candidates += [(total + logprobs[t], tokens + [t]) for t in allowed
                               if logprobs[t] > float("-inf")]
            candidates.sort(key=lambda c: -c[0])
            factor = length_penalty_factor(step + 1, penalty, alpha)
            for total, tokens in candidates[:beam]:
                if tokens[-1] == EOS and len(finished) < beam:
                    finished.append(Hypothesis(tokens[:-1], total / factor, total))
            if len(finished) >= beam or step == max_len:
                break
            live = [(tokens, total) for total, tokens in candidates if tokens[-1] != EOS][:beam]
    return sorted(finished, key=lambda h: -h.score)


# --- length penalty ---------------------------------------------------------------


def test_length_penalty_forms():
    assert length_penalty_factor(7, "gnmt", 0.6) == pytest.approx((12 / 6) ** 0.6)
    assert length_penalty_factor(1, "gnmt", 0.6) == pytest.approx(1.0)
    assert length_penalty_factor(7, "average", 0.6) == pytest.approx(7 ** 0.6)
    assert length_penalty_factor(7, "average", 1.0) == pytest.approx(7.0)
    assert length_penalty_factor(7, "none", 0.6) == 1.0
    assert length_penalty_factor(7, "gnmt", 0.0) == 1.0


def test_unknown_length_penalty_is_a_config_error(model):
    with pytest.raises(ConfigError, match="gnmt"):
        length_penalty_factor(3, "wu", 0.6)
    with pytest.raises(ConfigError):
        beam_search(model, pad([[5, EOS]]), torch.tensor([3]), beam=2, length_penalty="wu")


# --- equivalences on a tiny Transformer ---------------------------------------------


def test_beam_one_equals_greedy(model):
    rows = random_sources(6, seed=1)
    src, max_len = pad(rows), torch.full((6,), 12)
    greedy = greedy_search(model, src, max_len)
    beam = beam_search(model, src, max_len, beam=1)
    assert [h.tokens for h in greedy] == [hyps[0].tokens for hyps in beam]
    assert [h.logprob for h in greedy] == pytest.approx([hyps[0].logprob for hyps in beam], abs=1e-5)


def test_greedy_cached_equals_uncached_reference(model):
    rows = random_sources(5, seed=2)
    max_len = torch.tensor([12, 3, 0, 8, 12])
    found = greedy_search(model, pad(rows), max_len)
    for row, limit, hyp in zip(rows, max_len.tolist(), found):
        expected = reference_greedy(model, row, limit)
        assert hyp.tokens == expected.tokens
        assert hyp.logprob == pytest.approx(expected.logprob, abs=1e-4)
        assert hyp.score == hyp.logprob
        assert len(hyp.tokens) <= limit


@pytest.mark.parametrize("penalty", ["gnmt", "none"])
def test_beam_equals_uncached_reference_beam(model, penalty):
    rows = random_sources(4, seed=3)
    max_len = torch.tensor([6, 10, 2, 8])
    found = beam_search(model, pad(rows), max_len, beam=3, length_penalty=penalty, alpha=0.6)
    for row, limit, hyps in zip(rows, max_len.tolist(), found):
        expected = reference_beam(model, row, limit, 3, penalty, 0.6)
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


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
            assert len(h.tokens) <= 10
            factor = length_penalty_factor(len(h.tokens) + 1, "gnmt", 1.0)
            assert h.score == pytest.approx(h.logprob / factor)


def test_search_refuses_a_model_in_training_mode():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="eval"):
        greedy_search(model, pad([[5, EOS]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="eval"):
        beam_search(model.train(), pad([[5, EOS]]), torch.tensor([3]), beam=2)


def test_beam_size_must_be_positive(model):
    with pytest.raises(ConfigError):
        beam_search(model, pad([[5, EOS]]), torch.tensor([3]), beam=0)


# --- exhaustive search on a fake model ---------------------------------------------


class TableModel(nn.Module):
    """Stands in for the Transformer: next-token logits are a fixed random function of
    (source, prefix), looked up in a table by a hash of both.

    The prefix lives in the DecoderCache's self-attention slot and the source hash
    in its cross-attention slot, so wrong cache reordering changes the output.
    """

    SLOTS = 10007

    def __init__(self, vocab: int = 6, seed: int = 0, eos_bias: float = 0.0, max_positions: int = 32):
        super().__init__()
        self.cfg = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, max_positions=max_positions)
        g = torch.Generator().manual_seed(seed)
        table = 2.0 * torch.randn(self.SLOTS, vocab, generator=g)
        table[:, EOS] += eos_bias
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
            source = layer.cross_state.k[:, 0, 0, 0]
        code = source.long() % self.SLOTS  # (B,)
        logits = []
        for t in range(prefix.size(1)):
            code = (code * 31 + prefix[:, t] + 1) % self.SLOTS
            logits.append(self.table[code])  # (B, V)
        logits = torch.stack(logits, dim=1)  # (B, T_all, V)
        return logits[:, -tgt_in.size(1):]  # (B, T, V)


def enumerate_all(model: TableModel, src_row: list[int], max_len: int) -> list[tuple[list[int], float]]:
    """Every output (ending in EOS, at most max_len tokens before it) with its log-probability."""
    src = torch.tensor([src_row])
    ordinary = [t for t in range(model.cfg.tgt_vocab_size) if t not in (PAD, BOS, EOS)]
    outputs = []
    with torch.inference_mode():
        for length in range(max_len + 1):
            for tokens in itertools.product(ordinary, repeat=length):
                total = 0.0
                for i, token in enumerate(list(tokens) + [EOS]):
                    total += float(step_logprobs(model, src, list(tokens[:i]))[token])
                outputs.append((list(tokens), total))
    return outputs


@pytest.mark.parametrize("penalty", ["none", "gnmt", "average"])
def test_beam_without_pruning_equals_exhaustive_search(penalty):
    model = TableModel(vocab=6, seed=7).eval()
    max_len = 3
    # 3 ordinary tokens: 1 + 3 + 9 + 27 = 40 outputs; a beam of 40 prunes nothing.
    rows = [[4, 5, EOS], [1, EOS], [5, 5, 4, 1, EOS]]
    found = beam_search(model, pad(rows), torch.full((3,), max_len), beam=40,
                        length_penalty=penalty, alpha=0.8)
    for row, hyps in zip(rows, found):
        everything = enumerate_all(model, row, max_len)
        assert len(everything) == 40
        expected = sorted(everything,
                          key=lambda o: -o[1] / length_penalty_factor(len(o[0]) + 1, penalty, 0.8))
        assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
        assert [h.logprob for h in hyps] == pytest.approx([lp for _, lp in expected], abs=1e-4)


@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), eos_bias=st.floats(-3.0, 3.0), max_len=st.integers(0, 3))
def test_best_beam_hypothesis_is_the_exhaustive_optimum(seed, eos_bias, max_len):
    model = TableModel(vocab=6, seed=seed, eos_bias=eos_bias).eval()
    row = [4, 1, EOS]
    best = beam_search(model, pad([row]), torch.tensor([max_len]), beam=40, length_penalty="none")[0][0]
    tokens, logprob = max(enumerate_all(model, row, max_len), key=lambda o: o[1])
    assert best.tokens == tokens
    assert best.score == pytest.approx(logprob, abs=1e-4)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), eos_bias=st.floats(-2.0, 4.0), beam=st.integers(1, 5),
       max_len=st.integers(0, 4), penalty=st.sampled_from(["gnmt", "average", "none"]))
def test_beam_equals_reference_beam_on_fake_models(seed, eos_bias, beam, max_len, penalty):
    # A positive EOS bias makes several beams end in the same step, which exercises
    # the cap of `beam` finished hypotheses per sentence.
    model = TableModel(vocab=7, seed=seed, eos_bias=eos_bias).eval()
    rows = [[4, 1, EOS], [6, EOS], [5, 5, 6, 4, EOS]]
    found = beam_search(model, pad(rows), torch.full((3,), max_len), beam=beam,
                        length_penalty=penalty, alpha=0.6)
    for row, hyps in zip(rows, found):
        expected = reference_beam(model, row, max_len, beam, penalty, 0.6)
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_small_beam_never_beats_the_optimum():
    model = TableModel(vocab=6, seed=3).eval()
    row = [5, 4, EOS]
    optimum = max(lp for _, lp in enumerate_all(model, row, 3))
    for beam in (1, 2, 3):
        best = beam_search(model, pad([row]), torch.tensor([3]), beam=beam, length_penalty="none")[0][0]
        assert best.score <= optimum + 1e-5


# --- translate_ids / nbest_ids -----------------------------------------------------


def test_translate_ids_keeps_order_and_matches_per_row_greedy(model):
    rows = random_sources(9, seed=8, max_len=14)
    cfg = DecodeConfig(beam=1, max_len_a=1.0, max_len_b=2, max_tokens=30)  # several batches
    out = translate_ids(model, rows, cfg)
    assert len(out) == len(rows)
    for row, tokens in zip(rows, out):
        limit = int(1.0 * len(row) + 2)
        assert tokens == greedy_search(model, pad([row]), torch.tensor([limit]))[0].tokens
        assert len(tokens) <= limit


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_ids_does_not_depend_on_batching(model, beam):
    rows = random_sources(11, seed=9, max_len=14)
    one_batch = translate_ids(model, rows, DecodeConfig(beam=beam, max_tokens=10_000))
    many = translate_ids(model, rows, DecodeConfig(beam=beam, max_tokens=12))
    assert one_batch == many


def test_translate_ids_empty_rows(model):
    rows = [[], [5, 6, EOS], [], [7, EOS]]
    out = translate_ids(model, rows, DecodeConfig(beam=2))
    assert out[0] == [] and out[2] == []
    assert out[1] == translate_ids(model, [rows[1]], DecodeConfig(beam=2))[0]
    assert out[3] == translate_ids(model, [rows[3]], DecodeConfig(beam=2))[0]
    assert translate_ids(model, [], DecodeConfig()) == []
    assert translate_ids(model, [[], []], DecodeConfig()) == [[], []]


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_ids_respects_max_len(beam):
    # EOS is strongly disfavoured, so outputs run to the limit.
    model = TableModel(vocab=6, seed=1, eos_bias=-20.0, max_positions=10).eval()
    rows = [[4, EOS], [4, 5, 1, 4, EOS], [5] * 9 + [EOS]]
    out = translate_ids(model, rows, DecodeConfig(beam=beam, max_len_a=1.0, max_len_b=1))
    assert [len(t) for t in out] == [3, 6, 9]  # a * len + b, capped at max_positions - 1
    out = translate_ids(model, rows, DecodeConfig(beam=beam, max_len_a=0.0, max_len_b=2))
    assert [len(t) for t in out] == [2, 2, 2]


def test_translate_ids_refuses_sources_beyond_max_positions():
    model = tiny_model(max_positions=8)
    with pytest.raises(ValueError, match="row 2 has 9 tokens"):
        translate_ids(model, [[5, EOS], [5] * 8 + [EOS]], DecodeConfig(beam=1))


def test_translate_ids_validates_the_config(model):
    with pytest.raises(ConfigError):
        translate_ids(model, [[5, EOS]], DecodeConfig(beam=0))


def test_nbest_ids_matches_translate_ids(model):
    rows = random_sources(5, seed=10) + [[]]
    cfg = DecodeConfig(beam=4)
    nbest = nbest_ids(model, rows, cfg)
    assert [hyps[0].tokens for hyps in nbest] == translate_ids(model, rows, cfg)
    for hyps in nbest[:-1]:
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert nbest[-1] == [Hypothesis(tokens=[], score=0.0, logprob=0.0)]


def test_length_batches():
    lengths = [3, 10, 4, 4, 1, 25, 6, 2]
    batches = _length_batches(lengths, max_tokens=12)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) * longest <= 12 or len(batch) == 1
    assert [5] in batches  # longer than max_tokens: alone
    assert _length_batches([], 10) == []


def test_max_len_zero_gives_empty_output(model):
    rows = random_sources(2, seed=11)
    assert [h.tokens for h in greedy_search(model, pad(rows), torch.tensor([0, 0]))] == [[], []]
    found = beam_search(model, pad(rows), torch.tensor([0, 0]), beam=3)
    assert [[h.tokens for h in hyps] for hyps in found] == [[[]], [[]]]
    assert math.isfinite(found[0][0].score)


def test_sampling_with_top_k_one_equals_greedy(model):
    rows = random_sources(6, seed=11)
    src, max_len = pad(rows), torch.full((6,), 8)
    generator = torch.Generator().manual_seed(0)
    assert sample_search(model, src, max_len, temperature=0.7, top_k=1, generator=generator) == \
        greedy_search(model, src, max_len)


def test_sampling_is_repeatable_with_a_seed_and_varies_without(model):
    rows = random_sources(8, seed=12)
    cfg = DecodeConfig(sampling=True, seed=5, temperature=2.0, max_len_b=8)
    first, again = translate_ids(model, rows, cfg), translate_ids(model, rows, cfg)
    assert first == again
    other = translate_ids(model, rows, DecodeConfig(sampling=True, seed=6, temperature=2.0, max_len_b=8))
    assert other != first  # 8 rows at temperature 2: equal draws would be a vanishing coincidence


def test_sampled_logprob_is_the_models(model):
    rows = random_sources(3, seed=13)
    generator = torch.Generator().manual_seed(1)
    for row, hypothesis in zip(rows, sample_search(model, pad(rows), torch.full((3,), 6),
                                                   temperature=3.0, generator=generator)):
        src = torch.tensor([row])
        with torch.inference_mode():
            expected = sum(float(step_logprobs(model, src, hypothesis.tokens[:i])[token])
                           for i, token in enumerate(hypothesis.tokens + [EOS]))
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
        DecodeConfig(sampling=True, **changes).validate()
