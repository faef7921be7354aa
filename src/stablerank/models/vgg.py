"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman 2015; BN as in the CIFAR references)."""

from __future__ import annotations

import torch
from torch import nn

from stablerank.models._layers import conv3x3, scaled

_VGG_STAGES = {  # convs per stage; channels 64, 128, 256, 512, 512; a max-pool ends each stage
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """VGG-depth with BatchNorm after every conv, global average pooling and one linear head.

    Pools use ``ceil_mode`` so that 28 px inputs keep a 1x1 map after the five stages
    (28 -> 14 -> 7 -> 4 -> 2 -> 1); at 32 px this equals the usual floor pooling.

    Args:
        depth: 11, 13, 16 or 19 (default 19).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 19,
                 width: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if depth not in _VGG_STAGES:
            raise ValueError(f"depth must be one of {sorted(_VGG_STAGES)}, got {depth}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for convs, channels in zip(_VGG_STAGES[depth], _VGG_CHANNELS, strict=True):
            c_out = scaled(channels, width)
            for _ in range(convs):
                layers += [conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
