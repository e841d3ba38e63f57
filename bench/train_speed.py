"""Training throughput: s2s against transformers' Seq2SeqTrainer, same shape, same data, one run.

For each model shape, trains one epoch over the same slice of Multi30k
English-German with the same shared unigram vocabulary, first with
`s2s train`, then with the peer (`../shared/peers/hf_marian.py`, a Marian
model from scratch), and reports target tokens per second of training for
both and their ratio. Appends a table to bench/RESULTS.md.

    python bench/train_speed.py --shapes small --limit 4000 --vocab 4000   # the 2-core CPU comparison
    python bench/train_speed.py --shapes small base --limit 0        # on a GPU: all 29,000 pairs

The peer needs `pip install -e .[bench]` (transformers and accelerate).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from results import append_entry, machine

ROOT = Path(__file__).resolve().parent.parent
S2S = str(Path(sys.executable).parent / "s2s")
PEER = ROOT.parent / "shared" / "peers" / "hf_marian.py"
DATA = ROOT / "data" / "multi30k"

# Shapes as the peer names them: (layers per side, d_model, heads, FFN, peer batch in sentences).
SHAPES = {
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


def run(args: list[str]) -> str:
    print("$ " + shlex.join(args), file=sys.stderr)
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(args)}\n{done.stderr[-3000:]}")
    return done.stdout


def s2s_tokens_per_second(work: Path, prefix: str, shape: str, max_tokens: int, device: str,
                          dropout: float) -> tuple[float, list[str]]:
    """Target tokens per second over one epoch of `s2s train` (validation off)."""
    layers, dim, heads, ffn, _ = SHAPES[shape]
    run_dir = work / f"s2s-{shape}"
    args = [S2S, "train", "--run", str(run_dir), "--train", prefix, "--valid", "", "--tokenizer",
            str(work / "tok"), "--encoder-layers", str(layers), "--decoder-layers", str(layers),
            "--d-model", str(dim), "--heads", str(heads), "--ffn-dim", str(ffn), "--dropout", str(dropout),
            "--max-tokens", str(max_tokens), "--epochs", "1", "--lr", "1e-3", "--log-every", "10",
            "--keep-snapshots", "0", "--device", device]
    run(args)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    # Tokens of each logged interval, from its rate and duration, over the whole epoch's time.
    tokens, previous = 0.0, 0.0
    for r in train:
        tokens += r["tgt_tokens_per_s"] * (r["elapsed"] - previous)
        previous = r["elapsed"]
    return tokens / previous, args


def peer_tokens_per_second(work: Path, limit: int, shape: str, dropout: float,
                           vocab: int) -> tuple[float, list[str]]:
    layers, dim, heads, ffn, batch = SHAPES[shape]
    args = [sys.executable, str(PEER), "--data", str(DATA), "--out", str(work / f"peer-{shape}"),
            "--layers", str(layers), "--dim", str(dim), "--heads", str(heads), "--ffn", str(ffn),
            "--dropout", str(dropout), "--epochs", "1", "--batch", str(batch), "--lr", "1e-3",
            "--test-dir", str(work / "data"), "--test", "tiny", "--repeats", "1", "--vocab", str(vocab)]
    if limit:
        args += ["--limit", str(limit)]
    result = json.loads(run(args).strip().splitlines()[-1])
    return result["train_tgt_tok_per_s"], args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small"], choices=list(SHAPES))
    parser.add_argument("--limit", type=int, default=4000, help="training pairs; 0 for all 29,000")
    parser.add_argument("--max-tokens", type=int, default=2200,
                        help="s2s batch size in padded tokens (about the peer's 128 sentences here)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--vocab", type=int, default=8000, help="shared vocabulary size, both toolkits")
    parser.add_argument("--device", default="auto")
    a = parser.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError:
        sys.exit("the peer needs transformers and accelerate: pip install -e .[bench]")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prefix = write_slice(work / "data", a.limit)
        run([S2S, "tokenizer", "train", "--corpus", prefix, "-o", str(work / "tok"), "--vocab-size", str(a.vocab)])
        for shape in a.shapes:
            ours, our_args = s2s_tokens_per_second(work, prefix, shape, a.max_tokens, a.device, a.dropout)
            peer, peer_args = peer_tokens_per_second(work, a.limit, shape, a.dropout, a.vocab)
            rows.append((shape, ours, peer, our_args, peer_args))
    lines = [f"\n## {date.today().isoformat()}: training throughput, s2s vs transformers (one run)\n",
             f"- Machine: {machine()}",
             f"- Command: `python bench/train_speed.py {shlex.join(sys.argv[1:])}`",
             f"- Data: first {a.limit or 29000:,} pairs of Multi30k en-de, shared {a.vocab:,}-piece unigram "
             "vocabulary, one epoch; "
             f"s2s batches of {a.max_tokens} padded tokens, the peer's of 128 (small) or 256 (base) sentences",
             "", "| shape | s2s target tok/s | transformers target tok/s | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {shape} | {ours:,.0f} | {peer:,.0f} | {ours / peer:.2f}x |" for shape, ours, peer, _, _ in rows]
    append_entry(lines)


if __name__ == "__main__":
    main()
