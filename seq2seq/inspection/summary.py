"""What a run directory (or a folder written by `s2s export`) holds, for `s2s info`.

Everything comes from the folder's own files: config.json (or
s2s_export.json), metrics.jsonl, the tokenizers and the weights. Nothing is
loaded onto a device; the parameter count comes from the model built on
torch's meta device, which allocates no memory.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from ..config import ModelConfig, to_dict
from ..data.directions import tagged_languages
from ..presets import preset_of
from ..runs.exported_folder import is_exported, open_export
from ..runs.run_dir import open_run
from .metrics_records import read_metrics


def parameter_count(model: ModelConfig) -> int:
    import torch

    from ..model.transformer import build_model, count_parameters

    with torch.device("meta"):
        return count_parameters(build_model(model))


def shell_word(text: str) -> str:
    """`text` quoted for a POSIX shell. A path whose name is not UTF-8 (its undecodable bytes are
    lone surrogates here) is written in bash's $'...' quoting, with those bytes as \\xHH escapes, so
    that the command still pastes into a shell."""
    raw = os.fsencode(text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "$'" + "".join(f"\\x{byte:02x}" if byte >= 0x80 or byte < 0x20 or chr(byte) in "'\\" else chr(byte)
                              for byte in raw) + "'"
    return shlex.quote(text)


def describe(folder: Path | str) -> dict[str, Any]:
    """Everything `s2s info` shows, as plain data (its --json)."""
    folder = Path(folder)
    exported = is_exported(folder)
    # An export is checked whole, as opening it to translate would: a damaged one is an error, not a summary.
    config = open_export(folder).config if exported else open_run(folder, need_weights=False).config
    model, train = config.model, config.train
    metrics = read_metrics(folder)
    trained = [r for r in metrics if r.get("event") == "train"]
    shapes = [r for r in metrics if r.get("event") == "batch_shapes"]
    validations = [r for r in metrics if r.get("event") == "valid" and r.get("valid_bleu") is not None]
    best = max(validations, key=lambda r: r["valid_bleu"], default=None)
    return {
        "folder": str(folder),
        "kind": "exported (CTranslate2)" if exported else "run directory",
        # lang_tag: where the tag that chooses the target language goes, for a model that writes several.
        "languages": {"source": train.src_lang, "target": train.tgt_lang,
                      "lang_tag": train.lang_tag if tagged_languages(train.tgt_lang) else None},
        "model": {"preset": preset_of(model), "parameters": parameter_count(model),
                  "variants": {key: getattr(model, key) for key in ("norm", "positions", "attention",
                                                                     "activation", "share_embeddings")},
                  **to_dict(model)},
        "tokenizer": {"sha256": dict(sorted(config.tokenizer_sha256.items())),
                      "type": "sentencepiece", "src_vocab_size": model.src_vocab_size,
                      "tgt_vocab_size": model.tgt_vocab_size},
        "data": {"train": train.train, "valid": train.valid,
                 "pairs": {r["split"]: r["pairs"] for r in metrics if r.get("event") == "data"}},
        "training": {"updates": trained[-1]["step"] if trained else 0,
                     "epochs": trained[-1]["epoch"] if trained else 0.0,
                     "seconds": trained[-1]["elapsed"] if trained else 0.0,
                     # The last epoch's batches: how many shapes a GPU compiles or captures for
                     # (seq2seq.data.shape_ladder), and how much they pad.
                     "batch_shapes": {key: shapes[-1].get(key) for key in ("epoch", "batches", "shapes", "padding",
                                                                          "shape_ladder", "warmup_seconds")}
                     if shapes else None},
        "validation": {"best_bleu": best["valid_bleu"] if best else None,
                       "best_step": best["step"] if best else None,
                       # A run of several directions: the best model's (best by their mean) BLEU in each.
                       "best_bleu_by_direction": best.get("valid_bleu_by_direction") if best else None,
                       "bleu": [[r["step"], r["valid_bleu"]] for r in validations]},
        "files": {str(path.relative_to(folder)): path.stat().st_size
                  for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.startswith(".")},
        "translate": " ".join(map(shell_word, ["s2s", "translate", "-m", str(folder), "-i", "INPUT", "-o", "OUTPUT"])),
        "skipped_metrics": metrics.skipped_message() if metrics.skipped else None,
    }
