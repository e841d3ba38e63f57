"""The encoder-decoder Transformer (Vaswani et al. 2017).

Shapes: B batch, S source length, T target length, D d_model, H heads,
Dh = D / H, V vocabulary. Padding masks are boolean with True on real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


def sinusoidal_table(max_positions: int, d_model: int) -> Tensor:
    """The fixed position table of Vaswani et al.: sin on even, cos on odd channels. (P, D)"""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]  # (P, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


@dataclass
class LayerCache:
    """Keys and values one decoder layer has already computed, each (B, H, len, Dh)."""

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None


@dataclass
class DecoderCache:
    """State for incremental decoding: one `LayerCache` per decoder layer."""

    layers: list[LayerCache] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Target positions already decoded."""
        first = self.layers[0].self_k if self.layers else None
        return 0 if first is None else first.size(2)

    def select(self, index: Tensor, cross: bool = True) -> None:
        """Keep rows `index` of the batch, in that order (beam reordering, dropping finished rows).

        Cross-attention keys depend only on the source, so a reorder within each
        sentence's beams can skip them with `cross=False`.
        """
        for layer in self.layers:
            layer.self_k = layer.self_k.index_select(0, index)
            layer.self_v = layer.self_v.index_select(0, index)
            if cross:
                layer.cross_k = layer.cross_k.index_select(0, index)
                layer.cross_v = layer.cross_v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention`."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, Dh)"""
        b, length, _ = x.shape
        return x.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of `x`, each (B, H, L, Dh)."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def forward(self, query: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Attend from `query` (B, T, D) to keys/values (B, H, L, Dh); returns (B, T, D).

        `mask` broadcasts to (B, H, T, L), True where attention is allowed.
        """
        q = self.split_heads(self.q_proj(query))  # (B, H, T, Dh)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, Dh)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """Position-wise two-layer network."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.activation = F.relu if activation == "relu" else F.gelu
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class Residual(nn.Module):
    """A sublayer wrapped in dropout, a residual connection and layer norm (pre or post)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        self.attn_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            return self.self_attn(h, k, v, mask=mask)

        x = self.attn_block(x, attend)
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, then feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        self.self_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor,
                cache: LayerCache | None) -> Tensor:
        def self_attend(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)  # (B, H, T_new, Dh)
            if cache is None:
                return self.self_attn(h, k, v, is_causal=True)
            past = 0 if cache.self_k is None else cache.self_k.size(2)
            if past:
                k = torch.cat([cache.self_k, k], dim=2)  # (B, H, past + T_new, Dh)
                v = torch.cat([cache.self_v, v], dim=2)
            cache.self_k, cache.self_v = k, v
            t_new = h.size(1)
            if t_new == 1:  # one new position may see every cached one
                return self.self_attn(h, k, v)
            # Several new positions after a cached prefix: causal, offset by `past`.
            # SDPA's is_causal aligns to the top-left corner, which is wrong here.
            allowed = torch.ones(t_new, past + t_new, dtype=torch.bool, device=h.device).tril(past)
            return self.self_attn(h, k, v, mask=allowed)

        def cross_attend(h: Tensor) -> Tensor:
            if cache is None:
                k, v = self.cross_attn.project_kv(memory)
            else:
                if cache.cross_k is None:  # the source is fixed: project it once
                    cache.cross_k, cache.cross_v = self.cross_attn.project_kv(memory)
                k, v = cache.cross_k, cache.cross_v
            return self.cross_attn(h, k, v, mask=src_mask)

        x = self.self_block(x, self_attend)
        x = self.cross_block(x, cross_attend)
        return self.ffn_block(x, self.ffn)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer with sinusoidal positions and tied embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        # Three-way tying: one table for source, target and the output projection.
        self.tgt_embed = (self.src_embed if cfg.share_embeddings else
                          nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id))
        self.register_buffer("positions", sinusoidal_table(cfg.max_positions, cfg.d_model),
                             persistent=False)
        self.embed_scale = math.sqrt(cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream unnormalised; normalise it once at the top.
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear layers and N(0, D^-1/2) embeddings, as in fairseq."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for embed in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(embed.weight, mean=0.0, std=self.cfg.d_model ** -0.5)
            with torch.no_grad():
                embed.weight[self.cfg.pad_id].zero_()

    def embed(self, table: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        """Scaled token embeddings plus positions `offset ...`: (B, L) -> (B, L, D)."""
        length = ids.size(1)
        if offset + length > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + length} tokens exceeds the model's "
                             f"max_positions ({self.cfg.max_positions})")
        x = table(ids) * self.embed_scale + self.positions[offset:offset + length]
        return self.embed_dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encode source ids (B, S); returns memory (B, S, D) and its padding mask (B, S)."""
        src_mask = src.ne(self.cfg.pad_id)  # (B, S)
        attn_mask = src_mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
        x = self.embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, attn_mask)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor,
               cache: DecoderCache | None = None) -> Tensor:
        """Next-token logits (B, T, V) for target inputs (B, T).

        Without a cache, `tgt_in` is the whole prefix (teacher forcing). With a
        cache, it holds only the new positions; the cache grows by T.
        """
        offset = 0
        if cache is not None:
            if not cache.layers:
                cache.layers = [LayerCache() for _ in self.decoder_layers]
            offset = cache.length
        x = self.embed(self.tgt_embed, tgt_in, offset)
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, cross_mask, None if cache is None else cache.layers[i])
        x = self.decoder_norm(x)
        return F.linear(x, self.tgt_embed.weight)  # (B, T, V): tied output projection

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) and shifted target (B, T)."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)


def build_model(cfg: ModelConfig) -> Seq2SeqTransformer:
    """The one factory: a freshly initialised model for `cfg`."""
    return Seq2SeqTransformer(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (tied tables counted once)."""
    return sum(p.numel() for p in model.parameters())
