"""The schema of every setting: config dataclasses that check themselves, saved as JSON.

`ModelConfig` is everything needed to rebuild the network; `TrainConfig` is
the data and optimisation recipe; `DecodeConfig` is the search; `ServeConfig`
and `DistributedConfig` say how the server and a torchrun job run. A run
directory's `config.json` holds the first two plus a format version
(`RunConfig`), so a model can be rebuilt from it without the flags that
trained it.

A config checks itself when it is made, and when `dataclasses.replace` makes a
changed copy: a config that exists is valid, and the code below trusts it.
Its messages name the fields as `{field}` (seq2seq.errors.ConfigError), so the
command line names the flag and a config file's reader `model.field`.
Parsing JSON into configs and merging defaults, a file, a preset and flags is
seq2seq.config_merge's.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .config_fields import SelfChecking, setting
from .errors import ConfigError, field_error

# Bump when the run-directory layout or a config field changes meaning or name.
# 2: train.valid_bleu_max became train.valid_bleu_sentences (version 1 runs still load).
FORMAT_VERSION = 2

# Where `ModelConfig.performer_in` may put FAVOR+: encoder self-attention,
# decoder self-attention and cross-attention.
PERFORMER_PLACES = ("encoder", "decoder", "cross")

# Headings under which `s2s train`, `translate` and `eval` list the settings (a field's group).
DATA, MODEL, OPTIMISATION, VALIDATION, RUN = "Data", "Model", "Optimisation", "Validation", "Run"
SEARCH, SAMPLING, SERVING = "Search", "Sampling", "Serving"
DISTRIBUTED = "Distributed (torchrun)"


# Choices that the library's own modules take as well (seq2seq.device, seq2seq.data.token_store,
# the searches): named once here.
PrecisionChoice = Literal["auto", "float32", "bf16"]
TokenPlacement = Literal["auto", "device", "mapped"]
# How beam search may divide a hypothesis' log-probability by its length (seq2seq.search.hypotheses).
LengthPenalty = Literal["gnmt", "average", "none"]
LENGTH_PENALTIES: tuple[str, ...] = typing.get_args(LengthPenalty)


def language_codes(text: str) -> list[str]:
    """The language codes of a src_lang or tgt_lang setting: one, or several comma-separated."""
    return [code.strip() for code in text.split(",")]


@dataclass
class ModelConfig(SelfChecking):
    """Shape of the encoder-decoder Transformer."""

    src_vocab_size: int = setting(8000, "Source vocabulary size.", MODEL, derived_from="the tokenizer")
    tgt_vocab_size: int = setting(8000, "Target vocabulary size.", MODEL, derived_from="the tokenizer")
    d_model: int = setting(256, "Model width: of the embeddings and every residual stream.", MODEL)
    n_heads: int = setting(4, "Attention heads; must divide d_model.", MODEL)
    ffn_dim: int = setting(1024, "Hidden width of the position-wise feed-forward layer.", MODEL)
    encoder_layers: int = setting(3, "Encoder layers.", MODEL)
    decoder_layers: int = setting(3, "Decoder layers.", MODEL)
    dropout: float = setting(0.1, "Dropout on embeddings and residual branches.", MODEL)
    attention_dropout: float = setting(0.0, "Dropout on softmax attention probabilities.", MODEL)
    # Off by default, as in fairseq: the FFN hidden layer is the largest
    # activation, and drawing its mask is a large part of a CPU training step.
    activation_dropout: float = setting(0.0, "Dropout on the feed-forward hidden layer.", MODEL)
    activation: Literal["relu", "gelu"] = setting("relu", "Feed-forward activation: relu or gelu.", MODEL)
    # Pre-norm trains stably without a long warm-up.
    norm: Literal["pre", "post"] = setting("pre", "Layer norm before (pre) or after (post) each sublayer.",
                                           MODEL)
    max_positions: int = setting(1024, "Longest sequence the model accepts, in tokens, either side.", MODEL)
    # See seq2seq.model.positions.
    positions: Literal["sinusoidal", "learned", "rope"] = setting(
        "sinusoidal", "sinusoidal or learned (a table added to the embeddings), or rope (rotary queries "
        "and keys in every self-attention layer).", MODEL)
    # See seq2seq.model.performer.
    attention: Literal["softmax", "performer"] = setting(
        "softmax", "softmax, or performer (FAVOR+ linear attention, in the places of performer_in).", MODEL)
    performer_in: str = setting("encoder,decoder,cross", "Where Performer attention goes: some of encoder, "
                                "decoder, cross, comma-separated.", MODEL)
    performer_features: int = setting(256, "FAVOR+ random features per head.", MODEL)
    # The features are saved with the weights and fixed at inference.
    performer_redraw_every: int = setting(1000, "Redraw the FAVOR+ features every N training updates; "
                                          "0 never.", MODEL)
    # The decoder's input and output embeddings are always tied.
    share_embeddings: bool = setting(True, "Tie source embeddings, target embeddings and the output "
                                     "projection when both languages share one vocabulary.", MODEL)
    pad_id: int = setting(0, "Id of the padding token.", MODEL, derived_from="the tokenizer")
    unk_id: int = setting(1, "Id of the unknown token.", MODEL, derived_from="the tokenizer")
    bos_id: int = setting(2, "Id of the begin-of-sentence token.", MODEL, derived_from="the tokenizer")
    eos_id: int = setting(3, "Id of the end-of-sentence token.", MODEL, derived_from="the tokenizer")

    def check(self) -> None:
        self._positive("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "ffn_dim", "encoder_layers",
                       "decoder_layers", "max_positions")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{{n_heads}} ({self.n_heads}) must divide {{d_model}} ({self.d_model})",
                              ("n_heads", "d_model"))
        self._fraction("dropout", "attention_dropout", "activation_dropout")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"rope positions rotate channel pairs, so the head dimension ({{d_model}} / "
                              f"{{n_heads}} = {self.d_model // self.n_heads}) must be even", ("d_model", "n_heads"))
        if self.attention == "performer":
            places = self.performer_in.split(",")
            if any(place not in PERFORMER_PLACES for place in places):
                raise field_error("performer_in", f"must list some of {', '.join(PERFORMER_PLACES)}, "
                                                  f"comma-separated; got {self.performer_in!r}")
            self._positive("performer_features")
            self._not_negative("performer_redraw_every")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise field_error("share_embeddings", "needs one vocabulary for both languages, but the sizes "
                                                  f"differ ({self.src_vocab_size} vs {self.tgt_vocab_size})")

    def performer_places(self) -> set[str]:
        """Where FAVOR+ replaces softmax attention: a subset of PERFORMER_PLACES."""
        return set(self.performer_in.split(",")) if self.attention == "performer" else set()


@dataclass
class TrainConfig(SelfChecking):
    """Data and optimisation recipe. Corpus specs are described in `seq2seq.data.corpora`."""

    train: str = setting("data/multi30k/train", "Training corpus spec (see README).", DATA)
    valid: str = setting("data/multi30k/val", "Validation corpus spec; '' for none.", DATA)
    # Several languages on either side train one model for every direction between them
    # (seq2seq.data.directions).
    src_lang: str = setting("en", "Source language code; several, comma-separated, train one model for many "
                            "directions.", DATA)
    tgt_lang: str = setting("de", "Target language code; several, comma-separated (de,fr,cs), train one model "
                            "that is told which to write.", DATA)
    lang_tag: Literal["source", "target"] = setting(
        "source", "With several target languages, how the model is told which to write: a <2xx> tag as the "
        "first source token (source, as Marian and Johnson et al. 2017; 1.2 val BLEU better on en->de,fr in "
        "bench/RESULTS.md), or as the forced first target token (target, as mBART and M2M).", DATA)
    lang_temperature: float = setting(1.0, "With several directions, how their pairs are sampled each epoch: a "
                                      "direction's share goes as its size to the power 1/T; 1 keeps the "
                                      "corpus' proportions, larger T evens them out.", DATA)
    tokenizer: str = setting("", "Tokenizer folder from `s2s tokenizer train`; '' trains one into the run.",
                             DATA)
    vocab_size: int = setting(8000, "Vocabulary size of a tokenizer trained into the run.", DATA)
    max_len: int = setting(256, "Drop training pairs with more tokens than this on either side.", DATA)
    max_tokens: int = setting(4096, "Padded tokens per batch (source or target, the larger).", OPTIMISATION)
    accum_steps: int = setting(1, "Batches per optimizer update.", OPTIMISATION)
    epochs: int = setting(30, "Stop after this many passes over the training data; 0 means no limit.",
                          OPTIMISATION)
    max_steps: int = setting(0, "Stop after this many optimizer updates; 0 means no limit.", OPTIMISATION)
    max_time: float = setting(0.0, "Stop cleanly after this many seconds, data preparation and validation "
                              "included; 0 means no limit.", OPTIMISATION)
    lr: float = setting(1e-3, "Peak learning rate, reached at the end of warm-up.", OPTIMISATION)
    warmup_steps: int = setting(1000, "Updates of linear warm-up before the decay of lr_schedule.",
                                OPTIMISATION)
    # "inverse_sqrt" is Vaswani et al.'s and fairseq's. "cosine" and "linear" decay to 0 at the end of
    # the run: the last update of epochs or max_steps, or the max_time deadline, whichever comes first,
    # so that a time-budgeted run anneals fully whatever the machine's speed (seq2seq.training.schedule).
    lr_schedule: Literal["inverse_sqrt", "cosine", "linear"] = setting(
        "inverse_sqrt", "Decay after warm-up: inverse_sqrt (1/sqrt(step)); or cosine (half a cosine) or linear, "
        "down to 0 at the end of the run: its last update, or its max_time deadline, whichever comes first.",
        OPTIMISATION)
    betas: tuple[float, float] = setting((0.9, 0.98), "AdamW's beta1 and beta2.", OPTIMISATION)
    weight_decay: float = setting(0.0, "AdamW's weight decay.", OPTIMISATION)
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy loss.", OPTIMISATION)
    clip_norm: float = setting(1.0, "Clip the gradient norm to this; 0 disables clipping.", OPTIMISATION)
    valid_every: int = setting(0, "Validate every N updates; 0 means at the end of each epoch.", VALIDATION)
    valid_beam: int = setting(1, "Beam size for validation BLEU; 1 is greedy.", VALIDATION)
    valid_bleu_sentences: int = setting(0, "Score validation BLEU on at most this many sentences; 0 means "
                                        "all.", VALIDATION)
    patience: int = setting(10, "Stop after this many validations without improvement; 0 never stops "
                            "early.", VALIDATION)
    early_stop_metric: Literal["bleu", "loss"] = setting(
        "bleu", "bleu or loss: what chooses the best model and counts towards patience.", VALIDATION)
    keep_snapshots: int = setting(5, "Weight snapshots kept for `s2s average`: the newest N and the best N.",
                                  VALIDATION)
    average_last: int = setting(0, "At the end, average the last N snapshots; the average becomes the "
                                "model if it validates at least as well as the best checkpoint. 0 is off.",
                                VALIDATION)
    log_every: int = setting(50, "Updates between progress records.", VALIDATION)
    max_bad_updates: int = setting(5, "Stop after this many updates in a row with a non-finite loss or "
                                   "gradient; each is skipped, not applied.", OPTIMISATION)
    seed: int = setting(1, "Seed for the initial weights, the batch order and dropout.", OPTIMISATION)
    num_proc: int = setting(1, "Processes for tokenizing the corpus (datasets.map).", DATA)
    # Sentencepiece's sampling (Kudo 2018; BPE-dropout for a BPE tokenizer), drawn afresh each epoch.
    subword_alpha: float = setting(0.0, "Subword regularization: sample each training sentence's segmentation "
                                   "afresh every epoch, with this smoothing (unigram) or dropout probability "
                                   "(BPE); 0 is off. Validation and translation always use the best "
                                   "segmentation. Sampled segmentations are longer (alpha 0.1 among all: "
                                   "about twice the pieces), so an epoch has more updates.", DATA)
    subword_nbest: int = setting(-1, "With subword_alpha and a unigram tokenizer: sample among the N best "
                                 "segmentations; -1 samples among all of them.", DATA)
    token_store: TokenPlacement = setting(
        "auto", "Where the training ids are kept: device (copied whole to the training device), mapped "
        "(left in the memory-mapped Arrow cache, each batch gathered on the host: for corpora larger than "
        "RAM), or auto (on a GPU, device up to 128 MiB of ids; on the CPU, mapped).", DATA)
    init_from: str = setting("", "Start from the weights of this run directory, with its tokenizer and model "
                             "config, on the data given (fine-tuning, domain adaptation); the optimizer and "
                             "schedule start afresh. '' starts from random weights.", RUN)
    precision: PrecisionChoice = setting(
        "auto", "auto (bf16 autocast on GPUs from Ampere on, float32 elsewhere), float32, or bf16 (also on "
        "CPUs with AVX512-BF16 or AMX, whose matrix products run several times faster; refused where it "
        "would be emulated).", RUN)
    # With dynamic shapes, one graph serves every batch shape.
    compile: bool = setting(False, "torch.compile the training step: meant for GPUs; on the CPU it runs "
                            "slower (bench/RESULTS.md).", RUN)
    # A GPU plans (cuDNN), captures (CUDA graphs) or compiles per tensor shape: a short ladder of shapes
    # bounds that work. On the CPU it would only add padding.
    shape_ladder: Literal["auto", "on", "off"] = setting(
        "auto", "Pad batch lengths and rows to a short ladder of sizes, so that a GPU sees few tensor shapes: "
        "on, off, or auto (on for CUDA, off elsewhere).", RUN)

    def check(self) -> None:
        for name in ("src_lang", "tgt_lang"):
            codes = language_codes(getattr(self, name))
            if not codes or not all(codes):
                raise field_error(name, f"must be a language code or several, comma-separated; got "
                                        f"{getattr(self, name)!r}")
            if len(set(codes)) < len(codes):
                raise field_error(name, f"names a language twice: {getattr(self, name)!r}")
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"source and target language are both {self.src_lang!r}")
        if not self.directions:
            raise ConfigError("{src_lang} and {tgt_lang} give no direction from one language to another",
                              ("src_lang", "tgt_lang"))
        if not self.lang_temperature >= 1.0:
            raise field_error("lang_temperature", f"must be at least 1, got {self.lang_temperature}")
        self._positive("vocab_size", "max_len", "max_tokens", "accum_steps", "log_every", "num_proc",
                       "max_bad_updates", "lr")
        self._not_negative("epochs", "max_steps", "max_time", "warmup_steps", "valid_every", "patience", "clip_norm",
                           "weight_decay", "valid_bleu_sentences", "keep_snapshots", "average_last")
        if self.lr_schedule != "inverse_sqrt" and not (self.epochs or self.max_steps or self.max_time):
            raise ConfigError(f"{{lr_schedule}} {self.lr_schedule} needs {{epochs}}, {{max_steps}} or {{max_time}}: "
                              "it decays to 0 at the end of the run, and without them the run has no end",
                              ("lr_schedule", "epochs", "max_steps", "max_time"))
        self._fraction("label_smoothing")
        if not 0.0 <= self.subword_alpha <= 1.0:
            raise field_error("subword_alpha", f"must be in [0, 1], got {self.subword_alpha}")
        if self.subword_nbest != -1 and self.subword_nbest < 2:  # one best segmentation samples nothing
            raise field_error("subword_nbest", f"must be -1 (all) or at least 2, got {self.subword_nbest}")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise field_error("betas", f"must each be in [0, 1), got {self.betas}")
        if self.valid_beam < 1:
            raise field_error("valid_beam", f"must be at least 1, got {self.valid_beam}")
        if self.average_last > self.keep_snapshots:
            raise ConfigError(f"{{average_last}} ({self.average_last}) needs at least as many kept snapshots, but "
                              f"{{keep_snapshots}} is {self.keep_snapshots}", ("average_last", "keep_snapshots"))
        if self.max_tokens < self.max_len:
            raise ConfigError(f"{{max_tokens}} ({self.max_tokens}) must be at least {{max_len}} ({self.max_len}) "
                              "so that every kept pair fits a batch", ("max_tokens", "max_len"))

    @property
    def directions(self) -> list[tuple[str, str]]:
        """Every (source, target) pair of languages the run trains, in the order given: all sources to all
        targets, but never a language to itself."""
        return [(src, tgt) for src in language_codes(self.src_lang) for tgt in language_codes(self.tgt_lang)
                if src != tgt]


@dataclass
class DistributedConfig(SelfChecking):
    """How the processes of a torchrun job wait for each other. How a run is executed, not what it
    computes: it is not saved with the run, and a resumed run may change it."""

    dist_timeout: float = setting(
        600.0, "Seconds a collective of the training loop (the gradient all-reduce, the agreement to stop) "
        "waits for the other processes before the run fails: how soon a process that hangs is found out.",
        DISTRIBUTED)
    prepare_timeout: float = setting(
        6 * 3600.0, "Seconds the other processes wait while rank 0 trains the tokenizer, encodes the corpus "
        "or validates: long enough for the largest corpus.", DISTRIBUTED)

    def check(self) -> None:
        self._positive("dist_timeout", "prepare_timeout")


# The TrainConfig fields a resumed run may change: its stopping budget. The
# rest must match the saved config, or resuming would not continue the same run.
RESUME_BUDGET_FIELDS = ("epochs", "max_steps", "max_time", "patience")


@dataclass
class DecodeConfig(SelfChecking):
    """Search settings for `s2s translate` and validation."""

    tgt_lang: str = setting("", "The language to translate into, for a model trained for several (s2s info "
                            "lists them); '' for a model that writes one.", SEARCH)
    beam: int = setting(5, "Beam size; 1 is greedy search.", SEARCH)
    # Hypothesis score = log-probability / penalty(len); gnmt is Wu et al. 2016's. The default,
    # the mean log-probability per token (as fairseq's and CTranslate2's), was chosen on the
    # validation set (bench/length_penalty.py): +0.4 BLEU over gnmt 0.6 for the demo model.
    length_penalty: LengthPenalty = setting(
        "average", "gnmt ((5+len)/6)^alpha, average len^alpha, or none.", SEARCH)
    alpha: float = setting(1.0, "Length penalty exponent.", SEARCH)
    max_len_a: float = setting(1.5, "Output length limit: a x source tokens + b.", SEARCH)
    max_len_b: int = setting(10, "Output length limit: a x source tokens + b.", SEARCH)
    # 1, as in CTranslate2 and Marian: an empty output for a non-empty line is never
    # a translation, yet an immediate EOS can outscore one under a length penalty.
    min_len: int = setting(1, "Fewest output tokens for a non-empty line; 0 allows an empty translation.",
                           SEARCH)
    max_tokens: int = setting(8000, "Source tokens per batch, padding included.", SEARCH)
    # Longer than the model's max_positions - 1 tokens.
    long_lines: Literal["split", "truncate"] = setting(
        "split", "Lines longer than the model can read: split (at sentence ends, then at the token limit; "
        "the pieces' translations joined) or truncate.", SEARCH)
    sampling: bool = setting(False, "Sample each token from the model instead of searching (for "
                             "back-translation); ignores the beam.", SAMPLING)
    temperature: float = setting(1.0, "With sampling: divide log-probabilities by this first; > 0.", SAMPLING)
    top_k: int = setting(0, "With sampling: only the K most probable tokens; 0 is off.", SAMPLING)
    top_p: float = setting(1.0, "With sampling: only the fewest most probable tokens whose probability "
                           "reaches P, in (0, 1]; 1 is off.", SAMPLING)
    seed: int | None = setting(None, "With sampling: seed, for repeatable samples; none draws a fresh one.",
                               SAMPLING)

    def check(self) -> None:
        if "," in self.tgt_lang:
            raise field_error("tgt_lang", f"names one target language, got {self.tgt_lang!r}")
        if self.beam < 1:
            raise field_error("beam", f"must be at least 1, got {self.beam}")
        self._positive("temperature", "max_tokens")
        if self.top_k < 0:
            raise field_error("top_k", f"must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise field_error("top_p", f"must be in (0, 1], got {self.top_p}")
        self._not_negative("alpha", "max_len_a", "max_len_b", "min_len")
        if self.max_len_a == 0 and self.max_len_b == 0:
            raise ConfigError("{max_len_a} and {max_len_b} are both 0: no output could be produced",
                              ("max_len_a", "max_len_b"))


@dataclass
class ServeConfig(SelfChecking):
    """How `s2s serve` listens, what one request may ask, how requests are batched, and how long
    anything may take.

    A batch's token budget is DecodeConfig.max_tokens, as for `s2s translate`; the server also
    refuses a line longer than that budget, so that no batch is ever longer than one budget.
    """

    host: str = setting("127.0.0.1", "Address to listen on. 127.0.0.1 answers this machine only; 0.0.0.0 "
                        "answers every network the machine is on.", SERVING)
    port: int = setting(8080, "TCP port to listen on.", SERVING)
    max_lines: int = setting(256, "Most lines in one request; a request with more gets 413.", SERVING)
    max_bytes: int = setting(1_000_000, "Largest request body, in bytes; a larger one gets 413.", SERVING)
    max_request_tokens: int = setting(20_000, "Most source tokens in one request, over all its lines; a request "
                                      "with more gets 413.", SERVING)
    max_wait_ms: float = setting(5.0, "How long the longest-waiting request waits for others to join its batch, "
                                 "in milliseconds; 0 sends each batch at once.", SERVING)
    max_queue_lines: int = setting(8192, "Most lines waiting, over all requests; a request beyond that gets 503 "
                                   "with Retry-After.", SERVING)
    request_timeout_s: float = setting(60.0, "Most seconds a received request may wait for its translation; "
                                       "past it, it gets 503 and its lines leave the queue.", SERVING)
    read_timeout_s: float = setting(10.0, "Most seconds a client may take to send a request's headers, and "
                                    "again its body; a connection that stalls longer is closed (a stalled body "
                                    "gets 408 first).", SERVING)
    keep_alive_s: float = setting(5.0, "How long an idle connection stays open for the client's next "
                                  "request.", SERVING)
    shutdown_timeout_s: float = setting(10.0, "On SIGTERM or Ctrl-C, how long the requests in flight may take "
                                        "to finish; then they get 503 and the server exits.", SERVING)

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise field_error("port", f"must be between 1 and 65535, got {self.port}")
        for name in ("max_lines", "max_bytes", "max_request_tokens", "max_queue_lines"):
            if getattr(self, name) < 1:
                raise field_error(name, f"must be at least 1, got {getattr(self, name)}")
        self._not_negative("max_wait_ms")
        self._positive("request_timeout_s", "read_timeout_s", "keep_alive_s", "shutdown_timeout_s")
        if self.max_queue_lines < self.max_lines:
            raise ConfigError(f"{{max_queue_lines}} ({self.max_queue_lines}) must be at least {{max_lines}} "
                              f"({self.max_lines}): an empty queue must take the largest request",
                              ("max_queue_lines", "max_lines"))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


@dataclass
class RunConfig:
    """What `config.json` in a run directory holds (read back by seq2seq.config_merge.run_config_from_json)."""

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
