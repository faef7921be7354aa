"""CPU-scale classifiers: an MLP (images or 1-D signals) and a small CNN with BatchNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stablerank.models._layers import check_size, check_sizes, conv3x3, relu_mlp, scaled

# =============================================================================================
# MLP and small CNN (CPU-scale runs)
# =============================================================================================


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs (images or 1-D signals).

    Args:
        hidden: hidden layer sizes before ``width`` scaling (default (512, 512)).
        input_length: length L of 1-D inputs (N, C, L); required when ``image_size`` is None.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int | None,
                 hidden: Sequence[int] = (512, 512), width: float = 1.0,
                 input_length: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if image_size is None:
            if input_length is None or input_length < 1:
                raise ValueError(
                    f"input_length must be an int >= 1 when image_size is None (1-D inputs), "
                    f"got {input_length!r}"
                )
            in_features = in_channels * input_length
        else:
            in_features = in_channels * image_size * image_size
        layers, in_features = relu_mlp(in_features, tuple(hidden), width)
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A VGG-like CNN with BatchNorm: conv stages, each ended by a 2x2 max-pool, one hidden fully
    connected layer, then ``classifier``. 389,482 parameters at 28x28x1 (10 classes).

    Args:
        stages: output channels of the 3x3 convs of each stage (default ((32, 64), (128,), (128,))).
        hidden: units of the hidden fully connected layer (default 128).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 stages: Sequence[Sequence[int]] = ((32, 64), (128,), (128,)), hidden: int = 128,
                 width: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        check_sizes("stages' channels", tuple(c for stage in stages for c in stage))
        check_size("hidden", hidden)
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for stage in stages:
            for channels in stage:
                c_out = scaled(channels, width)
                layers += [conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
            size //= 2
        if size < 1:
            raise ValueError(
                f"image_size={image_size} is too small for {len(stages)} pooling stages"
            )
        self.features = nn.Sequential(*layers)
        units = scaled(hidden, width)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, units),
                                nn.ReLU(inplace=True))  # fmt: skip
        self.classifier = nn.Linear(units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))
