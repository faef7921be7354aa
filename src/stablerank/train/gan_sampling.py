"""Counter-based randomness and sampling of the GAN trainer: real batch ``b``, the RNG streams
of latents, the ``generate`` callable the metrics take, and standing BatchNorm statistics of the
EMA generator.

.. note:: **Randomness is counter-based.** The latents and fake labels of D update ``b`` (and of
    G update ``step``) on rank ``r`` come from a generator seeded by ``(seed, r, b)``
    (:func:`stablerank.train.runtime.stream_seed`); real batch ``b`` is a pure function of
    ``(seed, epoch)`` in the :class:`stablerank.data.DeviceLoader` (disjoint shards per rank,
    :class:`_RealBatches`); in-model draws are reseeded at every G step
    (:func:`stablerank.train.runtime.seed_model_draws`). Nothing draws from a running RNG, so a
    resumed run continues bit for bit, DDP ranks need no RNG state exchange, sampling or
    evaluation never perturb training, and a reloaded run
    (:func:`stablerank.train.gan_models.load_gan_run`) redraws exactly the same latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from stablerank.data import DatasetSplits, DeviceLoader
from stablerank.metrics import eval_mode
from stablerank.train.runtime import stream_seed

__all__ = [
    "BN_STAT_SAMPLES", "STREAM_D_NOISE", "STREAM_EVAL", "STREAM_FIXED", "STREAM_G_NOISE", "Sampler",
    "grid_labels", "latents", "make_generate", "real_batches", "refresh_bn_stats",
]  # fmt: skip

# RNG streams of stream_seed (one per kind of draw).
STREAM_D_NOISE, STREAM_G_NOISE, STREAM_FIXED, STREAM_EVAL, _STREAM_BN = range(5)
# Standing BatchNorm statistics of the EMA generator: 16 x 64 = 1024 fresh samples.
_BN_STAT_BATCHES, _BN_STAT_BATCH = 16, 64
BN_STAT_SAMPLES = _BN_STAT_BATCHES * _BN_STAT_BATCH


class _RealBatches:
    """Real batch number ``b`` of this rank, from a :class:`DeviceLoader` (disjoint shards per
    rank, order a pure function of ``(seed, epoch)``).

    Batch ``b`` is batch ``b % per_epoch`` of epoch ``b // per_epoch``; after a resume the epoch's
    first batches are replayed once to reach it, so no loader state is saved. The loader scales
    uint8 images to [-1, 1] (mean = std = 0.5 after division by 255), the generator's tanh range.
    """

    def __init__(self, loader: DeviceLoader) -> None:
        self.loader, self.per_epoch = loader, len(loader)
        if self.per_epoch == 0:
            raise ValueError(
                f"batch_size {loader.batch_size} x {loader.world_size} rank(s) "
                f"exceeds the {loader.num_total} training images"
            )
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._expect = (-1, -1)

    def __call__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(b, self.per_epoch)
        if self._it is None or (epoch, pos) != self._expect:
            self.loader.set_epoch(epoch)
            self._it = iter(self.loader)
            for _ in range(pos):  # resume mid-epoch
                next(self._it)
        self._expect = (epoch, pos + 1)
        return next(self._it)


def real_batches(
    splits: DatasetSplits, *, batch_size: int, device: torch.device, seed: int, rank: int,
    world_size: int,
) -> _RealBatches:  # fmt: skip
    """This rank's shuffled training batches of ``batch_size`` images in [-1, 1] (full batches
    only)."""
    c = splits.in_channels
    return _RealBatches(
        DeviceLoader(
            splits.train_x,
            splits.train_y,
            batch_size=batch_size,
            mean=(0.5,) * c,
            std=(0.5,) * c,
            device=device,
            shuffle=True,
            drop_last=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
            pixel_scale=splits.pixel_scale,
        )
    )


def latents(
    n: int, z_dim: int, num_classes: int | None, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` latents z ~ N(0, I) and, for a conditional G, uniform labels (drawn on the CPU, so
    the values do not depend on the device)."""
    z = torch.randn(n, z_dim, generator=gen).to(device)
    y = torch.randint(num_classes, (n,), generator=gen).to(device) if num_classes else None
    return z, y


def grid_labels(num_classes: int, side: int) -> torch.Tensor:
    """The labels of a conditional sample grid, ``side`` images a row and one class a row: each
    class in a row of its own when there are at most ``2 * side``, else ``2 * side`` classes
    spread evenly over the labels; fewer than ``side`` classes repeat over ``side`` rows."""
    rows = max(side, min(num_classes, 2 * side))
    row = torch.arange(rows)
    classes = row % num_classes if num_classes <= rows else row * num_classes // rows
    return classes.repeat_interleave(side)


def make_generate(
    G: nn.Module,
    *,
    z_dim: int,
    num_classes: int | None,
    device: torch.device,
    seed: int,
    batch_size: int = 256,
    with_labels: bool = False,
) -> Callable[[int], torch.Tensor] | Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]:
    """A ``generate(n) -> (n, C, H, W)`` float images in [-1, 1] callable for the metrics.

    Successive calls continue one RNG stream seeded by ``seed`` (a fresh callable with the same
    seed repeats the same latents and labels: every evaluation of a run scores the same z). G runs
    in eval mode (BatchNorm running statistics), without gradients; labels are uniform.

    Args:
        G: the generator, called as ``G(z, y)`` (``y`` None when unconditional).
        z_dim: latent dimension.
        num_classes: classes of a conditional G; None when unconditional.
        device: where G runs; the images are returned on the CPU.
        seed: the run's seed (the evaluation stream is derived from it).
        batch_size: samples per G forward (default 256). The latents and labels of each
            forward are drawn in turn from one stream, so another ``batch_size``, or other
            ``n`` per call, draws other (equally random) samples. The trainer scores with this
            default and :func:`stablerank.metrics.gan.compute_gan_metrics`'s default
            ``batch_size`` (250 per call): the same calls reproduce its scores.
        with_labels: return ``(images, labels)`` instead of images, labels on the CPU (None when
            unconditional), for measures of a conditional D that need each sample's class
            (default False). The stream is the same either way.

    Returns:
        ``generate(n)``.
    """
    gen = torch.Generator().manual_seed(stream_seed(seed, 0, 0, STREAM_EVAL))

    @torch.no_grad()
    def generate_labelled(n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, labels = [], []
        with eval_mode(G):
            for start in range(0, n, batch_size):
                z, y = latents(min(batch_size, n - start), z_dim, num_classes, gen, device)
                out.append(G(z, y).float().cpu())
                if y is not None:
                    labels.append(y.cpu())
        return torch.cat(out), (torch.cat(labels) if labels else None)

    return generate_labelled if with_labels else lambda n: generate_labelled(n)[0]


@torch.no_grad()
def refresh_bn_stats(
    G: nn.Module, *, z_dim: int, num_classes: int | None, device: torch.device, seed: int
) -> None:
    """Recompute G's BatchNorm running statistics as exact averages over fresh samples
    ("standing statistics", Brock et al. 2019).

    For the EMA generator: its averaged weights do not match the raw generator's running
    statistics, and early in training eval-mode samples wash out (seen on Fashion-MNIST). The
    latents come from their own stream, so this never changes training.

    .. note:: G runs in training mode here, so an SN-normalized G (``g_norm="sn"``) also takes
        ``_BN_STAT_BATCHES`` power-iteration steps on its ``_u``/``_v``: refreshing is idempotent
        for the BatchNorm statistics but not for those vectors (see
        :func:`stablerank.train.gan_models.load_gan_run`).

    Args:
        G: the generator, updated in place; its mode is restored afterwards.
        z_dim: latent dimension.
        num_classes: classes of a conditional G; None when unconditional.
        device: where G runs.
        seed: the run's seed (the BatchNorm stream is derived from it).
    """
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches below
    gen = torch.Generator().manual_seed(stream_seed(seed, 0, 0, _STREAM_BN))
    was_training = G.training
    G.train()
    for _ in range(_BN_STAT_BATCHES):
        G(*latents(_BN_STAT_BATCH, z_dim, num_classes, gen, device))
    G.train(was_training)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


class Sampler:
    """The generator that draws sample grids and is scored: the EMA copy when the run has one,
    with standing BatchNorm statistics refreshed at most once per step, else the raw G (running
    statistics of training)."""

    def __init__(
        self, G_raw: nn.Module, G_ema: nn.Module | None, *, z_dim: int, num_classes: int | None,
        device: torch.device, seed: int,
    ) -> None:  # fmt: skip
        self.G = G_ema if G_ema is not None else G_raw
        self._is_ema = G_ema is not None
        self._stream = {"z_dim": z_dim, "num_classes": num_classes, "device": device, "seed": seed}
        self.stats_step = -1  # the step whose standing statistics G holds (-1: none yet)

    def ready(self, step: int) -> nn.Module:
        """G, with standing statistics for ``step`` (computed on the first call at a step)."""
        if self._is_ema and self.stats_step != step:
            refresh_bn_stats(self.G, **self._stream)
            self.stats_step = step
        return self.G
