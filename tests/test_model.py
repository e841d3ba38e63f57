import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.model.positions import sinusoidal_table
from seq2seq.model.transformer import DecoderCache, build_model, count_parameters
from seq2seq.presets import PRESETS, apply_preset


def tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=32, n_heads=4, ffn_dim=64,
                      encoder_layers=2, decoder_layers=2, dropout=0.0, **overrides)
    return build_model(cfg).eval()


def random_batch(vocab=40, b=3, s=7, t=6):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (b, s), generator=g)
    src[0, 4:] = 0  # padding on one row
    tgt = torch.randint(4, vocab, (b, t), generator=g)
    return src, tgt


# Every position kind with softmax attention, and FAVOR+ in each place and everywhere.
VARIANTS = [
    dict(positions="sinusoidal"), dict(positions="learned"), dict(positions="rope"),
    dict(attention="performer", performer_in="encoder", performer_features=16),
    dict(attention="performer", performer_in="decoder", performer_features=16),
    dict(attention="performer", performer_in="cross", performer_features=16),
    dict(attention="performer", performer_features=16, positions="rope"),
    dict(attention="performer", performer_features=16, positions="learned", norm="post"),
]
VARIANT_IDS = ["-".join(str(v) for v in variant.values()) for variant in VARIANTS]


def test_forward_shapes():
    model = tiny_model()
    src, tgt = random_batch()
    assert model(src, tgt).shape == (3, 6, 40)


@pytest.mark.parametrize("variant", VARIANTS + [dict(norm="post")], ids=VARIANT_IDS + ["post-norm"])
def test_cached_decoding_equals_full_decoding(variant):
    model = tiny_model(**variant)
    src, tgt = random_batch()
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = DecoderCache()
    steps = [model.decode(tgt[:, i:i + 1], memory, mask, cache) for i in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # Several new positions after a cached prefix: the causal mask must be offset.
    cache = DecoderCache()
    parts = [model.decode(tgt[:, :2], memory, mask, cache), model.decode(tgt[:, 2:], memory, mask, cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == tgt.size(1)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_decoder_is_causal(variant):
    model = tiny_model(**variant)
    src, tgt = random_batch()
    changed = tgt.clone()
    changed[:, 4:] = 5
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_source_padding_is_ignored(variant):
    model = tiny_model(**variant)
    src, tgt = random_batch()
    longer = torch.cat([src, torch.zeros(3, 5, dtype=torch.long)], dim=1)  # more padding
    torch.testing.assert_close(model(src, tgt), model(longer, tgt), atol=1e-5, rtol=1e-5)


def test_three_way_tying_when_shared():
    shared = tiny_model()
    assert shared.src_embed.weight is shared.tgt_embed.weight
    separate = build_model(ModelConfig(src_vocab_size=40, tgt_vocab_size=50, d_model=32, n_heads=4,
                                       ffn_dim=64, encoder_layers=1, decoder_layers=1,
                                       share_embeddings=False))
    assert separate.src_embed.weight is not separate.tgt_embed.weight
    assert separate(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)).shape[-1] == 50


def test_presets_span_2m_to_60m_parameters():
    counts = {name: count_parameters(build_model(apply_preset(ModelConfig(), name))) for name in PRESETS}
    assert 1.5e6 < counts["tiny"] < 2.5e6
    base = apply_preset(ModelConfig(), "base")
    assert (base.encoder_layers, base.decoder_layers, base.d_model, base.ffn_dim, base.n_heads) == (6, 6, 512, 2048, 8)
    # transformer-base with a shared 32k vocabulary is the top of the range
    big = build_model(apply_preset(ModelConfig(src_vocab_size=32000, tgt_vocab_size=32000), "base"))
    assert 55e6 < count_parameters(big) < 65e6


def test_sinusoidal_table_values():
    table = sinusoidal_table(10, 8)
    assert torch.allclose(table[0, 0::2], torch.zeros(4))
    assert torch.allclose(table[0, 1::2], torch.ones(4))
    assert torch.isclose(table[3, 0], torch.sin(torch.tensor(3.0)))


def test_too_long_sequence_raises():
    model = tiny_model(max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(torch.ones(1, 9, dtype=torch.long))
