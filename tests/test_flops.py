"""The analytic FLOP count that MFU is measured against, checked against torch's own FLOP counter."""

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from seq2seq.config import ModelConfig
from seq2seq.model.flops import forward_flops, training_flops
from seq2seq.model.transformer import build_model


def counted_by_torch(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int, backward: bool) -> int:
    torch.manual_seed(0)
    model = build_model(cfg)
    src = torch.randint(4, cfg.src_vocab_size, (batch, src_len))  # no padding: every token is real
    tgt_in = torch.randint(4, cfg.tgt_vocab_size, (batch, tgt_len))
    # The math kernel runs attention as plain matrix products, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(src, tgt_in)
        if backward:
            logits.float().logsumexp(-1).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("encoder_layers,decoder_layers", [(2, 2), (1, 3)])
def test_the_count_equals_torch_flop_counter(encoder_layers, decoder_layers):
    cfg = ModelConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, ffn_dim=64,
                      encoder_layers=encoder_layers, decoder_layers=decoder_layers)
    src, tgt = np.full(3, 7), np.full(3, 5)
    assert forward_flops(cfg, src, tgt) == counted_by_torch(cfg, 3, 7, 5, backward=False)
    # Backward is twice the forward: each product's input and weight gradients.
    assert training_flops(cfg, src, tgt) == counted_by_torch(cfg, 3, 7, 5, backward=True)


def test_padding_is_not_counted():
    cfg = ModelConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=4, ffn_dim=64)
    one = forward_flops(cfg, np.array([7]), np.array([5]))
    assert forward_flops(cfg, np.array([7, 3]), np.array([5, 2])) == one + forward_flops(cfg, [3], [2])
