"""Which directions a run translates, and the tags that tell a model which language to write.

A run names one language or several on each side (`TrainConfig.src_lang`,
`tgt_lang`: "en" and "de,fr,cs"); it trains every direction between them
(`TrainConfig.directions`). A model that writes more than one language is told
which by a tag, `<2de>`, one piece of the shared tokenizer per target language
(a sentencepiece control symbol: it is inserted as an id, never read from a
line's text, never split or sampled, and decodes to nothing):

- `lang_tag` "source": the tag is the first source token, before the source
  pieces (Johnson et al. 2017);
- `lang_tag` "target": the tag is the first target token, forced as a one-token
  prefix (as mBART and M2M force their language id), and taken out of the output.

A model that writes one language has no tags, whatever its sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import TrainConfig, language_codes

if TYPE_CHECKING:
    from .tokenizer import Tokenizer, TokenizerPair


def language_tag(lang: str) -> str:
    """The piece that asks for `lang`: "<2de>"."""
    return f"<2{lang}>"


def target_languages(tgt_lang: str) -> list[str]:
    """The languages a run writes, from its tgt_lang setting, in the order given."""
    return language_codes(tgt_lang)


def tagged_languages(tgt_lang: str) -> list[str]:
    """The languages that get a tag: every target language when there are several, none when there is one."""
    languages = target_languages(tgt_lang)
    return languages if len(languages) > 1 else []


def missing_tags(tokenizers: TokenizerPair, cfg: TrainConfig) -> tuple[Tokenizer, list[str]]:
    """The tokenizer of the side a run's language tags go on (its lang_tag), and the tags it lacks as
    pieces: none for a run that is fit to be trained or translated."""
    tokenizer = tokenizers.src if cfg.lang_tag == "source" else tokenizers.tgt
    pieces = set(tokenizer.pieces())
    return tokenizer, [language_tag(lang) for lang in tagged_languages(cfg.tgt_lang) if language_tag(lang) not in pieces]
