"""Training throughput: s2s against transformers' Seq2SeqTrainer, same shape, same data, one run.

For each model shape, trains one epoch (`--epochs`) over the same slice of Multi30k
English-German with the same shared unigram vocabulary, first with
`s2s train`, then with the peer (`../shared/peers/hf_marian.py`, a Marian
model from scratch), and reports target tokens per second of training for
both and their ratio, with model TFLOP/s and, on a known GPU, model FLOPs
utilisation (MFU), and each process's system time and page faults. With
`--precisions auto bf16`, s2s trains once in each precision (bf16 pays on
CPUs with AVX512-BF16 or AMX). Appends a table to bench/RESULTS.md, and
prints its figures as one JSON line last (what bench/gpu_session.sh reads).

s2s's batches hold as many padded tokens as the peer's batches of sentences
do on average (`--max-tokens 0`, the default: the peer's sentences per batch
times the slice's mean longer side, in the shared vocabulary's pieces), or
`--max-tokens` tokens for every shape.

    python bench/train_speed.py --shapes small --limit 4000 --vocab 4000 --precisions auto bf16   # 2-core CPU
    python bench/train_speed.py --shapes small base --limit 0 --epochs 1 --device cuda

The peer needs `pip install -e .[bench]` (transformers and accelerate); `--no-peer` measures s2s alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import tempfile
from datetime import date
from pathlib import Path

from peak_flops import nominal_tflops
from results import DATA, PEER, S2S, append_entry, machine, run_measured

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

from seq2seq.device import PRECISION_CHOICES  # noqa: E402

# Shapes as the peer names them: (layers per side, d_model, heads, FFN, peer batch in sentences).
# "tiny" is s2s's tiny preset, for trying the bench itself in seconds.
SHAPES = {
    "tiny": (2, 128, 4, 512, 128),
    "small": (4, 256, 4, 1024, 128),
    "base": (6, 512, 8, 2048, 256),
}


def write_slice(folder: Path, limit: int) -> str:
    """The first `limit` training pairs (all if 0) as plain files; returns the corpus prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        with gzip.open(DATA / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.readlines()
        (folder / f"train.{lang}").write_text("".join(lines[:limit] if limit else lines), encoding="utf-8")
    # A few test lines: the peer insists on decoding a test set after training.
    for lang in ("en", "de"):
        with gzip.open(DATA / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            head = [next(f) for _ in range(16)]
        with gzip.open(folder / f"tiny.{lang}.gz", "wt", encoding="utf-8") as f:
            f.writelines(head)
    return str(folder / "train")


def peer_batch_tokens(prefix: str, tokenizer: Path, sentences: int) -> int:
    """Padded tokens in a batch of `sentences` pairs of the slice at `prefix`, on average: its mean
    longer side in the tokenizer's pieces (with EOS), times `sentences`, rounded up to a multiple of 64."""
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    sides = [processor.encode(Path(f"{prefix}.{lang}").read_text(encoding="utf-8").splitlines()) for lang in ("en", "de")]
    mean_longer = sum(max(len(src), len(tgt)) + 1 for src, tgt in zip(*sides)) / len(sides[0])
    return -(-int(mean_longer * sentences) // 64) * 64


def run(args: list[str]) -> tuple[str, dict[str, float]]:
    """Run a command, shown on stderr first; its stdout and its usage (results.run_measured)."""
    print("$ " + shlex.join(args), file=sys.stderr)
    seconds, stdout, usage = run_measured(args)
    return stdout, {"wall_s": seconds, **usage}


def s2s_rates(work: Path, prefix: str, shape: str, max_tokens: int, device: str, dropout: float, epochs: int,
              precision: str, extra: list[str]) -> tuple[float, float, dict[str, float], list[str]]:
    """Target tokens/s and model TFLOP/s over `epochs` epochs of `s2s train` (validation off), and
    the process's usage."""
    layers, dim, heads, ffn, _ = SHAPES[shape]
    run_dir = work / f"s2s-{shape}-{precision}"
    args = [S2S, "train", "--run", str(run_dir), "--train", prefix, "--valid", "", "--tokenizer",
            str(work / "tok"), "--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--d-model", str(dim), "--heads", str(heads), "--ffn-dim", str(ffn), "--dropout", str(dropout),
            "--max-tokens", str(max_tokens), "--epochs", str(epochs), "--lr", "1e-3", "--log-every", "10",
            "--keep-snapshots", "0", "--device", device, "--precision", precision, *extra]
    _, usage = run(args)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    # Each logged interval's tokens and FLOPs, from its rates and duration, over the epoch's whole time.
    if not train:
        sys.exit(f"{run_dir}: no training interval was logged (every 10 updates): give it more pairs or epochs")
    tokens, tflops, previous = 0.0, 0.0, 0.0
    for r in train:
        tokens += r["tgt_tokens_per_s"] * (r["elapsed"] - previous)
        tflops += r["model_tflops_per_s"] * (r["elapsed"] - previous)
        previous = r["elapsed"]
    return tokens / previous, tflops / previous, usage, args


def peer_tokens_per_second(work: Path, limit: int, shape: str, dropout: float, vocab: int,
                           epochs: int) -> tuple[float, dict[str, float], list[str]]:
    layers, dim, heads, ffn, batch = SHAPES[shape]
    args = [sys.executable, str(PEER), "--data", str(DATA), "--out", str(work / f"peer-{shape}"),
            "--layers", str(layers), "--dim", str(dim), "--heads", str(heads), "--ffn", str(ffn),
            "--dropout", str(dropout), "--epochs", str(epochs), "--batch", str(batch), "--lr", "1e-3",
            "--test-dir", str(work / "data"), "--test", "tiny", "--repeats", "1", "--vocab", str(vocab)]
    if limit:
        args += ["--limit", str(limit)]
    stdout, usage = run(args)
    result = json.loads(stdout.strip().splitlines()[-1])
    return result["train_tgt_tok_per_s"], usage, args


def usage_cells(usage: dict[str, float]) -> str:
    """Wall, user and system seconds and page faults of one process, as table cells."""
    return (f"{usage['wall_s']:.0f} | {usage['user_s']:.0f} | {usage['system_s']:.1f} "
            f"| {usage['minor_faults'] / 1e6:.2f}M | {usage['major_faults']:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small"], choices=list(SHAPES))
    parser.add_argument("--limit", type=int, default=4000, help="training pairs; 0 for all 29,000")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="s2s batch size in padded tokens; 0: as many as the peer's batch of sentences holds")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--vocab", type=int, default=8000, help="shared vocabulary size, both toolkits")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs for both; on a GPU, more than one, so that warm-up is a small part")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=PRECISION_CHOICES,
                        help="train s2s once in each (`s2s train --precision`); the peer trains once, as it does")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-peer", action="store_true", help="measure s2s alone")
    parser.add_argument("s2s_flags", nargs="*", help="extra flags for `s2s train` (after --), e.g. --compile")
    a = parser.parse_args()
    if not a.no_peer:
        try:
            import transformers  # noqa: F401
        except ImportError:
            sys.exit("the peer needs transformers and accelerate: pip install -e .[bench] (or --no-peer)")
    rows, budgets = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prefix = write_slice(work / "data", a.limit)
        run([S2S, "tokenizer", "train", "--corpus", prefix, "-o", str(work / "tok"), "--vocab-size", str(a.vocab)])
        for shape in a.shapes:
            budgets[shape] = a.max_tokens or peer_batch_tokens(prefix, work / "tok", SHAPES[shape][4])
            ours = {precision: s2s_rates(work, prefix, shape, budgets[shape], a.device, a.dropout, a.epochs,
                                         precision, a.s2s_flags)
                    for precision in a.precisions}
            peer, peer_usage = None, None
            if not a.no_peer:
                peer, peer_usage, _ = peer_tokens_per_second(work, a.limit, shape, a.dropout, a.vocab, a.epochs)
            rows.append((shape, ours, peer, peer_usage))
    peak = nominal_tflops()
    lines = [f"\n## {date.today().isoformat()}: training throughput, s2s vs transformers (one run)\n",
             f"- Machine: {machine()}",
             f"- Command: `python bench/train_speed.py {shlex.join(sys.argv[1:])}`",
             f"- Data: first {a.limit or 29000:,} pairs of Multi30k en-de, shared {a.vocab:,}-piece unigram "
             f"vocabulary, {a.epochs} epoch(s); "
             "s2s batches of " + ", ".join(f"{tokens:,} padded tokens ({shape})" for shape, tokens in budgets.items())
             + (" (the peer's batch of sentences, on average)" if not a.max_tokens else "")
             + ", the peer's of " + ", ".join(f"{SHAPES[shape][4]} sentences ({shape})" for shape in budgets),
             "- Model TFLOP/s count matrix products of real tokens, backward at twice the forward "
             "(seq2seq/flops.py). The peer's figure is its tokens/s times s2s's FLOPs per target token: "
             "same shape, same data."
             + (f" MFU is against {peak:g} TFLOP/s, the GPU's dense bf16 rate (bench/peak_flops.py)." if peak else ""),
             "- Wall, user and system seconds and page faults are each whole process's (getrusage): start-up, "
             "data preparation and, for the peer, its decoding of 16 test sentences included.",
             "", "| shape | toolkit | precision | target tok/s | model TFLOP/s | MFU | ratio to transformers "
             "| wall s | user s | system s | minor faults | major faults |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    figures = []
    for shape, ours, peer, peer_usage in rows:
        flops_per_token = 0.0
        for precision, (tokens, tflops, usage, _) in ours.items():
            flops_per_token = tflops / tokens
            mfu = f"{tflops / peak:.1%}" if peak else "-"
            ratio = f"**{tokens / peer:.2f}x**" if peer else "-"
            lines.append(f"| {shape} | s2s | {precision} | {tokens:,.0f} | {tflops:.3f} | {mfu} | "
                         f"{ratio} | {usage_cells(usage)} |")
            figures.append({"shape": shape, "toolkit": "s2s", "precision": precision, "tgt_tok_per_s": tokens,
                            "model_tflops_per_s": tflops, "mfu": tflops / peak if peak else None,
                            "vs_peer": tokens / peer if peer else None, "max_tokens": budgets[shape]})
        if peer:
            peer_precision = "bf16" if torch.cuda.is_available() else "float32"  # the peer passes bf16=cuda
            lines.append(f"| {shape} | transformers | {peer_precision} | {peer:,.0f} | {peer * flops_per_token:.3f} "
                         f"| - | 1.00x | {usage_cells(peer_usage)} |")
            figures.append({"shape": shape, "toolkit": "transformers", "precision": peer_precision,
                            "tgt_tok_per_s": peer, "model_tflops_per_s": peer * flops_per_token})
    append_entry(lines)
    print(json.dumps({"bench": "train_speed", "epochs": a.epochs, "limit": a.limit, "rows": figures}))


if __name__ == "__main__":
    main()
