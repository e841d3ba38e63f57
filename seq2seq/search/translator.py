"""Text to text with a trained run: tokenize, search, detokenize, one line out per line in.

A source line longer than the model can read (`max_source_tokens`) is, as
`DecodeConfig.long_lines` says, either split into sentences that are
translated separately and joined with a space, or truncated. Either way it
still gives exactly one output line.

A line may come with a target prefix that its translation must start with
(`seq2seq.search.prefix`): it is encoded with the target tokenizer, and a split
line's first piece carries it.

A model that writes several languages is told which by a tag
(seq2seq.data.directions): the Translator translates into `cfg.tgt_lang`, and
puts its tag first in every source row (lang_tag "source") or forces it as
the first token of every output, before any prefix (lang_tag "target"). Every
piece of a split line carries it. A forced tag is then taken out of the
output: the text, the alignments and `min_len` never see it, and the scores
leave it out as they leave a prefix out.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DecodeConfig, TrainConfig
from ..data.tokenizer import TokenizerPair
from ..errors import ConfigError
from ..files.lines import clean_output
from ..inspection.alignment import (
    AttentionMap,
    default_alignment_layer,
    format_alignment,
    hard_alignment,
    output_words,
    words_of_pieces,
)
from .engines import Engine, open_engine
from .hypotheses import Hypothesis
from .language_tags import language_tag_for
from .prefix import check_prefix_lengths

if TYPE_CHECKING:  # torch is imported with the torch engine: the CTranslate2 engine runs without it
    import torch

    from ..model.transformer import Seq2SeqTransformer

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
    alignment: str | None = None  # "i-j ..." source-output word pairs (seq2seq.inspection.alignment), when asked for


@dataclass
class SourceRow:
    """One row for the search: source ids ending in EOS and, for alignments, where each piece
    (not the EOS) begins in its line, as a byte offset into the line's UTF-8."""

    ids: list[int]
    starts: list[int] | None = None


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, cut after sentence punctuation; empty pieces are dropped."""
    return [piece for piece in _SENTENCE_END.split(text) if piece.strip()]


class Translator:
    """Translates lists of lines with one engine, keeping count of what needed special handling.

    The engine (`seq2seq.search.engines`) holds the tokenizers and the search settings.
    `from_run` opens one for a folder; `for_model` runs s2s's own search on a
    model in memory (validation does). Making one checks `cfg.tgt_lang` against
    the languages the model writes (`language_tag_for`).
    """

    def __init__(self, engine: Engine):
        self.cfg = engine.cfg
        self.tag = language_tag_for(engine.train, engine.tokenizers, engine.cfg.tgt_lang)
        # The tag as the search reads it: first in each source row, or forced first in each output; [] for none.
        self._source_tag = [self.tag.id] if self.tag and self.tag.on_source else []
        self._target_tag = [self.tag.id] if self.tag and not self.tag.on_source else []
        if self._target_tag:
            # The forced tag is the search's first output token but no part of the translation, whose
            # fewest tokens (min_len) are counted after it.
            engine = engine.with_config(replace(engine.cfg, min_len=engine.cfg.min_len + 1))
        self.engine = engine
        self.tokenizers = engine.tokenizers
        self.stats = TranslateStats()

    @classmethod
    def for_model(cls, model: Seq2SeqTransformer, tokenizers: TokenizerPair, cfg: DecodeConfig,
                  precision: str = "auto", train: TrainConfig | None = None) -> "Translator":
        """A Translator running s2s's own search (the torch engine) on `model`, in `precision`
        (seq2seq.device.precision_policy). `train`, the config of the run the model is trained in, says
        which languages it writes: a model that writes several translates into `cfg.tgt_lang`."""
        from .engines.torch_engine import TorchEngine

        return cls(TorchEngine(model, tokenizers, cfg, precision=precision, train=train))

    @classmethod
    def from_run(cls, path: Path | str, device: torch.device | str, cfg: DecodeConfig, weights: str | None = None,
                 engine: str | None = None, threads: int | None = None) -> "Translator":
        """A Translator for a run directory (the torch engine) or a folder written by `s2s export`
        (the CTranslate2 engine); `engine` ("torch" or "ctranslate2") must be the one the folder needs.
        `device` as `seq2seq.search.engines.open_engine` takes it."""
        return cls(open_engine(path, device, cfg, weights, engine, threads))

    def with_config(self, cfg: DecodeConfig) -> "Translator":
        """A Translator on the same loaded model that searches with `cfg` (into its tgt_lang), with its
        own stats."""
        return Translator(self.engine.with_config(cfg))

    @property
    def model(self) -> Seq2SeqTransformer:
        """The torch engine's model; AttributeError for an engine without one."""
        if self.engine.name != "torch":
            raise AttributeError(f"the {self.engine.name} engine has no torch model")
        return self.engine.model

    def alignment_layer(self, layer: int | None = None) -> int:
        """`layer` (from 1), or by default the penultimate decoder layer (`default_alignment_layer`),
        checked: a ConfigError naming `alignment_layer`, or `alignment` for the default, if it has no
        attention weights to align with. What `translate_best` and `translate_nbest` take."""
        asked = "alignment" if layer is None else "alignment_layer"
        if layer is None:
            layer = default_alignment_layer(self.decoder_layers)
        self.engine.check_attention_layer(layer, asked)
        return layer

    def attention_map(self, line: str, layer: int | None = None) -> AttentionMap:
        """The translation of `line` (one that fits the model) and the cross-attention of decoder
        layer `layer` (from 1; by default the last) behind it. Not counted in `stats`."""
        layer = self.decoder_layers if layer is None else layer
        self.engine.check_attention_layer(layer, "layer")
        ids = self.tokenizers.src.encode([line])[0] if line.strip() else []
        if not ids:
            raise ConfigError("give a sentence to translate; this one is empty")
        if len(ids) > self.max_source_tokens:
            raise ConfigError(f"the sentence has {len(ids)} source pieces, more than the model reads at once "
                              f"({self.max_source_tokens}): give a shorter one")
        row = self._source_row(ids)
        best = self._search([[SourceRow(row)]], None)[0][0][0]
        weights = self._cross_attention([row], [best.tokens], layer)[0]  # (H, T + 1, S)
        output_pieces = self.tokenizers.tgt.id_pieces(best.tokens) + ["</s>"]
        if best.hit_limit:  # no step chose EOS: the last row is of a step the search never took
            weights, output_pieces = weights[:, :-1], output_pieces[:-1]
        # A source tag is shown: the model reads it, and attends to it.
        return AttentionMap(source_pieces=self.tokenizers.src.id_pieces(row[:-1]) + ["</s>"], output_pieces=output_pieces,
                            weights=weights, translation=clean_output(self.tokenizers.tgt.decode([best.tokens])[0]),
                            layer=layer)

    @functools.cached_property
    def decoder_layers(self) -> int:
        """How many decoder layers the engine's model has (from its description, read once)."""
        return self.engine.describe()["model"]["decoder_layers"]

    @property
    def max_source_tokens(self) -> int:
        """The most source pieces of one row: the model's positions but the EOS's and a source tag's."""
        return self.engine.max_positions - 1 - len(self._source_tag)

    def source_lengths(self, lines: list[str]) -> list[int]:
        """How many ids the search reads for each line, as one row: its pieces, its EOS and a source tag."""
        return [len(self._source_tag) + len(ids) + 1 for ids in self.tokenizers.src.encode(lines)]

    def _source_row(self, ids: list[int]) -> list[int]:
        """The row the search reads for the source pieces `ids`: a source tag, the pieces, EOS."""
        return self._source_tag + ids + [self.tokenizers.src.eos_id]

    def translate(self, lines: list[str], prefixes: list[str] | None = None, first_line: int = 1) -> list[str]:
        """Exactly one output line per input line, in order; empty lines give empty lines.

        Over-long lines are split or truncated (`cfg.long_lines`), and counted
        in `stats` with the outputs cut at the length limit or left empty.
        With `prefixes` (one per line; "" for none), each output starts with
        its line's prefix, as the target tokenizer normalises it; an empty line
        gives its prefix. `first_line` numbers lines[0] in error messages.
        """
        return [hypothesis.text for hypothesis in self.translate_best(lines, prefixes, first_line)]

    def translate_best(self, lines: list[str], prefixes: list[str] | None = None, first_line: int = 1,
                       alignment_layer: int | None = None) -> list[TextHypothesis]:
        """`translate`, with each line's scores and, given `alignment_layer` (a decoder layer, from
        1, as `alignment_layer` gives it), its word alignment (`seq2seq.inspection.alignment`). A split
        line's scores are its pieces' summed."""
        return [hypotheses[0] for hypotheses in self._translate(lines, 1, prefixes, first_line, alignment_layer)]

    def translate_nbest(self, lines: list[str], n: int, prefixes: list[str] | None = None,
                        first_line: int = 1, alignment_layer: int | None = None) -> list[list[TextHypothesis]]:
        """Up to `n` translations of each line, best first, in input order.

        Needs 1 <= n <= cfg.beam, and no sampling (`check_nbest`, where n is asked for). An empty line gets one empty
        hypothesis (or its prefix) with score 0. A line split into pieces gets a
        single hypothesis: the best translation of each piece, joined with a
        space, with their scores and logprobs summed. `stats` counts each line's
        best hypothesis as `translate` does; prefixes and `first_line` are as
        in `translate`, `alignment_layer` as in `translate_best`.
        """
        return self._translate(lines, n, prefixes, first_line, alignment_layer)

    def _translate(self, lines: list[str], n: int, prefixes: list[str] | None, first_line: int,
                   alignment_layer: int | None) -> list[list[TextHypothesis]]:
        """The n best outputs of each line (one for a split line), as `translate_nbest` says."""
        prefix_ids = self._prefix_ids(lines, prefixes, first_line)  # refused before anything is counted
        pieces = self._source_pieces(lines, with_offsets=alignment_layer is not None)
        # An output of a line is the hypotheses of its pieces: each of the n best of a line
        # that is one piece, or the best of each piece of a split line.
        outputs = [[[hypothesis] for hypothesis in per_piece[0][:n]] if len(per_piece) == 1
                   else [[hypotheses[0] for hypotheses in per_piece]]
                   for per_piece in self._search(pieces, prefix_ids)]
        texts = self._detokenize(outputs)
        alignments = (self._alignments(lines, pieces, outputs, alignment_layer) if alignment_layer is not None
                      else [[None] * len(line_outputs) for line_outputs in outputs])
        results = [[TextHypothesis(text=" ".join(text for text in output_texts if text),
                                   score=sum(h.score for h in output), logprob=sum(h.logprob for h in output),
                                   alignment=alignment)
                    for output, output_texts, alignment in zip(line_outputs, line_texts, line_alignments)]
                   for line_outputs, line_texts, line_alignments in zip(outputs, texts, alignments)]
        self._count_outputs(pieces, [line_outputs[0] for line_outputs in outputs],
                            [hypotheses[0].text for hypotheses in results])
        return results

    def _source_pieces(self, lines: list[str], with_offsets: bool = False) -> list[list[SourceRow]]:
        """For each line, the source rows to translate: none for an empty line, one for a line
        that fits, several for a long line being split. `with_offsets`: each row also says where
        its pieces begin in the line (for alignments)."""
        src_tok = self.tokenizers.src
        limit = self.max_source_tokens
        encoded = (src_tok.encode_with_offsets(lines) if with_offsets
                   else [(ids, None) for ids in src_tok.encode(lines)])
        result: list[list[SourceRow]] = []
        for line, (ids, starts) in zip(lines, encoded):
            self.stats.lines += 1
            if not line.strip() or not ids:
                self.stats.empty += 1
                result.append([])
                continue
            if len(ids) <= limit:
                cuts = [(ids, starts)]
            elif self.cfg.long_lines == "truncate":
                self.stats.truncated += 1
                cuts = [(ids[:limit], starts and starts[:limit])]
            else:
                self.stats.split += 1
                cuts = self._sentence_cuts(line, limit, with_offsets)
                # Normalisation could in principle make every sentence encode to nothing.
                cuts = cuts or cut_ids(ids, starts, limit)
            result.append([SourceRow(self._source_row(piece), piece_starts) for piece, piece_starts in cuts])
        return result

    def _sentence_cuts(self, line: str, limit: int, with_offsets: bool) -> list[tuple[list[int], list[int] | None]]:
        """A long line's sentences encoded, each cut into slices of at most `limit` ids, with where
        their pieces begin in the line when `with_offsets`."""
        sentences = split_sentences(line)
        if not with_offsets:
            return [cut for ids in self.tokenizers.src.encode(sentences) for cut in cut_ids(ids, None, limit)]
        cuts = []
        char = byte = 0  # where the previous sentence ended in the line, in characters and in bytes
        for sentence, (ids, starts) in zip(sentences, self.tokenizers.src.encode_with_offsets(sentences)):
            found = line.index(sentence, char)  # the sentences are the line's substrings, in order
            sentence_byte = byte + len(line[char:found].encode("utf-8"))
            cuts.extend(cut_ids(ids, [sentence_byte + start for start in starts], limit))
            char, byte = found + len(sentence), sentence_byte + len(sentence.encode("utf-8"))
        return cuts

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
        # A forced target tag goes first, and takes a position from the longest output.
        check_prefix_lengths(ids, self.engine.max_positions - len(self._target_tag), first_line)
        return ids

    def _search(self, pieces: list[list[SourceRow]],
                prefixes: list[list[int]] | None) -> list[list[list[Hypothesis]]]:
        """The hypotheses of every piece of every line, best first, from one batched search.

        An empty line (no pieces) gets one piece: the empty source, answered
        with its prefix or the empty hypothesis without running the model. A
        line's prefix goes with its first piece, after a target tag, which
        every piece gets and which the hypotheses come back without.
        """
        rows = [piece.ids for line in pieces for piece in line or [SourceRow([])]]
        row_prefixes = None
        if prefixes is not None or self._target_tag:
            line_prefixes = prefixes if prefixes is not None else [[]] * len(pieces)
            row_prefixes = [self._target_tag + (prefix if first else []) for line, prefix in zip(pieces, line_prefixes)
                            for first in [True] + [False] * (len(line) - 1)]
        found = iter(self.engine.search(rows, row_prefixes))
        return [[self._untagged(next(found)) for _ in line or [[]]] for line in pieces]

    def _untagged(self, hypotheses: list[Hypothesis]) -> list[Hypothesis]:
        """`hypotheses` without the target tag the search forced first in each (scored 0, as a prefix is)."""
        if not self._target_tag:
            return hypotheses
        return [replace(hypothesis, tokens=hypothesis.tokens[len(self._target_tag):]) for hypothesis in hypotheses]

    def _cross_attention(self, rows: list[list[int]], outputs: list[list[int]], layer: int) -> list:
        """The engine's `cross_attention` (H, T + 1, S) of each source row (a source tag included) and
        output (without the target tag): the steps that chose the output's T tokens, then EOS. A target
        tag is given back to the model, which wrote the output after it, and the step that chose it is
        left out."""
        weights = self.engine.cross_attention(rows, [self._target_tag + tokens for tokens in outputs], layer)
        return [step_weights[:, len(self._target_tag):] for step_weights in weights]

    def _count_outputs(self, pieces: list[list[SourceRow]], best: list[list[Hypothesis]],
                       texts: list[str]) -> None:
        """Count the lines whose output, made of the hypotheses `best` (one per piece), was cut
        at the length limit or is empty; an empty line's empty answer is not counted."""
        for line_pieces, line_best, text in zip(pieces, best, texts):
            if line_pieces:
                self.stats.length_limited += any(hypothesis.hit_limit for hypothesis in line_best)
                self.stats.empty_outputs += not text.strip()

    def _detokenize(self, outputs: list[list[list[Hypothesis]]]) -> list[list[list[str]]]:
        """The same nesting with each hypothesis' tokens turned into one clean line of text."""
        flat = [hypothesis for line in outputs for output in line for hypothesis in output]
        texts = iter(self.tokenizers.tgt.decode([hypothesis.tokens for hypothesis in flat]))
        return [[[clean_output(next(texts)) for _ in output] for output in line] for line in outputs]

    def _alignments(self, lines: list[str], pieces: list[list[SourceRow]], outputs: list[list[list[Hypothesis]]],
                    layer: int) -> list[list[str]]:
        """The word alignment (`seq2seq.inspection.alignment`) of each output of each line: "" for an empty line.

        An output made of several pieces' hypotheses (a split line) numbers its words through the
        pieces in order, as its text joins them."""
        requests = [(row, hypothesis) for line_pieces, line_outputs in zip(pieces, outputs) if line_pieces
                    for output in line_outputs for row, hypothesis in zip(line_pieces, output)]
        weights = iter(self._cross_attention([row.ids for row, _ in requests],
                                             [hypothesis.tokens for _, hypothesis in requests], layer))
        result = []
        for line, line_pieces, line_outputs in zip(lines, pieces, outputs):
            if not line_pieces:
                result.append([""] * len(line_outputs))
                continue
            line_alignments = []
            for output in line_outputs:
                pairs, words_before = [], 0
                for row, hypothesis in zip(line_pieces, output):
                    # (T, S + 1), over heads; a source tag is no word of the line, and its column goes
                    attention = next(weights).mean(axis=0)[:len(hypothesis.tokens), len(self._source_tag):]
                    text, starts = self.tokenizers.tgt.decode_with_offsets(hypothesis.tokens)
                    target_words, count = output_words(text, starts)
                    pairs += [(source, words_before + target) for source, target in
                              hard_alignment(attention, words_of_pieces(line, row.starts), target_words)]
                    words_before += count
                line_alignments.append(format_alignment(pairs))
            result.append(line_alignments)
        return result


def cut_ids(ids: list[int], starts: list[int] | None, limit: int) -> list[tuple[list[int], list[int] | None]]:
    """`ids` in consecutive slices of at most `limit`, each with its slice of `starts` (None if not given)."""
    return [(ids[i:i + limit], None if starts is None else starts[i:i + limit]) for i in range(0, len(ids), limit)]
