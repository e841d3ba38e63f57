"""What a training run reads, and the rule that it never writes over any of it.

Without torch, so that the command line can name a run's inputs (and refuse
stdout onto one of them) before it loads the trainer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, language_codes
from ..data.corpus_specs import corpus_paths, resolve_corpus_spec
from ..errors import ConfigError
from ..files.reads import Reads, is_inside, refuse_clobbering
from ..files.run_layout import CHECKPOINTS_DIR, RUN_FILES


def with_resolved_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its corpus and tokenizer paths absolute: a run resumes from any working
    directory, and a run directory copied elsewhere still finds its data."""
    tokenizer = str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else ""
    init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from else ""
    return dataclasses.replace(cfg, train=resolve_corpus_spec(cfg.train), valid=resolve_corpus_spec(cfg.valid),
                               tokenizer=tokenizer, init_from=init_from)


def training_reads(cfg: TrainConfig) -> Reads:
    """What training reads: the corpora (each language's PREFIX.LANG of a run of several), the
    init_from run and the tokenizer folder."""
    langs = [*language_codes(cfg.src_lang), *language_codes(cfg.tgt_lang)]
    # The init_from run before the tokenizer folder: it is that too (init_tokenizer), and named
    # as it was given.
    return (Reads().paths("the training corpus", *corpus_paths(cfg.train, langs))
            .paths("the validation corpus", *corpus_paths(cfg.valid, langs))
            .folder("the {init_from} run", cfg.init_from or None)
            .folder("the {tokenizer} folder", cfg.tokenizer or None))


def refuse_run_over_inputs(run_dir: Path, cfg: TrainConfig) -> None:
    """ConfigError if a file training writes in `run_dir` is one of the files it reads."""
    reads = training_reads(cfg)
    for name in RUN_FILES:
        refuse_clobbering("run", run_dir / name, reads)
    for label, path in reads.files:
        if is_inside(path, run_dir / CHECKPOINTS_DIR):
            raise ConfigError(f"{label} {path} lies inside {run_dir / CHECKPOINTS_DIR}, which training "
                              "rewrites; move it elsewhere")
