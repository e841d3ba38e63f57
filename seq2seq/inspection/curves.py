"""Training curves of one or more runs, from their metrics.jsonl, for `s2s plot`.

Two panels: the loss (training solid, validation dashed, one colour per run)
and the validation BLEU, against updates or against training time. Several
runs are overlaid, so that recipes can be compared on one picture.

The records are taken as the run finally saw them (`current_records`): a
resumed run repeats the updates after its last checkpoint, and its records
for those steps replace the ones the stopped run wrote, as TensorBoard's
purge_step does for the event files (seq2seq.inspection.tensorboard). A line of
metrics.jsonl that is not a record the trainer writes (one whose loss is
NaN, say) is never drawn: it is skipped and counted
(seq2seq.inspection.metrics_records), and `write_plot` returns the counts.

Labels are drawn as plain text: a folder's name is made printable, and a "$"
in it does not start matplotlib's mathtext.

matplotlib (the `plot` extra) is imported only to draw, through
seq2seq.inspection.figures.new_figure, which renders headless without pyplot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, RunDirError, field_error
from ..files.lines import printable
from ..files.outputs import check_output
from ..files.reads import Reads, refuse_clobbering
from ..files.run_layout import METRICS_FILE
from .figures import figure_format, new_figure, save_figure
from .metrics_records import MetricsRecords, read_metrics

X_AXES = ("steps", "time")
MIN_PIXELS, MAX_PIXELS = 200, 10000  # below, the panels do not fit their labels; above, memory runs out first
HOURS_FROM = 2 * 3600  # runs this long or longer are plotted in hours, shorter ones in minutes
PLOTTED = ("train", "valid")


@dataclass
class Curves:
    """One run's points: (step, seconds of training, value) for each curve; `source`: what they were read from."""

    label: str
    source: MetricsRecords
    train_loss: list[tuple[int, float, float]] = field(default_factory=list)
    valid_loss: list[tuple[int, float, float]] = field(default_factory=list)
    valid_bleu: list[tuple[int, float, float]] = field(default_factory=list)


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` without those a resume replaced: a "resume" record at step S drops the records
    before it with a step after S, which the stopped run wrote after its last checkpoint."""
    kept: list[dict[str, Any]] = []
    for record in records:
        if record.get("event") == "resume":
            kept = [r for r in kept if r.get("step") is None or r["step"] <= record["step"]]
        kept.append(record)
    return kept


def training_seconds(records: list[dict[str, Any]]) -> list[float | None]:
    """For each of `records` (as `current_records` gives them), the seconds of training before it:
    wall-clock time since the run's first record, leaving out the pause between a stopped run and
    its resumption (from each "resume" record, time goes on from the last train or valid record
    before it), so the curve is that of the run as if it had never stopped. None for records
    that are not plotted."""
    times = [r.get("time") for r in records]
    if not records or times[0] is None:
        return [None] * len(records)
    shift, last, seconds = times[0], 0.0, []
    for record, when in zip(records, times):
        if record.get("event") == "resume" and when is not None:
            shift = when - last
        if record.get("event") in PLOTTED and when is not None:
            last = when - shift
            seconds.append(last)
        else:
            seconds.append(None)
    return seconds


def read_curves(run: Path, label: str, x: str) -> Curves:
    """The curves of the run in `run`; a RunDirError or DataError names the folder or file at fault."""
    path = Path(run) / METRICS_FILE
    if not Path(run).is_dir():
        raise RunDirError(f"{run}: no such run directory")
    if not path.is_file():
        raise RunDirError(f"{path}: no such file (is {run} a run directory that has trained?)")
    metrics = read_metrics(run)
    records = current_records(metrics.records)
    if not any(r.get("event") in PLOTTED for r in records):
        skipped = f" ({metrics.skipped_records()}, {metrics.first_skipped})" if metrics.skipped else ""
        raise DataError(f"{path}: no train or valid records to plot{skipped}")
    seconds = training_seconds(records)
    if x == "time" and any(s is None for s, r in zip(seconds, records) if r.get("event") in PLOTTED):
        raise DataError(f'{path}: records without a "time" (written by an older s2s); plot it with {{x}} steps',
                        ("x",))
    curves = Curves(label, metrics)
    for record, when in zip(records, seconds):  # each record's fields are checked (metrics_records.RECORDS)
        if record["event"] == "train" and record["loss"] is not None:
            curves.train_loss.append((record["step"], when, record["loss"]))
        elif record["event"] == "valid":
            curves.valid_loss.append((record["step"], when, record["valid_loss"]))
            curves.valid_bleu.append((record["step"], when, record["valid_bleu"]))
    return curves


def run_labels(runs: list[Path], labels: list[str] | None) -> list[str]:
    """`labels` if given, one per run; otherwise each run folder's name, or its path as given
    where two runs share a name; made printable."""
    if labels:
        if len(labels) != len(runs):
            raise ConfigError(f"{{label}} is given {len(labels)} times for {len(runs)} runs; give it once per run, "
                              "in the order of the runs", ("label",))
        return [printable(label) for label in labels]
    names = [Path(run).resolve().name or str(run) for run in runs]
    return [printable(name if names.count(name) == 1 else str(run)) for name, run in zip(names, runs)]


def check_plot_options(x: str, width: int, height: int) -> None:
    if x not in X_AXES:
        raise field_error("x", f"must be one of {', '.join(X_AXES)}, got {x!r}")
    for name, value in (("width", width), ("height", height)):
        if not MIN_PIXELS <= value <= MAX_PIXELS:
            raise field_error(name, f"must be from {MIN_PIXELS} to {MAX_PIXELS} pixels, got {value}")


def draw(curves: list[Curves], x: str, width: int, height: int):
    """The matplotlib Figure of `curves`, `width` x `height` pixels: loss and BLEU side by side."""
    figure = new_figure("s2s plot", width, height)
    loss_axes, bleu_axes = figure.subplots(1, 2)
    longest = max((point[1] or 0.0 for c in curves for points in (c.train_loss, c.valid_loss) for point in points),
                  default=0.0)
    unit, per = ("hours", 3600.0) if longest >= HOURS_FROM else ("minutes", 60.0)

    def xs(points: list[tuple[int, float, float]]) -> list[float]:
        return [step if x == "steps" else seconds / per for step, seconds, _ in points]

    for index, run in enumerate(curves):
        colour = f"C{index % 10}"  # matplotlib's default cycle: one colour per run, on both panels
        if run.train_loss:
            loss_axes.plot(xs(run.train_loss), [v for *_, v in run.train_loss], color=colour, linestyle="-",
                           label=f"{run.label} train")
        if run.valid_loss:
            loss_axes.plot(xs(run.valid_loss), [v for *_, v in run.valid_loss], color=colour, linestyle="--",
                           marker="o", markersize=3, label=f"{run.label} valid")
        if run.valid_bleu:
            bleu_axes.plot(xs(run.valid_bleu), [v for *_, v in run.valid_bleu], color=colour, marker="o",
                           markersize=3, label=run.label)
    xlabel = "updates" if x == "steps" else f"training time ({unit})"
    # The training loss is label-smoothed; the validation loss is the plain NLL per target token.
    loss_axes.set(title="Loss", xlabel=xlabel, ylabel="loss per target token (train smoothed, valid NLL)")
    bleu_axes.set(title="Validation BLEU", xlabel=xlabel, ylabel="BLEU")
    for axes in (loss_axes, bleu_axes):
        axes.set_xlim(left=0)  # every run from its start, so that runs line up
        axes.grid(True, alpha=0.3)
        if axes.has_data():
            for text in axes.legend(fontsize="small").get_texts():
                text.set_parse_math(False)  # a folder's name is text, not mathtext
    if not bleu_axes.has_data():
        bleu_axes.text(0.5, 0.5, "no validation records", ha="center", va="center", transform=bleu_axes.transAxes)
    figure.tight_layout()
    return figure


def write_plot(runs: list[Path], output: Path, x: str = "steps", labels: list[str] | None = None,
               width: int = 1200, height: int = 500) -> list[MetricsRecords]:
    """Draw the runs' curves into `output` (PNG or SVG by its extension); returns each run's
    records as read, with the count of lines skipped as bad.

    Everything is checked before anything is drawn: the options, the output
    (which may not lie in any of the runs, since they are read), and every
    run's metrics. The file is replaced atomically (seq2seq.files.atomic).
    """
    reads = Reads()
    for run in runs:
        reads.folder("the run directory", run)
    refuse_clobbering("output", output, reads)  # first: `-o RUN/metrics.jsonl` is refused as what it is
    check_output(output, "output")
    figure_format(output, "output")
    check_plot_options(x, width, height)
    names = run_labels(runs, labels)
    curves = [read_curves(Path(run), label, x) for run, label in zip(runs, names)]
    save_figure(draw(curves, x, width, height), output, "output")
    return [run.source for run in curves]
