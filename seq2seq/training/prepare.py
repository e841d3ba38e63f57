"""What a run trains on: its tokenizers, and the training and validation splits encoded, filtered
and placed in a token store (seq2seq.data.token_store). With subword sampling, the training split's
stores are those of each epoch's own segmentation (seq2seq.training.resampling); validation always
has the best one.

Under torchrun the ranks prepare in turns (seq2seq.training.distributed.in_turns):
rank 0 writes the run's tokenizer and fills `datasets`' cache with the
encoded corpus while the others wait; then they read the same files, from
the cache, rather than write them all at once.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..data.corpora import language_texts, load_directions
from ..data.directions import language_tag, missing_tags, tagged_languages
from ..data.encode import TAG_COLUMNS, encode_corpus, filter_pairs, kept_rows, tag_lengths
from ..data.token_store import TokenStore, token_store
from ..data.tokenizer import TokenizerPair, load_tokenizers, train_balanced_tokenizer, train_tokenizer
from ..errors import TokenizerError
from ..files.atomic import atomic_write
from ..files.run_layout import CONFIG_FILE, Event
from .distributed import in_turns, is_main_process
from .resampling import EpochSegmentations


@dataclass
class DirectionLines:
    """The raw validation text of one direction, for its BLEU."""

    src_lang: str
    tgt_lang: str
    src_lines: list[str]
    ref_lines: list[str]

    @property
    def name(self) -> str:
        """"en-de": how records name the direction."""
        return f"{self.src_lang}-{self.tgt_lang}"


@dataclass
class PreparedData:
    tokenizers: TokenizerPair
    train_src: TokenStore
    train_tgt: TokenStore
    valid_src: TokenStore | None
    valid_tgt: TokenStore | None
    valid_lines: list[DirectionLines]  # raw validation text for BLEU, by direction, in the run's order
    # With subword sampling: every epoch's training stores; train_src and train_tgt are the first epoch's.
    segmentations: EpochSegmentations | None = None
    # With several directions: the direction (its place in TrainConfig.directions) of each training pair.
    train_directions: np.ndarray | None = None


def prepare_data(run_dir: Path, cfg: TrainConfig, device: torch.device,
                 emit: Callable[[Event], None]) -> PreparedData:
    """Tokenizers and token ids of the training and validation corpora, in token stores that
    give batches on `device`. Under torchrun, every rank calls it, and they take turns."""
    return in_turns(lambda: _prepare_data(run_dir, cfg, device, emit))


def _prepare_data(run_dir: Path, cfg: TrainConfig, device: torch.device,
                  emit: Callable[[Event], None]) -> PreparedData:
    # A run of several directions trains on each direction's pairs, one after another; the batches mix them.
    tag_column = TAG_COLUMNS[cfg.lang_tag] if tagged_languages(cfg.tgt_lang) else ""
    train_parts = load_directions(cfg.train, cfg.directions, tag_column=tag_column)
    train_corpus = _joined(train_parts)
    tokenizers = prepare_tokenizers(run_dir, cfg, train_corpus, emit, train_parts)
    train_ids = encode_split("train", cfg.train, train_corpus, tokenizers, cfg, emit)
    segmentations = None
    if cfg.subword_alpha:
        segmentations = EpochSegmentations(_kept_texts(train_corpus, tokenizers, cfg), tokenizers, cfg, device)
    train_stores = segmentations.stores(1) if segmentations else _stores(train_ids, cfg, device)
    data = PreparedData(tokenizers, *train_stores, None, None, [], segmentations,
                        _directions_of_kept(train_parts, train_corpus, tokenizers, cfg))
    if cfg.valid:
        valid_parts = load_directions(cfg.valid, cfg.directions, tag_column=tag_column)
        valid_ids = encode_split("valid", cfg.valid, _joined(valid_parts), tokenizers, cfg, emit)
        data.valid_src, data.valid_tgt = _stores(valid_ids, cfg, device)
        # BLEU is scored on the raw text of every pair, filtered or not; of each direction on its own.
        for (src_lang, tgt_lang), part in zip(cfg.directions, valid_parts):
            limit = cfg.valid_bleu_sentences or len(part)
            data.valid_lines.append(DirectionLines(src_lang, tgt_lang, part["src"][:limit], part["tgt"][:limit]))
    return data


def _joined(parts: list[datasets.Dataset]) -> datasets.Dataset:
    """The pairs of every direction, one direction after another; a run of one direction has its corpus as it is."""
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _directions_of_kept(parts: list[datasets.Dataset], corpus: datasets.Dataset, tokenizers: TokenizerPair,
                        cfg: TrainConfig) -> np.ndarray | None:
    """(K,) int16: the direction of each pair `encode_split` keeps from `corpus` (`parts` joined);
    None for a run of one direction."""
    if len(parts) == 1:
        return None
    of_row = np.repeat(np.arange(len(parts), dtype=np.int16), [len(part) for part in parts])
    # The ids encode_split made, read back from datasets' cache.
    encoded = encode_corpus(corpus, tokenizers, num_proc=cfg.num_proc)
    return of_row[kept_rows(encoded, cfg.max_len, tag_lengths(corpus))]


def _stores(encoded: datasets.Dataset, cfg: TrainConfig, device: torch.device) -> tuple[TokenStore, TokenStore]:
    """Source and target stores of an encoded split (its Arrow table: memory-mapped from the cache)."""
    return tuple(token_store(encoded.data.column(name), device, cfg.token_store)  # type: ignore[return-value]
                 for name in ("src_ids", "tgt_ids"))


def _kept_texts(corpus: datasets.Dataset, tokenizers: TokenizerPair, cfg: TrainConfig) -> datasets.Dataset:
    """The text of the pairs `encode_split` keeps, in the same order."""
    # The ids encode_split made, read back from datasets' cache.
    rows = kept_rows(encode_corpus(corpus, tokenizers, num_proc=cfg.num_proc), cfg.max_len, tag_lengths(corpus))
    return corpus if len(rows) == len(corpus) else corpus.select(rows)


def encode_split(split: str, spec: str, corpus: datasets.Dataset, tokenizers: TokenizerPair, cfg: TrainConfig,
                 emit: Callable[[Event], None]) -> datasets.Dataset:
    """Token ids of `corpus` without empty or over-long pairs; reports what was dropped."""
    encoded = encode_corpus(corpus, tokenizers, num_proc=cfg.num_proc)
    kept, report = filter_pairs(encoded, cfg.max_len, num_proc=cfg.num_proc, name=spec, tags=tag_lengths(corpus))
    emit({"event": "data", "split": split, "corpus": spec, "pairs": len(corpus),
          "kept": report.kept, "too_long": report.too_long, "empty": report.empty,
          "max_len": cfg.max_len})
    return kept


def prepare_tokenizers(run_dir: Path, cfg: TrainConfig, train_corpus: datasets.Dataset,
                       emit: Callable[[Event], None], train_parts: list[datasets.Dataset] | None = None) -> TokenizerPair:
    """The run's own tokenizer: copied from --tokenizer, or trained here on a sample; with several
    languages, one shared by all of them, balanced, with a tag for each target language when there
    are several (`train_parts`: each direction's pairs, as `load_directions` gives them).

    Rank 0 writes it; the other ranks, which come later (prepare_data), read the same files.
    """
    resuming = (run_dir / CONFIG_FILE).is_file()
    if is_main_process() and not resuming:
        if cfg.tokenizer:
            source = load_tokenizers(cfg.tokenizer)
            check_tags(source, cfg)  # before the run has a copy of a tokenizer it cannot use
            for path in source.files():
                atomic_write(run_dir / path.name, lambda tmp, path=path: shutil.copyfile(path, tmp))
        else:
            emit({"event": "tokenizer", "vocab_size": cfg.vocab_size})
            if train_parts is None or len(cfg.directions) == 1:
                train_tokenizer(train_corpus, run_dir, vocab_size=cfg.vocab_size, seed=cfg.seed)
            else:
                train_balanced_tokenizer(*language_texts(cfg.directions, train_parts), run_dir,
                                         vocab_size=cfg.vocab_size, seed=cfg.seed,
                                         control_symbols=[language_tag(lang) for lang in tagged_languages(cfg.tgt_lang)])
    tokenizers = load_tokenizers(run_dir)
    check_tags(tokenizers, cfg)
    return tokenizers


def check_tags(tokenizers: TokenizerPair, cfg: TrainConfig) -> None:
    """TokenizerError unless the tokenizer of the side the run's language tags go on has each as a piece."""
    tokenizer, missing = missing_tags(tokenizers, cfg)
    if missing:
        raise TokenizerError(f"{tokenizer.path} has no piece {', '.join(missing)}: a run that writes "
                             f"{cfg.tgt_lang} needs a tokenizer trained with a tag for each of its target languages")


def fit_to_tokenizers(model_cfg: ModelConfig, tokenizers: TokenizerPair) -> ModelConfig:
    """`model_cfg` with the vocabulary sizes and special ids of `tokenizers`; embeddings are shared
    only when asked for and the two sides share one vocabulary."""
    return dataclasses.replace(model_cfg, **tokenizers.model_fields(),
                               share_embeddings=model_cfg.share_embeddings and tokenizers.shared)
