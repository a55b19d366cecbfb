"""Image grids that explain themselves: a title, row and column labels and per-tile notes around the pixels.

Every grid a command shares (visualizations, attacks, analysis figures, training panels) is drawn by
:func:`grid_figure`; :func:`captioned_row` puts captions above full-resolution images placed side by side
(``cnnlab-colorize --panel``), where the pixels must stay as they are.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch

from cnnlab.tiles import enlarge

#: tiles are enlarged (nearest neighbours) to at least this many pixels, so 32-px images read in a shared PNG
MIN_TILE = 96


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_figure(images: torch.Tensor, nrow: int, title: str | None = None, rows: Sequence[str] | None = None,
                cols: Sequence[str] | None = None, notes: Sequence[str] | None = None, caption: str | None = None,
                min_tile: int = MIN_TILE, padding: int = 4, dpi: int = 100):
    """``(B, C, H, W)`` images in [0, 1] (C = 1 or 3), ``nrow`` per row, as a matplotlib figure at about one
    screen pixel per image pixel.

    ``rows`` labels each row on the left, ``cols`` each column on top, ``notes`` each tile (in order) in a
    strip under it (a predicted class, a confidence); ``title`` (bold) and ``caption`` (what is shown, how it was
    made) go above, wrapped to the figure's width.
    """
    plt = _plt()
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    tiles = enlarge(images, min_tile)
    th, tw = tiles.shape[-2:]
    note_h = 16 if notes else 0
    if notes:  # a white strip under each tile for its note
        tiles = torch.cat([tiles, torch.ones(len(tiles), 3, note_h, tw)], 2)
    grid = make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0).permute(1, 2, 0).numpy()
    n_rows, n_cols = -(-len(images) // nrow), min(nrow, len(images))
    cell_h, cell_w = th + note_h + padding, tw + padding
    left = 8 + 7 * max((len(r) for r in rows), default=0) if rows else 8
    width = max(grid.shape[1] + left + 8, 400)
    title_lines = textwrap.wrap(title, width // 8) if title else []
    caption_lines = textwrap.wrap(caption, width // 6) if caption else []
    heading = 16 * len(title_lines) + 12 * len(caption_lines)
    top = 10 + heading + (12 * max(len(str(c).split("\n")) for c in cols) + 4 if cols else 0)
    height = grid.shape[0] + top + 6
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((left / width, 6 / height, grid.shape[1] / width, grid.shape[0] / height))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title_lines:
        fig.text(0.5, 1 - 4 / height, "\n".join(title_lines), ha="center", va="top", fontsize=10, weight="bold")
    if caption_lines:
        fig.text(0.5, 1 - (6 + 16 * len(title_lines)) / height, "\n".join(caption_lines), ha="center", va="top", fontsize=8)
    for j, label in enumerate(cols or []):
        ax.text(padding + j * cell_w + tw / 2, -2, str(label), ha="center", va="bottom", fontsize=8)
    for i, label in enumerate(rows or []):
        ax.text(-6, padding + i * cell_h + th / 2, str(label), ha="right", va="center", fontsize=8)
    for k, note in enumerate(notes or []):
        r, c = divmod(k, nrow)
        ax.text(padding + c * cell_w + tw / 2, padding + r * cell_h + th + note_h / 2, str(note), ha="center",
                va="center", fontsize=7)
    fig.n_grid = (n_rows, n_cols)  # for tests: the grid the labels describe
    return fig


def figure_labels(fig) -> list[str]:
    """Every text drawn on a figure (titles, labels, notes, legend entries): what tests check a figure says."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, *ax.get_xticklabels(), *ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            texts += legend.get_texts()
    return [t.get_text() for t in texts if t.get_text()]


def captioned_row(parts: Sequence[np.ndarray], captions: Sequence[str], gap: int = 8) -> np.ndarray:
    """``(H, W_i, 3)`` uint8 images side by side with ``gap`` white pixels between them and a white caption strip
    above each (its text scaled to the image height); the pixels of the images are unchanged."""
    from PIL import Image, ImageDraw, ImageFont

    h = max(p.shape[0] for p in parts)
    size = max(12, h // 24)
    strip = size * 2
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    canvas = np.full((h + strip, width, 3), 255, np.uint8)
    x = 0
    for p in parts:
        canvas[strip:strip + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=size)
    x = 0
    for p, caption in zip(parts, captions):
        draw.text((x + p.shape[1] / 2, strip / 2), caption, fill=(0, 0, 0), font=font, anchor="mm")
        x += p.shape[1] + gap
    return np.asarray(im)
