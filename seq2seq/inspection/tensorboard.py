"""TensorBoard event files of a training run, written from the records that go to metrics.jsonl.

`s2s train --tensorboard` (into RUN/tensorboard) or `--tensorboard-dir DIR`
hands every record the trainer writes to metrics.jsonl to a
`TensorBoardSink` too, so the two never disagree: each scalar is logged at
the record's update step, with the record's wall-clock "time" as its wall
time, and TensorBoard's relative-time axis is the run's own.

A resumed run writes into the same folder, in a new event file opened with
`purge_step = step + 1` (step being the checkpoint it resumed from): records
that a killed run wrote after its last checkpoint are hidden by TensorBoard
itself, and the resumed run's own records for those steps take their place.
metrics.jsonl keeps both, in order (see seq2seq.inspection.curves.current_records).

torch.utils.tensorboard needs the optional tensorboard package (the
`tensorboard` extra); it is imported only when a sink is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files.reads import Reads, is_inside, refuse_folder_over_reads, same_file
from ..files.run_layout import CHECKPOINTS_DIR, RUN_FILES, TENSORBOARD_DIR
from ..optional import require_extra

# Which fields of which records become which scalars. Tags are grouped by
# prefix, as TensorBoard shows them: one panel group for training, one for validation.
SCALARS: dict[str, dict[str, str]] = {
    "train": {"loss": "train/loss", "lr": "train/lr", "tgt_tokens_per_s": "train/tgt_tokens_per_s",
              "model_tflops_per_s": "train/model_tflops_per_s"},
    "valid": {"valid_loss": "valid/loss", "valid_ppl": "valid/ppl", "valid_bleu": "valid/bleu"},
    # Updates skipped for a non-finite loss or gradient since the previous "skip" record.
    "skip": {"skipped": "train/skipped_updates"},
}


def scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The (tag, value) pairs a metrics record is logged as; [] for records TensorBoard does not show."""
    fields = SCALARS.get(record.get("event"), {})
    found = [(tag, float(record[key])) for key, tag in fields.items() if record.get(key) is not None]
    if record.get("event") == "valid":
        # A run of several directions: each direction's BLEU beside their mean (valid/bleu).
        found += [(f"valid/bleu_{direction}", float(bleu))
                  for direction, bleu in record.get("valid_bleu_by_direction", {}).items()]
    return found


def tensorboard_folder(run_dir: Path, folder: Path | None, resume: bool) -> Path | None:
    """The folder a training run writes its events to: `folder` if given; on resume, the run's
    own RUN/tensorboard if it has one, so that a resumed run keeps its curves going without
    being asked again; otherwise None (no TensorBoard)."""
    if folder is not None:
        return Path(folder)
    own = Path(run_dir) / TENSORBOARD_DIR
    return own if resume and own.is_dir() else None


def refuse_tensorboard_folder(folder: Path, run_dir: Path, reads: Reads) -> None:
    """ConfigError unless `folder` may hold event files: it must not be or lie in anything
    training reads (`reads`), nor lie in the run's checkpoints folder, which training rewrites,
    nor be one of the files training writes in the run, nor be any other existing file."""
    refuse_folder_over_reads("tensorboard_dir", folder, reads)
    label = "the TensorBoard folder"
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    if is_inside(folder, checkpoints):
        raise ConfigError(f"{label} {folder} lies inside {checkpoints}, which training rewrites; "
                          "write the events elsewhere")
    for name in RUN_FILES:
        if same_file(folder, Path(run_dir) / name):
            raise ConfigError(f"{label} {folder} is {Path(run_dir) / name}, a file training writes; "
                              "write the events elsewhere")
    existing = next((path for path in (folder, *folder.parents) if os.path.lexists(path)), None)
    if existing is not None and not os.path.isdir(existing):  # SummaryWriter could not create it
        raise ConfigError(f"{label} {folder} exists and is not a folder" if existing == folder else
                          f"{label} {folder} lies under {existing}, which is not a folder")


def require_tensorboard():
    """torch.utils.tensorboard, or a ConfigError naming the extra that installs it."""
    return require_extra("torch.utils.tensorboard", "tensorboard", "writing TensorBoard event files")


class TensorBoardSink:
    """Logs metrics records as TensorBoard scalars, through torch.utils.tensorboard.SummaryWriter."""

    def __init__(self, folder: Path | str, purge_step: int | None = None):
        summary = require_tensorboard()
        self.folder = Path(folder)
        try:
            self.writer = summary.SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)
        except OSError as err:
            raise ConfigError(f"the TensorBoard folder {self.folder} cannot be written "
                              f"({err.strerror or err})") from None

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=record["step"], walltime=record["time"])
        if record.get("event") == "valid":
            # The writer flushes by itself every 2 minutes; a validation is worth seeing at once.
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
