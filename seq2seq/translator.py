"""Text to text with a trained run: tokenize, search, detokenize, one line out per line in.

A source line longer than the model can read (`max_source_tokens`) is, as
`DecodeConfig.long_lines` says, either split into sentences that are
translated separately and joined with a space, or truncated. Either way it
still gives exactly one output line.

A line may come with a target prefix that its translation must start with
(`seq2seq.prefix`): it is encoded with the target tokenizer, and a split
line's first piece carries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DecodeConfig
from .engines import Engine, open_engine
from .errors import ConfigError
from .prefix import check_prefix_lengths
from .search import Hypothesis, check_decode_config, check_nbest
from .textio import clean_output
from .tokenizer import TokenizerPair

if TYPE_CHECKING:  # torch is imported with the torch engine: the CTranslate2 engine runs without it
    import torch

    from .model import Seq2SeqTransformer

# A sentence ends at . ! ? ; : followed by whitespace, so that "3.5" and
# "e.g.x" stay whole; the full-width and CJK forms end a sentence even without
# whitespace after them, since Chinese and Japanese put none between sentences.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[\u3002\uff01\uff1f\uff1b\uff1a\uff0e\uff61])\s*")


@dataclass
class TranslateStats:
    lines: int = 0
    empty: int = 0  # empty or whitespace-only lines: answered with an empty line
    split: int = 0  # lines too long for the model, translated in pieces
    truncated: int = 0  # lines too long for the model, cut to its maximum source length
    # Lines whose chosen output (any piece of a split line) was cut at the output length limit.
    length_limited: int = 0
    empty_outputs: int = 0  # non-empty lines whose output is empty or whitespace once detokenized


@dataclass
class TextHypothesis:
    """One translation of a line, with the search's scores (summed over pieces for a split line)."""

    text: str
    score: float  # length-penalised log-probability
    logprob: float  # raw sum of token log-probabilities


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, cut after sentence punctuation; empty pieces are dropped."""
    return [piece for piece in _SENTENCE_END.split(text) if piece.strip()]


def cut_ids(ids: list[int], limit: int) -> list[list[int]]:
    """`ids` in consecutive slices of at most `limit` tokens."""
    return [ids[start:start + limit] for start in range(0, len(ids), limit)]


class Translator:
    """Translates lists of lines with one engine, keeping count of what needed special handling.

    The engine (`seq2seq.engines`) holds the tokenizers and the search settings.
    `from_run` opens one for a folder; `for_model` runs s2s's own search on a
    model in memory (validation does).
    """

    def __init__(self, engine: Engine):
        # Checked now, so that a bad setting is refused before any input is read; the
        # search checks again with the same function for callers that search without a Translator.
        check_decode_config(engine.cfg, engine.tgt_vocab_size)
        self.engine = engine
        self.tokenizers, self.cfg = engine.tokenizers, engine.cfg
        self.stats = TranslateStats()

    @classmethod
    def for_model(cls, model: Seq2SeqTransformer, tokenizers: TokenizerPair, cfg: DecodeConfig) -> "Translator":
        """A Translator running s2s's own search (the torch engine) on `model`."""
        from .engines.torch_engine import TorchEngine

        return cls(TorchEngine(model, tokenizers, cfg))

    @classmethod
    def from_run(cls, path: Path | str, device: torch.device | str, cfg: DecodeConfig, weights: str | None = None,
                 engine: str | None = None, threads: int | None = None) -> "Translator":
        """A Translator for a run directory (the torch engine) or a folder written by `s2s export`
        (the CTranslate2 engine); `engine` ("torch" or "ctranslate2") must be the one the folder needs.
        `device` as `seq2seq.engines.open_engine` takes it."""
        return cls(open_engine(path, device, cfg, weights, engine, threads))

    def with_config(self, cfg: DecodeConfig) -> "Translator":
        """A Translator on the same loaded model that searches with `cfg`, with its own stats."""
        return Translator(self.engine.with_config(cfg))

    @property
    def model(self) -> Seq2SeqTransformer:
        """The torch engine's model; AttributeError for an engine without one."""
        if self.engine.name != "torch":
            raise AttributeError(f"the {self.engine.name} engine has no torch model")
        return self.engine.model

    @property
    def max_source_tokens(self) -> int:
        return self.engine.max_positions - 1  # one position is the source's EOS

    def translate(self, lines: list[str], prefixes: list[str] | None = None, first_line: int = 1) -> list[str]:
        """Exactly one output line per input line, in order; empty lines give empty lines.

        Over-long lines are split or truncated (`cfg.long_lines`), and counted
        in `stats` with the outputs cut at the length limit or left empty.
        With `prefixes` (one per line; "" for none), each output starts with
        its line's prefix, as the target tokenizer normalises it; an empty line
        gives its prefix. `first_line` numbers lines[0] in error messages.
        """
        prefix_ids = self._prefix_ids(lines, prefixes, first_line)  # refused before anything is counted
        pieces = self._source_pieces(lines)
        best = [[hypotheses[0] for hypotheses in line] for line in self._search(pieces, prefix_ids)]
        texts = [" ".join(h.text for h in line if h.text) for line in self._detokenize(best)]
        self._count_outputs(pieces, best, texts)
        return texts

    def translate_nbest(self, lines: list[str], n: int, prefixes: list[str] | None = None,
                        first_line: int = 1) -> list[list[TextHypothesis]]:
        """Up to `n` translations of each line, best first, in input order.

        Needs 1 <= n <= cfg.beam, and no sampling. An empty line gets one empty
        hypothesis (or its prefix) with score 0. A line split into pieces gets a
        single hypothesis: the best translation of each piece, joined with a
        space, with their scores and logprobs summed. `stats` counts each line's
        best hypothesis as `translate` does; prefixes and `first_line` are as
        in `translate`.
        """
        check_nbest(n, self.cfg)
        prefix_ids = self._prefix_ids(lines, prefixes, first_line)
        pieces = self._source_pieces(lines)
        chosen = [hypotheses_per_piece[0][:n] if len(hypotheses_per_piece) == 1
                  else [hypotheses[0] for hypotheses in hypotheses_per_piece]
                  for hypotheses_per_piece in self._search(pieces, prefix_ids)]
        results: list[list[TextHypothesis]] = []
        for line_pieces, hypotheses in zip(pieces, self._detokenize(chosen)):
            if len(line_pieces) <= 1:
                results.append(hypotheses)
            else:  # one hypothesis made of the pieces' best translations
                results.append([TextHypothesis(text=" ".join(h.text for h in hypotheses if h.text),
                                               score=sum(h.score for h in hypotheses),
                                               logprob=sum(h.logprob for h in hypotheses))])
        best = [hypotheses[:1] if len(line_pieces) <= 1 else hypotheses
                for line_pieces, hypotheses in zip(pieces, chosen)]
        self._count_outputs(pieces, best, [hypotheses[0].text for hypotheses in results])
        return results

    def _source_pieces(self, lines: list[str]) -> list[list[list[int]]]:
        """For each line, the source rows (ids ending in EOS) to translate: none for an
        empty line, one for a line that fits, several for a long line being split."""
        src_tok = self.tokenizers.src
        limit = self.max_source_tokens
        result: list[list[list[int]]] = []
        for line, ids in zip(lines, src_tok.encode(lines)):
            self.stats.lines += 1
            if not line.strip() or not ids:
                self.stats.empty += 1
                result.append([])
                continue
            if len(ids) <= limit:
                pieces = [ids]
            elif self.cfg.long_lines == "truncate":
                self.stats.truncated += 1
                pieces = [ids[:limit]]
            else:
                self.stats.split += 1
                pieces = [cut for sentence_ids in src_tok.encode(split_sentences(line))
                          for cut in cut_ids(sentence_ids, limit)]
                # Normalisation could in principle make every sentence encode to nothing.
                pieces = pieces or cut_ids(ids, limit)
            result.append([piece + [src_tok.eos_id] for piece in pieces])
        return result

    def _prefix_ids(self, lines: list[str], prefixes: list[str] | None, first_line: int) -> list[list[int]] | None:
        """The target ids of each line's prefix; None when no line has one."""
        if prefixes is None:
            return None
        if len(prefixes) != len(lines):
            raise ConfigError(f"{len(prefixes)} target prefixes for {len(lines)} lines: give one per line")
        if not any(prefix.strip() for prefix in prefixes):
            return None
        return self.encode_prefixes(prefixes, first_line)

    def encode_prefixes(self, prefixes: list[str], first_line: int = 1) -> list[list[int]]:
        """The target ids of each prefix ([] for a blank one); a DataError naming the first line
        (numbered from `first_line`) whose prefix is longer than any output the model can write."""
        ids = [encoded if prefix.strip() else [] for prefix, encoded in
               zip(prefixes, self.tokenizers.tgt.encode(prefixes))]
        check_prefix_lengths(ids, self.engine.max_positions, first_line)
        return ids

    def _search(self, pieces: list[list[list[int]]],
                prefixes: list[list[int]] | None) -> list[list[list[Hypothesis]]]:
        """The hypotheses of every piece of every line, best first, from one batched search.

        An empty line (no pieces) gets one piece: the empty source, answered
        with its prefix or the empty hypothesis without running the model. A
        line's prefix goes with its first piece.
        """
        rows = [piece for line in pieces for piece in line or [[]]]
        row_prefixes = None
        if prefixes is not None:
            row_prefixes = [prefix if first else [] for line, prefix in zip(pieces, prefixes)
                            for first in [True] + [False] * (len(line) - 1)]
        found = iter(self.engine.search(rows, row_prefixes))
        return [[next(found) for _ in line or [[]]] for line in pieces]

    def _count_outputs(self, pieces: list[list[list[int]]], best: list[list[Hypothesis]],
                       texts: list[str]) -> None:
        """Count the lines whose output, made of the hypotheses `best` (one per piece), was cut
        at the length limit or is empty; an empty line's empty answer is not counted."""
        for line_pieces, line_best, text in zip(pieces, best, texts):
            if line_pieces:
                self.stats.length_limited += any(hypothesis.hit_limit for hypothesis in line_best)
                self.stats.empty_outputs += not text.strip()

    def _detokenize(self, hypotheses: list[list[Hypothesis]]) -> list[list[TextHypothesis]]:
        """The same nesting with each hypothesis' tokens turned into one clean line of text."""
        flat = [hypothesis for group in hypotheses for hypothesis in group]
        texts = iter(self.tokenizers.tgt.decode([hypothesis.tokens for hypothesis in flat]))
        return [[TextHypothesis(text=clean_output(next(texts)), score=h.score, logprob=h.logprob)
                 for h in group] for group in hypotheses]
