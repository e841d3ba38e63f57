"""Rich rendering: training progress and score tables. Everything goes to stderr but tables."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # only a type here; importing seq2seq.scores loads sacrebleu, too slow for `--help`
    from seq2seq.scores import MetricScore

# soft_wrap: a message or a path is never broken across lines.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False)


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}")


def warning(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}")


def bleu_text(record: dict[str, Any]) -> str:
    """"BLEU 30.12" of a validation record; for a run of several directions, "BLEU 30.12 (mean of en-de
    28.00, en-fr 40.10, en-cs 22.26)"."""
    by_direction = record.get("valid_bleu_by_direction")
    each = (" (mean of " + ", ".join(f"{direction} {bleu:.2f}" for direction, bleu in by_direction.items()) + ")"
            if by_direction else "")
    return f"BLEU {record['valid_bleu']:.2f}{each}"


class TrainDisplay:
    """Draws training events: a live progress bar on a terminal, one line per record otherwise."""

    def __init__(self, console: Console = stderr):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "data":
            dropped = event["too_long"] + event["empty"]
            self.console.print(
                f"{event['split']}: {event['pairs']:,} pairs from {escape(event['corpus'])}, "
                f"kept {event['kept']:,} (dropped {event['too_long']:,} longer than "
                f"{event['max_len']} tokens and {event['empty']:,} with an empty side)"
                if dropped else
                f"{event['split']}: {event['pairs']:,} pairs from {escape(event['corpus'])}")
        elif kind == "tokenizer":
            self.console.print(f"training a {event['vocab_size']:,}-piece sentencepiece tokenizer")
        elif kind == "start":
            self.start(event)
        elif kind == "train":
            self.train(event)
        elif kind == "valid":
            star = " [green]★ best[/]" if event["best"] else ""
            self.console.print(
                f"valid  step {event['step']:>6}  epoch {event['epoch']:>6.2f}  "
                f"loss {event['valid_loss']:.3f}  ppl {event['valid_ppl']:.2f}  "
                f"{bleu_text(event)}{star}")
        elif kind == "valid_cut":
            done = f"{event['done']:,} of {event['sentences']:,} sentences translated" if event["stage"] == "BLEU" \
                else "during the loss pass"
            self.console.print(f"[yellow]validation at step {event['step']} stopped by {event['reason']} "
                               f"({done}); not used to choose the model, and redone on --resume[/]")
        elif kind == "start_over":
            self.console.print(f"{escape(event['run_dir'])} held a run that stopped before its first checkpoint; "
                               "starting it over")
        elif kind == "resume":
            self.console.print(f"resumed at step {event['step']} (epoch {event['epoch']:.2f})")
        elif kind == "skip":
            self.console.print(f"[yellow]skipped {event['skipped']} update(s) by step {event['step']}: "
                               f"{event['reason']} ({event['in_a_row']} in a row now)[/]")
        elif kind == "oom":
            self.console.print(f"[yellow]out of memory at step {event['step']}: {event['action']}; "
                               f"batches of at most {event['max_tokens_from_next_epoch']:,} tokens "
                               "from the next epoch[/]")
        elif kind == "average":
            bleu = f": {bleu_text(event)}" if "valid_bleu" in event else ""
            verdict = ("kept as the model" if event["kept"] else
                       f"not validated ({event['cut']}); not kept" if "cut" in event else
                       "not better than the best checkpoint; not kept")
            self.console.print(f"average of steps {event['averaged_steps']}{bleu}, {verdict}")
        elif kind == "stop":
            self.close()
            best = event["best"]
            summary = (f"; best validation BLEU {best['valid_bleu']:.2f} at step {best['step']}"
                       if best else "")
            self.console.print(f"stopped ({event['reason']}) after {event['step']:,} updates{summary}")
            if event.get("unvalidated_model"):
                self.console.print("[yellow]no validation finished in time: model.safetensors holds the "
                                   "latest weights, unvalidated[/]")

    def start(self, event: dict[str, Any]) -> None:
        world = event["world_size"]
        processes = f" x {world} processes" if world > 1 else ""
        self.console.print(
            f"model: {event['params'] / 1e6:.1f}M parameters on {event['device']}{processes} in "
            f"{event['precision']}; {event['updates_per_epoch']:,} updates per epoch; run directory "
            f"{escape(event['run_dir'])}")
        if event["init_from"] and not event["step"]:
            self.console.print(f"starting from the weights of {escape(event['init_from'])}")
        if event["tensorboard"]:
            self.console.print(f"TensorBoard events in {escape(event['tensorboard'])} "
                               f"(tensorboard --logdir {escape(event['tensorboard'])})")
        if not self.console.is_terminal:
            return
        total = event["total_steps"] or None
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=total, completed=event["step"], stats="")
        self.progress.start()

    def train(self, event: dict[str, Any]) -> None:
        loss = "-" if event["loss"] is None else f"{event['loss']:.3f}"  # None: every update was skipped
        stats = (f"loss {loss}  lr {event['lr']:.2e}  "
                 f"{event['tgt_tokens_per_s'] / 1000:.1f}k tok/s  {event['model_tflops_per_s']:.2f} TFLOP/s  "
                 f"epoch {event['epoch']:.2f}")
        if self.progress is not None:
            self.progress.update(self.task, completed=event["step"], stats=stats)
        else:
            self.console.print(f"train  step {event['step']:>6}  {stats}  {event['elapsed']:.0f}s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _is_terminal(output: Path | str | None) -> bool:
    """True if `output` ("-" for stdout; None for none) is a terminal: where a progress bar would garble it."""
    if output is None:
        return False
    if str(output) == "-":
        return sys.stdout is not None and sys.stdout.isatty()
    try:
        is_device = stat.S_ISCHR(os.stat(output).st_mode)
    except OSError:
        return False
    return is_device and os.path.realpath(output).startswith(("/dev/pts/", "/dev/tty", "/dev/console"))


class LinesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} lines/s" if task.speed else "")


@contextlib.contextmanager
def line_progress(total: int, output: Path | str | None, label: str = "translate") -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr of `total` lines (done, lines/s, ETA), shown only where stderr is a
    terminal and `output`, where the lines are written ("-": stdout; None: nowhere), is not: nothing
    on a pipe or in a log. Yields advance(lines)."""
    if not stderr.is_terminal or _is_terminal(output):
        yield lambda lines: None
        return
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("lines"),
                        LinesPerSecond(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr)
    task = progress.add_task(label, total=total)
    with progress:
        yield lambda lines: progress.advance(task, lines)


def score_table(scores: list[MetricScore], title: str) -> Table:
    """Metric and score; the signatures are printed below the table, where they are never wrapped."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("score", justify="right")
    for s in scores:
        table.add_row(s.name, f"{s.score:.2f}")
    return table
