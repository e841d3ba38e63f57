"""Where a CPU training step's time goes besides arithmetic: page faults and kernel time, by loss and allocator.

Each variant runs in a process of its own: the tiny preset with an 8,000-piece
shared vocabulary (the demo's shape), fused AdamW, batches of about 2,500
target tokens (the demo's --max-tokens), for --warmup then --updates updates.
It reports tokens per second, user and system CPU seconds and minor page
faults over the timed updates (getrusage of the process itself).

- loss "logits": the (tokens x vocabulary) logits made whole, then label_smoothed_loss (s2s before issue 16);
- loss "fused": seq2seq.training.loss.TrainingObjective, the projection and loss fused a block of rows at a time;
- allocator "thp": THP_MEM_ALLOC_ENABLE=1, PyTorch's transparent-huge-page allocations for large tensors;
- allocator "keep": seq2seq.training.malloc_tuning.keep_freed_memory(), glibc keeping freed blocks for the next update;
- allocator "thp+keep": both.

    python bench/train_step_memory.py --updates 60 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date

from results import append_entry, machine

VARIANTS = [(loss, allocator) for allocator in ("default", "thp", "keep", "thp+keep") for loss in ("logits", "fused")]


def child(loss_kind: str, allocator: str, warmup: int, updates: int, vocab: int, batch: int, length: int) -> dict:
    import resource
    import time

    import torch

    from seq2seq.config import ModelConfig
    from seq2seq.presets import apply_preset
    from seq2seq.training.malloc_tuning import keep_freed_memory

    if "keep" in allocator:
        assert keep_freed_memory()
    from seq2seq.model.transformer import build_model
    from seq2seq.training.loss import TrainingObjective, label_smoothed_loss

    torch.manual_seed(0)
    cfg = apply_preset(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab), "tiny")
    model = build_model(cfg).train()
    objective = TrainingObjective(model, 0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(1)

    def batch_of_ids() -> torch.Tensor:
        return torch.randint(4, vocab, (batch, length), generator=generator)

    def update() -> None:
        src, tgt = batch_of_ids(), batch_of_ids()
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        if loss_kind == "fused":
            loss = objective(src, tgt_in, tgt_out)
        else:
            loss = label_smoothed_loss(model(src, tgt_in), tgt_out, cfg.pad_id, 0.1)[0]
        (loss / tgt_out.numel()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        update()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(updates):
        update()
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {"tokens_per_s": updates * batch * (length - 1) / seconds, "seconds": seconds,
            "user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="each variant once per round, rotating; best kept")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=100, help="sentences per batch")
    parser.add_argument("--length", type=int, default=26, help="tokens per sentence (target: one fewer)")
    parser.add_argument("--variants", default="", help="comma-separated LOSS/ALLOCATOR pairs; default: all")
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "ALLOCATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.warmup, args.updates, args.vocab, args.batch, args.length)))
        return
    variants = [tuple(v.split("/")) for v in args.variants.split(",")] if args.variants else VARIANTS
    if ("logits", "default") not in variants:
        variants.insert(0, ("logits", "default"))  # the baseline of the ratios
    best: dict[tuple[str, str], dict] = {}
    for round_number in range(args.rounds):
        shift = round_number % len(variants)
        for loss_kind, allocator in variants[shift:] + variants[:shift]:
            env = {**os.environ, **({"THP_MEM_ALLOC_ENABLE": "1"} if "thp" in allocator else {})}
            done = subprocess.run([sys.executable, __file__, "--child", loss_kind, allocator, "--updates",
                                   str(args.updates), "--warmup", str(args.warmup), "--vocab", str(args.vocab),
                                   "--batch", str(args.batch), "--length", str(args.length)],
                                  capture_output=True, text=True, env=env, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            key = (loss_kind, allocator)
            if key not in best or result["tokens_per_s"] > best[key]["tokens_per_s"]:
                best[key] = result
            print(key, result, file=sys.stderr)
    baseline = best[("logits", "default")]["tokens_per_s"]
    lines = [f"## {date.today()}: a CPU training step's page faults and kernel time, by loss and allocator "
             "(issue 16)", "",
             f"Machine: {machine()}", "",
             f"Command: `python bench/train_step_memory.py --updates {args.updates} --warmup {args.warmup} "
             f"--rounds {args.rounds}" + (f" --variants {args.variants}" if args.variants else "") + f" --vocab {args.vocab} --batch {args.batch} --length {args.length}`", "",
             f"Tiny preset, {args.vocab:,}-piece vocabulary, batches of {args.batch} x {args.length - 1} target "
             f"tokens, {args.updates} timed updates per process; best of {args.rounds} rounds.", "",
             "| loss | allocator | target tokens/s | vs logits/default | user s | system s | minor faults |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for loss_kind, allocator in variants:
        r = best[(loss_kind, allocator)]
        lines.append(f"| {loss_kind} | {allocator} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / baseline:.2f}x "
                     f"| {r['user']:.1f} | {r['system']:.1f} | {r['minor_faults']:,} |")
    append_entry(lines + [""])


if __name__ == "__main__":
    main()
