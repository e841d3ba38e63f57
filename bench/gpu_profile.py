"""Where a training update and a decoding pass spend their time: a first pass against a second pass
over the same batches, and a profile of the second.

The first GPU session (2026-12-04, bench/RESULTS.md) saw training 7-9x slower in its first epoch than
later, and decoding slower on an H200 than on 2 CPU cores. This runs the same updates twice, then
translates the same sentences twice, each timed with a device synchronise. If the second pass is
fast, the cost is paid once per new shape (kernel loading, first allocations of a size); if both are
slow, it is in the step itself, and the profile of a third pass says where (top operators by self
CPU and by self device time, with the number of host-device synchronisations).

    python bench/gpu_profile.py --device cuda --out /tmp/gpu-profile
    CUDA_MODULE_LOADING=EAGER python bench/gpu_profile.py --device cuda --out /tmp/gpu-profile-eager
    python bench/gpu_profile.py --device cuda --out /tmp/gpu-profile-big --loss-block-elements 33554432 \
        --decode-block-rows 100000

With `--preset base --max-tokens 65536 --sentences 0 --no-profile` it measures model FLOPs
utilisation instead (issue 27): the second pass's model FLOPs (seq2seq/model/flops.py: matrix products
of real tokens, backward at twice the forward) over its seconds, against the GPU's dense bf16 rate
(bench/peak_flops.py: the nominal one, and a large bf16 matrix product measured in this process).
An epoch of large batches holds fewer than --updates batches: the next epochs' batches follow.

    python bench/gpu_profile.py --device cuda --out /tmp/gpu-mfu --preset base --max-tokens 65536 \
        --updates 20 --sentences 0 --no-profile

With `--compile`, the step is the compiled one (CUDA graphs on CUDA, as `s2s train --compile`), and
every batch shape of the passes is warmed up (compiled and captured) before the first pass, as
`s2s train` does at the start of an epoch: the warm-up's seconds are `warmup_s`, apart from the passes.

Writes summary.json and the profile tables into --out. Prints one JSON line (the summary) after the
training passes and again at the end: the last line printed is the whole summary.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peak_flops import measured_tflops, nominal_tflops  # noqa: E402
from results import ROOT, read_lines  # noqa: E402

from seq2seq.config import DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from seq2seq.data.shape_ladder import count_shapes  # noqa: E402
from seq2seq.device import resolve_device  # noqa: E402
from seq2seq.model.flops import training_flops  # noqa: E402
from seq2seq.presets import PRESETS  # noqa: E402
from seq2seq.search import next_token as next_token_module  # noqa: E402
from seq2seq.search.translator import Translator  # noqa: E402
from seq2seq.training import loss as loss_module  # noqa: E402
from seq2seq.training.run import make_trainer  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work) -> float:
    """Seconds of `work()`, from a synchronised device to a synchronised device."""
    synchronise(device)
    began = time.perf_counter()
    work()
    synchronise(device)
    return time.perf_counter() - began


def profile_tables(device: torch.device, work, out: Path, name: str) -> dict[str, int]:
    """Profile `work()`; write its top operators by self CPU and self device time to `out`, and
    return the counts of host-device synchronisations and of device allocations seen."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        work()
        synchronise(device)
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=30)]
    if device.type == "cuda":
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=30))
    (out / f"{name}.txt").write_text("\n\n".join(tables))
    counts = {event.key: event.count for event in averages}
    return {"syncs": sum(counts.get(k, 0) for k in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                    "aten::_local_scalar_dense")),
            "cudaMalloc": counts.get("cudaMalloc", 0), "kernel_launches": counts.get("cudaLaunchKernel", 0)}


def pass_batches(trainer, updates: int) -> list[np.ndarray]:
    """The first `updates` batches the run would train on: epoch 1's, then the next epochs' when an
    epoch of large batches holds fewer."""
    batches: list[np.ndarray] = []
    epoch = 1
    while len(batches) < updates:
        batches += trainer.batches.epoch(epoch)
        epoch += 1
    return batches[:updates]


def report(summary: dict) -> None:
    """Print the summary as one JSON line: what bench/gpu_session.sh reads (the last such line)."""
    print(json.dumps({"bench": "gpu_profile", **summary}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--updates", type=int, default=40, help="updates per timed pass")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--train", default=str(ROOT / "data" / "multi30k" / "train"), help="training corpus spec")
    parser.add_argument("--tokenizer", default="", help="a tokenizer folder; '' trains one into the run")
    parser.add_argument("--vocab-size", type=int, default=8000, help="of a tokenizer trained into the run")
    parser.add_argument("--compile", action="store_true",
                        help="the compiled step (CUDA graphs on CUDA), each batch shape warmed up before the passes")
    parser.add_argument("--sentences", type=int, default=500,
                        help="validation sentences per decoding pass; 0 decodes nothing")
    parser.add_argument("--no-profile", action="store_true", help="time the passes only, profile none")
    parser.add_argument("--label", default="", help="names this measurement in the JSON line")
    # Both blocks were sized for a CPU's cache; on a GPU, small blocks mean many small kernels.
    parser.add_argument("--loss-block-elements", type=int, default=None,
                        help="override seq2seq.training.loss.LOSS_BLOCK_ELEMENTS (logits worked out at a time in training)")
    parser.add_argument("--decode-block-rows", type=int, default=None,
                        help="override seq2seq.search.next_token.BLOCK_ROWS (rows projected at a time in decoding)")
    a = parser.parse_args()
    if a.loss_block_elements:
        loss_module.LOSS_BLOCK_ELEMENTS = a.loss_block_elements
    if a.decode_block_rows:
        next_token_module.BLOCK_ROWS = a.decode_block_rows
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(a.device)
    summary: dict = {"label": a.label or f"{a.preset} {a.max_tokens}", "preset": a.preset, "max_tokens": a.max_tokens,
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "CUDA_MODULE_LOADING": os.environ.get("CUDA_MODULE_LOADING", ""),
                     "loss_block_elements": loss_module.LOSS_BLOCK_ELEMENTS,
                     "decode_block_rows": next_token_module.BLOCK_ROWS}
    summary["context_s"] = timed(device, lambda: torch.ones(1, device=device).sum().item())

    (out / "run").mkdir(exist_ok=True)  # make_trainer writes into it: a given tokenizer, the config
    began = time.perf_counter()
    trainer = make_trainer(out / "run", ModelConfig(**PRESETS[a.preset]),
                           TrainConfig(train=a.train, valid="", tokenizer=a.tokenizer, vocab_size=a.vocab_size,
                                       max_tokens=a.max_tokens, compile=a.compile, seed=1),
                           device, on_event=lambda event: None)
    summary["prepare_s"] = time.perf_counter() - began
    batches = pass_batches(trainer, a.updates)
    src_lengths, lengths = trainer.data.train_src.lengths, trainer.data.train_tgt.lengths
    tokens = sum(int(lengths[index].sum()) for index in batches)
    flops = sum(training_flops(trainer.model_cfg, src_lengths[index], lengths[index]) for index in batches)
    summary["updates"], summary["tgt_tokens_per_pass"] = len(batches), tokens
    shapes = count_shapes(batches, src_lengths, lengths, trainer.batches.ladder)
    summary["model_flops_per_pass"], summary["batch_shapes"] = flops, len(shapes.examples)
    summary["padding"], summary["compile"] = shapes.padding, a.compile
    # What `s2s train` does at the start of each epoch: capture every shape to come before the
    # first update (None without CUDA graphs). The first pass is then timed without it.
    summary["warmup_s"] = trainer.gradients.warm_up(shapes.examples)

    def one_pass():
        for index in batches:
            trainer.update([index], int(lengths[index].sum()))

    for name in ("train_first", "train_second"):
        seconds = timed(device, one_pass)
        summary[f"{name}_s"] = seconds
        summary[f"{name}_tok_per_s"] = tokens / seconds
        summary[f"{name}_updates_per_s"] = len(batches) / seconds
        summary[f"{name}_model_tflops_per_s"] = flops / seconds / 1e12
    summary["first_over_second"] = summary["train_first_s"] / summary["train_second_s"]
    summary["nominal_peak_tflops"] = nominal_tflops(device)
    summary["measured_peak_tflops"] = measured_tflops(device)
    for kind in ("nominal", "measured"):
        peak = summary[f"{kind}_peak_tflops"]
        summary[f"mfu_vs_{kind}"] = summary["train_second_model_tflops_per_s"] / peak if peak else None
    report(summary)
    if not a.no_profile:
        summary["train_profile"] = profile_tables(device, one_pass, out, "train_profile")

    sources = read_lines(ROOT / "data" / "multi30k" / "val.en.gz")[:a.sentences]
    for beam in (1, 5) if sources else ():
        translator = Translator.for_model(trainer.model.eval(), trainer.data.tokenizers, DecodeConfig(beam=beam))
        for name in ("first", "second"):
            seconds = timed(device, lambda: translator.translate(sources))
            summary[f"decode_beam{beam}_{name}_s"] = seconds
            summary[f"decode_beam{beam}_{name}_sentences_per_s"] = len(sources) / seconds
        if not a.no_profile:
            summary[f"decode_beam{beam}_profile"] = profile_tables(
                device, lambda: translator.translate(sources), out, f"decode_beam{beam}_profile")
    summary["decoded_sentences"] = len(sources)
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        summary["allocator"] = {k: stats.get(k) for k in ("num_device_alloc", "num_device_free",
                                                          "segment.all.allocated", "num_alloc_retries")}
        summary["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report(summary)


if __name__ == "__main__":
    main()
