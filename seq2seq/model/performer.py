"""FAVOR+ (Choromanski et al. 2020, "Rethinking Attention with Performers").

Softmax attention weighs value j for query i by exp(q_i . k_j), with q and k
already scaled by Dh^-1/4 each. FAVOR+ writes that kernel as an expectation
over Gaussian vectors w (their Lemma 1, positive random features):

    exp(q . k) = E_w[ exp(w . q - |q|^2 / 2) * exp(w . k - |k|^2 / 2) ]

With m draws w_1 ... w_m stacked in W (m, Dh), phi(x) = exp(W x - |x|^2 / 2)
gives exp(q . k) ~ phi(q) . phi(k) / m, and attention becomes

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j))

which costs O(L m Dh) instead of O(L^2 Dh). The draws are orthogonal in
blocks of Dh (lower variance than independent draws), and their lengths are
drawn as those of Gaussian vectors, so each w_r is still marginally N(0, I).
The features are positive, so the denominator never changes sign.

Numerical range: each query's features are divided by their largest (a
constant per query, which cancels in its own ratio). Each key's exponent is
bounded above by max_r |w_r|^2 / 2 (complete the square: w . k - |k|^2 / 2 =
|w|^2 / 2 - |w - k|^2 / 2), so that bound, a constant for every key, is
subtracted; no key feature exceeds 1, and because the constant does not
depend on the data, causal and incremental decoding see the same features as
full-sequence decoding. All of it is computed in float32.

Shapes: B batch, H heads, T queries, L keys, Dh head dimension, m features,
C chunk length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Queries per chunk of causal FAVOR+: within a chunk the (C, C) feature-space
# scores are masked directly; across chunks a prefix sum carries the state.
CAUSAL_CHUNK = 64

# The name of the features' buffer; checkpoint averaging copies it rather than averaging it.
RANDOM_FEATURES_BUFFER = "random_features"

# Guards the division when every feature of a query underflowed to zero.
_TINY = 1e-30


def orthogonal_gaussian(n_features: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """m random vectors (m, dim): orthogonal within each block of `dim`, lengths as N(0, I) draws."""
    blocks = []
    for _ in range(math.ceil(n_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, r = torch.linalg.qr(gaussian)  # (dim, dim)
        # Sign-correct Q so that it is uniformly (Haar) distributed.
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:n_features]  # (m, dim), unit rows
    lengths = torch.randn(n_features, dim, generator=generator).norm(dim=1)  # (m,): chi(dim)
    return directions * lengths[:, None]


class FavorKernel(nn.Module):
    """The random features of one attention layer, and the feature map phi.

    The features are a persistent buffer: saved with the weights, so a
    trained model translates with exactly the features it was last trained
    with. Training redraws them every `performer_redraw_every` updates.
    """

    def __init__(self, head_dim: int, n_features: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer(RANDOM_FEATURES_BUFFER, orthogonal_gaussian(n_features, head_dim))

    @torch.no_grad()
    def redraw(self, generator: torch.Generator) -> None:
        fresh = orthogonal_gaussian(self.random_features.size(0), self.head_dim, generator)
        self.random_features.copy_(fresh)

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """phi(x) for x (B, H, L, Dh) as projected (unscaled); returns float32 (B, H, L, m)."""
        x = x.float() * self.head_dim ** -0.25
        w = self.random_features.float()  # (m, Dh)
        exponent = x @ w.T - x.pow(2).sum(-1, keepdim=True) / 2  # (B, H, L, m)
        if is_query:
            exponent = exponent - exponent.amax(-1, keepdim=True).detach()
        else:
            exponent = exponent - w.pow(2).sum(-1).max() / 2
        return exponent.exp()


def summarize_keys(key_features: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The state of non-causal FAVOR+: sum_j phi(k_j) v_j^T (B, H, m, Dh) and sum_j phi(k_j) (B, H, m).

    key_features (B, H, L, m), v (B, H, L, Dh); key_mask (B, L) is True on real
    keys, and padding keys are left out of both sums.
    """
    if key_mask is not None:
        key_features = key_features * key_mask[:, None, :, None]  # (B, H, L, m)
    return key_features.transpose(-2, -1) @ v.float(), key_features.sum(-2)


def read_state(query_features: Tensor, kv: Tensor, k_sum: Tensor) -> Tensor:
    """Attention output (B, H, T, Dh) of queries phi(q) (B, H, T, m) against a key summary."""
    numerator = query_features @ kv  # (B, H, T, Dh)
    denominator = query_features @ k_sum.unsqueeze(-1)  # (B, H, T, 1)
    return numerator / denominator.clamp_min(_TINY)


def favor_attention(query_features: Tensor, key_features: Tensor, v: Tensor,
                    key_mask: Tensor | None = None) -> Tensor:
    """Bidirectional FAVOR+: every query sees every (unmasked) key. Returns (B, H, T, Dh)."""
    kv, k_sum = summarize_keys(key_features, v, key_mask)
    return read_state(query_features, kv, k_sum)


def causal_favor_attention(query_features: Tensor, key_features: Tensor, v: Tensor,
                           state: tuple[Tensor, Tensor] | None = None,
                           chunk: int = CAUSAL_CHUNK) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Causal FAVOR+: position t sees keys 0 ... t, and those summarised in `state`.

    query_features, key_features (B, H, L, m); v (B, H, L, Dh). `state` is
    (kv (B, H, m, Dh), k_sum (B, H, m)) of the positions before these, or None
    at the start. Returns the output (B, H, L, Dh) and the state after the
    last position, which is all incremental decoding has to keep: O(m Dh) per
    head, however long the prefix.

    The prefix sums run chunk by chunk: within a chunk of C positions the
    (C, C) scores phi(q) . phi(k) are masked to the lower triangle; the chunks
    before it enter through an exclusive cumulative sum of their summaries.
    Memory is O(L m + L C + (L / C) m Dh) rather than the O(L m Dh) of a
    cumulative sum of every outer product.
    """
    b, h, length, m = query_features.shape
    dh = v.size(-1)
    v = v.float()
    if state is None:
        kv0 = query_features.new_zeros(b, h, m, dh)
        k_sum0 = query_features.new_zeros(b, h, m)
    else:
        kv0, k_sum0 = state
    n_chunks = math.ceil(length / chunk) if length else 0
    if n_chunks == 0:
        return v.new_zeros(b, h, 0, dh), (kv0, k_sum0)
    chunk = min(chunk, length)
    padded = n_chunks * chunk
    if padded != length:  # zero features at the end add nothing to any sum
        pad = (0, 0, 0, padded - length)
        query_features = nn.functional.pad(query_features, pad)
        key_features = nn.functional.pad(key_features, pad)
        v = nn.functional.pad(v, pad)
    q = query_features.view(b, h, n_chunks, chunk, m)  # (B, H, N, C, m)
    k = key_features.view(b, h, n_chunks, chunk, m)
    vc = v.view(b, h, n_chunks, chunk, dh)  # (B, H, N, C, Dh)

    chunk_kv = k.transpose(-2, -1) @ vc  # (B, H, N, m, Dh)
    chunk_k_sum = k.sum(-2)  # (B, H, N, m)
    # What the chunks before each chunk contribute (an exclusive prefix sum), plus the carried state.
    prior_kv = chunk_kv.cumsum(2) - chunk_kv + kv0[:, :, None]  # (B, H, N, m, Dh)
    prior_k_sum = chunk_k_sum.cumsum(2) - chunk_k_sum + k_sum0[:, :, None]  # (B, H, N, m)

    within = (q @ k.transpose(-2, -1)).tril()  # (B, H, N, C, C): query t sees keys <= t of its chunk
    numerator = within @ vc + q @ prior_kv  # (B, H, N, C, Dh)
    denominator = within.sum(-1) + (q @ prior_k_sum.unsqueeze(-1)).squeeze(-1)  # (B, H, N, C)
    out = numerator / denominator.clamp_min(_TINY).unsqueeze(-1)  # (B, H, N, C, Dh)
    out = out.view(b, h, padded, dh)[:, :, :length]  # (B, H, L, Dh)
    final = (prior_kv[:, :, -1] + chunk_kv[:, :, -1], prior_k_sum[:, :, -1] + chunk_k_sum[:, :, -1])
    return out, final
