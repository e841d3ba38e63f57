"""Figures (matplotlib, the `plot` extra), made headless and written as PNG or SVG like every output."""

from __future__ import annotations

from pathlib import Path

from ..errors import field_error
from ..files.outputs import open_output
from ..optional import require_extra


def new_figure(purpose: str, width_px: int, height_px: int, dpi: int = 100):
    """A matplotlib Figure of `width_px` x `height_px` pixels, drawn by the Agg canvas.

    No pyplot: it keeps global state and picks a GUI backend where a display
    exists. A Figure with its own Agg canvas renders headless, always, and
    `figure.savefig(path)` writes PNG or SVG by the file's extension.
    """
    require_extra("matplotlib", "plot", purpose)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


# What `save_figure` writes, by the output's extension.
FIGURE_FORMATS = {".png": "png", ".svg": "svg"}


def figure_format(path: Path | str, setting: str) -> str:
    """"png" or "svg", from `path`'s extension; a ConfigError naming `setting` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise field_error(setting, f"{path}: the picture is written as PNG or SVG, by the extension; "
                                   "name it .png or .svg")
    return FIGURE_FORMATS[suffix]


def save_figure(figure, path: Path | str, setting: str) -> None:
    """Write `figure` to `path` as its extension says (PNG or SVG), as every `-o` is written: a
    regular file replaced atomically, a FIFO or a device written through (seq2seq.files.atomic)."""
    kind = figure_format(path, setting)
    with open_output(path) as sink:
        figure.savefig(sink, format=kind, dpi=figure.dpi)
