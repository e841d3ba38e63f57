"""Architecture presets: named model shapes (`s2s train --preset`).

Vocabulary sizes are not part of a shape: they come from the tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig
from .errors import ConfigError

# Architecture presets; vocabulary sizes come from the tokenizer. Parameter
# counts are for a shared 8k vocabulary.
PRESETS: dict[str, dict[str, Any]] = {
    # ~2.0M parameters: for tests and quick CPU runs.
    "tiny": dict(d_model=128, n_heads=4, ffn_dim=512, encoder_layers=2, decoder_layers=2),
    # ~7.6M: the CPU demo.
    "small": dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=3, decoder_layers=3),
    # ~9.4M: the shape of the transformers peer's small model (4+4, d 256, FFN 1024).
    "peer-small": dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=4, decoder_layers=4),
    # ~26M.
    "medium": dict(d_model=512, n_heads=8, ffn_dim=2048, encoder_layers=3, decoder_layers=3),
    # ~48M with 8k shared vocabulary, ~60M with 32k: transformer-base (Vaswani et al. 2017).
    "base": dict(d_model=512, n_heads=8, ffn_dim=2048, encoder_layers=6, decoder_layers=6),
}


def preset_values(preset: str) -> dict[str, Any]:
    """The architecture fields of a named preset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[preset]


def apply_preset(model: ModelConfig, preset: str) -> ModelConfig:
    """A copy of `model` with the architecture fields of a named preset."""
    return dataclasses.replace(model, **preset_values(preset))


def preset_of(model: ModelConfig) -> str:
    """The preset whose shape `model` has, or "custom"."""
    for name, shape in PRESETS.items():
        if all(getattr(model, key) == value for key, value in shape.items()):
            return name
    return "custom"
