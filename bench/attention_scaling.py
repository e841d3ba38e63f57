"""How one encoder layer's cost grows with sequence length: softmax SDPA against Performer (FAVOR+).

For each length it times a forward and backward pass of one s2s encoder
layer (batch 1) and measures its peak memory, each case in a fresh
subprocess so that one case's memory cannot hide another's: on CUDA the peak
of `torch.cuda.max_memory_allocated`, on the CPU the growth of the process's
peak resident set over what it held before the pass. A kind stops growing
its length once one pass takes longer than --max-seconds or runs out of
memory. It reports log-log slopes (softmax tends to 2, Performer to 1) and
the length where Performer becomes the cheaper of the two, and appends all
of it to bench/RESULTS.md.

    python bench/attention_scaling.py                      # CPU: 256 ... 16k
    python bench/attention_scaling.py --device cuda --lengths 256 1024 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

from results import append_entry, machine, shown

KINDS = ("softmax", "performer")


def measure_one(kind: str, length: int, device: str, d_model: int, heads: int, features: int,
                repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward, and peak bytes, for one layer at one length."""
    import torch

    from seq2seq.config import ModelConfig
    from seq2seq.model.transformer import EncoderLayer

    dev = torch.device(device)
    cfg = ModelConfig(d_model=d_model, n_heads=heads, ffn_dim=4 * d_model, dropout=0.0,
                      attention=kind, performer_features=features, max_positions=length)
    torch.manual_seed(0)
    layer = EncoderLayer(cfg, rotary=None).to(dev)
    x = torch.randn(1, length, d_model, device=dev, requires_grad=True)
    mask = torch.ones(1, length, dtype=torch.bool, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def one_pass():
        layer(x, mask).sum().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    # The peak resident set before any pass: what the layer and its input already hold.
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    one_pass()  # warm-up: kernels, allocator, lazy initialisation
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        one_pass()
        sync()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - cuda_before
    else:  # every pass is alike, so the warm-up's peak is a pass's peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(value) against log(length)."""
    xs = [math.log(length) for length, _ in points]
    ys = [math.log(max(value, 1e-12)) for _, value in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def crossover(softmax: dict[int, float], performer: dict[int, float]) -> str:
    """The length from which Performer's cost stays below softmax's, interpolated on log-log axes."""
    lengths = sorted(set(softmax) & set(performer))
    if not lengths:
        return "not measured"
    ratios = [math.log(performer[n] / softmax[n]) for n in lengths]  # < 0 where Performer is cheaper
    last_dearer = max((i for i, r in enumerate(ratios) if r >= 0), default=None)
    if last_dearer is None:
        return f"below {lengths[0]:,} (Performer is cheaper at every measured length)"
    if last_dearer == len(lengths) - 1:
        return f"above {lengths[-1]:,} (softmax is cheaper at the longest measured length)"
    (n0, r0), (n1, r1) = (lengths[last_dearer], ratios[last_dearer]), (lengths[last_dearer + 1],
                                                                         ratios[last_dearer + 1])
    return f"about {math.exp(math.log(n0) + (math.log(n1) - math.log(n0)) * r0 / (r0 - r1)):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=256, help="FAVOR+ random features per head")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="stop lengthening a kind once one pass takes longer than this")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.one:
        print(json.dumps(measure_one(a.one[0], int(a.one[1]), a.device, a.d_model, a.heads, a.features,
                                     a.repeats)))
        return

    results: dict[str, dict[int, dict[str, float]]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for length in a.lengths:
            args = [sys.executable, __file__, "--one", kind, str(length), "--device", a.device,
                    "--d-model", str(a.d_model), "--heads", str(a.heads), "--features", str(a.features),
                    "--repeats", str(a.repeats if length <= 4096 else 1)]
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode != 0:
                reason = "out of memory" if "memory" in done.stderr.lower() else done.stderr.strip()[-200:]
                print(f"{kind} {length}: {reason}", file=sys.stderr)
                break
            results[kind][length] = json.loads(done.stdout)
            print(f"{kind} {length}: {results[kind][length]}", file=sys.stderr)
            if results[kind][length]["seconds"] > a.max_seconds:
                break

    seconds = {kind: {n: r["seconds"] for n, r in results[kind].items()} for kind in KINDS}
    memory = {kind: {n: r["peak_bytes"] for n, r in results[kind].items()} for kind in KINDS}
    rows = []
    for length in a.lengths:
        cells = []
        for kind in KINDS:
            r = results[kind].get(length)
            cells += ([f"{r['seconds'] * 1e3:,.1f} ms", f"{r['peak_bytes'] / 2**20:,.0f} MiB"] if r else ["-", "-"])
        rows.append(f"| {length:,} | " + " | ".join(cells) + " |")

    def fitted(values: dict[int, float]) -> str:
        # Fixed costs dominate short sequences; fit from 1k up where there are two such points.
        points = [(n, v) for n, v in sorted(values.items()) if n >= 1024]
        points = points if len(points) >= 2 else sorted(values.items())
        return f"{slope(points):.2f}" if len(points) >= 2 else "n/a"

    command = shown([sys.executable.rsplit("/", 1)[-1], "bench/attention_scaling.py", *sys.argv[1:]])
    append_entry([
        f"\n## {date.today().isoformat()}: attention scaling, one encoder layer, forward + backward "
        f"({a.device})\n",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Layer: d_model {a.d_model}, {a.heads} heads, FFN {4 * a.d_model}, batch 1; "
        f"Performer with {a.features} features per head in float32",
        "",
        "| length | softmax time | softmax peak memory | Performer time | Performer peak memory |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"- Log-log slope of time: softmax {fitted(seconds['softmax'])}, "
        f"Performer {fitted(seconds['performer'])}; of peak memory: softmax {fitted(memory['softmax'])}, "
        f"Performer {fitted(memory['performer'])}",
        f"- Performer becomes faster at a length of {crossover(seconds['softmax'], seconds['performer'])}; "
        f"it needs less memory from {crossover(memory['softmax'], memory['performer'])}",
    ])


if __name__ == "__main__":
    main()
