"""Which tag asks a model for the language to write, and the refusals when none can.

A model trained to write several languages is told which by a tag
(seq2seq.data.directions): first in the source row (lang_tag "source"), or
forced as the first output token (lang_tag "target"). A model that writes one
language takes no tag, and a language the model does not write is refused
here, once, when a Translator is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TrainConfig
from ..data.directions import language_tag, tagged_languages, target_languages
from ..data.tokenizer import TokenizerPair
from ..errors import ConfigError, RunDirError


@dataclass(frozen=True)
class LanguageTag:
    """The tag that asks a model which writes several languages for one (seq2seq.data.directions)."""

    id: int  # its piece, in the tokenizer of the side it goes on
    on_source: bool  # lang_tag "source": first in the source row; "target": forced as the output's first token


def language_tag_for(train: TrainConfig | None, tokenizers: TokenizerPair, tgt_lang: str) -> LanguageTag | None:
    """The tag that asks the model of a run trained as `train` says to write `tgt_lang`; None for a model
    that writes one language, which needs none.

    A ConfigError naming the setting `tgt_lang`, with the languages the model writes, for a language it
    does not write, or for none ('') when it writes several. `train` None is a model whose run is not
    known: it writes one language, which `tgt_lang` cannot name. A RunDirError if the tokenizer lacks the
    tag: a run directory is checked when it opens (seq2seq.runs.run_dir.check_language_tags), but an
    exported folder's run config could have been edited.
    """
    if train is None:
        if tgt_lang:
            raise ConfigError("the languages of this model are not known: leave out {tgt_lang}", ("tgt_lang",))
        return None
    languages = target_languages(train.tgt_lang)
    writes = ", ".join(languages)
    if tgt_lang and tgt_lang not in languages:
        choice = "one of them" if len(languages) > 1 else f"{languages[0]}, or leave it out"
        raise ConfigError(f"this model writes {writes}, not {tgt_lang!r}: give {{tgt_lang}} {choice}", ("tgt_lang",))
    if not tagged_languages(train.tgt_lang):
        return None
    if not tgt_lang:
        raise ConfigError(f"this model writes {writes}: give {{tgt_lang}}, the one to translate into", ("tgt_lang",))
    on_source = train.lang_tag == "source"
    tokenizer, tag = tokenizers.src if on_source else tokenizers.tgt, language_tag(tgt_lang)
    pieces = tokenizer.pieces()
    if tag not in pieces:
        raise RunDirError(f"{tokenizer.path}: has no piece {tag}, the tag that asks this model for {tgt_lang}")
    return LanguageTag(pieces.index(tag), on_source)
