"""CIFAR ResNet (He et al. 2016) and WideResNet (Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stablerank.models._layers import conv3x3, scaled

# =============================================================================================
# ResNet for CIFAR (He et al. 2016, section 4.2): depth 6n + 2, basic blocks, 16/32/64 channels
# =============================================================================================


class _PadShortcut(nn.Module):
    """Option A: parameter-free shortcut that subsamples and zero-pads the new channels."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        extra = c_out - c_in  # new channels, split evenly before and after the old ones
        self.stride, self.front, self.back = stride, extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = (
                _PadShortcut(c_in, c_out, stride) if shortcut == "A" else nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (20, 56, 110, ...).

    Args:
        depth: 6n + 2 (default 20).
        shortcut: ``"A"`` (zero-padding identity, the paper's CIFAR choice and published counts)
            or ``"B"`` (1x1 conv + BN projection) where the shape changes (default "A").
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 20,
                 width: float = 1.0, shortcut: str = "A") -> None:  # fmt: skip
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))  # fmt: skip
        blocks, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(_BasicBlock(c_in, c_out, 2 if stage and i == 0 else 1, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


# =============================================================================================
# WideResNet (Zagoruyko & Komodakis 2016): depth 6n + 4, pre-activation blocks, widen factor k
# =============================================================================================


class _WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        # The projection reads the pre-activated input, as in the authors' code.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k.

    Args:
        depth: 6n + 4 (default 28).
        widen_factor: k (default 10).
        dropout: dropout between the two convs of a block (default 0.0).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 28,
                 widen_factor: int = 10, dropout: float = 0.0, width: float = 1.0
                 ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (16, 28, 40), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        stem = scaled(16, width)
        widths = [scaled(c * widen_factor, width) for c in (16, 32, 64)]
        self.stem = conv3x3(in_channels, stem)
        blocks, c_in = [], stem
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(_WideBlock(c_in, c_out, 2 if stage and i == 0 else 1, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))
