"""A/B of the search code: `seq2seq/decode.py` at a git revision against the working tree.

Both versions translate Multi30k test_2016_flickr with the same loaded model
in one process, interleaved, best of 3 passes each, at beams 1 and 5; it
prints sentences/s for each, the speed-up, and how many outputs are
identical. For checking that a change to the search is faster and changes
no output. Prints only; copy what matters into bench/RESULTS.md by hand.

    python bench/decode_ab.py --run runs/bench-variants/sinusoidal --base HEAD~3

The base revision must have the `seq2seq/search` package (from the sub-package
layout on); the rest of the library is the working tree's for both.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results import DATA, ROOT, read_lines

from seq2seq.config import DecodeConfig
from seq2seq.runs.run_dir import load_run
from seq2seq.search.decode import nbest_ids


def search_package_at(revision: str):
    """seq2seq/search as it was at `revision`, imported as the package seq2seq.search_base: its
    relative imports of the rest of the library reach the working tree's."""
    folder = Path(tempfile.mkdtemp()) / "search"
    archive = subprocess.run(["git", "archive", revision, "seq2seq/search"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(folder.parent), "-f", "-"], input=archive,
                   check=True)
    spec = importlib.util.spec_from_file_location("seq2seq.search_base", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package  # dataclasses look their module up by name
    spec.loader.exec_module(package)
    return importlib.import_module("seq2seq.search_base.decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--base", required=True, help="git revision whose seq2seq/search is the baseline")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args()
    model, tokenizers, _ = load_run(a.run, torch.device(a.device))
    model.eval()
    lines = read_lines(DATA / "test_2016_flickr.en.gz")
    ids = [row + [model.cfg.eos_id] for row in tokenizers.src.encode(lines)]
    versions = {"base": search_package_at(a.base).nbest_ids, "current": nbest_ids}
    for beam in (1, 5):
        cfg = DecodeConfig(beam=beam)
        best: dict[str, float] = {}
        outputs = {}
        for _ in range(3):
            for name, search in versions.items():
                start = time.perf_counter()
                outputs[name] = [hypotheses[0].tokens for hypotheses in search(model, ids, cfg)]
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
        same = sum(x == y for x, y in zip(outputs["base"], outputs["current"]))
        print(f"beam {beam}: {a.base} {len(ids) / best['base']:.0f} sent/s, working tree "
              f"{len(ids) / best['current']:.0f} sent/s ({best['base'] / best['current']:.2f}x); "
              f"identical outputs {same}/{len(ids)}")


if __name__ == "__main__":
    main()
