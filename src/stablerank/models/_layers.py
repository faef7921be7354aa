"""Building blocks shared by the classifier families."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every 3x3 conv here is followed by BatchNorm, whose shift replaces it.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
