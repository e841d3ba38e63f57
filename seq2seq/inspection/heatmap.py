"""An attention map (`seq2seq.inspection.alignment.AttentionMap`) drawn as a labelled heatmap, PNG or SVG.

matplotlib is the optional `plot` extra, drawn headless (`seq2seq.inspection.figures.new_figure`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .alignment import AttentionMap
from .figures import new_figure, save_figure

_CELL_PX = 26  # one source or output piece
_MARGIN_PX = 170  # room for the piece labels, the title and the colour bar


def draw_attention(attention: AttentionMap, weights: np.ndarray, what: str, path: Path | str, setting: str) -> None:
    """Write `weights` (T, S), from `attention.heads`, as a heatmap: source pieces along the x axis,
    output pieces down the y axis, one cell each; `what` says which heads they are in the title. `setting`
    names where `path` came from in errors."""
    rows, columns = weights.shape
    figure = new_figure("drawing an attention heatmap", width_px=max(480, _MARGIN_PX + 60 + _CELL_PX * columns),
                        height_px=max(360, _MARGIN_PX + _CELL_PX * rows))
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="Blues", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto",
                        interpolation="nearest")
    axes.set_xticks(range(columns), attention.source_pieces, rotation=90, fontsize=9)
    axes.set_yticks(range(rows), attention.output_pieces, fontsize=9)
    axes.set_xlabel("source pieces")
    axes.set_ylabel("output pieces")
    axes.set_title(f"cross-attention, decoder layer {attention.layer}, {what}", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    figure.tight_layout()
    save_figure(figure, path, setting)
