"""Export a run to CTranslate2: the converted model, its tokenizers, and what s2s needs to run it.

```
DIR/
  model.bin                  the CTranslate2 model (written by ctranslate2's ModelSpec.save)
  config.json                CTranslate2's own model config
  shared_vocabulary.json     (or source_vocabulary.json + target_vocabulary.json)
  tokenizer.model            (or tokenizer.src.model + tokenizer.tgt.model), copied from the run
  s2s_export.json            what s2s needs to run the folder (see `export_info`), the run's
                             config.json included: CTranslate2's own config takes that name;
                             and the sha256 of every other file, which opening the folder
                             checks (`seq2seq.runs.exported_folder`)
```

The conversion goes through `ctranslate2.specs` and CTranslate2's `Converter`
base class, as its own OpenNMT-py and Marian converters do: the binary format
is never written by hand. How s2s's network maps onto the spec:

- Tokens: the source is its sentencepiece pieces plus `</s>`, with no BOS;
  decoding starts from `<s>`. The vocabularies are the sentencepiece pieces
  in id order, so CTranslate2's token ids are s2s's, and a model that writes
  several languages keeps its language tags (`<2de>`) as pieces: the
  translator puts them in the source or the target prefix for either engine.
- Embeddings: s2s multiplies them by sqrt(d_model) (`scale_embeddings`); the
  output projection is the target embedding table (tied, no bias).
- Positions: "sinusoidal" exports s2s's own table as `position_encodings`
  (s2s interleaves sin and cos, CTranslate2's built-in table is half and
  half); "learned" exports each side's table; "rope" sets `rotary_dim` 0 (the
  whole head) with the non-interleaved layout, which is s2s's rotate-half
  layout (`seq2seq.model.positions.RotaryEmbedding`), so q and k need no permutation.
- Attention: q/k/v fused into one linear layer for self-attention, k/v fused
  for cross-attention, as CTranslate2 computes them.
- Norms: "pre" maps to pre_norm with the final encoder and decoder layer
  norms; "post" to pre_norm=False; epsilon is torch's LayerNorm's.

Performer (FAVOR+) attention has no CTranslate2 equivalent and is refused.

Running the folder as s2s runs the run: the source is pieces + `</s>`
(`source_suffix` in s2s_export.json), `min_decoding_length` 1 (s2s's min_len
1), `max_decoding_length` the sentence's own limit (one call per limit). s2s's
search sets padding and BOS to -inf after the log-softmax; CTranslate2's
`suppress_sequences` masks them before it, which renormalises every step's
log-probabilities and changes beam-5 outputs, so leave it unset: a trained
model does not choose those tokens, and detokenizing drops them. CTranslate2
normalises a beam's score by len^alpha, s2s by GNMT's ((5+len)/6)^alpha:
for s2s's exact ranking, ask for all `beam` hypotheses with length_penalty 0
(their raw log-probabilities) and re-rank them with
`seq2seq.search.decode.length_penalty_factor`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DecodeConfig, ModelConfig, RunConfig, to_dict
from ..data.directions import language_tag, tagged_languages
from ..data.tokenizer import TokenizerPair
from ..errors import ConfigError, WriteError, field_error
from ..files.atomic import fsync_dir
from ..files.outputs import new_folder
from ..files.run_layout import SHARED_FILE, SRC_FILE, TGT_FILE, WEIGHTS_FILE
from ..model.transformer import Seq2SeqTransformer
from .exported_folder import EXPORT_FILE, EXPORT_FORMAT_VERSION, file_hashes, import_ctranslate2
from .run_dir import load_run, read_run_config

# The weight types CTranslate2's `ModelSpec.optimize` accepts (None is float32, as trained).
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16")
# seq2seq.model.positions.RotaryEmbedding's base period.
ROPE_BASE = 10000.0


def export_ctranslate2(run_dir: Path | str, output_dir: Path | str, *, weights: str = WEIGHTS_FILE,
                       quantization: str | None = None, setting: str = "output_dir") -> Path:
    """Convert the run in `run_dir` (its `weights` file) into a CTranslate2 model folder `output_dir`.

    `quantization` is None (float32) or one of QUANTIZATIONS. `output_dir`
    must not lie inside the run, and must not exist unless it is an empty
    folder. The folder is built beside it under a temporary name and renamed
    into place, so a failed export leaves nothing behind. Returns
    `output_dir`. ConfigError for a model CTranslate2 cannot run (Performer
    attention), a bad quantization or output folder (its messages name it as
    the setting `setting`, with its path), or a missing ctranslate2; RunDirError for an
    unreadable run.
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    quantization = check_quantization(quantization)
    ctranslate2 = import_ctranslate2("exporting to CTranslate2", converters=True)
    config = read_run_config(run_dir)
    check_exportable(config.model)
    check_output_dir(run_dir, output_dir, setting)
    model, tokenizers, config = load_run(run_dir, torch.device("cpu"), weights)
    converter = _converter_class(ctranslate2)(model, tokenizers)
    info = export_info(config, tokenizers, weights, quantization, ctranslate2.__version__)

    target = Path(os.path.realpath(output_dir))  # an empty folder behind a symlink is filled, not replaced
    # Missing parent folders are made, and removed again if the export fails.
    with new_folder(target.parent, setting):
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
        except OSError as err:
            raise field_error(setting, f"{output_dir}: cannot be written ({err.strerror or err})", WriteError) from None
        try:
            folder = staging / target.name
            try:
                # The Converter validates the spec, quantizes it and saves it with the files registered on it.
                converter.convert(str(folder), quantization=None if quantization == "float32" else quantization)
            except (ValueError, NotImplementedError) as err:
                raise ConfigError(f"{run_dir}: CTranslate2 cannot convert this model ({err})") from None
            # Every file but this one, hashed as written, so that opening the folder can check it.
            info["sha256"] = file_hashes(folder)
            (folder / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            for path in folder.iterdir():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            # Replaces an empty folder; fails, leaving it as it is, if it has been filled meanwhile.
            os.rename(folder, target)
            fsync_dir(target.parent)
        except OSError as err:
            raise field_error(setting, f"{output_dir}: cannot be written ({err.strerror or err}); nothing was "
                                       "exported", WriteError) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def check_quantization(quantization: str | None) -> str:
    """The weight type to export, "float32" for None; ConfigError for one CTranslate2 cannot save."""
    if quantization is None:
        return "float32"
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    return quantization


def check_exportable(cfg: ModelConfig) -> None:
    """ConfigError, saying why, for a model CTranslate2 cannot compute; every other variant exports."""
    if cfg.attention == "performer":
        raise ConfigError(f"this model uses Performer (FAVOR+) attention (in {cfg.performer_in.replace(',', ', ')}), "
                          "which CTranslate2 does not have: it computes softmax attention only, so only "
                          "softmax-attention models can be exported")
    if cfg.attention != "softmax":
        raise ConfigError(f"model.attention {cfg.attention!r} cannot be exported to CTranslate2")
    if cfg.positions not in ("sinusoidal", "learned", "rope"):
        raise ConfigError(f"model.positions {cfg.positions!r} cannot be exported to CTranslate2")
    if cfg.activation not in ("relu", "gelu"):
        raise ConfigError(f"model.activation {cfg.activation!r} cannot be exported to CTranslate2")
    if cfg.norm not in ("pre", "post"):
        raise ConfigError(f"model.norm {cfg.norm!r} cannot be exported to CTranslate2")


def check_output_dir(run_dir: Path, output_dir: Path, setting: str = "output_dir") -> None:
    """ConfigError, naming `setting` and the path, unless `output_dir` lies outside the run and is missing
    or an empty folder, with no symlink loop, dangling symlink or file on the way to it."""
    where = "{" + setting + "} " + str(output_dir)
    try:
        found = os.path.realpath(output_dir, strict=True)
    except FileNotFoundError:
        found = None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{where}: runs into a symlink loop", (setting,)) from None
        file = next((part for part in reversed(output_dir.parents) if os.path.isfile(part)), None)
        if err.errno == errno.ENOTDIR and file is not None:
            raise ConfigError(f"{where}: {file} is a file, not a folder", (setting,)) from None
        raise ConfigError(f"{where}: cannot be reached ({err.strerror or err})", (setting,)) from None
    for part in (*reversed(output_dir.parents), output_dir):
        if os.path.islink(part) and not os.path.exists(part):
            which = "" if part == output_dir else f" {part}"
            raise ConfigError(f"{where}:{which} is a dangling symlink (to {os.readlink(part)}, which does not "
                              "exist)", (setting,))
    if found is not None and not os.path.isdir(found):
        raise ConfigError(f"{where}: exists and is not a folder", (setting,))
    run = Path(os.path.realpath(run_dir))
    out = Path(os.path.realpath(output_dir))
    if out == run or run in out.parents:
        raise ConfigError(f"{where}: must not be inside the run directory {run_dir}", (setting,))
    if found is not None:
        try:
            filled = bool(os.listdir(found))
        except OSError as err:
            raise ConfigError(f"{where}: cannot be read ({err.strerror or err})", (setting,)) from None
        if filled:
            raise ConfigError(f"{where}: already exists and is not empty; choose a new folder or remove it "
                              "first", (setting,))


def export_info(config: RunConfig, tokenizers: TokenizerPair, weights: str, quantization: str,
                ctranslate2_version: str) -> dict[str, Any]:
    """What `s2s_export.json` holds: enough to tokenize, search and detokenize as the run did."""
    src, tgt = tokenizers.src, tokenizers.tgt
    pieces = tgt.pieces()
    tags = {lang: language_tag(lang) for lang in tagged_languages(config.train.tgt_lang)}
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "engine": "ctranslate2",
        "ctranslate2_version": ctranslate2_version,
        "quantization": quantization,
        "weights": weights,
        "src_lang": config.train.src_lang,
        "tgt_lang": config.train.tgt_lang,
        # A model that writes several languages is told which by a tag, a piece of the tokenizer (and so of
        # the vocabularies): on the source side or forced first on the target side (seq2seq.data.directions).
        "lang_tag": config.train.lang_tag if tags else None,
        "language_tags": tags,
        "max_positions": config.model.max_positions,
        "tokenizer": {"shared": tokenizers.shared,
                      "src": SHARED_FILE if tokenizers.shared else SRC_FILE,
                      "tgt": SHARED_FILE if tokenizers.shared else TGT_FILE},
        # The source is its pieces then EOS, with no BOS; decoding starts from BOS.
        "source_suffix": [src.pieces()[src.eos_id]],
        "decoder_start_token": pieces[tgt.bos_id],
        "decode": to_dict(DecodeConfig()),
        "run_config": json.loads(config.to_json()),
    }


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def _converter_class(ctranslate2):
    """A `ctranslate2.converters.Converter` for an s2s model (built here: ctranslate2 is imported lazily)."""
    from ctranslate2.converters import utils
    from ctranslate2.specs import common_spec, transformer_spec

    activations = {"relu": common_spec.Activation.RELU,
                   "gelu": common_spec.Activation.GELU}  # torch's F.gelu is the exact (erf) GELU

    def set_linear(spec, linear: nn.Linear) -> None:
        spec.weight = _array(linear.weight)  # (out, in), as torch stores it
        spec.bias = _array(linear.bias)

    def set_fused(spec, linears: list[nn.Linear]) -> None:
        parts = [common_spec.LinearSpec() for _ in linears]
        for part, linear in zip(parts, linears):
            set_linear(part, linear)
        utils.fuse_linear(spec, parts)

    def set_layer_norm(spec, norm: nn.LayerNorm) -> None:
        spec.gamma = _array(norm.weight)
        spec.beta = _array(norm.bias)

    def set_self_attention(spec, attention, norm: nn.LayerNorm) -> None:
        set_fused(spec.linear[0], [attention.q_proj, attention.k_proj, attention.v_proj])
        set_linear(spec.linear[1], attention.out_proj)
        set_layer_norm(spec.layer_norm, norm)

    def set_cross_attention(spec, attention, norm: nn.LayerNorm) -> None:
        set_linear(spec.linear[0], attention.q_proj)
        set_fused(spec.linear[1], [attention.k_proj, attention.v_proj])
        set_linear(spec.linear[2], attention.out_proj)
        set_layer_norm(spec.layer_norm, norm)

    def set_ffn(spec, ffn, norm: nn.LayerNorm) -> None:
        set_linear(spec.linear_0, ffn.fc1)
        set_linear(spec.linear_1, ffn.fc2)
        set_layer_norm(spec.layer_norm, norm)

    class S2SConverter(ctranslate2.converters.Converter):
        """Converts an s2s `Seq2SeqTransformer` and its tokenizers to a CTranslate2 TransformerSpec."""

        def __init__(self, model: Seq2SeqTransformer, tokenizers: TokenizerPair):
            self._model = model
            self._tokenizers = tokenizers

        def _load(self):
            model, cfg = self._model, self._model.cfg
            check_exportable(cfg)
            pre_norm = cfg.norm == "pre"
            # rotary_dim 0 rotates the whole head; not interleaved is the rotate-half layout.
            rotary = (dict(rotary_dim=0, rotary_interleave=False, rotary_base=ROPE_BASE)
                      if cfg.positions == "rope" else {})
            common = dict(pre_norm=pre_norm, activation=activations[cfg.activation], **rotary)
            try:
                encoder = transformer_spec.TransformerEncoderSpec(cfg.encoder_layers, cfg.n_heads, **common)
            except TypeError:  # an older ctranslate2, whose encoder has no rotary embeddings
                raise ConfigError(f"rope positions need a CTranslate2 whose encoder has rotary embeddings, which "
                                  f"ctranslate2 {ctranslate2.__version__} does not; upgrade it") from None
            decoder = transformer_spec.TransformerDecoderSpec(cfg.decoder_layers, cfg.n_heads, **common)
            spec = transformer_spec.TransformerSpec(encoder, decoder)

            if model.embed_scale != cfg.d_model ** 0.5:
                raise ConfigError(f"the embeddings are scaled by {model.embed_scale}, which CTranslate2 cannot "
                                  f"express (it scales by sqrt(d_model) = {cfg.d_model ** 0.5} or not at all)")
            encoder.scale_embeddings = decoder.scale_embeddings = True
            encoder.embeddings[0].weight = _array(model.src_embed.weight)
            target_table = _array(model.tgt_embed.weight)
            decoder.embeddings.weight = target_table
            decoder.projection.weight = target_table  # tied output projection, no bias
            if cfg.positions != "rope":
                encoder.position_encodings.encodings = _array(model.src_positions.table)
                decoder.position_encodings.encodings = _array(model.tgt_positions.table)
            if pre_norm:
                set_layer_norm(encoder.layer_norm, model.encoder_norm)
                set_layer_norm(decoder.layer_norm, model.decoder_norm)

            for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
                set_self_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block.norm)
                set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_block.norm)
            for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
                set_self_attention(layer_spec.self_attention, layer.self_attn, layer.self_block.norm)
                set_cross_attention(layer_spec.attention, layer.cross_attn, layer.cross_block.norm)
                set_ffn(layer_spec.ffn, layer.ffn, layer.ffn_block.norm)

            src, tgt = self._tokenizers.src, self._tokenizers.tgt
            src_pieces, tgt_pieces = src.pieces(), tgt.pieces()
            for side, pieces in (("source", src_pieces), ("target", tgt_pieces)):
                if len(set(pieces)) != len(pieces):
                    raise ConfigError(f"the {side} tokenizer has duplicate pieces, which a CTranslate2 "
                                      "vocabulary cannot hold")
            spec.register_source_vocabulary(src_pieces)
            spec.register_target_vocabulary(tgt_pieces)
            spec.config.unk_token = tgt_pieces[tgt.unk_id]
            spec.config.bos_token = tgt_pieces[tgt.bos_id]
            spec.config.eos_token = tgt_pieces[tgt.eos_id]
            spec.config.decoder_start_token = tgt_pieces[tgt.bos_id]
            spec.config.add_source_bos = False
            spec.config.add_source_eos = False  # the caller appends it, as s2s does (source_suffix)
            spec.config.layer_norm_epsilon = model.encoder_layers[0].attn_block.norm.eps
            for path in self._tokenizers.files():
                spec.register_file(str(path), path.name)
            return spec

    return S2SConverter

