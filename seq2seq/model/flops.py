"""Model FLOPs of training: what model FLOPs utilisation (MFU) is measured against.

The count is the usual one for MFU (Chowdhery et al. 2022, appendix B):

- matrix products only, at 2 FLOPs per multiply-add; layer norms, softmax,
  dropout and the optimizer are left out;
- real tokens only: padding is work the hardware does, not work the model needs;
- backward costs twice the forward, so training is 3x the forward;
- attention scores and their weighted sum count the full square, causal
  decoder self-attention included (as FLOP counters of SDPA do).

Per sentence of S source and T target tokens, with D = d_model, F = the FFN
width and V the target vocabulary, the forward is:

- encoder layer: 8 S D^2 (q, k, v, out) + 4 S^2 D (attention) + 4 S D F (FFN);
- decoder layer: 8 T D^2 + 4 T^2 D (self-attention), 4 T D^2 + 4 S D^2 +
  4 T S D (cross-attention: q and out from the target, k and v from the
  source), 4 T D F (FFN);
- output projection: 2 T D V.

FAVOR+ attention is counted as softmax attention would be: MFU compares
against the standard model, whatever kernel computes it.
"""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig


def forward_flops(cfg: ModelConfig, src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> int:
    """Matrix-product FLOPs of one forward pass over sentences of these token lengths."""
    s = np.asarray(src_lengths, dtype=np.int64)
    t = np.asarray(tgt_lengths, dtype=np.int64)
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.tgt_vocab_size
    s_sum, t_sum = int(s.sum()), int(t.sum())
    encoder_layer = 8 * s_sum * d * d + 4 * int((s * s).sum()) * d + 4 * s_sum * d * f
    decoder_layer = (8 * t_sum * d * d + 4 * int((t * t).sum()) * d
                     + 4 * t_sum * d * d + 4 * s_sum * d * d + 4 * int((t * s).sum()) * d
                     + 4 * t_sum * d * f)
    output = 2 * t_sum * d * v
    return cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + output


def training_flops(cfg: ModelConfig, src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> int:
    """Model FLOPs of one training step (forward and backward) over these sentences."""
    return 3 * forward_flops(cfg, src_lengths, tgt_lengths)
