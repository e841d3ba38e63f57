"""Which records a run's metrics.jsonl holds: writing them, and reading them back.

The trainer appends one JSON object per line (`MetricsLog`), whose "event"
names its kind: the data read, a "train" record every
--log-every updates, a "valid" record per validation, a validation cut short,
skipped or split updates, a resume, the average of the last snapshots, and
the stop. RECORDS states every kind's fields and their types: what the
trainer writes, said once, and what every reader checks each line against.

A line that is not such a record is skipped and counted, never read as data:
one that is not UTF-8 or not JSON, not an object, of an unknown kind, without
a field that kind always has, with a field of another type, or with a number
that is not finite. The trainer writes no such number: an update whose loss
or gradients are not finite is skipped and left out of the logged loss
(seq2seq.training.bad_updates), and validation runs only on finite weights.
A damaged line costs its own record, not the run's history, and the reader
says how many it skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files.atomic import FILE_MODE
from ..files.lines import open_binary, raw_lines
from ..files.run_layout import METRICS_FILE, Event


@dataclass(frozen=True)
class FieldType:
    """What a field's value must be: `accepts` says whether a parsed JSON value is one; `name` says what it is."""

    name: str
    accepts: Callable[[Any], bool]


# bool is a subclass of int in Python, but true is not a count in JSON.
COUNT = FieldType("a whole number from 0", lambda value: type(value) is int and value >= 0)
NUMBER = FieldType("a finite number", lambda value: type(value) in (int, float) and math.isfinite(value))
NUMBER_OR_NULL = FieldType("a finite number or null", lambda value: value is None or NUMBER.accepts(value))
TEXT = FieldType("a string", lambda value: isinstance(value, str))
FLAG = FieldType("true or false", lambda value: isinstance(value, bool))
RECORD_OR_NULL = FieldType("an object or null", lambda value: value is None or isinstance(value, dict))
NUMBERS_BY_NAME = FieldType("an object of finite numbers",
                            lambda value: isinstance(value, dict) and all(NUMBER.accepts(item) for item in value.values()))
TEXTS = FieldType("a list of strings", lambda value: isinstance(value, list) and all(isinstance(item, str)
                                                                                      for item in value))

# Records written before they carried their wall-clock time lack it; `s2s plot --x time` needs it.
EVERY_RECORD = {"time": NUMBER}


@dataclass(frozen=True)
class RecordKind:
    """The fields of one kind of record: those it always has, and those it has only sometimes."""

    required: dict[str, FieldType]
    optional: dict[str, FieldType] = field(default_factory=dict)

    @property
    def types(self) -> dict[str, FieldType]:
        """Every field this kind may have, with its type."""
        return {**self.required, **self.optional, **EVERY_RECORD}


# A validation's scores (seq2seq.training.validation.Validation.measure). With several directions,
# valid_bleu is the mean of their BLEU, and BY_DIRECTION ({"en-de": 31.2, ...}) has each.
SCORES = {"valid_loss": NUMBER, "valid_ppl": NUMBER, "valid_bleu": NUMBER, "bleu_signature": TEXT,
          "valid_beam": COUNT}
BY_DIRECTION = {"valid_bleu_by_direction": NUMBERS_BY_NAME}

# The optional fields marked "older" are in every record of their kind that s2s writes now, but
# not in those of older versions, which are still read.
RECORDS: dict[str, RecordKind] = {
    "data": RecordKind({"split": TEXT, "corpus": TEXT, "pairs": COUNT, "kept": COUNT, "too_long": COUNT,
                        "empty": COUNT, "max_len": COUNT}),
    # loss is null for an interval whose every update was skipped (seq2seq.training.events.LogInterval).
    "train": RecordKind({"step": COUNT, "epoch": NUMBER, "loss": NUMBER_OR_NULL, "lr": NUMBER, "tgt_tokens_per_s": NUMBER,
                         "elapsed": NUMBER},
                        {"model_tflops_per_s": NUMBER}),  # older
    "valid": RecordKind({"step": COUNT, "epoch": NUMBER, **SCORES, "best": FLAG}, BY_DIRECTION),
    "valid_cut": RecordKind({"step": COUNT, "reason": TEXT, "stage": TEXT, "done": COUNT, "sentences": COUNT}),
    "skip": RecordKind({"step": COUNT, "reason": TEXT, "in_a_row": COUNT},
                       {"skipped": COUNT}),  # older
    "oom": RecordKind({"step": COUNT, "action": TEXT, "max_tokens_from_next_epoch": COUNT}),
    "resume": RecordKind({"step": COUNT, "epoch": NUMBER}),
    # An epoch's batches, their distinct (rows, source width, target width) shapes, and their padding
    # over the real tokens (seq2seq.data.shape_ladder); the seconds of warming up new shapes with CUDA graphs.
    "batch_shapes": RecordKind({"epoch": COUNT, "batches": COUNT, "shapes": COUNT, "padding": NUMBER,
                                "shape_ladder": FLAG}, {"warmup_seconds": NUMBER}),
    # The scores only with a validation set; "cut" (its reason) when the average's validation was cut short.
    "average": RecordKind({"step": COUNT, "averaged_steps": TEXT, "kept": FLAG}, {**SCORES, **BY_DIRECTION, "cut": TEXT}),
    # "best": the best "valid" record, or null without one.
    "stop": RecordKind({"reason": TEXT, "step": COUNT, "best": RECORD_OR_NULL},
                       {"unvalidated_model": FLAG, "rank_weights_sha256": TEXTS}),  # older
}


class BadRecord(ValueError):
    """A line of metrics.jsonl that is not a record the trainer writes; the message says why."""


def check_record(record: Any) -> Event:
    """`record` (a parsed line) if it is a record the trainer writes, else a BadRecord saying why.
    Fields that RECORDS does not name are let through: a later s2s may add some."""
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    event = record.get("event")
    if not isinstance(event, str) or event not in RECORDS:
        raise BadRecord('no known "event"')
    kind = RECORDS[event]
    for name in kind.required:
        if name not in record:
            raise BadRecord(f'a "{event}" record without "{name}"')
    for name, type_ in kind.types.items():
        if name in record and not type_.accepts(record[name]):
            raise BadRecord(f'"{name}" of a "{event}" record is not {type_.name}')
    return record


def parse_record(line: bytes) -> Event:
    """The record on one line of metrics.jsonl, or a BadRecord saying why there is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("not UTF-8") from None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise BadRecord("not JSON") from None
    return check_record(record)


@dataclass
class MetricsRecords:
    """The records of one metrics.jsonl that the trainer wrote, in order, and the lines skipped
    as not being such records. Iterating over it gives the records."""

    path: Path
    records: list[Event] = field(default_factory=list)
    skipped: int = 0
    first_skipped: str = ""  # where the first skipped line is, and why it was skipped

    def __iter__(self) -> Iterator[Event]:
        return iter(self.records)

    def skip(self, line: int, why: str) -> None:
        if not self.skipped:
            self.first_skipped = f"the first on line {line}: {why}"
        self.skipped += 1

    def skipped_records(self) -> str:
        """"skipped 3 bad records", or "skipped 1 bad record"."""
        return f"skipped {self.skipped} bad {'record' if self.skipped == 1 else 'records'}"

    def skipped_message(self) -> str:
        """What a reader warns of: "skipped 3 bad records in RUN/metrics.jsonl (the first on line 7: not JSON)"."""
        return f"{self.skipped_records()} in {self.path} ({self.first_skipped})"


def read_metrics(folder: Path | str) -> MetricsRecords:
    """The records of `folder`'s metrics.jsonl (none if it has none), each one the trainer writes;
    other lines are skipped and counted. A DataError names a file that cannot be read."""
    metrics = MetricsRecords(Path(folder) / METRICS_FILE)
    if not metrics.path.is_file():
        return metrics
    with open_binary(metrics.path) as stream:
        for number, line in enumerate(raw_lines(stream, str(metrics.path)), start=1):
            if not line.strip():  # holds no record, so loses none
                continue
            try:
                metrics.records.append(parse_record(line))
            except BadRecord as bad:
                metrics.skip(number, str(bad))
    return metrics


class MetricsLog:
    """Appends one JSON record per line to metrics.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def write(self, record: Event) -> None:
        # One write() on an O_APPEND descriptor: a process killed at any moment
        # leaves whole records only, never half a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
