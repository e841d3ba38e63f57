"""What a corpus spec names, without reading it: its path made absolute for a run's config, a saved
dataset's folder and split, and the files and folders it may read. The grammar itself, and reading
the pairs, are seq2seq.data.corpora's; nothing here imports `datasets`, so that a command can check
its outputs against its inputs before it loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import DataError, one_line


def resolve_corpus_spec(spec: str) -> str:
    """`spec` with its path made absolute, to be stored where the working directory may change.

    A local spec (a PREFIX, a corpus file, a saved-dataset folder, `DIR#SPLIT`)
    becomes absolute, with `.`, `..` and symlinks resolved in the folders that
    lead to it; it need not exist. `hub:` specs and the empty string are
    returned unchanged. Idempotent, and the result names the same corpus as
    `spec` does from the current working directory.

    The last component is kept as written, not resolved: a PREFIX is no file
    of its own, and resolving it as one would follow a symlink or folder of
    the same name away from `PREFIX.SRC`. Kept whole, it also keeps `#SPLIT`.
    """
    if not spec or spec.startswith("hub:"):
        return spec
    path = Path(spec)
    try:
        if path.name in ("", ".", ".."):
            return str(path.resolve())  # `.`, `..`, `/`: a folder, resolved whole
        return str(path.parent.resolve() / path.name)
    except (OSError, RuntimeError, ValueError) as err:
        # A symlink loop (RuntimeError before Python 3.13), a NUL byte (ValueError).
        raise DataError(f"cannot resolve the corpus path {spec}: {one_line(err)}") from None


def saved_dataset(spec: str) -> tuple[str, str]:
    """A `DIR#SPLIT` spec as (DIR, SPLIT); any other as (spec, ""). A path that exists with a "#" in
    its name is that path."""
    if "#" in spec and not Path(spec).exists():
        folder, _, split = spec.rpartition("#")
        return folder, split
    return spec, ""


def corpus_paths(spec: str, langs: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """The files and the folders the corpus `spec` may read (none for a hub dataset): a saved
    dataset's folder, or the file `spec` names and each PREFIX.LANG[.gz] it may stand for. What no
    output may land on (seq2seq.files.reads)."""
    if not spec or spec.startswith("hub:"):
        return [], []
    folder, _ = saved_dataset(spec)
    if Path(folder).is_dir():
        return [], [Path(folder)]
    return [Path(spec), *(Path(f"{spec}.{lang}{suffix}") for lang in langs for suffix in ("", ".gz"))], []
