"""Position information: sinusoidal or learned tables added to embeddings, or rotary q/k.

`ModelConfig.positions` picks one:

- "sinusoidal" (Vaswani et al. 2017): a fixed table added to the embeddings.
- "learned": a trained table (one row per position up to max_positions),
  added to the embeddings, as in fairseq's `--encoder-learned-pos`.
- "rope" (RoFormer, Su et al. 2021): nothing is added to the embeddings;
  instead every self-attention layer rotates its queries and keys by an
  angle proportional to their position, so that q_i . k_j depends on i - j
  only. Cross-attention stays unrotated: source and target positions are not
  on one axis.

Shapes: L sequence length, D d_model, Dh head dimension, P max_positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_positions: int, d_model: int) -> Tensor:
    """The fixed position table of Vaswani et al.: sin on even, cos on odd channels. (P, D)"""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]  # (P, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


class AbsolutePositions(nn.Module):
    """The vectors added to token embeddings at positions offset ... offset + L - 1."""

    def __init__(self, kind: str, max_positions: int, d_model: int):
        super().__init__()
        if kind == "sinusoidal":
            # Not persistent: rebuilt from the config, so it is not stored in the weights.
            self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)
        elif kind == "learned":
            self.table = nn.Parameter(torch.empty(max_positions, d_model))
            # As fairseq's learned positions: the scale of the embeddings they are added to.
            nn.init.normal_(self.table, mean=0.0, std=d_model ** -0.5)
        else:
            raise ValueError(f"no absolute position table for {kind!r}")

    def forward(self, length: int, offset: int = 0) -> Tensor:
        return self.table[offset:offset + length]  # (L, D)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for queries and keys, in the "rotate half" layout.

    Channel c < Dh/2 is paired with channel c + Dh/2, and each pair is rotated
    by the angle position * base ** (-2c / Dh). Rotating q at i and k at j
    gives q_i . k_j = q . R(j - i) k: a function of the offset alone.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (Dh/2,)
        angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq  # (P, Dh/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate x (B, H, L, Dh), whose first position is `offset`; same shape out."""
        length = x.size(-2)
        cos = self.cos[offset:offset + length].to(x.dtype)  # (L, Dh/2), broadcast over B and H
        sin = self.sin[offset:offset + length].to(x.dtype)
        first, second = x.chunk(2, dim=-1)  # each (B, H, L, Dh/2)
        return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
