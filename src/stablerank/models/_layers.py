"""Building blocks shared by the classifier families."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_size(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an int >= 1: ``scaled`` would turn a 0 into a 1."""
    if not _is_size(value):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_sizes(what: str, sizes: Sequence[int]) -> None:
    """Raise ValueError unless every size is an int >= 1 (:func:`check_size`, for a sequence)."""
    if not all(_is_size(s) for s in sizes):
        raise ValueError(f"{what} must be ints >= 1, got {sizes!r}")


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every 3x3 conv here is followed by BatchNorm, whose shift replaces it.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def relu_mlp(
    in_features: int, hidden: tuple[int, ...], width: float
) -> tuple[list[nn.Module], int]:
    """Linear-ReLU layers of the given (width-scaled) sizes; returns them and the last size."""
    check_sizes("hidden sizes", hidden)
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, scaled(size, width)), nn.ReLU(inplace=True)]
        in_features = scaled(size, width)
    return layers, in_features
