"""The in-memory dataset record shared by the loaders, its errors and its statistics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = [
    "PIXEL_MAX",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DatasetShape",
    "DatasetSplits",
    "channel_stats",
]

PIXEL_MAX = 255.0  # uint8 images are divided by this before mean/std normalization


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated, corrupt or not what its name says."""


@dataclass(frozen=True)
class DatasetShape:
    """What a network needs to know of a dataset: its inputs' geometry and its class count."""

    in_channels: int
    image_size: int | None  # H = W of images; None for 1-D signals
    num_classes: int
    length: int | None = None  # L of 1-D signals; None for images


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset held in memory as tensors.

    Attributes:
        name: canonical dataset name (one of :data:`DATASETS`).
        train_x: training inputs, uint8 (N, C, H, W) for images, float32 (N, C, L) for 1-D data.
        train_y: training labels, int64 (N,), in [0, num_classes).
        test_x: test inputs, same layout as ``train_x``.
        test_y: test labels, int64.
        num_classes: number of classes.
        in_channels: C.
        image_size: H (= W) for images, None for 1-D signals.
        mean: per-channel mean of the training inputs after division by ``pixel_scale``.
        std: per-channel standard deviation (population, ddof 0) in the same units.
        pixel_scale: 255.0 for uint8 images, 1.0 for float data.
        length: L for 1-D signals, None for images.
        classes: class names (index = label), empty when the dataset has none.
        source: where the data came from (a folder, or the generator and its seed).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float = PIXEL_MAX
    length: int | None = None
    classes: tuple[str, ...] = ()
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) or (C, L)."""
        return tuple(self.train_x.shape[1:])

    @property
    def dataset_shape(self) -> DatasetShape:
        return DatasetShape(self.in_channels, self.image_size, self.num_classes, self.length)

    @property
    def num_train(self) -> int:
        return int(self.train_y.numel())

    @property
    def num_test(self) -> int:
        return int(self.test_y.numel())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 copy of ``x`` (any batch of this dataset's inputs) as the models see it:
        ``(x / pixel_scale - mean) / std`` per channel, on ``x``'s device."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x.to(torch.float32) / self.pixel_scale - mean) / std

    def replace(self, **changes: object) -> DatasetSplits:
        """A copy with some fields changed (e.g. ``train_y`` after label corruption).
        ``mean``/``std`` are kept: they describe the full training split."""
        return dataclasses.replace(self, **changes)


def channel_stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``x / scale``.

    uint8 data goes through a 256-bin histogram per channel (fast and exact in float64);
    float data through float64 sums.
    """
    means, stds = [], []
    for c in range(x.shape[1]):
        channel = x[:, c].reshape(-1)
        if x.dtype == torch.uint8:
            counts = torch.bincount(channel, minlength=256).to(torch.float64)
            values = torch.arange(256, dtype=torch.float64) / scale
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = (counts * (values - mean) ** 2).sum() / n
        else:
            channel = channel.to(torch.float64) / scale
            mean = channel.mean()
            var = ((channel - mean) ** 2).mean()
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)
