"""`s2s train`: every field of ModelConfig and TrainConfig as a flag; flags beat --config."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import torch.distributed as dist
import typer

from seq2seq.rundir import read_run_config
from seq2seq.config import PRESETS, RESUME_BUDGET_FIELDS, resolve_train_configs
from seq2seq.device import resolve_device
from seq2seq.errors import ConfigError
from seq2seq.train import train as run_training
from seq2seq.train import with_resolved_paths

from .display import TrainDisplay

DATA, MODEL, OPTIM, VALID, RUN = "Data", "Model", "Optimisation", "Validation", "Run"


def _opt(help: str, panel: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


def distributed_device(requested: str) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1), join the process group and take this rank's GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve_device(requested)
    device = resolve_device(requested)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def train_command(
    config: Annotated[Optional[Path], _opt("JSON config {\"model\": {...}, \"train\": {...}}; "
                                           "a run's config.json works too.", RUN, "--config", "-c")] = None,
    run: Annotated[Optional[Path], _opt("Run directory to write. [default: runs/SRC-TGT-TIME] "
                                        "(--run-dir is the same; use it under torchrun, which "
                                        "takes --run for its own --run-path)",
                                        RUN, "--run", "--run-dir", "-r")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run from its last "
                                         "checkpoint.", rich_help_panel=RUN)] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.", rich_help_panel=RUN)] = "auto",
    # Data
    train: Annotated[Optional[str], _opt("Training corpus spec (see README). [default: data/multi30k/train]",
                                         DATA, "--train")] = None,
    valid: Annotated[Optional[str], _opt("Validation corpus spec; '' for none. [default: data/multi30k/val]",
                                         DATA, "--valid")] = None,
    src: Annotated[Optional[str], _opt("Source language code. [default: en]", DATA, "--src")] = None,
    tgt: Annotated[Optional[str], _opt("Target language code. [default: de]", DATA, "--tgt")] = None,
    tokenizer: Annotated[Optional[str], _opt("Tokenizer folder from `s2s tokenizer train`; "
                                             "default: train one into the run.", DATA, "--tokenizer")] = None,
    vocab_size: Annotated[Optional[int], _opt("Vocabulary size when training the tokenizer here. "
                                              "[default: 8000]", DATA, "--vocab-size")] = None,
    max_len: Annotated[Optional[int], _opt("Drop training pairs longer than this many tokens. "
                                           "[default: 256]", DATA, "--max-len")] = None,
    num_proc: Annotated[Optional[int], _opt("Processes for tokenizing the corpus. [default: 1]",
                                            DATA, "--num-proc")] = None,
    # Model
    preset: Annotated[Optional[str], _opt(f"Architecture preset: {', '.join(PRESETS)}.",
                                          MODEL, "--preset")] = None,
    d_model: Annotated[Optional[int], _opt("Model width. [default: 256]", MODEL, "--d-model")] = None,
    n_heads: Annotated[Optional[int], _opt("Attention heads. [default: 4]", MODEL, "--heads")] = None,
    ffn_dim: Annotated[Optional[int], _opt("Feed-forward width. [default: 1024]", MODEL, "--ffn-dim")] = None,
    encoder_layers: Annotated[Optional[int], _opt("[default: 3]", MODEL, "--encoder-layers")] = None,
    decoder_layers: Annotated[Optional[int], _opt("[default: 3]", MODEL, "--decoder-layers")] = None,
    dropout: Annotated[Optional[float], _opt("[default: 0.1]", MODEL, "--dropout")] = None,
    attention_dropout: Annotated[Optional[float], _opt("[default: 0.0]", MODEL, "--attention-dropout")] = None,
    activation: Annotated[Optional[str], _opt("relu or gelu. [default: relu]", MODEL, "--activation")] = None,
    norm: Annotated[Optional[str], _opt("pre or post layer norm. [default: pre]", MODEL, "--norm")] = None,
    max_positions: Annotated[Optional[int], _opt("Longest sequence the model accepts. [default: 1024]",
                                                 MODEL, "--max-positions")] = None,
    positions: Annotated[Optional[str], _opt("sinusoidal or learned (added to the embeddings), or rope "
                                             "(rotary queries and keys). [default: sinusoidal]",
                                             MODEL, "--positions")] = None,
    attention: Annotated[Optional[str], _opt("softmax, or performer (FAVOR+ linear attention). "
                                             "[default: softmax]", MODEL, "--attention")] = None,
    performer_in: Annotated[Optional[str], _opt("Where Performer attention goes: some of encoder, decoder, "
                                                "cross, comma-separated. [default: encoder,decoder,cross]",
                                                MODEL, "--performer-in")] = None,
    performer_features: Annotated[Optional[int], _opt("FAVOR+ random features per head. [default: 256]",
                                                      MODEL, "--performer-features")] = None,
    performer_redraw_every: Annotated[Optional[int], _opt("Redraw the FAVOR+ features every N updates; "
                                                          "0 = never. [default: 1000]",
                                                          MODEL, "--performer-redraw-every")] = None,
    share_embeddings: Annotated[Optional[bool], typer.Option(
        "--share-embeddings/--no-share-embeddings", show_default=False, rich_help_panel=MODEL,
        help="Tie source, target and output embeddings when the vocabulary is shared. [default: share]")] = None,
    # Optimisation
    max_tokens: Annotated[Optional[int], _opt("Padded tokens per batch. [default: 4096]",
                                              OPTIM, "--max-tokens")] = None,
    accum_steps: Annotated[Optional[int], _opt("Batches per update. [default: 1]", OPTIM, "--accum-steps")] = None,
    epochs: Annotated[Optional[int], _opt("[default: 30]", OPTIM, "--epochs")] = None,
    max_steps: Annotated[Optional[int], _opt("Stop after this many updates; 0 = no limit. [default: 0]",
                                             OPTIM, "--max-steps")] = None,
    max_time: Annotated[Optional[float], _opt("Stop cleanly after this many seconds; 0 = no limit. "
                                              "[default: 0]", OPTIM, "--max-time")] = None,
    lr: Annotated[Optional[float], _opt("Peak learning rate. [default: 1e-3]", OPTIM, "--lr")] = None,
    warmup_steps: Annotated[Optional[int], _opt("[default: 1000]", OPTIM, "--warmup-steps")] = None,
    lr_schedule: Annotated[Optional[str], _opt("Decay after warm-up: inverse_sqrt, or cosine to 0 at the "
                                               "last update. [default: inverse_sqrt]", OPTIM,
                                               "--lr-schedule")] = None,
    weight_decay: Annotated[Optional[float], _opt("[default: 0.0]", OPTIM, "--weight-decay")] = None,
    label_smoothing: Annotated[Optional[float], _opt("[default: 0.1]", OPTIM, "--label-smoothing")] = None,
    clip_norm: Annotated[Optional[float], _opt("Gradient norm clip; 0 = off. [default: 1.0]",
                                               OPTIM, "--clip-norm")] = None,
    seed: Annotated[Optional[int], _opt("[default: 1]", OPTIM, "--seed")] = None,
    max_bad_updates: Annotated[Optional[int], _opt("Stop after this many updates in a row with a "
                                                   "non-finite loss or gradient. [default: 5]",
                                                   OPTIM, "--max-bad-updates")] = None,
    # Validation
    valid_every: Annotated[Optional[int], _opt("Validate every N updates; 0 = every epoch. [default: 0]",
                                               VALID, "--valid-every")] = None,
    valid_beam: Annotated[Optional[int], _opt("Beam for validation BLEU; 1 = greedy. [default: 1]",
                                              VALID, "--valid-beam")] = None,
    valid_bleu_sentences: Annotated[Optional[int], _opt("Score BLEU on at most N sentences; 0 = all. [default: 0]",
                                                  VALID, "--valid-bleu-sentences", "--valid-bleu-max")] = None,
    patience: Annotated[Optional[int], _opt("Stop after N validations without improvement; 0 = never. "
                                            "[default: 10]", VALID, "--patience")] = None,
    early_stop_metric: Annotated[Optional[str], _opt("bleu or loss. [default: bleu]",
                                                     VALID, "--early-stop-metric")] = None,
    log_every: Annotated[Optional[int], _opt("Updates between progress lines. [default: 50]",
                                             VALID, "--log-every")] = None,
    keep_snapshots: Annotated[Optional[int], _opt("Weight snapshots kept for `s2s average`: the newest N "
                                                  "and the best N. [default: 5]", VALID, "--keep-snapshots")] = None,
    average_last: Annotated[Optional[int], _opt("At the end, average the last N snapshots and keep the "
                                                "average if it validates at least as well. [default: 0]",
                                                VALID, "--average-last")] = None,
    compile_step: Annotated[Optional[bool], _opt("torch.compile the training step (for GPUs; slower on "
                                                 "the CPU). [default: off]", RUN,
                                                 "--compile/--no-compile")] = None,
) -> None:
    """Train a Transformer. With no options: English to German on the bundled Multi30k, into runs/."""
    model_flags = {k: v for k, v in dict(
        d_model=d_model, n_heads=n_heads, ffn_dim=ffn_dim, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, dropout=dropout, attention_dropout=attention_dropout,
        activation=activation, norm=norm, max_positions=max_positions, positions=positions,
        attention=attention, performer_in=performer_in, performer_features=performer_features,
        performer_redraw_every=performer_redraw_every,
        share_embeddings=share_embeddings).items() if v is not None}
    train_flags = {k: v for k, v in dict(
        train=train, valid=valid, src_lang=src, tgt_lang=tgt, tokenizer=tokenizer, vocab_size=vocab_size,
        max_len=max_len, num_proc=num_proc, max_tokens=max_tokens, accum_steps=accum_steps, epochs=epochs,
        max_steps=max_steps, max_time=max_time, lr=lr, warmup_steps=warmup_steps, lr_schedule=lr_schedule,
        weight_decay=weight_decay, label_smoothing=label_smoothing, clip_norm=clip_norm, seed=seed,
        max_bad_updates=max_bad_updates,
        valid_every=valid_every, valid_beam=valid_beam, valid_bleu_sentences=valid_bleu_sentences, patience=patience,
        early_stop_metric=early_stop_metric, log_every=log_every, keep_snapshots=keep_snapshots,
        average_last=average_last, compile=compile_step).items() if v is not None}
    if resume:
        if run is None:
            raise ConfigError("--resume needs --run DIR, the run directory to continue")
        if preset or config:
            raise ConfigError("--resume continues a run with its saved config; drop --config and --preset")
        saved = read_run_config(run)
        saved.train = with_resolved_paths(saved.train)
        # The same command plus --resume must work: flags may repeat saved values (paths
        # compared as the files they name), and only the stopping budget may change.
        given_train = with_resolved_paths(dataclasses.replace(saved.train, **train_flags))
        given = {**model_flags, **{name: getattr(given_train, name) for name in train_flags}}
        changed = [f"{name} (saved {getattr(section, name)!r}, given {given[name]!r})"
                   for section, flags in ((saved.model, model_flags), (saved.train, train_flags))
                   for name in flags
                   if name not in RESUME_BUDGET_FIELDS and getattr(section, name) != given[name]]
        if changed:
            raise ConfigError("--resume continues a run with its saved config; only --epochs, --max-steps, "
                              f"--max-time and --patience may change, but these differ: {'; '.join(changed)}")
        model_cfg = saved.model
        train_cfg = dataclasses.replace(saved.train, **{k: v for k, v in train_flags.items()
                                                        if k in RESUME_BUDGET_FIELDS})
        train_cfg.validate()
    else:
        model_cfg, train_cfg = resolve_train_configs(config, preset, model_flags, train_flags)
    if run is None:
        run = Path("runs") / f"{train_cfg.src_lang}-{train_cfg.tgt_lang}-{time.strftime('%Y%m%d-%H%M%S')}"
    torch_device = distributed_device(device)
    display = TrainDisplay()
    try:
        run_training(run, model_cfg, train_cfg, torch_device, resume=resume, on_event=display)
    finally:
        display.close()
        if dist.is_initialized():
            dist.destroy_process_group()
