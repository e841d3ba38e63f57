"""The encoder-decoder Transformer (Vaswani et al. 2017).

Shapes: B batch, S source length, T target length, D d_model, H heads,
Dh = D / H, V vocabulary. Padding masks are boolean with True on real tokens.
Positions are in `positions`, attention kernels in `attention` and `performer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .attention import AttentionState, MultiHeadAttention
from .performer import FavorKernel
from .positions import AbsolutePositions, RotaryEmbedding


@dataclass
class LayerCache:
    """What one decoder layer keeps between steps: its self-attention state over the
    target prefix, and its cross-attention summary of the source (see `attention`)."""

    self_state: AttentionState | None = None
    cross_state: AttentionState | None = None


@dataclass
class DecoderCache:
    """State for incremental decoding: one `LayerCache` per decoder layer.

    The self-attention state has a row per target row; the cross-attention
    summary has a row per source sentence, read by all of that sentence's
    rows (its beams: see `MultiHeadAttention.attend_summary`).
    """

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0  # target positions already decoded

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep target rows `rows`, in that order (beam reordering, dropping finished rows), and,
        when sentences leave the batch, source sentences `sentences`."""
        for layer in self.layers:
            layer.self_state = layer.self_state.select(rows)
            if sentences is not None:
                layer.cross_state = layer.cross_state.select(sentences)


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


def _attention(cfg: ModelConfig, place: str, rotary: RotaryEmbedding | None) -> MultiHeadAttention:
    """The attention module for `place` (encoder, decoder or cross), with its kernel from `cfg`."""
    features = cfg.performer_features if place in cfg.performer_places() else 0
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, rotary, features)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward."""

    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding | None):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = _attention(cfg, "encoder", rotary)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        self.attn_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, h, key_mask=src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, then feed-forward."""

    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding | None):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = _attention(cfg, "decoder", rotary)
        self.cross_attn = _attention(cfg, "cross", None)  # source and target positions share no axis
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        self.self_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, memory: Tensor | None, src_mask: Tensor,
                cache: LayerCache | None, offset: int = 0) -> Tensor:
        """x (B, T, D) at target positions offset ...; memory (B, S, D); src_mask (B, S).

        `memory` may be None once `cache` holds the source summary.
        """
        def self_attend(h: Tensor) -> Tensor:
            if cache is None:
                return self.self_attn(h, h, causal=True)
            out, cache.self_state = self.self_attn.extend(h, cache.self_state, offset)
            return out

        def cross_attend(h: Tensor) -> Tensor:
            if cache is None:
                return self.cross_attn(h, memory, key_mask=src_mask)
            if cache.cross_state is None:  # the source is fixed: summarise it once
                if memory is None:
                    raise ValueError("the first decoding step needs the encoder output (memory)")
                cache.cross_state = self.cross_attn.summarize_source(memory, src_mask)
            return self.cross_attn.attend_summary(h, cache.cross_state, src_mask)

        x = self.self_block(x, self_attend)
        x = self.cross_block(x, cross_attend)
        return self.ffn_block(x, self.ffn)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer with tied embeddings.

    Positions (`cfg.positions`) are a sinusoidal or learned table added to the
    embeddings, or rotary queries and keys in self-attention; the attention
    kernel is softmax or FAVOR+ (`cfg.attention`, `cfg.performer_in`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        # Three-way tying: one table for source, target and the output projection.
        self.tgt_embed = (self.src_embed if cfg.share_embeddings else
                          nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id))
        rotary = None
        if cfg.positions == "rope":
            rotary = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_positions)
            self.src_positions = self.tgt_positions = None
        else:
            # fairseq learns one table per side; a fixed sinusoidal table is shared.
            self.src_positions = AbsolutePositions(cfg.positions, cfg.max_positions, cfg.d_model)
            self.tgt_positions = (self.src_positions if cfg.positions == "sinusoidal" else
                                  AbsolutePositions(cfg.positions, cfg.max_positions, cfg.d_model))
        self.embed_scale = math.sqrt(cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg, rotary) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg, rotary) for _ in range(cfg.decoder_layers))
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

    @torch.no_grad()
    def redraw_random_features(self, generator: torch.Generator) -> None:
        """New FAVOR+ features in every Performer layer (a no-op for softmax attention)."""
        for module in self.modules():
            if isinstance(module, FavorKernel):
                module.redraw(generator)

    def embed(self, table: nn.Embedding, positions: AbsolutePositions | None, ids: Tensor,
              offset: int = 0) -> Tensor:
        """Scaled token embeddings plus positions `offset ...`: (B, L) -> (B, L, D)."""
        length = ids.size(1)
        if offset + length > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + length} tokens exceeds the model's "
                             f"max_positions ({self.cfg.max_positions})")
        x = table(ids) * self.embed_scale
        if positions is not None:
            x = x + positions(length, offset)
        return self.embed_dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encode source ids (B, S); returns memory (B, S, D) and its padding mask (B, S)."""
        src_mask = src.ne(self.cfg.pad_id)  # (B, S)
        x = self.embed(self.src_embed, self.src_positions, src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt_in: Tensor, memory: Tensor | None, src_mask: Tensor,
               cache: DecoderCache | None = None) -> Tensor:
        """Next-token logits (B, T, V) for target inputs (B, T).

        Without a cache, `tgt_in` is the whole prefix (teacher forcing). With a
        cache, it holds only the new positions; the cache grows by T. Once the
        cache holds the source summary (after its first call), `memory` is not
        read and may be None; `src_mask` still is.
        """
        return self.output_logits(self.decoder_states(tgt_in, memory, src_mask, cache))

    def output_logits(self, states: Tensor) -> Tensor:
        """Logits (..., V) for decoder states (..., D): the tied output projection."""
        return F.linear(states, self.tgt_embed.weight)

    def decoder_states(self, tgt_in: Tensor, memory: Tensor | None, src_mask: Tensor,
                       cache: DecoderCache | None = None) -> Tensor:
        """What `decode` projects onto the vocabulary: the decoder's final states (B, T, D).

        The search projects them a block of rows at a time (`seq2seq.search.decode`).
        """
        offset = 0
        if cache is not None:
            if not cache.layers:
                cache.layers = [LayerCache() for _ in self.decoder_layers]
            offset = cache.length
        x = self.embed(self.tgt_embed, self.tgt_positions, tgt_in, offset)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, src_mask, None if cache is None else cache.layers[i], offset)
        if cache is not None:
            cache.length += tgt_in.size(1)
        return self.decoder_norm(x)

    @torch.no_grad()
    def cross_attention(self, src: Tensor, tgt_in: Tensor, layer: int) -> Tensor:
        """Cross-attention probabilities (B, H, T, S) of decoder layer `layer` (0-based), teacher-forced.

        src (B, S) and tgt_in (B, T) as in `forward`: row t holds what the step
        that read tgt_in[:, t] attended to in the source, pads getting 0. A
        ValueError for a Performer (FAVOR+) layer, which never forms the weights.
        """
        attention = self.decoder_layers[layer].cross_attn
        if attention.favor is not None:
            raise ValueError("Performer (FAVOR+) cross-attention never forms attention weights")
        attention.recorded = []
        try:
            self.teacher_forced_states(src, tgt_in)
            return attention.recorded[0]
        finally:
            attention.recorded = None

    def teacher_forced_states(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """The decoder's final states (B, T, D) for source (B, S) and shifted target (B, T): what the
        loss projects onto the vocabulary (`seq2seq.training.loss`)."""
        memory, src_mask = self.encode(src)
        return self.decoder_states(tgt_in, memory, src_mask)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) and shifted target (B, T)."""
        return self.output_logits(self.teacher_forced_states(src, tgt_in))


def build_model(cfg: ModelConfig) -> Seq2SeqTransformer:
    """The one factory: a freshly initialised model for `cfg`."""
    return Seq2SeqTransformer(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters, trainable or not (tied tables counted once). Buffers, such as the
    sinusoidal table and Performer's random features, are not parameters and are not counted."""
    return sum(p.numel() for p in model.parameters())
