"""The small CIFAR AlexNet of Zhang et al. 2017 (the memorization experiments' network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stablerank.models._layers import relu_mlp, scaled


class AlexNet(nn.Module):
    """The small CIFAR AlexNet of Zhang et al. 2017 (from the TensorFlow CIFAR-10 tutorial).

    Two blocks of 5x5 conv (64 channels) - ReLU - 3x3/2 max-pool - local response norm, then
    fully connected layers of 384 and 192 units and ``classifier``. The local response norm
    matches TensorFlow's ``depth_radius=4, bias=1, alpha=0.001/9, beta=0.75``: torch divides
    ``alpha`` by the window size (9), hence ``alpha=0.001`` here.

    Args:
        hidden: units of the two hidden fully connected layers (default (384, 192)).
        lrn: use local response normalization (default True).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 hidden: Sequence[int] = (384, 192), width: float = 1.0, lrn: bool = True
                 ) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(lrn, bool):  # a string such as "no" would be truthy
            raise TypeError(f"lrn must be a bool, got {lrn!r}")
        c = scaled(64, width)
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 5, padding=2), nn.ReLU(inplace=True),
                       nn.MaxPool2d(3, stride=2, padding=1)]  # fmt: skip
            if lrn:
                layers.append(nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0))
            size, c_in = (size - 1) // 2 + 1, c  # 3x3/2 pool with padding 1: ceil(size / 2)
        layers.append(nn.Flatten())
        head, units = relu_mlp(c * size * size, tuple(hidden), width)
        layers += head
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
