"""What a run trains on: its tokenizers, and the training and validation splits encoded, filtered
and placed in a token store (seq2seq.data.token_store).

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
import torch

from ..config import ModelConfig, TrainConfig
from ..data.corpora import load_corpus
from ..data.encode import encode_corpus, filter_pairs
from ..data.token_store import TokenStore, token_store
from ..data.tokenizer import TokenizerPair, load_tokenizers, train_tokenizer
from ..files.atomic import atomic_write
from ..files.run_layout import CONFIG_FILE, Event
from .distributed import in_turns, is_main_process


@dataclass
class PreparedData:
    tokenizers: TokenizerPair
    train_src: TokenStore
    train_tgt: TokenStore
    valid_src: TokenStore | None
    valid_tgt: TokenStore | None
    valid_src_lines: list[str]  # raw validation text for BLEU
    valid_ref_lines: list[str]


def prepare_data(run_dir: Path, cfg: TrainConfig, device: torch.device,
                 emit: Callable[[Event], None]) -> PreparedData:
    """Tokenizers and token ids of the training and validation corpora, in token stores that
    give batches on `device`. Under torchrun, every rank calls it, and they take turns."""
    return in_turns(lambda: _prepare_data(run_dir, cfg, device, emit))


def _prepare_data(run_dir: Path, cfg: TrainConfig, device: torch.device,
                  emit: Callable[[Event], None]) -> PreparedData:
    train_corpus = load_corpus(cfg.train, cfg.src_lang, cfg.tgt_lang)
    tokenizers = prepare_tokenizers(run_dir, cfg, train_corpus, emit)
    train_ids = encode_split("train", cfg.train, train_corpus, tokenizers, cfg, emit)
    data = PreparedData(tokenizers, *_stores(train_ids, cfg, device), None, None, [], [])
    if cfg.valid:
        valid_corpus = load_corpus(cfg.valid, cfg.src_lang, cfg.tgt_lang)
        valid_ids = encode_split("valid", cfg.valid, valid_corpus, tokenizers, cfg, emit)
        data.valid_src, data.valid_tgt = _stores(valid_ids, cfg, device)
        # BLEU is scored on the raw text of every pair, filtered or not.
        limit = cfg.valid_bleu_sentences or len(valid_corpus)
        data.valid_src_lines = valid_corpus["src"][:limit]
        data.valid_ref_lines = valid_corpus["tgt"][:limit]
    return data


def _stores(encoded: datasets.Dataset, cfg: TrainConfig, device: torch.device) -> tuple[TokenStore, TokenStore]:
    """Source and target stores of an encoded split (its Arrow table: memory-mapped from the cache)."""
    return tuple(token_store(encoded.data.column(name), device, cfg.token_store)  # type: ignore[return-value]
                 for name in ("src_ids", "tgt_ids"))


def encode_split(split: str, spec: str, corpus: datasets.Dataset, tokenizers: TokenizerPair, cfg: TrainConfig,
                 emit: Callable[[Event], None]) -> datasets.Dataset:
    """Token ids of `corpus` without empty or over-long pairs; reports what was dropped."""
    encoded = encode_corpus(corpus, tokenizers, num_proc=cfg.num_proc)
    kept, report = filter_pairs(encoded, cfg.max_len, num_proc=cfg.num_proc, name=spec)
    emit({"event": "data", "split": split, "corpus": spec, "pairs": len(corpus),
          "kept": report.kept, "too_long": report.too_long, "empty": report.empty,
          "max_len": cfg.max_len})
    return kept


def prepare_tokenizers(run_dir: Path, cfg: TrainConfig, train_corpus: datasets.Dataset,
                       emit: Callable[[Event], None]) -> TokenizerPair:
    """The run's own tokenizer: copied from --tokenizer, or trained here on a sample.

    Rank 0 writes it; the other ranks, which come later (prepare_data), read the same files.
    """
    resuming = (run_dir / CONFIG_FILE).is_file()
    if is_main_process() and not resuming:
        if cfg.tokenizer:
            source = load_tokenizers(cfg.tokenizer)
            for path in source.files():
                atomic_write(run_dir / path.name, lambda tmp, path=path: shutil.copyfile(path, tmp))
        else:
            emit({"event": "tokenizer", "vocab_size": cfg.vocab_size})
            train_tokenizer(train_corpus, run_dir, vocab_size=cfg.vocab_size, seed=cfg.seed)
    return load_tokenizers(run_dir)


def fit_to_tokenizers(model_cfg: ModelConfig, tokenizers: TokenizerPair) -> ModelConfig:
    """`model_cfg` with the vocabulary sizes and special ids of `tokenizers`; embeddings are shared
    only when asked for and the two sides share one vocabulary."""
    return dataclasses.replace(model_cfg, **tokenizers.model_fields(),
                               share_embeddings=model_cfg.share_embeddings and tokenizers.shared)
