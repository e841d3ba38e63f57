"""Optional extras (pyproject's optional-dependencies): imported only by what needs them.

A missing extra is a ConfigError that names what needed it and the pip
command that installs it, so the CLI prints one `error:` line, never an
ImportError's traceback. Figures (matplotlib, the `plot` extra) are made and
saved here, and `printable` makes the text they show (file names above all)
fit for any font and any UTF-8 output.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from .errors import ConfigError
from .files.atomic import open_output


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """`import module`, or a ConfigError: "`purpose` needs the `extra` extra: pip install 's2s[extra]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{purpose} needs the optional {extra} extra ({err}): "
                          f"pip install 's2s[{extra}]'") from None


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


# Control characters, which would break a label's line or drive a terminal, and lone surrogates, which
# no UTF-8 output and no font takes: Python holds each byte of a file name that is not UTF-8 as one
# (os.fsdecode).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # the byte os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    return repr(match.group())[1:-1]  # as Python writes it: "\\t", "\\x1b", "\\ud800"


def printable(text: str) -> str:
    """`text` (a label, a file name) as one line that any UTF-8 output and matplotlib can show: a
    byte of a file name that is not UTF-8 as a backslash escape, "\\xff", and so are control characters."""
    return _UNPRINTABLE.sub(_escaped, text)


# What `save_figure` writes, by the output's extension.
FIGURE_FORMATS = {".png": "png", ".svg": "svg"}


def figure_format(path: Path | str, option: str) -> str:
    """"png" or "svg", from `path`'s extension; a ConfigError naming `option` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ConfigError(f"{option} {path}: the picture is written as PNG or SVG, by the extension; "
                          "name it .png or .svg")
    return FIGURE_FORMATS[suffix]


def save_figure(figure, path: Path | str, option: str) -> None:
    """Write `figure` to `path` as its extension says (PNG or SVG), as every `-o` is written: a
    regular file replaced atomically, a FIFO or a device written through (seq2seq.files.atomic)."""
    kind = figure_format(path, option)
    with open_output(path) as sink:
        figure.savefig(sink, format=kind, dpi=figure.dpi)
