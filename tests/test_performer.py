"""FAVOR+: it approximates softmax attention, it is causal where it must be, and its
incremental state gives what the full sequence gives."""

import pytest
import torch
import torch.nn.functional as F

from seq2seq.model.attention import FavorState, MultiHeadAttention
from seq2seq.model.performer import FavorKernel, causal_favor_attention, favor_attention, orthogonal_gaussian
from seq2seq.model.positions import RotaryEmbedding


def random_qkv(seed: int, b=2, h=2, length=12, dh=16, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(b, h, length, dh, generator=g) for _ in range(3))


def favor_with(n_features: int, seed: int, q, k, v, causal=False):
    kernel = FavorKernel(q.size(-1), n_features)
    kernel.redraw(torch.Generator().manual_seed(seed))
    qf, kf = kernel.features(q, is_query=True), kernel.features(k, is_query=False)
    if causal:
        return causal_favor_attention(qf, kf, v)[0]
    return favor_attention(qf, kf, v)


def test_draws_are_orthogonal_within_a_block_and_gaussian_in_length():
    w = orthogonal_gaussian(40, 16, torch.Generator().manual_seed(0))
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    # Lengths are chi(16)-distributed: mean about 3.9, never all equal.
    assert 3.0 < w.norm(dim=1).mean() < 5.0 and w.norm(dim=1).std() > 0.1


@pytest.mark.parametrize("causal", [False, True])
def test_approximates_softmax_attention_better_with_more_features(causal):
    q, k, v = random_qkv(0)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    errors = {}
    for m in (8, 64, 512):
        # Mean over independent draws: one draw's error is itself random.
        errors[m] = sum((favor_with(m, seed, q, k, v, causal) - exact).pow(2).mean().sqrt()
                        for seed in range(6)) / 6
    # The estimator's error falls about as 1 / sqrt(m).
    assert errors[512] < errors[64] < errors[8]
    assert errors[512] < 0.35 * errors[8]
    assert errors[512] < 0.25 * exact.pow(2).mean().sqrt()


def test_padding_keys_are_ignored():
    q, k, v = random_qkv(1)
    kernel = FavorKernel(16, 32)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False
    out = favor_attention(kernel.features(q, True), kernel.features(k, False), v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 8:] += 5.0
    v2[0, :, 8:] -= 3.0
    out2 = favor_attention(kernel.features(q, True), kernel.features(k2, False), v2, mask)
    torch.testing.assert_close(out, out2)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_causal_prefix_sums_equal_the_masked_quadratic_form(chunk):
    q, k, v = random_qkv(2, length=13)
    kernel = FavorKernel(16, 32)
    qf, kf = kernel.features(q, True), kernel.features(k, False)
    scores = (qf @ kf.transpose(-2, -1)).tril()  # (B, H, L, L): phi(q_i) . phi(k_j) for j <= i
    expected = (scores @ v) / scores.sum(-1, keepdim=True)
    out, (kv, k_sum) = causal_favor_attention(qf, kf, v, chunk=chunk)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kv, kf.transpose(-2, -1) @ v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k_sum, kf.sum(-2), rtol=1e-4, atol=1e-4)


def performer_attention(rotary=False, seed=0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(32, 2, 0.0, RotaryEmbedding(16, 256) if rotary else None,
                              performer_features=24).eval()


@pytest.mark.parametrize("rotary", [False, True])
def test_causal_performer_lets_no_information_flow_from_the_future(rotary):
    attention = performer_attention(rotary)
    x = torch.randn(2, 150, 32)  # longer than one chunk, so the state crosses chunk boundaries
    later = x.clone()
    later[:, 97:] = torch.randn(2, 53, 32) * 4.0
    out, out_later = attention(x, x, causal=True), attention(later, later, causal=True)
    torch.testing.assert_close(out[:, :97], out_later[:, :97])
    assert not torch.allclose(out[:, 97:], out_later[:, 97:])


@pytest.mark.parametrize("rotary", [False, True])
def test_incremental_performer_decoding_equals_the_full_sequence(rotary):
    attention = performer_attention(rotary)
    x = torch.randn(3, 20, 32)
    full = attention(x, x, causal=True)
    state, steps = None, []
    for t in range(12):  # one position at a time ...
        out, state = attention.extend(x[:, t:t + 1], state, offset=t)
        steps.append(out)
        # ... with a state whose size does not grow with the prefix: (B, H, m, Dh) and (B, H, m).
        assert isinstance(state, FavorState) and state.kv.shape == (3, 2, 24, 16)
    out, state = attention.extend(x[:, 12:], state, offset=12)  # then the rest at once
    torch.testing.assert_close(torch.cat(steps + [out], dim=1), full, rtol=1e-4, atol=1e-5)


def test_cross_attention_summary_equals_attending_to_the_source():
    attention = performer_attention()
    query, source = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    summary = attention.summarize_source(source, mask)
    torch.testing.assert_close(attention.attend_summary(query, summary, mask),
                               attention(query, source, key_mask=mask), rtol=1e-4, atol=1e-5)


def test_redrawing_is_repeatable_and_changes_the_features():
    kernel = FavorKernel(16, 32)
    before = kernel.random_features.clone()
    kernel.redraw(torch.Generator().manual_seed(5))
    first = kernel.random_features.clone()
    kernel.redraw(torch.Generator().manual_seed(5))
    assert torch.equal(kernel.random_features, first) and not torch.equal(first, before)


def test_features_stay_finite_for_large_inputs():
    """The key bound keeps every key feature <= 1, and queries are scaled by their own maximum."""
    kernel = FavorKernel(64, 128)
    x = torch.randn(1, 1, 50, 64) * 30.0
    q_features, k_features = kernel.features(x, True), kernel.features(x, False)
    assert torch.isfinite(q_features).all() and torch.isfinite(k_features).all()
    assert k_features.max() <= 1.0 and q_features.amax(-1).eq(1.0).all()
    out = favor_attention(q_features, k_features, x)
    assert torch.isfinite(out).all()
