"""The torch engine: s2s's own search (`nbest_ids`) under the device's mixed precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...config import DecodeConfig, TrainConfig, to_dict
from ...data.tokenizer import TokenizerPair
from ...device import mixed_precision, precision_policy
from ...errors import ConfigError
from ...files.run_layout import WEIGHTS_FILE
from ...inspection.alignment import check_layer
from ...model.transformer import Seq2SeqTransformer, count_parameters
from ...runs.run_dir import load_run
from ..decode import length_batches, nbest_ids, seeded_generator
from ..hypotheses import Hypothesis, check_search
from . import languages


class TorchEngine:
    """Searches with a `Seq2SeqTransformer` (put in eval mode) and its tokenizers."""

    name = "torch"

    def __init__(self, model: Seq2SeqTransformer, tokenizers: TokenizerPair, cfg: DecodeConfig,
                 about: dict | None = None, precision: str = "auto", train: TrainConfig | None = None):
        """`precision`: as `s2s train --precision` (seq2seq.device.precision_policy); validation
        decodes in the precision it trains in. `train`: the run's config, for its languages (`Engine.train`)."""
        check_search(cfg, model.cfg.tgt_vocab_size)
        self.model, self.tokenizers, self.cfg, self.train = model.eval(), tokenizers, cfg, train
        self.about = about or {}  # what `describe` says of the weights: their file and its size
        device = next(model.parameters()).device
        self.precision = precision
        self.autocast = mixed_precision(device, precision)
        # What it computes in, attention kernels included: `describe` says it (serve's /info).
        self.computes_in = precision_policy(device, precision).description
        # One generator for the engine's life: successive batches draw fresh
        # samples, and the whole run is repeatable from cfg.seed.
        self.generator = seeded_generator(cfg.seed, device) if cfg.sampling else None

    @classmethod
    def open(cls, run_dir: Path | str, device: torch.device, cfg: DecodeConfig, weights: str | None = None,
             threads: int | None = None) -> "TorchEngine":
        if threads is not None:
            torch.set_num_threads(threads)
        weights = weights or WEIGHTS_FILE
        model, tokenizers, config = load_run(run_dir, device, weights)
        about = dict(weights=weights, bytes=(Path(run_dir) / weights).stat().st_size)
        return cls(model, tokenizers, cfg, about, train=config.train)

    def with_config(self, cfg: DecodeConfig) -> "TorchEngine":
        return TorchEngine(self.model, self.tokenizers, cfg, self.about, self.precision, self.train)

    def describe(self) -> dict:
        return {"engine": self.name, **languages(self.train), "weights": None, "bytes": None, **self.about,
                "parameters": count_parameters(self.model), "model": to_dict(self.model.cfg),
                "precision": self.computes_in}

    @property
    def max_positions(self) -> int:
        return self.model.cfg.max_positions

    @property
    def tgt_vocab_size(self) -> int:
        return self.model.cfg.tgt_vocab_size

    def check_attention_layer(self, layer: int, name: str) -> None:
        check_layer(layer, self.model.cfg.decoder_layers, name)
        if "cross" in self.model.cfg.performer_places():
            raise ConfigError("{" + name + "}: this model's cross-attention is Performer (FAVOR+), which never "
                              "forms attention weights: there are none to align with or to show", (name,))

    def cross_attention(self, rows: list[list[int]], outputs: list[list[int]], layer: int) -> list[np.ndarray]:
        model, pad_id = self.model, self.model.cfg.pad_id
        device = next(model.parameters()).device
        found: list[np.ndarray] = [np.zeros(0)] * len(rows)
        # Batched as the search is, by the longer side: rows x width stays within cfg.max_tokens.
        for batch in length_batches([max(len(rows[i]), len(outputs[i]) + 1) for i in range(len(rows))],
                                    self.cfg.max_tokens):
            src_width = max(len(rows[i]) for i in batch)
            tgt_width = max(len(outputs[i]) for i in batch) + 1
            src = torch.tensor([rows[i] + [pad_id] * (src_width - len(rows[i])) for i in batch],
                               dtype=torch.long, device=device)  # (B, S)
            # BOS, then the output; pads after it are never seen by the real positions (causal).
            tgt_in = torch.tensor([[model.cfg.bos_id] + outputs[i] + [pad_id] * (tgt_width - 1 - len(outputs[i]))
                                   for i in batch], dtype=torch.long, device=device)  # (B, T)
            with self.autocast:
                weights = model.cross_attention(src, tgt_in, layer - 1).float().cpu().numpy()  # (B, H, T, S)
            for row, i in enumerate(batch):
                found[i] = weights[row, :, :len(outputs[i]) + 1, :len(rows[i])]
        return found

    def search(self, rows: list[list[int]], prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        with self.autocast:
            return nbest_ids(self.model, rows, self.cfg, self.generator, prefixes)
