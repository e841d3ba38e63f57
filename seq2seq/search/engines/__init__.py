"""Translation engines: what turns source id rows into hypotheses, behind one interface.

Everything above the engine (the line contract of `seq2seq.search.translator`:
one line out per line in, empty lines, long-line splitting; n-best lists; the
statistics) is one code path whatever the engine. Two engines:

- "torch": s2s's own search (`seq2seq.search.decode.nbest_ids`) over a run directory;
- "ctranslate2": a `ctranslate2.Translator` over a folder written by
  `s2s export` (`seq2seq.runs.ctranslate2_export`), run as that module's docstring says so
  that it computes what s2s computes.

`open_engine` picks the engine from the folder: one holding s2s_export.json
(or CTranslate2's model.bin) is an exported CTranslate2 model, anything else
is read as a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ...data.directions import tagged_languages
from ...errors import ConfigError, field_error
from ...runs.exported_folder import EXPORT_FILE, is_exported

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ...config import DecodeConfig, TrainConfig
    from ...data.tokenizer import TokenizerPair
    from ..hypotheses import Hypothesis

ENGINES = ("torch", "ctranslate2")


class Engine(Protocol):
    """Searches source id rows with one model and one DecodeConfig (`cfg`)."""

    name: str  # "torch" or "ctranslate2"
    cfg: "DecodeConfig"
    tokenizers: "TokenizerPair"
    max_positions: int  # the most source tokens a row may have, its EOS included
    tgt_vocab_size: int
    # The run's training config, for the languages the model reads and writes and how a tag tells it
    # which to write (seq2seq.data.directions); None for a model in memory whose run is not known.
    train: "TrainConfig | None"

    def search(self, rows: list[list[int]], prefixes: list[list[int]] | None = None) -> list[list["Hypothesis"]]:
        """All hypotheses of each row, best first, in input order.

        Each row is source ids ending in EOS. `prefixes`, target ids per row,
        start the outputs as `seq2seq.search.prefix` says. An empty row gets its
        prefix, or the empty hypothesis, with score 0, without running the
        model, as `nbest_ids` does.
        """
        ...

    def check_attention_layer(self, layer: int, name: str) -> None:
        """ConfigError naming the setting `name` unless decoder layer `layer` (from 1) has
        cross-attention weights to give: not a Performer layer, and not an engine that keeps none.
        `cross_attention` trusts a layer checked here."""
        ...

    def cross_attention(self, rows: list[list[int]], outputs: list[list[int]], layer: int) -> list["np.ndarray"]:
        """For each source row (ids ending in EOS) and output (ids without BOS or EOS), the
        cross-attention of decoder layer `layer` (from 1) as float32 (H, T + 1, S): the steps that
        read BOS and the output's T tokens (so chose each token, then the EOS), over the row's S ids."""
        ...

    def with_config(self, cfg: "DecodeConfig") -> "Engine":
        """An engine on the same loaded model that searches with `cfg` instead."""
        ...

    def describe(self) -> dict:
        """What the model is: engine, src_lang, tgt_lang and lang_tag (`languages`), weights, bytes
        (its weights file), parameters (None where unknown), model (its ModelConfig as a dict)."""
        ...


def languages(train: "TrainConfig | None") -> dict:
    """The languages of a model trained as `train` says, as `Engine.describe` gives them: src_lang and
    tgt_lang as the run names them ("en", "de,fr"), and lang_tag, where the tag that chooses the target
    language goes, for a model that writes several (else None). All None for an unknown run."""
    if train is None:
        return {"src_lang": None, "tgt_lang": None, "lang_tag": None}
    return {"src_lang": train.src_lang, "tgt_lang": train.tgt_lang,
            "lang_tag": train.lang_tag if tagged_languages(train.tgt_lang) else None}


def engine_for(path: Path | str, engine: str | None) -> str:
    """The engine that runs `path`: found from the folder, or `engine` if it can run it; ConfigError otherwise."""
    exported = is_exported(path)
    if engine is None:
        return "ctranslate2" if exported else "torch"
    if engine == "torch" and exported:
        raise ConfigError(f"{path} is a model exported to CTranslate2 ({EXPORT_FILE}), which the torch engine "
                          "cannot run: give {model} the run directory it was exported from, or leave out "
                          "{engine} (or use {engine} ctranslate2)", ("model", "engine"))
    if engine == "ctranslate2" and not exported:
        raise ConfigError(f"{path} is not an exported model (it has no {EXPORT_FILE}): the ctranslate2 engine "
                          "runs a folder that `s2s export` writes; export first, then give {model} that folder",
                          ("model",))
    return engine


def check_engine_options(engine: str | None, threads: int | None) -> None:
    """ConfigError for an unknown engine or fewer than 1 thread, before anything is loaded."""
    if engine is not None and engine not in ENGINES:
        raise field_error("engine", f"must be torch or ctranslate2, got {engine!r}")
    if threads is not None and threads < 1:
        raise field_error("threads", f"must be at least 1, got {threads}")


def open_engine(path: Path | str, device: "torch.device | str", cfg: "DecodeConfig", weights: str | None = None,
                engine: str | None = None, threads: int | None = None) -> Engine:
    """The engine for the run directory or exported folder `path`, searching with `cfg` on `device`.

    The CTranslate2 engine takes the device by name (auto, cpu, cuda, cuda:N)
    and never imports torch; the torch engine takes a resolved torch.device.

    `weights` names the weights file of a run directory (the run's model when
    None); an exported folder holds one model, so it must be None or the
    weights it was exported from. `threads` is torch's intra-op threads for the
    torch engine, CTranslate2's intra_threads for the other (None: the
    library's own default).
    """
    check_engine_options(engine, threads)
    kind = engine_for(path, engine)
    if kind == "ctranslate2":
        from .ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine.open(path, str(device), cfg, weights, threads)
    from ...device import resolve_device
    from .torch_engine import TorchEngine

    return TorchEngine.open(path, resolve_device(device) if isinstance(device, str) else device, cfg, weights,
                            threads)
