"""What the files of a run directory and of a tokenizer folder are called.

```
runs/NAME/
  config.json          RunConfig: model + training config, format version, tokenizer sha256
  tokenizer.model      (or tokenizer.src.model + tokenizer.tgt.model), with their .vocab lists
  model.safetensors    the best weights so far: what `s2s translate` uses
  average.safetensors  the average of the last snapshots (`s2s train --average-last`)
  metrics.jsonl        one JSON record per log, validation or resume event
  tensorboard/         event files, with `s2s train --tensorboard` (seq2seq.inspection.tensorboard)
  .lock                held (flock) by the trainer writing to the run
  checkpoints/         trainer state for exact resume (seq2seq.runs.checkpoint) and
    weights/           weight snapshots for averaging (seq2seq.runs.snapshots)
```

Names only: nothing here imports torch or sentencepiece, so that a command can
tell what a folder holds (and refuse to write over it) before it loads either.
"""

from __future__ import annotations

from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# What `s2s train --average-last` writes; `s2s average` names its own outputs otherwise.
TRAINING_AVERAGE_FILE = "average.safetensors"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
SNAPSHOTS_DIR = "weights"  # under CHECKPOINTS_DIR

# A tokenizer folder (`s2s tokenizer train -o`) holds one shared model or one per side.
SHARED_FILE = "tokenizer.model"
SRC_FILE = "tokenizer.src.model"
TGT_FILE = "tokenizer.tgt.model"
# Every file a tokenizer folder may hold: the models and their readable .vocab lists.
TOKENIZER_FILES = tuple(name for model in (SHARED_FILE, SRC_FILE, TGT_FILE)
                        for name in (model, model.removesuffix(".model") + ".vocab"))

# The files training writes at the top of a run directory (and checkpoints/ below it).
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINING_AVERAGE_FILE, METRICS_FILE, LOCK_FILE, *TOKENIZER_FILES)

# A record of training's progress: what `train(on_event=...)` receives, and a line of metrics.jsonl.
Event = dict[str, Any]
