"""`s2s info RUN`: what a run directory or an exported folder holds, in one panel or as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from seq2seq.config import language_codes
from seq2seq.files.lines import printable
from seq2seq.files.reads import Reads, refuse_stdout_clobbering

from .display import bleu_text, stdout, warning
from .translate import model_label

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One block character per value, from the lowest to the highest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(_BARS[round((value - low) / span * (len(_BARS) - 1))] for value in values)


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def printable_data(data: Any) -> Any:
    """`data` with every string in it made printable (seq2seq.files.lines.printable): a folder or file
    name that is not UTF-8 would fail on a UTF-8 stdout."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_data(key): printable_data(value) for key, value in data.items()}
    if isinstance(data, list):
        return [printable_data(value) for value in data]
    return data


def languages_line(languages: dict[str, Any]) -> str:
    """"en -> de, fr, cs", and for a model that writes several languages, how it is told which."""
    line = f"{', '.join(language_codes(languages['source']))} -> {', '.join(language_codes(languages['target']))}"
    where = {"source": "first in the source", "target": "forced as the first output token"}.get(languages["lang_tag"])
    return line + (f"; --tgt-lang chooses, by a <2xx> tag {where} (lang_tag {languages['lang_tag']})" if where
                   else "")


def shapes_line(shapes: dict[str, Any]) -> str:
    """"36 shapes in 130 batches an epoch, padded positions 8.8% over the real tokens; shape ladder on"."""
    ladder = "on" if shapes["shape_ladder"] else "off"
    warm_up = f", {shapes['warmup_seconds']:.1f} s of warm-up" if shapes["warmup_seconds"] is not None else ""
    return (f"{shapes['shapes']:,} shapes in {shapes['batches']:,} batches an epoch, padded positions "
            f"{100 * shapes['padding']:.1f}% over the real tokens; shape ladder {ladder}{warm_up}")


def render(info: dict[str, Any]):
    """The rich panel of `describe`'s data."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    model, training, validation = info["model"], info["training"], info["validation"]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()

    def add_row(name: str, value: str) -> None:
        table.add_row(name, Text(value))  # as text, not rich markup: "[" may be in a file name

    add_row("kind", info["kind"])
    add_row("languages", languages_line(info["languages"]))
    variants = ", ".join(f"{key} {value}" for key, value in model["variants"].items())
    add_row("model", f"{model['preset']} preset, {model['parameters']:,} parameters: {model['encoder_layers']}"
            f"+{model['decoder_layers']} layers, d_model {model['d_model']}, {model['n_heads']} heads, "
            f"FFN {model['ffn_dim']}; {variants}")
    tokenizer = info["tokenizer"]
    hashes = "; ".join(f"{name} sha256 {sha[:16]}…" for name, sha in tokenizer["sha256"].items())
    add_row("tokenizer", f"{tokenizer['type']}, vocabulary {tokenizer['src_vocab_size']:,} / "
            f"{tokenizer['tgt_vocab_size']:,}; {hashes}")
    pairs = ", ".join(f"{split} {count:,} pairs" for split, count in info["data"]["pairs"].items())
    add_row("data", f"train {info['data']['train']}, valid {info['data']['valid']}" + (f"; {pairs}" if pairs
                                                                                         else ""))
    add_row("training", f"{training['updates']:,} updates, {training['epochs']:.2f} epochs, "
            f"{training['seconds'] / 60:,.1f} minutes")
    if training["batch_shapes"]:
        add_row("batches", shapes_line(training["batch_shapes"]))
    if validation["best_bleu"] is not None:
        curve = sparkline([bleu for _, bleu in validation["bleu"]])
        best = bleu_text({"valid_bleu": validation["best_bleu"],
                          "valid_bleu_by_direction": validation["best_bleu_by_direction"]})
        add_row("validation", f"best {best} at update {validation['best_step']:,}  {curve}")
    else:
        add_row("validation", "no validation BLEU recorded")
    add_row("files", "\n".join(f"{name}  {_size(size)}" for name, size in info["files"].items()))
    add_row("translate", info["translate"])
    return Panel(table, title=Text(f"s2s info {info['folder']}"), expand=False)


def info_command(
    model: Annotated[Path, typer.Argument(help="Run directory, or a folder written by `s2s export`.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
) -> None:
    """What a run holds: languages, model, tokenizer, data, training, best BLEU, files, and how to use it."""
    refuse_stdout_clobbering(Reads().folder(model_label(model), model))
    from seq2seq.inspection.summary import describe

    info = printable_data(describe(model))
    if as_json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        stdout.print(render(info))
    if info["skipped_metrics"]:  # describe() used the good records only; say how many it did not
        warning(info["skipped_metrics"])
