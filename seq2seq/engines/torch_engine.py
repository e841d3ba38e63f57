"""The torch engine: s2s's own search (`nbest_ids`) under the device's mixed precision."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DecodeConfig, to_dict
from ..decode import Hypothesis, check_decode_config, nbest_ids, seeded_generator
from ..device import mixed_precision
from ..model import Seq2SeqTransformer, count_parameters
from ..rundir import WEIGHTS_FILE, load_run
from ..tokenizer import TokenizerPair


class TorchEngine:
    """Searches with a `Seq2SeqTransformer` (put in eval mode) and its tokenizers."""

    name = "torch"

    def __init__(self, model: Seq2SeqTransformer, tokenizers: TokenizerPair, cfg: DecodeConfig,
                 about: dict | None = None):
        check_decode_config(cfg, model.cfg.tgt_vocab_size)
        self.model, self.tokenizers, self.cfg = model.eval(), tokenizers, cfg
        self.about = about or {}  # what `describe` says of the model beyond its own config
        device = next(model.parameters()).device
        self.autocast = mixed_precision(device)
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
        about = dict(src_lang=config.train.src_lang, tgt_lang=config.train.tgt_lang, weights=weights,
                     bytes=(Path(run_dir) / weights).stat().st_size)
        return cls(model, tokenizers, cfg, about)

    def with_config(self, cfg: DecodeConfig) -> "TorchEngine":
        return TorchEngine(self.model, self.tokenizers, cfg, self.about)

    def describe(self) -> dict:
        return {"engine": self.name, "src_lang": None, "tgt_lang": None, "weights": None, "bytes": None,
                **self.about, "parameters": count_parameters(self.model), "model": to_dict(self.model.cfg)}

    @property
    def max_positions(self) -> int:
        return self.model.cfg.max_positions

    @property
    def tgt_vocab_size(self) -> int:
        return self.model.cfg.tgt_vocab_size

    def search(self, rows: list[list[int]], prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        with self.autocast:
            return nbest_ids(self.model, rows, self.cfg, self.generator, prefixes)
