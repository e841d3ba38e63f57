"""Hard word alignments from cross-attention, in the `i-j` format of fairseq, Marian and fast_align.

Each output piece is aligned to the source piece its decoder step attended
to most (the argmax of one layer's cross-attention, averaged over heads, with
the source's EOS left out), as fairseq's `--print-alignment` does. The pairs
are then mapped from pieces to words: `i-j` says that source word i (0-based,
whitespace-separated in the input line) and output word j (0-based, in the
output line) are aligned. Pairs are listed by output word, then source word,
each once.

`AttentionMap` is the whole picture for one sentence, for `s2s attention`.

The layer: Garg et al. (2019, "Jointly Learning to Align and Translate with
Transformer Models") found the penultimate decoder layer's attention, averaged
over heads, to align best in a standard Transformer; that is the default
(`default_alignment_layer`). Layers are numbered from 1.

A piece belongs to the word of the first non-space character at or after
where it begins in the text: sentencepiece's word-start marker "▁" alone,
or a piece whose text is only the space before a word, goes with the word
that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import field_error
from ..files.lines import clean_output


def default_alignment_layer(decoder_layers: int) -> int:
    """The penultimate decoder layer, numbered from 1 (the only one for a one-layer decoder)."""
    return max(1, decoder_layers - 1)


def check_layer(layer: int, decoder_layers: int, name: str) -> None:
    """ConfigError naming the setting `name` unless 1 <= layer <= decoder_layers."""
    if not 1 <= layer <= decoder_layers:
        raise field_error(name, f"must be a decoder layer from 1 to {decoder_layers}, got {layer}")


def word_of_each_byte(text: str) -> list[int]:
    """For each byte of `text`'s UTF-8, the 0-based number of the whitespace-separated word it
    is part of, or -1 for whitespace. Words are those of `text.split()`."""
    owners: list[int] = []
    word, in_word = -1, False
    for char in text:
        if char.isspace():
            in_word = False
            owner = -1
        else:
            if not in_word:
                word, in_word = word + 1, True
            owner = word
        owners.extend([owner] * len(char.encode("utf-8")))
    return owners


def words_of_pieces(text: str, piece_starts: list[int]) -> list[int]:
    """The word (of `text.split()`) that each piece belongs to; `piece_starts` are byte offsets.

    A piece that starts after the last word (trailing space) goes with the last word; in a text
    without words (an output of spaces only), every piece belongs to none: -1.
    """
    owners = word_of_each_byte(text)
    # For each byte, the word of the first non-space byte at or after it.
    next_word = [-1] * (len(owners) + 1)
    last_word = max(owners, default=-1)
    next_word[len(owners)] = last_word
    for position in range(len(owners) - 1, -1, -1):
        next_word[position] = owners[position] if owners[position] >= 0 else next_word[position + 1]
    return [next_word[min(start, len(owners))] for start in piece_starts]


def output_words(text: str, piece_starts: list[int]) -> tuple[list[int], int]:
    """The words of an output's pieces, counted as in the output line (after `clean_output`, which
    turns line breaks into spaces, one character for one), and how many words the output has."""
    cleaned = clean_output(text)
    # clean_output keeps each character's place but may change its UTF-8 length (U+2028 is
    # 3 bytes, its space 1): offsets into `text` are turned into offsets into `cleaned`.
    char_of_byte = [index for index, char in enumerate(text) for _ in char.encode("utf-8")] + [len(text)]
    cleaned_byte_of_char = np.cumsum([0] + [len(char.encode("utf-8")) for char in cleaned]).tolist()
    starts = [cleaned_byte_of_char[char_of_byte[min(start, len(char_of_byte) - 1)]] for start in piece_starts]
    return words_of_pieces(cleaned, starts), len(cleaned.split())


def hard_alignment(attention: np.ndarray, source_words: list[int], target_words: list[int]) -> list[tuple[int, int]]:
    """(source word, output word) pairs, by output word then source word, each once.

    attention: (T, S + 1), the cross-attention of each of the T output pieces over the S source
    pieces and the source's EOS (the last column, left out: it attends there when nothing else).
    source_words (S,) and target_words (T,) map pieces to words; a piece of no word (-1) is left out.
    """
    if attention.shape != (len(target_words), len(source_words) + 1):
        raise ValueError(f"attention of shape {attention.shape} for {len(target_words)} output and "
                         f"{len(source_words)} source pieces (+ EOS)")
    if not source_words or not target_words:
        return []
    best = attention[:, :-1].argmax(axis=1)  # (T,)
    pairs = {(source_words[j], target_words[i]) for i, j in enumerate(best.tolist())}
    return sorted({(i, j) for i, j in pairs if i >= 0 and j >= 0}, key=lambda pair: (pair[1], pair[0]))


def format_alignment(pairs: list[tuple[int, int]]) -> str:
    """"0-0 1-2 2-1": source-output word pairs, as fairseq and Marian print them."""
    return " ".join(f"{source}-{target}" for source, target in pairs)


@dataclass
class AttentionMap:
    """The cross-attention of one decoder layer behind one translation."""

    source_pieces: list[str]  # S: the source's pieces, then "</s>"
    output_pieces: list[str]  # T: the output's pieces, then "</s>" if the search ended it
    weights: np.ndarray  # (H, T, S): each head's attention from each output step over the source
    translation: str
    layer: int  # from 1

    def heads(self, head: int | None) -> np.ndarray:
        """(T, S): the weights of head `head` (from 1), or their mean over heads when None."""
        if head is None:
            return self.weights.mean(axis=0)
        if not 1 <= head <= self.weights.shape[0]:
            raise field_error("head", f"must be from 1 to {self.weights.shape[0]} (the model's heads), got {head}")
        return self.weights[head - 1]
