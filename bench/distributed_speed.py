"""One process against two on the gloo backend, with the same global batch, and what an update
all-reduces.

On Multi30k, the same run is trained twice for the same number of updates:
one process accumulating 2 batches per update (`--accum-steps 2`, all the
machine's threads), and `torchrun --nproc-per-node 2` with one batch each
(one thread each). Both train on the same pairs in each update
(seq2seq.data.batching.EpochBatches.shards). Target tokens/s is read from the
runs' metrics, after the first log interval (start-up).

On a machine with 2 cores the second process takes the first one's second
core: the ratio says what gloo and DDP cost, not how training scales.

Then, on paper: the gradient bytes DDP all-reduces per update (every
parameter's gradient, in float32) for each preset, and the efficiency this
predicts for 8 GPUs over NVLink and over 25 Gb/s Ethernet, from the model
FLOPs of an update (seq2seq.model.flops) at an assumed sustained throughput.

    python bench/distributed_speed.py --out /tmp/ddp --updates 150

Run it with nothing else on the machine. Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
from results import DATA, S2S, append_entry, machine, shown

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
FLAGS = ["--preset", "tiny", "--max-tokens", "2500", "--epochs", "0", "--valid", "", "--log-every", "25",
         "--lr", "3e-3", "--warmup-steps", "300", "--device", "cpu", "--keep-snapshots", "0"]

# Ring all-reduce moves 2 (N - 1) / N of the buffer through each GPU's link.
LINKS = {"NVLink (H100 SXM, ~360 GB/s NCCL all-reduce bus bandwidth)": 360e9,
         "25 Gb/s Ethernet (3.1 GB/s)": 25e9 / 8}
GPU_FLOPS = 400e12  # sustained bf16 model FLOPs/s assumed for one H100 (40% of its 989 dense peak)
GPUS = 8


def tokens_per_s(run: Path) -> float:
    """Target tokens/s over the run's log intervals after the first."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tgt_tokens_per_s"] for r in records if r["event"] == "train"][1:]
    return float(np.mean(rates))


def train(args: list[str], run: Path, threads: int) -> None:
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"failed: {shlex.join(args)}\n{done.stderr[-3000:]}")


def gradient_bytes(preset: str, vocab: int) -> tuple[int, int]:
    """(parameters, bytes of their float32 gradients) of `preset` with a shared `vocab`-piece vocabulary."""
    from seq2seq.config import ModelConfig
    from seq2seq.model.transformer import build_model, count_parameters
    from seq2seq.presets import PRESETS

    model = build_model(ModelConfig(**PRESETS[preset], src_vocab_size=vocab, tgt_vocab_size=vocab))
    return count_parameters(model), sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)


def update_flops(preset: str, vocab: int, max_tokens: int) -> float:
    """Model FLOPs of one GPU's batch of `max_tokens` padded tokens of Multi30k-like pairs
    (13 source and 15 target pieces, the means with an 8k vocabulary)."""
    from seq2seq.config import ModelConfig
    from seq2seq.model.flops import training_flops
    from seq2seq.presets import PRESETS

    cfg = ModelConfig(**PRESETS[preset], src_vocab_size=vocab, tgt_vocab_size=vocab)
    pairs = max_tokens // 15
    return training_flops(cfg, np.full(pairs, 13), np.full(pairs, 15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer folder; trained if absent")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tokenizer = a.tokenizer or a.out / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        subprocess.run([S2S, "tokenizer", "train", "--corpus", str(DATA / "train"), "--src", "en", "--tgt", "de",
                        "-o", str(tokenizer)], check=True, capture_output=True)
    common = ["--tokenizer", str(tokenizer), "--max-steps", str(a.updates), *FLAGS]
    one_run, two_run = a.out / "one", a.out / "two"
    one = [S2S, "train", "--run", str(one_run), "--accum-steps", "2", *common]
    two = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "cli.main", "train", "--run-dir",
           str(two_run), *common]
    train(one, one_run, threads=os.cpu_count() or 1)
    train(two, two_run, threads=max(1, (os.cpu_count() or 2) // 2))
    one_speed, two_speed = tokens_per_s(one_run), tokens_per_s(two_run)

    lines = [f"\n## {date.today().isoformat()}: one process against two on gloo, same global batch (issue 17)\n",
             f"Machine: {machine()}\n",
             f"Command: `python bench/distributed_speed.py {shlex.join(sys.argv[1:])}`\n",
             f"- one process, {os.cpu_count()} threads: `{shown(one)}`",
             f"- two processes, one thread each: `OMP_NUM_THREADS=1 {shown(two)}`", "",
             "| processes | tgt tokens/s | vs one |", "| ---: | ---: | ---: |",
             f"| 1 | {one_speed:,.0f} | 1.00x |", f"| 2 (gloo) | {two_speed:,.0f} | {two_speed / one_speed:.2f}x |",
             "", "Both processes share this machine's cores: the ratio is the cost of gloo and DDP here, "
             "not a measure of scaling.", "",
             "Per update DDP all-reduces every parameter's float32 gradient, once, however many batches "
             "the update accumulates. On paper, for 8 GPUs, at an assumed "
             f"{GPU_FLOPS / 1e12:.0f} TFLOP/s sustained per GPU, with 4,096 target tokens per GPU per update "
             "(one batch of the default --max-tokens) and with 32,768 (--accum-steps 8): ring all-reduce, "
             "each GPU sends and receives 2 x 7/8 of the gradients; 'no overlap' adds all of it to the "
             "update, 'overlap' hides it behind the backward pass (2/3 of the compute), as DDP's buckets "
             "do at best.", "",
             "| preset | parameters | gradient MB per update | link | tokens per GPU | all-reduce ms | compute ms | "
             "efficiency, no overlap | efficiency, overlap |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for preset in ("tiny", "base"):
        params, grad_bytes = gradient_bytes(preset, 8000)
        for link, bandwidth in LINKS.items():
            comm = grad_bytes * 2 * (GPUS - 1) / GPUS / bandwidth
            for tokens in (4096, 32768):
                compute = update_flops(preset, 8000, tokens) / GPU_FLOPS
                hidden = max(0.0, comm - 2 / 3 * compute)  # what the backward cannot hide
                lines.append(f"| {preset} | {params / 1e6:.1f}M | {grad_bytes / 1e6:.1f} | {link} | {tokens:,} | "
                             f"{comm * 1e3:.2f} | {compute * 1e3:.2f} | {compute / (compute + comm):.0%} | "
                             f"{compute / (compute + hidden):.0%} |")
    append_entry(lines)


if __name__ == "__main__":
    main()
