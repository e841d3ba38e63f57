"""Corpora larger than RAM: what preparing and starting to train costs as the corpus grows.

For each size, a synthetic parallel corpus is built reproducibly from
Multi30k's training split: pair i joins sentences a_i and b_i (drawn with a
fixed seed) on both sides, "A . B" in English and its German twin. Then
`s2s train` runs twice, each time through its first 50 updates, with a fresh
`datasets` cache the first time and the same cache the second:

- prepare: seconds from the command's start to its "data" record for the
  training split (reading, tokenizing, encoding, filtering), and pairs/s;
- first update: seconds from the start to the first "train" record;
- peak RSS: the process's high-water mark (VmHWM); and the largest anonymous
  RSS (RssAnon), the part that is not pages of files: what a corpus in
  memory-mapped Arrow files does not add to. Both polled every 50 ms;
- the cache: disk used by the `datasets` cache folder.

The tokenizer is trained once, on Multi30k, and passed with --tokenizer, so
that preparation times measure the corpus and not sentencepiece training.

    python bench/scale_data.py --out /tmp/scale --sizes 100000,1000000,10000000 --num-proc 2

Needs about 3 GB of disk per 10M pairs for the text and 4 GB for the cache.
Run it with nothing else on the machine. Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
from results import DATA, S2S, append_entry, machine, read_lines, shown

UPDATES = 50
TRAIN_FLAGS = ["--preset", "tiny", "--max-tokens", "2500", "--max-steps", str(UPDATES), "--epochs", "0",
               "--log-every", "1", "--valid", "", "--device", "cpu"]


def build_corpus(prefix: Path, pairs: int, seed: int = 0) -> None:
    """`prefix`.en and `prefix`.de: `pairs` lines, each two Multi30k training pairs joined."""
    if prefix.with_suffix(".de").is_file():
        return
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sides = {lang: read_lines(DATA / f"train.{lang}.gz") for lang in ("en", "de")}
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(sides["en"]), (2, pairs))
    for lang, lines in sides.items():
        tmp = prefix.parent / f".{prefix.name}.{lang}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for start in range(0, pairs, 100_000):
                f.writelines(f"{lines[a]} {lines[b]}\n" for a, b in zip(first[start:start + 100_000].tolist(),
                                                                      second[start:start + 100_000].tolist()))
        tmp.rename(prefix.with_suffix(f".{lang}"))


class MemoryWatch(threading.Thread):
    """Process `pid`'s high-water mark (VmHWM) and largest RssAnon and RssFile, read from /proc
    every 50 ms while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.peak_rss = self.peak_anon = self.peak_file = 0

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
            except (OSError, ValueError):
                continue
            kib = lambda name: int(fields.get(name, "0 kB").split()[0]) * 1024
            self.peak_rss = max(self.peak_rss, kib("VmHWM"))
            self.peak_anon = max(self.peak_anon, kib("RssAnon"))
            self.peak_file = max(self.peak_file, kib("RssFile"))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def train_once(corpus: Path, tokenizer: Path, run: Path, cache: Path, num_proc: int) -> dict:
    """One `s2s train` through UPDATES updates, measured."""
    shutil.rmtree(run, ignore_errors=True)
    args = [S2S, "train", "--run", str(run), "--train", str(corpus), "--tokenizer", str(tokenizer),
            "--num-proc", str(num_proc), *TRAIN_FLAGS]
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache)}
    started_wall, started = time.time(), time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    watch = MemoryWatch(process.pid)
    watch.start()
    _, stderr = process.communicate()
    watch.done.set()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"failed ({process.returncode}): {shlex.join(args)}\n{stderr[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    data = next(r for r in records if r["event"] == "data" and r["split"] == "train")
    first = next(r for r in records if r["event"] == "train")
    return {"args": args, "pairs": data["pairs"], "prepare_s": data["time"] - started_wall,
            "first_update_s": first["time"] - started_wall, "total_s": seconds, "peak_rss": watch.peak_rss,
            "peak_anon": watch.peak_anon, "peak_file": watch.peak_file, "cache_bytes": folder_bytes(cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for corpora, caches and runs")
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="corpus sizes in pairs")
    parser.add_argument("--num-proc", type=int, default=2, help="s2s train --num-proc")
    parser.add_argument("--keep", action="store_true", help="keep each size's corpus and cache afterwards")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tokenizer = a.out / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        subprocess.run([S2S, "tokenizer", "train", "--corpus", str(DATA / "train"), "--src", "en", "--tgt", "de",
                        "-o", str(tokenizer)], check=True, capture_output=True)
    rows, commands = [], []
    for size in (int(s) for s in a.sizes.split(",")):
        corpus = a.out / f"corpus-{size}" / "train"
        build_started = time.monotonic()
        build_corpus(corpus, size)
        build_s = time.monotonic() - build_started
        text_bytes = sum(corpus.with_suffix(f".{lang}").stat().st_size for lang in ("en", "de"))
        cache = a.out / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        for attempt in ("first", "cached"):
            result = train_once(corpus, tokenizer, a.out / f"run-{size}", cache, a.num_proc)
            print(f"{size:,} pairs, {attempt}: {json.dumps({k: v for k, v in result.items() if k != 'args'})}",
                  flush=True)
            if not commands:
                commands.append(shown(result["args"]))
            rows.append(f"| {size:,} | {attempt} | {text_bytes / 2**20:,.0f} | {result['prepare_s']:.1f} | "
                        f"{result['pairs'] / result['prepare_s']:,.0f} | {result['first_update_s']:.1f} | "
                        f"{result['peak_rss'] / 2**20:,.0f} | {result['peak_anon'] / 2**20:,.0f} | "
                        f"{result['peak_file'] / 2**20:,.0f} | {result['cache_bytes'] / 2**20:,.0f} |")
        print(f"(building the {size:,}-pair corpus took {build_s:.0f} s)", flush=True)
        if not a.keep:
            shutil.rmtree(corpus.parent, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    append_entry([
        f"\n## {date.today().isoformat()}: corpora larger than RAM, {a.sizes} pairs (issue 17)\n",
        f"Machine: {machine()}\n",
        f"Command: `python bench/scale_data.py {shlex.join(sys.argv[1:])}`\n",
        "Each size: pairs of two Multi30k training pairs joined (seeded), then `s2s train` through its first "
        f"{UPDATES} updates with an empty `datasets` cache (first) and again with the same cache (cached):\n",
        f"- `{commands[0]}`", "",
        "Seconds are from the command's start (torch's import included). Peak RSS is VmHWM; anonymous and "
        "file-backed RSS are the largest RssAnon and RssFile seen (all polled every 50 ms). File-backed pages are "
        "the memory-mapped Arrow files: the kernel drops them under memory pressure.\n",
        "| pairs | run | text MiB | prepare s | pairs/s | first update s | peak RSS MiB | peak anon MiB | "
        "peak file MiB | cache MiB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows])


if __name__ == "__main__":
    main()
