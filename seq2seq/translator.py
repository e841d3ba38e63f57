"""Text to text with a trained run: tokenize, search, detokenize, one line out per line in."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WEIGHTS_FILE, load_run
from .config import DecodeConfig
from .decode import translate_ids
from .model import Seq2SeqTransformer
from .textio import clean_output
from .tokenizer import TokenizerPair


@dataclass
class TranslateStats:
    lines: int = 0
    empty: int = 0  # empty or whitespace-only lines: answered with an empty line
    truncated: int = 0  # lines cut to the model's maximum source length


class Translator:
    """Translates lists of lines with one model, keeping count of what needed special handling."""

    def __init__(self, model: Seq2SeqTransformer, tokenizers: TokenizerPair, cfg: DecodeConfig):
        cfg.validate()
        self.model, self.tokenizers, self.cfg = model.eval(), tokenizers, cfg
        self.stats = TranslateStats()
        device = next(model.parameters()).device
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())

    @classmethod
    def from_run(cls, run_dir: Path | str, device: torch.device, cfg: DecodeConfig,
                 weights: str = WEIGHTS_FILE) -> "Translator":
        model, tokenizers, _ = load_run(run_dir, device, weights)
        return cls(model, tokenizers, cfg)

    @property
    def max_source_tokens(self) -> int:
        return self.model.cfg.max_positions - 1  # one position is the source's EOS

    def translate(self, lines: list[str]) -> list[str]:
        """Exactly one output line per input line, in order; empty lines give empty lines.

        Over-long lines are truncated to `max_source_tokens` and counted in `stats`.
        """
        src_tok = self.tokenizers.src
        src_ids: list[list[int]] = []
        for line, ids in zip(lines, src_tok.encode(lines)):
            self.stats.lines += 1
            if not line.strip() or not ids:
                self.stats.empty += 1
                src_ids.append([])
                continue
            if len(ids) > self.max_source_tokens:
                self.stats.truncated += 1
                ids = ids[:self.max_source_tokens]
            src_ids.append(ids + [src_tok.eos_id])
        with self.autocast:
            out_ids = translate_ids(self.model, src_ids, self.cfg)
        hyps = self.tokenizers.tgt.decode(out_ids)
        return [clean_output(h) if ids else "" for h, ids in zip(hyps, src_ids)]
