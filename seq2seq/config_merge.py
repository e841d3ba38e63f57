"""Configs from where they come from: JSON values read against the schema (seq2seq.config), and
the merge of defaults < config file < preset < flags.

A config file's error names the file and the field as the file has it
(`c.json: model.d_model must be positive`); an error of the merged values
keeps its fields unnamed, for the command line to name them as flags.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import FORMAT_VERSION, ModelConfig, RunConfig, TrainConfig, to_dict
from .errors import ConfigError
from .presets import preset_values

# Train-config keys renamed since format version 1: old name -> new name.
_RENAMED_TRAIN_KEYS = {"valid_bleu_max": "valid_bleu_sentences"}
_SECTIONS = {ModelConfig: "model", TrainConfig: "train"}


def from_dict(cls: type, data: Any, source: str | None = None) -> Any:
    """`cls` (ModelConfig or TrainConfig) made from `data`, a JSON object of some of its fields.

    Unknown keys, wrong types and inconsistent values raise a ConfigError. With
    a `source` (a file), it names the file and each field as the file has it
    ("c.json: model.d_model ..."); without, the fields stay for the caller to name.
    """
    section = _SECTIONS[cls]
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"{section}: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; "
                              f"known keys are {', '.join(sorted(known))}")
        return cls(**data)
    except ConfigError as err:
        if source is None:
            raise
        raise err.in_file(source, lambda name: f"{section}.{name}") from None


def read_json(path: Path | str) -> Any:
    """Parse a JSON file, turning every failure into a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def run_config_from_json(data: Any, where: str) -> RunConfig:
    """A run's config.json (or an export's copy of it, named `where` in errors), checked whole."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ConfigError(f"{where}: format version {version!r} is not supported by this "
                          f"s2s (it reads versions 1 to {FORMAT_VERSION}); upgrade s2s")
    unknown = sorted(set(data) - {"format_version", "model", "train", "tokenizer_sha256"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          "known keys are format_version, model, train, tokenizer_sha256")
    sha = data.get("tokenizer_sha256", {})
    if not isinstance(sha, dict):
        raise ConfigError(f"{where}.tokenizer_sha256 must be an object")
    train = data.get("train", {})
    if version < 2 and isinstance(train, dict):
        train = {_RENAMED_TRAIN_KEYS.get(key, key): value for key, value in train.items()}
    return RunConfig(model=from_dict(ModelConfig, data.get("model", {}), where),
                     train=from_dict(TrainConfig, train, where), tokenizer_sha256=dict(sha))


def resolve_train_configs(config_file: Path | str | None, preset: str | None,
                          model_flags: dict[str, Any], train_flags: dict[str, Any],
                          base_model: ModelConfig | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Merge defaults < config file < preset < explicit flags into configs.

    A config file is JSON shaped like a run's config.json: {"model": {...},
    "train": {...}}, so a saved run's config can seed a new run. `base_model`,
    when given, takes the defaults' place for the model (`--init-from`'s run).
    """
    model_values: dict[str, Any] = {} if base_model is None else to_dict(base_model)
    train_values: dict[str, Any] = {}
    if config_file is not None:
        data = read_json(config_file)
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: expected a JSON object with 'model' and 'train'")
        unknown = sorted(set(data) - {"model", "train", "format_version", "tokenizer_sha256"})
        if unknown:
            raise ConfigError(f"{config_file}: unknown key(s) {', '.join(unknown)}; "
                              "expected 'model' and 'train'")
        # Check the file's own keys now, so an error names the file rather than a flag.
        from_dict(ModelConfig, data.get("model", {}), str(config_file))
        from_dict(TrainConfig, data.get("train", {}), str(config_file))
        model_values.update(data.get("model", {}))
        train_values.update(data.get("train", {}))
    if preset is not None:
        model_values.update(preset_values(preset))
    model_values.update(model_flags)
    train_values.update(train_flags)
    model = from_dict(ModelConfig, model_values)
    performer_flags = [name for name in ("performer_in", "performer_features", "performer_redraw_every")
                       if name in model_flags]
    if performer_flags and model.attention != "performer":
        raise ConfigError(f"{{{performer_flags[0]}}} only applies to Performer attention; add {{attention}} "
                          "performer", (performer_flags[0], "attention"))
    return model, from_dict(TrainConfig, train_values)
