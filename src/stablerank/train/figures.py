"""Pictures the trainers, their analyses and the reproduction report write: matplotlib figures
drawn on the Agg canvas (no pyplot global state, no display) and PNG grids of GAN samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from stablerank._optional import import_optional

__all__ = ["GRID_SIDE", "new_figure", "save_figure", "save_image_grid"]

GRID_SIDE = 8  # sample grids are 8 images wide and 8 rows high (conditional: grid_labels)
GRID_PAD = 2  # pixels between grid cells


def new_figure(figsize: tuple[float, float] = (6.4, 4.0)) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas."""
    backend = import_optional("matplotlib.backends.backend_agg", "plots")
    figure = import_optional("matplotlib.figure", "plots")
    fig = figure.Figure(figsize=figsize)
    backend.FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder is created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = GRID_SIDE) -> None:
    """Save (N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PNG grid, ``nrow`` per row."""
    image = import_optional("matplotlib.image", "sample grids")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(
        c, rows * (h + GRID_PAD) + GRID_PAD, nrow * (w + GRID_PAD) + GRID_PAD, dtype=torch.uint8
    )
    for i in range(n):
        top = GRID_PAD + (i // nrow) * (h + GRID_PAD)
        left = GRID_PAD + (i % nrow) * (w + GRID_PAD)
        grid[:, top : top + h, left : left + w] = x[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Grey images as RGB with equal channels: exact (a colormap would requantize them).
    rgb = grid.expand(3, -1, -1) if c == 1 else grid
    image.imsave(path, rgb.permute(1, 2, 0).contiguous().numpy(), format="png")
