"""Sample grids of the GAN trainer as PNG files, written with zlib alone (no imaging library)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_image_grid"]

_GRID_SIDE = 8  # sample grids are 8x8
_GRID_PAD = 2  # pixels between grid cells


def _png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) grey or (H, W, 3) RGB array as PNG (zlib only, no imaging library)."""
    h, w = img.shape[:2]
    color_type = 0 if img.ndim == 2 else 2
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))  # filter 0 per scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = _GRID_SIDE) -> None:
    """Save (N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PNG grid, ``nrow`` per row."""
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
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(arr))
