"""Configs as dataclasses, saved as JSON with a format version.

`ModelConfig` is everything needed to rebuild the network; `TrainConfig` is
the data and optimisation recipe; `DecodeConfig` is the search. A run
directory's `config.json` holds the first two plus a format version, so a
model can be rebuilt from it without the flags that trained it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

from .errors import ConfigError

# Bump when the run-directory layout or a config field changes meaning or name.
# 2: train.valid_bleu_max became train.valid_bleu_sentences (version 1 runs still load).
FORMAT_VERSION = 2

# Train-config keys renamed since format version 1: old name -> new name.
_RENAMED_TRAIN_KEYS = {"valid_bleu_max": "valid_bleu_sentences"}

# How beam search may divide a hypothesis' log-probability by its length (seq2seq.decode).
LENGTH_PENALTIES = ("gnmt", "average", "none")

# Where `ModelConfig.performer_in` may put FAVOR+: encoder self-attention,
# decoder self-attention and cross-attention.
PERFORMER_PLACES = ("encoder", "decoder", "cross")


def require_finite(cfg: Any, name_of: Callable[[str], str]) -> None:
    """ConfigError unless every float of a config (tuples included) is a finite number.

    NaN passes every `<` and `>` check unnoticed, and an infinite learning
    rate or clip norm turns the weights into NaN: both are refused up front.
    """
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{name_of(f.name)} must be a finite number, got {item}")


@dataclass
class ModelConfig:
    """Shape of the encoder-decoder Transformer."""

    src_vocab_size: int = 8000  # set from the tokenizer at training time
    tgt_vocab_size: int = 8000
    d_model: int = 256  # width of every residual stream
    n_heads: int = 4  # attention heads; must divide d_model
    ffn_dim: int = 1024  # hidden width of the position-wise feed-forward layer
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1  # on embeddings and residual branches
    attention_dropout: float = 0.0  # on attention probabilities
    # On the FFN hidden layer. Off by default, as in fairseq: it is the largest
    # activation, and drawing its mask costs ~15% of a CPU training step.
    activation_dropout: float = 0.0
    activation: Literal["relu", "gelu"] = "relu"
    norm: Literal["pre", "post"] = "pre"  # pre-norm trains stably without long warm-up
    max_positions: int = 1024  # longest sequence, in tokens, either side
    # "sinusoidal" or "learned" tables added to the embeddings, or "rope": rotary
    # queries and keys in every self-attention layer (see seq2seq.positions).
    positions: Literal["sinusoidal", "learned", "rope"] = "sinusoidal"
    # "performer" replaces softmax attention with FAVOR+ (see seq2seq.performer)
    # in the places listed in performer_in.
    attention: Literal["softmax", "performer"] = "softmax"
    performer_in: str = "encoder,decoder,cross"  # comma-separated: encoder, decoder, cross
    performer_features: int = 256  # random features per head
    # Training updates between redraws of the random features; 0 never redraws.
    # The features are saved with the weights and fixed at inference.
    performer_redraw_every: int = 1000
    # Tie source embeddings, target embeddings and the output projection when
    # both languages share one vocabulary; the decoder's input and output
    # embeddings are always tied.
    share_embeddings: bool = True
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3

    def validate(self) -> None:
        require_finite(self, lambda name: f"model.{name}")
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "ffn_dim",
                     "encoder_layers", "decoder_layers", "max_positions"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must divide model.d_model ({self.d_model})")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"rope positions rotate channel pairs, so the head dimension "
                              f"(d_model / n_heads = {self.d_model // self.n_heads}) must be even")
        if self.attention == "performer":
            places = self.performer_in.split(",")
            unknown = [p for p in places if p not in PERFORMER_PLACES]
            if unknown or not places:
                raise ConfigError(f"model.performer_in must list some of {', '.join(PERFORMER_PLACES)}, "
                                  f"comma-separated; got {self.performer_in!r}")
            if self.performer_features <= 0:
                raise ConfigError(f"model.performer_features must be positive, got {self.performer_features}")
            if self.performer_redraw_every < 0:
                raise ConfigError("model.performer_redraw_every must not be negative, "
                                  f"got {self.performer_redraw_every}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError("model.share_embeddings needs one vocabulary for both languages, "
                              f"but the sizes differ ({self.src_vocab_size} vs {self.tgt_vocab_size})")

    def performer_places(self) -> set[str]:
        """Where FAVOR+ replaces softmax attention: a subset of PERFORMER_PLACES."""
        return set(self.performer_in.split(",")) if self.attention == "performer" else set()


# Architecture presets; vocabulary sizes come from the tokenizer. Parameter
# counts are for a shared 8k vocabulary.
PRESETS: dict[str, dict[str, Any]] = {
    # ~2.0M parameters: for tests and quick CPU runs.
    "tiny": dict(d_model=128, n_heads=4, ffn_dim=512, encoder_layers=2, decoder_layers=2),
    # ~7.6M: the CPU demo.
    "small": dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=3, decoder_layers=3),
    # ~9.4M: the shape of the transformers peer's small model (4+4, d 256, FFN 1024).
    "peer-small": dict(d_model=256, n_heads=4, ffn_dim=1024, encoder_layers=4, decoder_layers=4),
    # ~26M.
    "medium": dict(d_model=512, n_heads=8, ffn_dim=2048, encoder_layers=3, decoder_layers=3),
    # ~48M with 8k shared vocabulary, ~60M with 32k: transformer-base (Vaswani et al. 2017).
    "base": dict(d_model=512, n_heads=8, ffn_dim=2048, encoder_layers=6, decoder_layers=6),
}


@dataclass
class TrainConfig:
    """Data and optimisation recipe. Corpus specs are described in `seq2seq.data`."""

    train: str = "data/multi30k/train"  # corpus spec for training pairs
    valid: str = "data/multi30k/val"  # corpus spec for validation pairs ("" for none)
    src_lang: str = "en"
    tgt_lang: str = "de"
    # Tokenizer folder from `s2s tokenizer train`; empty means train one into the run.
    tokenizer: str = ""
    vocab_size: int = 8000  # only used when the tokenizer is trained here
    max_len: int = 256  # pairs with more tokens than this on either side are dropped
    max_tokens: int = 4096  # padded tokens (source or target, the larger) per batch
    accum_steps: int = 1  # batches per optimizer update
    epochs: int = 30
    max_steps: int = 0  # optimizer updates; 0 means no limit
    max_time: float = 0.0  # seconds of training; 0 means no limit
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 1000  # linear warm-up, then the decay of lr_schedule
    # After warm-up, "inverse_sqrt" decays with 1/sqrt(step) (Vaswani et al., fairseq);
    # "cosine" follows half a cosine down to 0 at the run's last update, which needs
    # epochs or max_steps to say when that is.
    lr_schedule: Literal["inverse_sqrt", "cosine"] = "inverse_sqrt"
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 disables gradient clipping
    valid_every: int = 0  # validate every N updates; 0 means at the end of each epoch
    valid_beam: int = 1  # beam size for validation BLEU; 1 is greedy
    valid_bleu_sentences: int = 0  # validate BLEU on at most this many sentences; 0 means all
    patience: int = 10  # validations without improvement before stopping; 0 disables
    early_stop_metric: Literal["bleu", "loss"] = "bleu"
    # Weights-only snapshots kept for averaging: the newest N and the best N.
    keep_snapshots: int = 5
    # At the end, average the last N snapshots; the average becomes the model if
    # it validates at least as well as the best single checkpoint. 0 is off.
    average_last: int = 0
    log_every: int = 50  # updates between progress records
    # Updates in a row whose loss or gradients are not finite before training
    # stops; each such update is skipped, not applied.
    max_bad_updates: int = 5
    seed: int = 1
    num_proc: int = 1  # processes for tokenizing the corpus with datasets.map
    # torch.compile the training forward and loss, with dynamic shapes: one graph serves
    # every batch shape. It pays on a GPU; on the CPU it measured 9% slower.
    compile: bool = False

    def validate(self) -> None:
        require_finite(self, lambda name: f"train.{name}")
        if not self.src_lang or not self.tgt_lang:
            raise ConfigError("train.src_lang and train.tgt_lang must be set")
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"source and target language are both {self.src_lang!r}")
        for name in ("vocab_size", "max_len", "max_tokens", "accum_steps", "log_every", "num_proc",
                     "max_bad_updates"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "max_time", "warmup_steps", "valid_every",
                     "patience", "clip_norm", "weight_decay", "valid_bleu_sentences", "keep_snapshots",
                     "average_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.lr_schedule == "cosine" and not (self.epochs or self.max_steps):
            raise ConfigError("train.lr_schedule cosine needs epochs or max_steps: it decays to 0 "
                              "at the last update, and max_time alone does not say which that is")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.valid_beam < 1:
            raise ConfigError(f"train.valid_beam must be at least 1, got {self.valid_beam}")
        if self.average_last > self.keep_snapshots:
            raise ConfigError(f"train.average_last ({self.average_last}) needs at least as many kept "
                              f"snapshots, but train.keep_snapshots is {self.keep_snapshots}")
        if self.max_tokens < self.max_len:
            raise ConfigError(f"train.max_tokens ({self.max_tokens}) must be at least "
                              f"train.max_len ({self.max_len}) so that every kept pair fits a batch")


# The TrainConfig fields a resumed run may change: its stopping budget. The
# rest must match the saved config, or resuming would not continue the same run.
RESUME_BUDGET_FIELDS = ("epochs", "max_steps", "max_time", "patience")


@dataclass
class DecodeConfig:
    """Search settings for `s2s translate` and validation."""

    beam: int = 5  # 1 is greedy search
    # Hypothesis score = log-probability / penalty(len):
    # "gnmt": ((5 + len) / 6) ** alpha (Wu et al. 2016); "average": len ** alpha; "none": 1.
    length_penalty: Literal["gnmt", "average", "none"] = "gnmt"
    alpha: float = 0.6
    max_len_a: float = 1.5  # output length limit: a * source tokens + b
    max_len_b: int = 10
    # The fewest output tokens before EOS may end a non-empty source line. 1, as in
    # CTranslate2 and Marian: an empty output for a non-empty line is never a translation,
    # yet an immediate EOS can outscore one under a length penalty.
    min_len: int = 1
    max_tokens: int = 8000  # source tokens per batch (after padding)
    # A source line longer than the model's max_positions - 1 tokens is either
    # "split" at sentence punctuation (then at the token limit) and its pieces'
    # translations joined, or "truncate"d to the limit.
    long_lines: Literal["split", "truncate"] = "split"
    # Sampling draws each token instead of searching (for back-translation);
    # it ignores `beam`.
    sampling: bool = False
    temperature: float = 1.0  # logprobs are divided by it before sampling; > 0
    top_k: int = 0  # sample among the k most probable tokens only; 0 is off
    top_p: float = 1.0  # sample among the fewest tokens whose mass reaches p; 1 is off
    seed: int | None = None  # None draws a fresh seed

    def validate(self) -> None:
        require_finite(self, lambda name: f"--{name.replace('_', '-')}")
        if self.beam < 1:
            raise ConfigError(f"beam size must be at least 1, got {self.beam}")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ConfigError(f"--length-penalty must be gnmt, average or none, got {self.length_penalty!r}")
        if self.long_lines not in ("split", "truncate"):
            raise ConfigError(f"long lines must be split or truncate, got {self.long_lines!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.alpha < 0:
            raise ConfigError(f"length penalty alpha must not be negative, got {self.alpha}")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ConfigError("max length a and b must not be negative, "
                              f"got a={self.max_len_a}, b={self.max_len_b}")
        if self.max_len_a == 0 and self.max_len_b == 0:
            raise ConfigError("max length a and b are both 0: no output could be produced")
        if self.min_len < 0:
            raise ConfigError(f"--min-len must not be negative, got {self.min_len}")
        if self.max_tokens <= 0:
            raise ConfigError(f"decode max_tokens must be positive, got {self.max_tokens}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], source: str | None = None) -> Any:
    """Build and validate `cls` (ModelConfig or TrainConfig) from `data`.

    Unknown keys, wrong types and inconsistent values raise ConfigError; its
    message names the field ("model.d_model ...") and, when given, the
    `source` it came from (a file).
    """
    section = "model" if cls is ModelConfig else "train"
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"{section}: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; "
                              f"known keys are {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        cfg = cls(**{name: _coerce(value, hints[name], f"{section}.{name}") for name, value in data.items()})
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field's type hint; JSON lists become tuples where declared."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{where} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        item_types = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{where} must be a list of {len(item_types)} values, got {value!r}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, item_types))
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value


@dataclass
class RunConfig:
    """What `config.json` in a run directory holds."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # sha256 of each tokenizer file in the run, by file name; checked on load.
    tokenizer_sha256: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps({
            "format_version": self.format_version,
            "model": to_dict(self.model),
            "train": to_dict(self.train),
            "tokenizer_sha256": self.tokenizer_sha256,
        }, indent=2) + "\n"

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str) -> "RunConfig":
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
        return cls(model=from_dict(ModelConfig, data.get("model", {}), where),
                   train=from_dict(TrainConfig, train, where), tokenizer_sha256=dict(sha))


def read_json(path: Path | str) -> dict[str, Any]:
    """Parse a JSON file, turning every failure into a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def preset_values(preset: str) -> dict[str, Any]:
    """The architecture fields of a named preset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[preset]


def apply_preset(model: ModelConfig, preset: str) -> ModelConfig:
    """A copy of `model` with the architecture fields of a named preset."""
    return dataclasses.replace(model, **preset_values(preset))


def resolve_train_configs(config_file: Path | str | None, preset: str | None,
                          model_flags: dict[str, Any],
                          train_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Merge defaults < config file < preset < explicit flags into validated configs.

    A config file is JSON shaped like a run's config.json: {"model": {...},
    "train": {...}}, so a saved run's config can seed a new run.
    """
    model_values: dict[str, Any] = {}
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
        raise ConfigError(f"--{performer_flags[0].replace('_', '-')} only applies to Performer attention; "
                          "add --attention performer")
    return model, from_dict(TrainConfig, train_values)
