"""Opening a run directory (its files: seq2seq.files.run_layout) to use its model.

Nothing here is a pickle. Every command that reads a run opens it with
`open_run`, which checks it whole: the tokenizers are the ones the model was
trained with and fit its config, and the weights fit that config, are finite,
and are the bytes that were saved (every weights file s2s writes records the
SHA-256 of its data: seq2seq.runs.weights). Files are replaced only through
seq2seq.files.atomic, so a crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..config_merge import read_json, run_config_from_json
from ..data.directions import missing_tags
from ..data.tokenizer import TokenizerPair, load_tokenizers
from ..errors import ConfigError, RunDirError, TokenizerError
from ..files.run_layout import CONFIG_FILE, WEIGHTS_FILE
from ..model.transformer import Seq2SeqTransformer, build_model
from .weights import assign_weights, check_weights_fit, read_tensors, shape_of


def read_run_config(run_dir: Path | str) -> RunConfig:
    """config.json of the run in `run_dir`, parsed and nothing more checked; a command that uses the
    run opens it with `open_run`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    try:
        return run_config_from_json(read_json(path), str(path))
    except ConfigError as err:
        raise RunDirError(str(err)) from None


def load_run_tokenizers(run_dir: Path | str, config: RunConfig) -> TokenizerPair:
    """The run's tokenizers, checked against config.json: the sha256 it records for each, and the
    model fields that come from a tokenizer (vocabulary sizes, special ids, shared embeddings), and the
    language tags (`check_language_tags`)."""
    run_dir = Path(run_dir)
    try:
        tokenizers = load_tokenizers(run_dir)
    except TokenizerError as err:
        raise RunDirError(str(err)) from None
    for tok in {t.path: t for t in (tokenizers.src, tokenizers.tgt)}.values():
        # A config.json from before the hashes were recorded has none to compare.
        if config.tokenizer_sha256 and config.tokenizer_sha256.get(tok.path.name) != tok.sha256:
            raise RunDirError(f"{tok.path}: does not match the tokenizer this model was trained "
                              f"with (sha256 differs from {CONFIG_FILE})")
    config_path = run_dir / CONFIG_FILE
    names = " and ".join(str(path) for path in tokenizers.files())
    for name, value in tokenizers.model_fields().items():
        if getattr(config.model, name) != value:
            raise RunDirError(f"{config_path}: model.{name} is {getattr(config.model, name)}, but the run's "
                              f"tokenizer ({names}) gives {value}")
    if config.model.share_embeddings and not tokenizers.shared:
        raise RunDirError(f"{config_path}: model.share_embeddings is true, but the run has a tokenizer for each "
                          f"side ({names})")
    check_language_tags(config, tokenizers, config_path)
    return tokenizers


def check_language_tags(config: RunConfig, tokenizers: TokenizerPair, config_path: Path) -> None:
    """RunDirError unless the tokenizer of the side the run's language tags go on (its lang_tag) holds each
    tag as a piece (seq2seq.data.directions): what translating trusts when it looks a tag up."""
    train = config.train
    tokenizer, missing = missing_tags(tokenizers, train)
    if missing:
        raise RunDirError(f"{config_path}: train.tgt_lang {train.tgt_lang} needs a {train.lang_tag} tag for each "
                          f"language, but {tokenizer.path} has no piece {', '.join(missing)}")


@dataclass
class Run:
    """A run directory that `open_run` checked."""

    folder: Path
    config: RunConfig
    tokenizers: TokenizerPair
    weights: dict[str, torch.Tensor] | None  # the checked weights file's tensors, on the CPU; None if absent


def open_run(run_dir: Path | str, weights: str = WEIGHTS_FILE, *, need_weights: bool = True) -> Run:
    """The run in `run_dir`, checked as every command that reads a run checks it (translate, eval,
    attention, serve, export, average, `train --init-from` and `train --resume`), so that none
    goes on from what another would refuse:

    - config.json parses, in a format version this s2s reads;
    - the tokenizers are those config.json records, and fit its model (`load_run_tokenizers`);
    - the weights file `weights` holds the tensors of the model config.json describes, each in
      its shape (`check_weights_fit`), undamaged and finite (`read_tensors`).

    With `need_weights` False, a run that has saved no weights yet (it stopped before its first
    validation) opens, with `weights` None.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    tokenizers = load_run_tokenizers(run_dir, config)
    weights_path = run_dir / weights
    if not os.path.lexists(weights_path):
        if need_weights:
            raise RunDirError(f"{run_dir}: no {weights} (has training saved a model yet?)")
        return Run(run_dir, config, tokenizers, None)
    tensors = read_tensors(weights_path)
    check_weights_fit(shape_of(config.model), tensors, weights_path)
    return Run(run_dir, config, tokenizers, tensors)


def load_run(run_dir: Path | str, device: torch.device,
             weights: str = WEIGHTS_FILE) -> tuple[Seq2SeqTransformer, TokenizerPair, RunConfig]:
    """Model (in eval mode, on `device`), tokenizers and config of the run `open_run` checks."""
    run = open_run(run_dir, weights)
    model = build_model(run.config.model).to(device)
    assign_weights(model, run.weights, run.folder / weights)
    return model.eval(), run.tokenizers, run.config
