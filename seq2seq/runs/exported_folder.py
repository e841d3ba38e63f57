"""What the readers of an exported folder share with its writer: the files it holds and how they are
checked, the file that describes it, and the optional ctranslate2 package.

`s2s export` records the SHA-256 of every file it writes in s2s_export.json
("sha256"). Opening the folder (to translate, evaluate or serve with it, or
for `s2s info`) checks it whole before anything runs, as a run directory's
tokenizer is checked against its config.json: every file is there and has
the hash recorded for it, each vocabulary holds as many pieces as the
model's embeddings, and they are its tokenizer's pieces in id order.
CTranslate2 is then handed the bytes that were checked (`open_export`'s
`model_files`), not the folder's name: what was checked is what runs, and a
folder whose name is not UTF-8, which CTranslate2 cannot open by name, runs
too. An export of format version 1, written before the hashes, is checked by
all of this but the hashes of CTranslate2's files (its tokenizers still by
the run config's tokenizer_sha256).

Nothing here imports torch: running an exported model never loads it
(`seq2seq.search.engines.ctranslate2_engine`); only exporting one does
(`seq2seq.runs.ctranslate2_export`, whose converter needs ctranslate2's torch-based converters).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..config_merge import run_config_from_json
from ..errors import ConfigError, RunDirError, TokenizerError

if TYPE_CHECKING:  # sentencepiece is loaded by what opens an export, not by what only recognises one
    from ..data.tokenizer import TokenizerPair

# What `s2s export` writes beside CTranslate2's files for s2s to run the folder.
EXPORT_FILE = "s2s_export.json"
# Bump when the layout of an exported folder or of s2s_export.json changes meaning.
# 2: "sha256" records every file the export wrote.
EXPORT_FORMAT_VERSION = 2
# CTranslate2's own files: the model, its config, and its vocabularies (one shared, or one per side).
MODEL_FILE = "model.bin"
CT2_CONFIG_FILE = "config.json"
SHARED_VOCABULARY = "shared_vocabulary.json"
SOURCE_VOCABULARY = "source_vocabulary.json"
TARGET_VOCABULARY = "target_vocabulary.json"
INSTALL_HINT = "pip install 's2s[ctranslate2]'"
_EXPORT_AGAIN = "the exported folder is damaged: export the run again"
_CHANGED = f"not the file `s2s export` wrote (its sha256 differs from the one recorded); {_EXPORT_AGAIN}"


def import_ctranslate2(purpose: str, converters: bool = False):
    """The ctranslate2 module, or a ConfigError saying how to install it.

    It is an optional extra, imported only by what needs it; `purpose` says
    what that is. With `converters`, its converters and specs are imported too
    (they import torch).
    """
    try:
        import ctranslate2

        if converters:
            import ctranslate2.converters  # noqa: F401
            import ctranslate2.specs  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"{purpose} needs the ctranslate2 package ({err}): {INSTALL_HINT}") from None
    return ctranslate2


def sha256_of(data: bytes) -> str:
    """The SHA-256 of `data` in hex, as s2s records every file's."""
    return hashlib.sha256(data).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file in `folder`, by name: what an export records of the files it wrote."""
    return {path.name: sha256_of(path.read_bytes()) for path in sorted(folder.iterdir())}


def is_exported(path: Path | str) -> bool:
    """True for a folder written by `s2s export`: it holds s2s_export.json, or CTranslate2's model.bin
    (an export that lost its description is still one, and is reported as damaged when opened)."""
    path = Path(path)
    return (path / EXPORT_FILE).is_file() or (path / MODEL_FILE).is_file()


@dataclass
class ExportedFolder:
    """An exported folder that passed `open_export`'s checks."""

    info: dict[str, Any]  # s2s_export.json
    config: RunConfig  # the run's config.json, kept in s2s_export.json
    model_files: dict[str, bytes]  # CTranslate2's files by name, as read and checked: what it is to load
    tokenizers: TokenizerPair


def open_export(folder: Path | str) -> ExportedFolder:
    """Read and check the exported folder `folder` (see the module docstring); RunDirError naming the
    first file that is missing, unreadable, changed or inconsistent with the others."""
    folder = Path(folder)
    info, config = read_export_info(folder)
    recorded: dict[str, str] = info.get("sha256", {})
    src_vocabulary, tgt_vocabulary = vocabulary_files(folder, recorded)
    tokenizer_files = {info["tokenizer"]["src"], info["tokenizer"]["tgt"]}
    if info["format_version"] >= 2:
        for name in (MODEL_FILE, CT2_CONFIG_FILE, src_vocabulary, tgt_vocabulary, *sorted(tokenizer_files)):
            if name not in recorded:
                raise RunDirError(f"{folder / EXPORT_FILE}: records no sha256 for {name}; {_EXPORT_AGAIN}")
    names = [MODEL_FILE, CT2_CONFIG_FILE, src_vocabulary, tgt_vocabulary, *sorted(recorded)]
    model_files = {name: read_checked(folder / name, recorded.get(name))
                   for name in dict.fromkeys(names) if name not in tokenizer_files}
    tokenizers = export_tokenizers(folder, info["tokenizer"], {**config.tokenizer_sha256, **recorded})
    for side, name, tokenizer, size in (("source", src_vocabulary, tokenizers.src, config.model.src_vocab_size),
                                        ("target", tgt_vocabulary, tokenizers.tgt, config.model.tgt_vocab_size)):
        vocabulary = read_vocabulary(folder / name, model_files[name])
        if len(vocabulary) != size:
            raise RunDirError(f"{folder / name}: holds {len(vocabulary)} pieces but the model's {side} embeddings "
                              f"have {size}; {_EXPORT_AGAIN}")
        if tokenizer.vocab_size != size:
            raise RunDirError(f"{tokenizer.path}: {side} vocabulary has {tokenizer.vocab_size} pieces but the "
                              f"model's embeddings have {size}; {_EXPORT_AGAIN}")
        if vocabulary != tokenizer.pieces():  # the tokenizer passed its hash check: the vocabulary is at fault
            raise RunDirError(f"{folder / name}: its pieces are not those of the {side} tokenizer, "
                              f"{tokenizer.path.name}, in id order; {_EXPORT_AGAIN}")
    return ExportedFolder(info, config, model_files, tokenizers)


def read_export_info(folder: Path) -> tuple[dict[str, Any], RunConfig]:
    """s2s_export.json, checked for what the readers take from it, and the run config it holds."""
    path = folder / EXPORT_FILE
    if not path.is_file():
        raise RunDirError(f"{path}: missing (the folder holds a CTranslate2 model, but not what s2s needs to "
                          f"run it); {_EXPORT_AGAIN}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path}: cannot be read ({err})") from None
    if not isinstance(info, dict) or info.get("engine") != "ctranslate2" or type(info.get("max_positions")) is not int:
        raise RunDirError(f"{path}: is not the description of a CTranslate2 export written by `s2s export`")
    version = info.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= EXPORT_FORMAT_VERSION:
        raise RunDirError(f"{path}: format version {version!r} is not supported by this s2s (it reads versions "
                          f"1 to {EXPORT_FORMAT_VERSION}); upgrade s2s")
    tokenizer = info.get("tokenizer")
    if not (isinstance(tokenizer, dict) and all(_file_name(tokenizer.get(side)) for side in ("src", "tgt"))):
        raise RunDirError(f"{path}: \"tokenizer\" must name the src and tgt tokenizer files")
    hashes = info.get("sha256", {})
    if not (isinstance(hashes, dict) and all(_file_name(name) and isinstance(value, str)
                                             for name, value in hashes.items())):
        raise RunDirError(f"{path}: \"sha256\" must map file names to their hashes")
    try:
        config = run_config_from_json(info.get("run_config"), f"{path}: run_config")
    except ConfigError as err:
        raise RunDirError(str(err)) from None
    return info, config


def _file_name(name: Any) -> bool:
    """True for the name of a file directly in the folder: no path that leads elsewhere."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def vocabulary_files(folder: Path, recorded: dict[str, str]) -> tuple[str, str]:
    """The names of the source and target vocabularies: one shared file, or one per side, as
    CTranslate2 wrote them (the recorded hashes say which; a version 1 export, the folder)."""
    shared = SHARED_VOCABULARY in recorded if recorded else (folder / SHARED_VOCABULARY).exists()
    return (SHARED_VOCABULARY, SHARED_VOCABULARY) if shared else (SOURCE_VOCABULARY, TARGET_VOCABULARY)


def read_checked(path: Path, sha256: str | None) -> bytes:
    """The bytes of `path`, if its hash is `sha256` (None: not recorded); RunDirError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing; {_EXPORT_AGAIN}") from None
    except OSError as err:
        raise RunDirError(f"{path}: cannot be read ({err.strerror or err})") from None
    if sha256 is not None and sha256_of(data) != sha256:
        raise RunDirError(f"{path}: {_CHANGED}")
    return data


def export_tokenizers(folder: Path, names: dict[str, str], hashes: dict[str, str]) -> TokenizerPair:
    """The tokenizer(s) `names` in `folder` ({"src": ..., "tgt": ...}), each checked against its hash
    in `hashes` where there is one."""
    from ..data.tokenizer import Tokenizer, TokenizerPair

    loaded: dict[str, Tokenizer] = {}
    for name in dict.fromkeys((names["src"], names["tgt"])):
        path = folder / name
        if not path.exists():
            raise RunDirError(f"{path}: missing; {_EXPORT_AGAIN}")
        try:
            loaded[name] = Tokenizer(path)
        except TokenizerError as err:
            raise RunDirError(f"{err}; {_EXPORT_AGAIN}") from None
        if hashes.get(name, loaded[name].sha256) != loaded[name].sha256:
            raise RunDirError(f"{path}: {_CHANGED}")
    return TokenizerPair(src=loaded[names["src"]], tgt=loaded[names["tgt"]])


def read_vocabulary(path: Path, data: bytes) -> list[str]:
    """A CTranslate2 vocabulary: a JSON list of pieces in id order."""
    try:
        vocabulary = json.loads(data.decode("utf-8"))
    except ValueError as err:
        raise RunDirError(f"{path}: is not a CTranslate2 vocabulary ({err}); {_EXPORT_AGAIN}") from None
    if not isinstance(vocabulary, list) or not all(isinstance(piece, str) for piece in vocabulary):
        raise RunDirError(f"{path}: is not a CTranslate2 vocabulary (a JSON list of pieces); {_EXPORT_AGAIN}")
    return vocabulary
