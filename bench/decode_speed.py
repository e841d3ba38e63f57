"""Decoding speed: sentences/s and target tokens/s at beams 1 and 5, with peak memory and BLEU.

Translates Multi30k test_2016_flickr (1,000 sentences) with a trained s2s run,
after a full warm-up pass, and keeps the best of `--repeats` timed passes: the
peer's protocol (`../shared/peers/hf_marian.py`). With `--peer-model DIR`
(a model the peer saved with `--save`), it also runs the peer's `generate()` on
the same sentences in the same run, and reports the ratio. Appends a table to
bench/RESULTS.md.

With `--engines torch,ctranslate2,ctranslate2-int8 --threads 1,2` it also
exports the run to CTranslate2 (float32 and int8) and times every engine at
every thread count on the same weights, each in a process of its own so that
its peak RSS is its own; the ratios are against the torch engine at the same
threads and beam.

    python bench/decode_speed.py --run runs/demo/en-de --peer-model /tmp/peer_tiny --device cpu
    python bench/decode_speed.py --run runs/demo/en-de --device cpu --engines torch,ctranslate2,ctranslate2-int8 --threads 1,2
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
from results import DATA, PEER, append_entry, machine, read_lines

from seq2seq.config import DecodeConfig
from seq2seq.device import resolve_device
from seq2seq.scores import score_corpus
from seq2seq.search.translator import Translator


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_s2s(run: Path, device: torch.device, beam: int, sources: list[str], refs: list[str],
             repeats: int, batch_tokens: int, threads: int | None = None) -> dict:
    translator = Translator.from_run(run, device, DecodeConfig(beam=beam, max_tokens=batch_tokens), threads=threads)
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


ENGINE_QUANTIZATION = {"ctranslate2": None, "ctranslate2-int8": "int8"}


def one_engine(model: Path, device: str, beam: int, threads: int, repeats: int, batch_tokens: int) -> dict:
    """Time one engine in a process of its own; its peak RSS is then its own."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); from pathlib import Path; import decode_speed as d; "
            "from seq2seq.device import resolve_device; "
            "sources, refs = d.read_lines(d.DATA / 'test_2016_flickr.en.gz'), d.read_lines(d.DATA / 'test_2016_flickr.de.gz'); "
            f"device = resolve_device({device!r}); "
            f"r = d.time_s2s(Path({str(model)!r}), device, {beam}, sources, refs, {repeats}, {batch_tokens}, {threads}); "
            "r['peak_rss_mb'] = d.peak_memory_mb(device); print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        sys.exit(f"{model} at beam {beam}, {threads} threads failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_engines(a: argparse.Namespace) -> None:
    """Every engine at every thread count and beam, on the same weights; appends a table."""
    import tempfile

    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    engines = a.engines.split(",")
    unknown = [e for e in engines if e != "torch" and e not in ENGINE_QUANTIZATION]
    if unknown:
        sys.exit(f"unknown engine(s) {', '.join(unknown)}; choose from torch, {', '.join(ENGINE_QUANTIZATION)}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {e: Path(a.run) if e == "torch" else
                  export_ctranslate2(a.run, Path(tmp) / e, quantization=ENGINE_QUANTIZATION[e]) for e in engines}
        # Rounds in rotating order, each engine once per round in a process of its own (a warm-up
        # pass, then one timed pass), keeping each engine's best: on a shared machine a slow
        # spell then hits every engine alike instead of whichever ran during it.
        results: dict[tuple[str, int, int], dict] = {}
        for t in (int(x) for x in a.threads.split(",")):
            for b in (1, 5):
                for round_ in range(a.repeats):
                    for e in engines[round_ % len(engines):] + engines[:round_ % len(engines)]:
                        r = one_engine(models[e], a.device, b, t, 1, a.batch_tokens)
                        best = results.get((e, t, b))
                        if best is None or r["sent_per_s"] > best["sent_per_s"]:
                            results[(e, t, b)] = dict(r, peak_rss_mb=max(r["peak_rss_mb"], (best or r)["peak_rss_mb"]))
        results = {key: results[key] for key in sorted(results, key=lambda k: (k[1], k[2], engines.index(k[0])))}
    lines = [f"\n## {date.today().isoformat()}: decoding engines on test_2016_flickr (1,000 sentences)\n",
             f"- Machine: {machine()}; decoding on {a.device}",
             f"- Command: `python bench/decode_speed.py {' '.join(sys.argv[1:])}`",
             f"- Protocol: the same weights exported with `s2s export`; {a.repeats} rounds in rotating order, "
             "each engine once per round in a process of its own (one warm-up pass, one timed pass), best "
             f"round kept; batches of {a.batch_tokens} source tokens; peak RSS of that process, model loading "
             "included",
             "", "| engine | threads | beam | sent/s | tgt tok/s | BLEU | peak RSS MB | vs torch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (engine, threads, beam), r in results.items():
        torch_result = results.get(("torch", threads, beam))
        ratio = f"{r['sent_per_s'] / torch_result['sent_per_s']:.2f}x" if torch_result else "-"
        lines.append(f"| {engine} | {threads} | {beam} | {r['sent_per_s']:,.1f} | {r['tgt_tok_per_s']:,.0f} | "
                     f"{r['bleu']:.2f} | {r['peak_rss_mb']:,.0f} | {ratio} |")
    append_entry(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="s2s run directory")
    parser.add_argument("--peer-model", default=None, help="a model saved by hf_marian.py --save")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=8000)
    parser.add_argument("--engines", default=None,
                        help="comma-separated: torch, ctranslate2, ctranslate2-int8 (compares engines instead)")
    parser.add_argument("--threads", default="2", help="with --engines: comma-separated CPU thread counts")
    a = parser.parse_args()
    if a.engines:
        compare_engines(a)
        return
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
