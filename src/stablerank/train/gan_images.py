"""Sample grids of the GAN trainer as PNG files (written with matplotlib's image writer)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["save_image_grid"]

_GRID_SIDE = 8  # sample grids are 8x8
_GRID_PAD = 2  # pixels between grid cells


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = _GRID_SIDE) -> None:
    """Save (N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PNG grid, ``nrow`` per row."""
    from matplotlib.image import imsave

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(
        c, rows * (h + _GRID_PAD) + _GRID_PAD, nrow * (w + _GRID_PAD) + _GRID_PAD, dtype=torch.uint8
    )
    for i in range(n):
        top = _GRID_PAD + (i // nrow) * (h + _GRID_PAD)
        left = _GRID_PAD + (i % nrow) * (w + _GRID_PAD)
        grid[:, top : top + h, left : left + w] = x[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Grey images as RGB with equal channels: exact (a colormap would requantize them).
    rgb = grid.expand(3, -1, -1) if c == 1 else grid
    imsave(path, rgb.permute(1, 2, 0).contiguous().numpy(), format="png")
