"""Rotary and learned positions."""

import torch

from seq2seq.config import ModelConfig
from seq2seq.model.positions import RotaryEmbedding
from seq2seq.model.transformer import build_model


def rotated_at(rotary: RotaryEmbedding, vector: torch.Tensor, position: int) -> torch.Tensor:
    """`vector` (Dh,) rotated as if it stood at `position`."""
    return rotary(vector[None, None, None, :], offset=position)[0, 0, 0]


def test_rope_scores_depend_only_on_the_offset():
    rotary = RotaryEmbedding(head_dim=16, max_positions=512)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)

    def score(i: int, j: int) -> float:
        return float(rotated_at(rotary, q, i) @ rotated_at(rotary, k, j))

    for i, j in [(0, 0), (3, 7), (10, 2), (40, 41)]:
        for shift in (1, 13, 250):
            assert abs(score(i, j) - score(i + shift, j + shift)) < 1e-4, (i, j, shift)
    # ... and it does depend on the offset.
    assert abs(score(3, 7) - score(3, 8)) > 1e-3


def test_rope_keeps_lengths_and_rotates_a_whole_sequence_like_its_positions():
    rotary = RotaryEmbedding(head_dim=8, max_positions=64)
    x = torch.randn(2, 3, 10, 8)  # (B, H, L, Dh)
    rotated = rotary(x, offset=5)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    # Position 5 + t of the sequence is rotated as a lone vector at that position would be.
    torch.testing.assert_close(rotated[:, :, 4:5], rotary(x[:, :, 4:5], offset=9))
    torch.testing.assert_close(rotary(x, offset=0)[:, :, 0], x[:, :, 0])  # position 0: no rotation


def test_rope_adds_nothing_to_the_embeddings_and_has_no_position_weights():
    cfg = ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, positions="rope", dropout=0.0)
    model = build_model(cfg)
    assert model.src_positions is None and model.tgt_positions is None
    assert not any("position" in name for name in model.state_dict())
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model.embed(model.src_embed, None, ids), model.src_embed(ids) * 4.0)


def test_learned_positions_are_trained_tables_one_per_side():
    cfg = ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, positions="learned", max_positions=40)
    model = build_model(cfg)
    assert model.src_positions is not model.tgt_positions
    weights = model.state_dict()
    assert weights["src_positions.table"].shape == (40, 16)
    assert weights["tgt_positions.table"].shape == (40, 16)
    assert {"src_positions.table", "tgt_positions.table"} <= {n for n, p in model.named_parameters()}


def test_sinusoidal_positions_are_not_stored():
    cfg = ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1)
    assert not any("position" in name for name in build_model(cfg).state_dict())
