"""Small shared fixtures' building blocks: a slice of the bundled corpus, a tiny training recipe."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

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


def make_untrained_run(folder: Path, max_positions: int = 1024, **model_fields) -> Path:
    """A complete run directory (config, shared 150-piece tokenizer, weights) of an untrained model;
    `model_fields` change its ModelConfig (a variant: attention="performer", ...).

    Enough for everything that loads a run or checks its input without needing good translations.
    """
    from seq2seq.config import RunConfig
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer
    from seq2seq.files.atomic import atomic_write_text
    from seq2seq.model.transformer import build_model
    from seq2seq.runs.weights import save_weights

    tokenizers = train_tokenizer(load_corpus(write_slice(folder / "corpus", "val", 300), "en", "de"), folder,
                                 vocab_size=150)
    cfg = ModelConfig(src_vocab_size=150, tgt_vocab_size=150, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, max_positions=max_positions, **model_fields)
    atomic_write_text(folder / "config.json", RunConfig(model=cfg, tokenizer_sha256={
        tokenizers.src.path.name: tokenizers.src.sha256}).to_json())
    torch.manual_seed(0)
    save_weights(build_model(cfg), folder / "model.safetensors")
    return folder


class EosFirst(torch.nn.Module):
    """A model wrapper that adds `bias` to the EOS logit: left alone, it would end every output at once."""

    def __init__(self, inner: torch.nn.Module, bias: float = 30.0):
        super().__init__()
        self.inner, self.cfg, self.bias = inner, inner.cfg, bias

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.encode(src)

    def decoder_states(self, tgt_in: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor,
                       cache=None) -> torch.Tensor:
        return self.inner.decoder_states(tgt_in, memory, src_mask, cache)

    def output_logits(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.inner.output_logits(states)  # (..., V)
        return logits + self.bias * torch.nn.functional.one_hot(torch.tensor(self.cfg.eos_id), logits.size(-1))

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor,
               cache=None) -> torch.Tensor:
        return self.output_logits(self.decoder_states(tgt_in, memory, src_mask, cache))


class LogitsAsStates:
    """For a fake model whose `decode` gives logits directly: the search asks for decoder states
    and projects them with `output_logits`, which here passes the logits through."""

    def decoder_states(self, *args, **kwargs) -> torch.Tensor:
        return self.decode(*args, **kwargs)

    def output_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states


def one_error_line(result) -> str:
    """The message of a CliRunner result that failed as every s2s failure must: exit 1, one `error:` line."""
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    return message
