"""Multi-head attention, softmax (through SDPA) or FAVOR+, and its incremental-decoding state.

`ModelConfig.attention` picks the kernel and `ModelConfig.performer_in` the
places FAVOR+ replaces softmax: encoder self-attention, decoder
self-attention, cross-attention. A `RotaryEmbedding`, when given, rotates
queries and keys (self-attention only).

Incremental decoding keeps, per layer, a state that `DecoderCache.select`
can reorder along the batch:

- softmax: the keys and values seen so far (`KeyValueState`), which grows
  by one position per step;
- FAVOR+: the key summary sum_j phi(k_j) v_j^T and sum_j phi(k_j)
  (`FavorState`), O(m x Dh) per head however long the prefix.

Shapes: B batch, H heads, T query positions, L key positions, D d_model,
Dh = D / H, m random features. Key masks are boolean (B, L), True on real keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .performer import FavorKernel, causal_favor_attention, favor_attention, read_state, summarize_keys
from .positions import RotaryEmbedding


@dataclass
class KeyValueState:
    """Softmax attention's memory: keys and values, each (B, H, L, Dh)."""

    k: Tensor
    v: Tensor

    def select(self, index: Tensor) -> "KeyValueState":
        return KeyValueState(self.k.index_select(0, index), self.v.index_select(0, index))


@dataclass
class FavorState:
    """FAVOR+'s memory: sum_j phi(k_j) v_j^T (B, H, m, Dh) and sum_j phi(k_j) (B, H, m)."""

    kv: Tensor
    k_sum: Tensor

    def select(self, index: Tensor) -> "FavorState":
        return FavorState(self.kv.index_select(0, index), self.k_sum.index_select(0, index))


AttentionState = KeyValueState | FavorState


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a softmax or FAVOR+ kernel and optional rotary queries and keys."""

    def __init__(self, d_model: int, n_heads: int, dropout: float,
                 rotary: RotaryEmbedding | None = None, performer_features: int = 0):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout  # on softmax probabilities; FAVOR+ never forms them
        self.rotary = rotary
        self.favor = FavorKernel(self.head_dim, performer_features) if performer_features else None
        # A list while `Seq2SeqTransformer.cross_attention` records: forward() then appends its
        # softmax probabilities (B, H, T, L), which SDPA computes but never returns.
        self.recorded: list[Tensor] | None = None

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, Dh)"""
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, T, Dh) -> (B, T, D), through the output projection."""
        b, _, t, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, t, -1))

    def project(self, query: Tensor, source: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, T, Dh) from `query`, k and v (B, H, L, Dh) from `source`; rotated from `offset`."""
        q = self.split_heads(self.q_proj(query))
        k = self.split_heads(self.k_proj(source))
        v = self.split_heads(self.v_proj(source))
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def _softmax(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                 allowed: Tensor | None = None, causal: bool = False) -> Tensor:
        """SDPA; `key_mask` (B, L) or `allowed` (T, L) say which keys each query may see."""
        mask = key_mask[:, None, None, :] if key_mask is not None else allowed  # broadcasts to (B, H, T, L)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              dropout_p=self.dropout if self.training else 0.0)

    def probabilities(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        """Softmax attention probabilities (B, H, T, L) of q (B, H, T, Dh) over keys k (B, H, L, Dh),
        in float32 whatever autocast says: what SDPA weighs the values with (without dropout)."""
        with torch.autocast(q.device.type, enabled=False):
            scores = q.float() @ k.float().transpose(-1, -2) * self.head_dim ** -0.5  # (B, H, T, L)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            return scores.softmax(dim=-1)

    def forward(self, query: Tensor, source: Tensor, key_mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """Attend from every position of `query` (B, T, D) to `source` (B, L, D); returns (B, T, D).

        For self-attention `source` is `query`; `causal` lets position t see
        positions <= t only (which needs T == L).
        """
        q, k, v = self.project(query, source)
        if self.favor is None:
            if self.recorded is not None:
                self.recorded.append(self.probabilities(q, k, key_mask))
            return self.merge_heads(self._softmax(q, k, v, key_mask, causal=causal))
        # FAVOR+ in float32 whatever autocast says: exp() of the features needs the range.
        with torch.autocast(query.device.type, enabled=False):
            q_features = self.favor.features(q, is_query=True)  # (B, H, T, m)
            k_features = self.favor.features(k, is_query=False)  # (B, H, L, m)
            if causal:
                out, _ = causal_favor_attention(q_features, k_features, v)
            else:
                out = favor_attention(q_features, k_features, v, key_mask)
        return self.merge_heads(out.to(v.dtype))

    def extend(self, query: Tensor, state: AttentionState | None,
               offset: int) -> tuple[Tensor, AttentionState]:
        """Causal self-attention for new positions offset ... offset + T - 1, given `state`.

        `state` holds positions 0 ... offset - 1 (None when offset is 0).
        Returns the output (B, T, D) and the state including the new positions.
        """
        q, k, v = self.project(query, query, offset)  # (B, H, T, Dh) each
        if self.favor is not None:
            with torch.autocast(query.device.type, enabled=False):
                prior = None if state is None else (state.kv, state.k_sum)
                out, (kv, k_sum) = causal_favor_attention(
                    self.favor.features(q, is_query=True), self.favor.features(k, is_query=False), v, prior)
            return self.merge_heads(out.to(v.dtype)), FavorState(kv, k_sum)
        if state is not None:
            k = torch.cat([state.k, k], dim=2)  # (B, H, offset + T, Dh)
            v = torch.cat([state.v, v], dim=2)
        t_new = query.size(1)
        if t_new == 1:  # one new position may see every cached one
            out = self._softmax(q, k, v)
        else:
            # Several new positions after a cached prefix: causal, shifted by `offset`.
            # SDPA's is_causal aligns to the top-left corner, which is wrong here.
            allowed = torch.ones(t_new, offset + t_new, dtype=torch.bool, device=query.device).tril(offset)
            out = self._softmax(q, k, v, allowed=allowed)
        return self.merge_heads(out), KeyValueState(k, v)

    def summarize_source(self, source: Tensor, key_mask: Tensor) -> AttentionState:
        """What cross-attention keeps of a fixed source (B, L, D): computed once per sentence."""
        k = self.split_heads(self.k_proj(source))  # (B, H, L, Dh)
        v = self.split_heads(self.v_proj(source))
        if self.favor is None:
            return KeyValueState(k, v)
        with torch.autocast(source.device.type, enabled=False):
            kv, k_sum = summarize_keys(self.favor.features(k, is_query=False), v, key_mask)
        return FavorState(kv, k_sum)

    def attend_summary(self, query: Tensor, state: AttentionState, key_mask: Tensor) -> Tensor:
        """Cross-attend from `query` (B, T, D) to a source kept by `summarize_source`; (B, T, D).

        The state and key_mask (N, S) may hold one row per sentence while the
        query holds its G = B / N beams, sentence i's in rows i*G ... i*G + G - 1:
        each sentence's source is then read once for all its beams, as if the
        beams were more query positions, and is never copied per beam.
        """
        q = self.split_heads(self.q_proj(query))  # (B, H, T, Dh)
        b, heads, t, head_dim = q.shape
        sentences = key_mask.size(0)
        group = b // sentences
        if group > 1:  # (N*G, H, T, Dh) -> (N, H, G*T, Dh)
            q = q.view(sentences, group, heads, t, head_dim).transpose(1, 2).reshape(sentences, heads, -1, head_dim)
        if isinstance(state, KeyValueState):
            out = self._softmax(q, state.k, state.v, key_mask)  # (N, H, G*T, Dh)
        else:
            with torch.autocast(query.device.type, enabled=False):
                out = read_state(self.favor.features(q, is_query=True), state.kv, state.k_sum).to(q.dtype)
        if group > 1:  # (N, H, G*T, Dh) -> (N*G, H, T, Dh)
            out = out.view(sentences, heads, group, t, head_dim).transpose(1, 2).reshape(b, heads, t, head_dim)
        return self.merge_heads(out)
