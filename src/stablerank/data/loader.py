"""A data loader that keeps a whole split on the training device (airbench style).

The split is moved to the device once, in its compact storage dtype (uint8 images); each batch is
gathered by index, augmented as a batch with tensor ops on the device (random crop from a
zero-padded image, horizontal flip), then converted to float32 and normalized per channel. There
are no worker processes and no per-example Python work.

Determinism and sharding (Note [loader plan]):

* Everything random about an epoch (the permutation, each example's flip and crop offset) is drawn
  on the CPU from a generator seeded by ``(seed, epoch)`` only, so :meth:`DeviceLoader.set_epoch`
  makes the batches a pure function of ``(seed, epoch)``: a resumed run sees exactly the batches
  of an uninterrupted one, on any device.
* The random draws are indexed by position in the epoch's permutation, which is cut into *global*
  batches of ``batch_size * world_size`` positions; rank ``r`` takes the ``r``-th block of
  ``batch_size`` positions of each. So the ranks' shards are disjoint, every rank yields the same
  number of batches, and the union of the ranks' t-th batches (data and augmentation) is exactly
  the t-th batch of a single process run with ``batch_size * world_size`` and the same seed.
* ``drop_last=True`` drops the incomplete last global batch (different examples each epoch).
  ``drop_last=False`` splits it over the ranks as evenly as possible (sizes differ by at most
  one), so every example is seen exactly once per epoch; when it has fewer examples than there are
  ranks, some ranks' last batch is empty (0 examples). Use ``drop_last=True`` for DDP training
  (an empty or size-1 batch breaks BatchNorm in training mode), ``drop_last=False`` for
  evaluation with summed (not averaged) metrics.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from stablerank.data.labels import check_labels

if TYPE_CHECKING:
    from stablerank.data.splits import DatasetSplits

__all__ = ["AUGMENTS", "DEFAULT_PAD", "DeviceLoader"]

AUGMENTS = ("none", "crop", "crop_flip")
DEFAULT_PAD = 4  # pixels of zero padding of the random crop (the standard CIFAR recipe)
_FLIP_PROBABILITY = 0.5


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch): nearby pairs give unrelated streams."""
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


class DeviceLoader:
    """Batches of a whole split held on one device, normalized and optionally augmented.

    Yields ``(x, y)``: ``x`` float32 (B, C, H, W) (or (B, C, L) for 1-D data) computed as
    ``(x_stored / pixel_scale - mean) / std`` after augmentation, ``y`` int64 (B,), both on
    ``device``. ``len(loader)`` is the number of batches per epoch on this rank.

    Args:
        x: inputs (N, C, H, W) or (N, C, L), uint8 or float (any device; copied to ``device``).
        y: int labels (N,).
        batch_size: examples per batch on this rank (the global batch is
            ``batch_size * world_size``).
        mean: per-channel mean, in units of ``x / pixel_scale``.
        std: per-channel standard deviation (> 0), same units.
        device: where the data lives and batches are made (default: ``x``'s device).
        shuffle: a new permutation each epoch (default True); False keeps the stored order.
        drop_last: drop the incomplete last global batch (default False).
        augment: ``"none"``, ``"crop"`` (random crop of the zero-padded image) or
            ``"crop_flip"`` (plus horizontal flip with probability 1/2); images only
            (default "none").
        pad: zero padding of the random crop in pixels (default 4).
        seed: seed of order and augmentation (default 0); see Note [loader plan].
        rank: this process's rank (default 0).
        world_size: number of ranks sharing the epoch (default 1).
        pixel_scale: divisor applied before normalization (default: 255 for uint8 ``x``,
            else 1).
        channels_last: return image batches in channels_last memory format (default False).

    Raises:
        ValueError: an argument out of range (the message names it), or, with ``drop_last``, a
            global batch larger than the split (an epoch would hold no batch).

    .. note::
       Epochs advance automatically after each complete pass; call :meth:`set_epoch` at the
       start of every epoch (as with ``DistributedSampler``) to make resuming exact.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: str = "none",
        pad: int = DEFAULT_PAD,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pixel_scale: float | None = None,
        channels_last: bool = False,
    ) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(f"x must be (N, C, H, W) or (N, C, L), got shape {tuple(x.shape)}")
        check_labels(y, "y")  # float labels would be truncated when used as class indices
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be 1-D with len(x)={x.shape[0]} entries, got shape {tuple(y.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one example, got N=0")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0, self.world_size - 1)
        self.seed = _check_int("seed", seed, 0)
        self.pad = _check_int("pad", pad, 0)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if augment != "none" and x.dim() != 4:
            raise ValueError(f"augment={augment!r} needs images (N, C, H, W); use 'none' for 1-D")
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got {len(mean)} and "
                f"{len(std)}"
            )
        finite = [math.isfinite(v) for v in (*mean, *std)]
        if not all(finite) or min(std) <= 0:
            raise ValueError(f"mean must be finite and std finite and > 0, got {mean=}, {std=}")
        if pixel_scale is None:
            pixel_scale = 255.0 if x.dtype == torch.uint8 else 1.0
        if (
            not isinstance(pixel_scale, numbers.Real)
            or not math.isfinite(pixel_scale)
            or (pixel_scale <= 0)
        ):
            raise ValueError(f"pixel_scale must be a finite number > 0, got {pixel_scale!r}")
        if drop_last and self.batch_size * self.world_size > x.shape[0]:
            # Every epoch would be empty: training would silently do nothing.
            raise ValueError(
                f"batch_size={self.batch_size} (x world_size={self.world_size}) is larger than "
                f"the dataset's {x.shape[0]} examples; with drop_last=True no batch would be "
                "made: use a smaller batch_size or drop_last=False"
            )
        self.device = torch.device(device) if device is not None else x.device
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.channels_last = bool(channels_last) and x.dim() == 4
        self.epoch = 0
        # One host-to-device copy for the whole run; the data stays in its storage dtype.
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        # normalized = stored * scale + shift, per channel: (1, C, 1[, 1]).
        shape = (1, channels) + (1,) * (x.dim() - 2)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        std_t = torch.tensor(std, dtype=torch.float64)
        self._scale = (1.0 / (pixel_scale * std_t)).to(self.device, torch.float32).view(shape)
        self._shift = (-mean_t / std_t).to(self.device, torch.float32).view(shape)

    @classmethod
    def from_splits(cls, splits: DatasetSplits, *, train: bool = True, **kwargs: object
                    ) -> DeviceLoader:  # fmt: skip
        """A loader over ``splits``' train (default) or test split with its mean/std/scale.
        Other keyword arguments go to the constructor (``batch_size`` is required)."""
        x, y = (splits.train_x, splits.train_y) if train else (splits.test_x, splits.test_y)
        return cls(x, y, mean=splits.mean, std=splits.std, pixel_scale=splits.pixel_scale,
                   **kwargs)  # type: ignore[arg-type]  # fmt: skip

    # --- the epoch plan ---------------------------------------------------------------------

    @property
    def num_total(self) -> int:
        """Examples in the split (all ranks)."""
        return int(self.x.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next pass uses."""
        self.epoch = _check_int("epoch", epoch, 0)

    def _rank_slices(self) -> list[tuple[int, int]]:
        """[start, stop) ranges of permutation positions that form this rank's batches."""
        b, w, r, n = self.batch_size, self.world_size, self.rank, self.num_total
        global_batch = b * w
        full = n // global_batch
        slices = [(t * global_batch + r * b, t * global_batch + (r + 1) * b) for t in range(full)]
        rest = n - full * global_batch
        if rest and not self.drop_last:
            base, extra = divmod(rest, w)
            start = full * global_batch + r * base + min(r, extra)
            slices.append((start, start + base + (1 if r < extra else 0)))
        return slices

    def __len__(self) -> int:
        return len(self._rank_slices())

    @property
    def num_examples(self) -> int:
        """Examples this rank sees per epoch."""
        return sum(stop - start for start, stop in self._rank_slices())

    def _draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Permutation, flip mask and crop offsets of ``epoch``, indexed by position (CPU).

        Drawn in a fixed order from a CPU generator so they do not depend on the device.
        """
        n = self.num_total
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment != "none":
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)  # (dy, dx)
        if self.augment == "crop_flip":
            flips = torch.rand(n, generator=generator) < _FLIP_PROBABILITY
        return order, flips, offsets

    def batch_indices(self, epoch: int | None = None) -> list[torch.Tensor]:
        """This rank's batches of ``epoch`` (default: the current one) as CPU index tensors."""
        order = self._draws(self.epoch if epoch is None else epoch)[0]
        return [order[start:stop] for start, stop in self._rank_slices()]

    # --- batches ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, flips, offsets = self._draws(self.epoch)
        # One transfer per epoch; slicing below happens on the device.
        order = order.to(self.device)
        flips = None if flips is None else flips.to(self.device)
        offsets = None if offsets is None else offsets.to(self.device)
        for start, stop in self._rank_slices():
            idx = order[start:stop]
            xb = self.x[idx]
            if offsets is not None:
                xb = random_crop(xb, offsets[start:stop], self.pad)
            if flips is not None:
                xb = random_flip(xb, flips[start:stop])
            xb = xb.to(torch.float32) * self._scale + self._shift
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, self.y[idx]
        self.epoch += 1


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, H, W) from its zero-padded version at its own offset.

    ``offsets`` (B, 2) holds (dy, dx) in [0, 2 * pad]; (pad, pad) returns the image unchanged.
    One gather for the whole batch; works for any dtype (zeros are black before normalization,
    as in the usual recipe).
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    wp = w + 2 * pad
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    out = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def random_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images of ``x`` (B, C, H, W) where the bool mask ``flips`` (B,)
    is True."""
    return torch.where(flips[:, None, None, None], x.flip(-1), x)
