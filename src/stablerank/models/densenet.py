"""DenseNet-BC for CIFAR (Huang et al. 2017): bottleneck layers, compression 0.5, 3 dense blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stablerank.models._layers import check_size, conv3x3, scaled


class _DenseLayer(nn.Module):
    _BOTTLENECK = 4  # the 1x1 conv outputs 4k channels (the paper's "B")

    def __init__(self, c_in: int, growth_rate: int) -> None:
        super().__init__()
        mid = self._BOTTLENECK * growth_rate
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), conv3x3(mid, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)  # (B, c_in + k, H, W)


class DenseNetBC(nn.Module):
    """DenseNet-BC for CIFAR.

    Args:
        depth: 6n + 4, n layers per dense block (default 100).
        growth_rate: k (default 12), scaled by ``width``.
        compression: channel factor of the transitions (default 0.5, the paper's "C").
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 100,
                 growth_rate: int = 12, compression: float = 0.5, width: float = 1.0
                 ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (40, 100, 190), got {depth}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        check_size("growth_rate", growth_rate)
        n, k = (depth - 4) // 6, scaled(growth_rate, width)
        c = 2 * k
        layers: list[nn.Module] = [conv3x3(in_channels, c)]
        for block in range(3):
            for _ in range(n):
                layers.append(_DenseLayer(c, k))
                c += k
            if block < 2:  # transition: BN-ReLU-1x1 conv (compression)-2x2 average pool
                c_out = math.floor(c * compression)
                if c_out < 1:  # an empty map would pass silently to the next block
                    raise ValueError(f"compression must be in [1/{c}, 1] for this depth and "
                                     f"growth rate (a transition of {c} channels), got "
                                     f"{compression}")  # fmt: skip
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                           nn.Conv2d(c, c_out, 1, bias=False), nn.AvgPool2d(2)]  # fmt: skip
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
