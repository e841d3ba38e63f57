"""Decoding speed: sentences/s and target tokens/s at beams 1 and 5, with peak memory and BLEU.

Translates Multi30k test_2016_flickr (1,000 sentences) with a trained s2s run,
after a full warm-up pass, and keeps the best of `--repeats` timed passes: the
peer's protocol (`../shared/peers/hf_marian.py`). With `--peer-model DIR`
(a model the peer saved with `--save`), it also runs the peer's `generate()` on
the same sentences in the same run, and reports the ratio. Appends a table to
bench/RESULTS.md.

    python bench/decode_speed.py --run runs/demo/en-de --peer-model /tmp/peer_tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from seq2seq.config import DecodeConfig
from seq2seq.device import resolve_device
from seq2seq.evaluate import score_corpus
from seq2seq.translator import Translator

from results import DATA, PEER, append_entry, machine, read_lines


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_s2s(run: Path, device: torch.device, beam: int, sources: list[str], refs: list[str],
             repeats: int, batch_tokens: int) -> dict:
    translator = Translator.from_run(run, device, DecodeConfig(beam=beam, max_tokens=batch_tokens))
    translator.translate(sources)  # warm-up over every batch shape
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        hyps = translator.translate(sources)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    tokens = sum(len(ids) for ids in translator.tokenizers.tgt.encode(hyps))
    return {"sent_per_s": len(sources) / best, "tgt_tok_per_s": tokens / best,
            "bleu": score_corpus(hyps, [refs], metrics=("bleu",))[0].score}


def time_peer(model_dir: Path, repeats: int) -> dict:
    done = subprocess.run([sys.executable, str(PEER), "--data", str(DATA), "--load", str(model_dir),
                           "--out", str(model_dir) + "-decode", "--repeats", str(repeats)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="s2s run directory")
    parser.add_argument("--peer-model", default=None, help="a model saved by hf_marian.py --save")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=8000)
    a = parser.parse_args()
    device = resolve_device(a.device)
    sources = read_lines(DATA / "test_2016_flickr.en.gz")
    refs = read_lines(DATA / "test_2016_flickr.de.gz")
    ours = {beam: time_s2s(Path(a.run), device, beam, sources, refs, a.repeats, a.batch_tokens) for beam in (1, 5)}
    memory = peak_memory_mb(device)
    peer = time_peer(Path(a.peer_model), a.repeats) if a.peer_model else None

    lines = [f"\n## {date.today().isoformat()}: decoding speed on test_2016_flickr (1,000 sentences)\n",
             f"- Machine: {machine()}; decoding on {device}",
             f"- Command: `python bench/decode_speed.py {' '.join(sys.argv[1:])}`",
             f"- Protocol: one warm-up pass, then the best of {a.repeats}; s2s batches of {a.batch_tokens} "
             f"source tokens, the peer's of 128 sentences; s2s peak memory {memory:,.0f} MB "
             f"({'GPU allocated' if device.type == 'cuda' else 'process RSS'})",
             "", "| beam | s2s sent/s | s2s tgt tok/s | s2s BLEU | peer sent/s | peer tgt tok/s | peer BLEU | ratio |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for beam, r in ours.items():
        row = f"| {beam} | {r['sent_per_s']:,.1f} | {r['tgt_tok_per_s']:,.0f} | {r['bleu']:.2f} |"
        if peer:
            p = {k.rsplit(".", 1)[1]: v for k, v in peer.items() if k.startswith(f"test_2016_flickr.beam{beam}.")}
            row += (f" {p['sent_per_s']:,.1f} | {p['tgt_tok_per_s']:,.0f} | {p['bleu']:.2f} |"
                    f" {r['sent_per_s'] / p['sent_per_s']:.2f}x |")
        else:
            row += " - | - | - | - |"
        lines.append(row)
    append_entry(lines)


if __name__ == "__main__":
    main()
