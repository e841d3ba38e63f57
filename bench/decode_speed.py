"""Decoding speed: sentences/s and target tokens/s at beams 1 and 5, with peak memory and BLEU.

Translates Multi30k test_2016_flickr (1,000 sentences) with a trained s2s run,
after a full warm-up pass, and keeps the best of `--repeats` timed passes: the
peer's protocol (`../shared/peers/hf_marian.py`). With `--peer-model DIR`
(a model the peer saved with `--save`), it also runs the peer's `generate()` on
the same sentences in the same run, and reports the ratio. Appends a table to
bench/RESULTS.md.

With `--eval-process` it also times one whole `s2s eval` process at the
largest beam (start-up, model loading, decoding and scoring), what a user
waits for (issue 27: beam 5 over the 1,000 sentences in 1 s in process, and
the whole `s2s eval` in 6 s, on a GPU).

With `--engines torch,ctranslate2,ctranslate2-int8 --threads 1,2` it instead
exports the run to CTranslate2 (float32, and int8 or bf16 weights) and times
every engine at every thread count on the same weights, each in a process of
its own so that its peak RSS is its own; the ratios are against the torch
engine at the same threads and beam. `--threads 0` leaves each engine its own
default (for a GPU).

    python bench/decode_speed.py --run runs/demo/en-de --peer-model /tmp/peer_tiny --device cpu
    python bench/decode_speed.py --run runs/demo/en-de --device cpu --engines torch,ctranslate2,ctranslate2-int8 --threads 1,2
    python bench/decode_speed.py --run RUN --device cuda --beams 5 --eval-process
    python bench/decode_speed.py --run RUN --device cuda --engines torch,ctranslate2,ctranslate2-bf16 --threads 0 \
        --beams 5 --repeats 1

Prints the figures as one JSON line last (what bench/gpu_session.sh reads).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from results import DATA, PEER, S2S, append_entry, machine, read_lines, run_timed

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


ENGINE_QUANTIZATION = {"ctranslate2": None, "ctranslate2-int8": "int8", "ctranslate2-bf16": "bfloat16"}
SOURCE, REFERENCE = DATA / "test_2016_flickr.en.gz", DATA / "test_2016_flickr.de.gz"


def test_set(sentences: int) -> tuple[list[str], list[str]]:
    """The first `sentences` lines of test_2016_flickr (all 1,000 for 0): sources and references."""
    sources, refs = read_lines(SOURCE), read_lines(REFERENCE)
    return (sources[:sentences], refs[:sentences]) if sentences else (sources, refs)


def one_engine(model: Path, device: str, beam: int, threads: int | None, repeats: int, batch_tokens: int,
               sentences: int) -> dict:
    """Time one engine in a process of its own; its peak RSS is then its own."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); from pathlib import Path; import decode_speed as d; "
            "from seq2seq.device import resolve_device; "
            f"sources, refs = d.test_set({sentences}); "
            f"device = resolve_device({device!r}); "
            f"r = d.time_s2s(Path({str(model)!r}), device, {beam}, sources, refs, {repeats}, {batch_tokens}, {threads}); "
            "r['peak_rss_mb'] = d.peak_memory_mb(device); print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        sys.exit(f"{model} at beam {beam}, {threads} threads failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_counts(threads: str) -> list[int | None]:
    """`--threads` as the engines take it: 0 is None, each engine's own default."""
    return [int(x) or None for x in threads.split(",")]


def compare_engines(a: argparse.Namespace) -> dict:
    """Every engine at every thread count and beam, on the same weights; appends a table and returns
    the figures."""
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
        results: dict[tuple[str, int | None, int], dict] = {}
        for t in thread_counts(a.threads):
            for b in a.beams:
                for round_ in range(a.repeats):
                    for e in engines[round_ % len(engines):] + engines[:round_ % len(engines)]:
                        r = one_engine(models[e], a.device, b, t, 1, a.batch_tokens, a.sentences)
                        best = results.get((e, t, b))
                        if best is None or r["sent_per_s"] > best["sent_per_s"]:
                            results[(e, t, b)] = dict(r, peak_rss_mb=max(r["peak_rss_mb"], (best or r)["peak_rss_mb"]))
        results = {key: results[key] for key in sorted(results, key=lambda k: (k[1] or 0, k[2], engines.index(k[0])))}
    lines = [f"\n## {date.today().isoformat()}: decoding engines on test_2016_flickr ({sentences_shown(a.sentences)})\n",
             f"- Machine: {machine()}; decoding on {a.device}",
             f"- Command: `python bench/decode_speed.py {' '.join(sys.argv[1:])}`",
             f"- Protocol: the same weights exported with `s2s export`; {a.repeats} rounds in rotating order, "
             "each engine once per round in a process of its own (one warm-up pass, one timed pass), best "
             f"round kept; batches of {a.batch_tokens} source tokens; peak RSS of that process, model loading "
             "included",
             "", "| engine | threads | beam | sent/s | tgt tok/s | BLEU | peak RSS MB | vs torch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = []
    for (engine, threads, beam), r in results.items():
        torch_result = results.get(("torch", threads, beam))
        ratio = r["sent_per_s"] / torch_result["sent_per_s"] if torch_result else None
        lines.append(f"| {engine} | {threads or 'default'} | {beam} | {r['sent_per_s']:,.1f} | {r['tgt_tok_per_s']:,.0f} | "
                     f"{r['bleu']:.2f} | {r['peak_rss_mb']:,.0f} | {f'{ratio:.2f}x' if ratio else '-'} |")
        rows.append({"engine": engine, "threads": threads, "beam": beam, "vs_torch": ratio, **r})
    append_entry(lines)
    return {"mode": "engines", "device": a.device, "sentences": a.sentences or 1000, "rows": rows}


def sentences_shown(sentences: int) -> str:
    return f"the first {sentences:,} sentences" if sentences else "1,000 sentences"


def eval_process_seconds(run: Path, device: str, beam: int, sentences: int) -> dict:
    """One whole `s2s eval` process at `beam` on the test set (its first `sentences` lines for a
    non-zero count): its wall seconds, start-up and model loading included, and its BLEU."""
    with tempfile.TemporaryDirectory() as tmp:
        src, ref = SOURCE, REFERENCE
        if sentences:
            sources, refs = test_set(sentences)
            src, ref = Path(tmp) / "test.en", Path(tmp) / "test.de"
            src.write_text("\n".join(sources) + "\n", encoding="utf-8")
            ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
        seconds, stdout = run_timed([S2S, "eval", "-m", str(run), "--src", str(src), "--ref", str(ref),
                                     "--beam", str(beam), "--device", device, "--metrics", "bleu", "--json"])
    return {"beam": beam, "wall_s": seconds, "bleu": json.loads(stdout)["bleu"]["score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="s2s run directory")
    parser.add_argument("--peer-model", default=None, help="a model saved by hf_marian.py --save")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=8000)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam sizes to time")
    parser.add_argument("--sentences", type=int, default=0, help="the first N test sentences; 0 for all 1,000")
    parser.add_argument("--eval-process", action="store_true",
                        help="also time one whole `s2s eval` process at the largest beam")
    parser.add_argument("--engines", default=None,
                        help="comma-separated: torch, ctranslate2, ctranslate2-int8, ctranslate2-bf16 (compares "
                             "engines instead)")
    parser.add_argument("--threads", default="2",
                        help="with --engines: comma-separated CPU thread counts; 0 for each engine's default")
    a = parser.parse_args()
    if a.engines:
        print(json.dumps({"bench": "decode_speed", **compare_engines(a)}))
        return
    device = resolve_device(a.device)
    sources, refs = test_set(a.sentences)
    ours = {beam: time_s2s(Path(a.run), device, beam, sources, refs, a.repeats, a.batch_tokens) for beam in a.beams}
    memory = peak_memory_mb(device)
    peer = time_peer(Path(a.peer_model), a.repeats) if a.peer_model else None
    process = eval_process_seconds(Path(a.run), a.device, max(a.beams), a.sentences) if a.eval_process else None

    lines = [f"\n## {date.today().isoformat()}: decoding speed on test_2016_flickr ({sentences_shown(a.sentences)})\n",
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
    if process:
        lines.append(f"\nOne whole `s2s eval --beam {process['beam']} --device {a.device}` process, start-up, model "
                     f"loading and scoring included: {process['wall_s']:.1f} s (BLEU {process['bleu']:.2f}).")
    append_entry(lines)
    in_process = {str(beam): dict(r, seconds=len(sources) / r["sent_per_s"]) for beam, r in ours.items()}
    print(json.dumps({"bench": "decode_speed", "mode": "s2s", "device": str(device), "sentences": len(sources),
                      "in_process": in_process, "eval_process": process, "peak_memory_mb": memory}))


if __name__ == "__main__":
    main()
