"""Small shared fixtures' building blocks: a slice of the bundled corpus, a tiny training recipe."""

from __future__ import annotations

import gzip
from pathlib import Path

from seq2seq.config import ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"


def write_slice(folder: Path, split: str = "train", n: int = 400, name: str = "corpus",
                langs: tuple[str, ...] = ("en", "de")) -> str:
    """The first `n` lines of a bundled Multi30k split as plain files; returns the corpus prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        (folder / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
    return str(folder / name)


def tiny_model_config() -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=1,
                       dropout=0.1, max_positions=128)


def tiny_train_config(train: str, valid: str, **overrides) -> TrainConfig:
    values = dict(train=train, valid=valid, vocab_size=200, max_len=64, max_tokens=600, epochs=2,
                  lr=3e-3, warmup_steps=10, log_every=5, patience=0, seed=7)
    values.update(overrides)
    return TrainConfig(**values)
