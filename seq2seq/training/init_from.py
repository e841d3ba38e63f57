"""`s2s train --init-from RUN`: a new run that starts from another run's weights.

Fine-tuning, domain adaptation and continued training: the new run takes the
source run's weights (its model.safetensors), its tokenizer and its model
config, and trains them on the data it is given, with a fresh optimizer and
learning-rate schedule (warm-up again). What it cannot take is refused before
any work, naming the difference: another tokenizer, another model shape, or a
source run that fails the checks every command makes when it opens a run.
Settings that change how the same network trains (dropout, Performer's
feature redraws) may differ. `--resume` continues a run, weights, optimizer
and schedule alike; `--init-from` starts one.

The run is opened once, when the new run's configs are made
(`new_run_configs`); training trusts them, and loads its weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import ModelConfig, RunConfig, TrainConfig
from ..config_merge import resolve_train_configs
from ..errors import ConfigError, RunDirError, field_error
from ..runs.exported_folder import EXPORT_FILE

# ModelConfig fields that change how the network trains, not what its weights are.
TRAINING_ONLY_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "performer_redraw_every")


def new_run_configs(config_file: Path | str | None, preset: str | None, model_flags: dict[str, Any],
                    train_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs of a new run: defaults < `config_file` < `preset` < flags
    (`resolve_train_configs`). With an init_from run among them, that run is opened (`source_run`):
    its model config takes the defaults' place, what is given over it must keep its weights'
    shape (`check_init_model`), and its tokenizer becomes the new run's (`init_tokenizer`)."""
    model_cfg, train_cfg = resolve_train_configs(config_file, preset, model_flags, train_flags)
    if not train_cfg.init_from:
        return model_cfg, train_cfg
    source = source_run(train_cfg.init_from)
    model_cfg, train_cfg = resolve_train_configs(config_file, preset, model_flags, train_flags,
                                                 base_model=source.model)
    check_init_model(train_cfg.init_from, source.model, model_cfg)
    return model_cfg, init_tokenizer(train_cfg.init_from, source, train_cfg)


def source_run(init_from: str) -> RunConfig:
    """The config of the run `--init-from` names, opened as every command opens a run
    (`seq2seq.runs.run_dir.open_run`): a RunDirError if it is not a run directory, or if its tokenizer or
    weights are not the ones its config.json describes, damaged, or not finite. Before any work,
    and before the new run copies its tokenizer and records that tokenizer's hash as its own."""
    from ..runs.run_dir import open_run

    if (Path(init_from) / EXPORT_FILE).is_file():
        raise field_error("init_from", f"{init_from} is a model exported to CTranslate2, not a run directory: give "
                                       "the run directory it was exported from", RunDirError)
    return open_run(init_from).config


def check_init_model(init_from: str, source: ModelConfig, given: ModelConfig) -> None:
    """ConfigError naming each field that would give the weights another shape or meaning.

    Fields derived from the tokenizer (vocabulary sizes, special ids) are not
    compared here: the tokenizer is checked by `init_tokenizer`.
    """
    derived = {f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("derived_from")}
    changed = [f"{f.name} (the run has {getattr(source, f.name)!r}, given {getattr(given, f.name)!r})"
               for f in dataclasses.fields(ModelConfig)
               if f.name not in derived and f.name not in TRAINING_ONLY_FIELDS
               and getattr(source, f.name) != getattr(given, f.name)]
    if changed:
        raise field_error("init_from", f"{init_from}: the model must keep the shape of the weights it starts "
                                       f"from, but these differ: {'; '.join(changed)}. Leave them out: they come "
                                       "from the run")


def init_tokenizer(init_from: str, source: RunConfig, cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the source run as its --tokenizer folder; a ConfigError if another tokenizer was given,
    whose pieces the weights' embeddings were not trained for."""
    if not cfg.tokenizer:
        return dataclasses.replace(cfg, tokenizer=init_from)
    from ..data.tokenizer import load_tokenizers

    given = load_tokenizers(cfg.tokenizer)
    given_sha = {t.path.name: t.sha256 for t in (given.src, given.tgt)}
    if sorted(given_sha.values()) != sorted(source.tokenizer_sha256.values()):
        raise ConfigError(f"{{tokenizer}} {cfg.tokenizer} is not the tokenizer of {{init_from}} {init_from} (their "
                          f"sha256 differ: {given_sha} against {source.tokenizer_sha256}); the embeddings belong to "
                          "the run's own: leave out {tokenizer}", ("tokenizer", "init_from"))
    return cfg


def load_init_weights(model, init_from: str) -> None:
    """The source run's model.safetensors into `model` (strict: every tensor, every shape; checked again
    as it is read, by `seq2seq.runs.weights.load_weights`)."""
    from ..files.run_layout import WEIGHTS_FILE
    from ..runs.weights import load_weights

    load_weights(model, Path(init_from) / WEIGHTS_FILE)
