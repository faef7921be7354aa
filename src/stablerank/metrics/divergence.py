"""Neural divergence (Gulrajani, Raffel & Metz 2019, "Towards GAN Benchmarks Which Require
Generalization"; docs/math.md §2.5).

A **fresh** critic is trained with the WGAN-GP objective (Gulrajani et al. 2017) to separate
held-out real images (the test split: not the images the GAN was trained on) from fresh generator
samples; the divergence is the critic's negated loss, without the gradient penalty, on fresh
batches after training:

.. math::
    \\mathrm{ND} = \\mathbb{E}_{x \\sim P_{real}}[D(x)] - \\mathbb{E}_{x \\sim G}[D(x)],
    \\qquad D = \\arg\\min_D\\; \\mathbb{E}_G[D] - \\mathbb{E}_{real}[D]
    + \\lambda\\, \\mathbb{E}_{\\hat x}(\\lVert \\nabla D(\\hat x) \\rVert_2 - 1)^2

(lambda = 10). Lower is closer; a generator that matches the data distribution scores about 0 and
one that copies its training set does not score better than the held-out data allows.

Protocol choices (all recorded in the result's ``protocol``): the real images are split once by
a seeded permutation into a critic-training part and an evaluation part (``eval_fraction``), so
the critic is scored on real images it never saw; every evaluation batch of samples is fresh;
the evaluated critic is an exponential moving average (EMA) of the trained one, which lowers the
variance of the estimate; the value is the mean over ``n_eval_batches`` batches, reported with
their standard deviation.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stablerank.metrics._checks import (
    check_finite,
    check_generated,
    check_positive_int,
    check_seed,
    seeded,
)
from stablerank.metrics.ema import ema_update
from stablerank.metrics.features import check_signed_unit, to_signed_unit, warn_if_unsigned

__all__ = [
    "KEY_ND",
    "KEY_ND_BATCHES",
    "KEY_ND_STD",
    "KEY_PROTOCOL",
    "NeuralDivergenceProtocol",
    "build_default_critic",
    "neural_divergence",
]

KEY_ND = "neural_divergence"
KEY_ND_STD = "neural_divergence_std"
KEY_ND_BATCHES = "neural_divergence_batches"
KEY_PROTOCOL = "protocol"
GP_LAMBDA = 10.0  # WGAN-GP penalty weight (Gulrajani et al. 2017)
# WGAN-GP's Adam settings (Gulrajani et al. 2017, Algorithm 1).
DEFAULT_LR = 1e-4
DEFAULT_BETAS = (0.0, 0.9)
DEFAULT_EMA_DECAY = 0.999
DEFAULT_EVAL_FRACTION = 0.25
DEFAULT_CRITIC_WIDTH = 64
_LEAKY_SLOPE = 0.2
# EMA warm-up: decay_t = min(decay, (1 + t) / (EMA_WARMUP + t)), so the average is not dominated
# by the random initialisation when only a few hundred steps are run (CPU settings).
_EMA_WARMUP = 10.0


def build_default_critic(
    input_shape: tuple[int, int, int], width: int = DEFAULT_CRITIC_WIDTH
) -> nn.Module:
    """The default critic: DCGAN-like, no normalization layers (WGAN-GP needs per-sample
    gradients, so no BatchNorm).

    conv4x4/2 (width) -> LeakyReLU -> conv4x4/2 (2 width) -> LeakyReLU -> conv3x3 (4 width) ->
    LeakyReLU -> Linear -> 1. 28x28 -> 14 -> 7; 32x32 -> 16 -> 8.

    Args:
        input_shape: (C, H, W) of the images.
        width: channels of the first conv (default 64).
    """
    c, h, w = input_shape
    h4, w4 = h // 4, w // 4
    if min(h4, w4) < 1:
        raise ValueError(f"input_shape must have H, W >= 4, got {input_shape}")
    return nn.Sequential(
        nn.Conv2d(c, width, 4, 2, 1),
        nn.LeakyReLU(_LEAKY_SLOPE),
        nn.Conv2d(width, 2 * width, 4, 2, 1),
        nn.LeakyReLU(_LEAKY_SLOPE),
        nn.Conv2d(2 * width, 4 * width, 3, 1, 1),
        nn.LeakyReLU(_LEAKY_SLOPE),
        nn.Flatten(),
        nn.Linear(4 * width * h4 * w4, 1),
    )


@dataclasses.dataclass(frozen=True)
class NeuralDivergenceProtocol:
    """Every choice the neural divergence depends on."""

    reference_split: str
    n_real_train: int
    n_real_eval: int
    n_critic_steps: int
    batch_size: int
    n_eval_batches: int
    gp_lambda: float
    lr: float
    betas: tuple[float, float]
    ema_decay: float
    critic: str
    n_critic_params: int
    seed: int
    image_range: str = "[-1, 1]"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_images(x: Tensor, shape: tuple[int, ...], what: str, device: torch.device) -> Tensor:
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{what} must have per-image shape {shape}, got {tuple(x.shape)}")
    x = to_signed_unit(x).to(device=device, dtype=torch.float32)
    check_finite(x, what)  # NaN fails no range comparison: it would pass the check below
    check_signed_unit(x, what)
    return x


def _gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """mean over the batch of (||grad D(x_hat)||_2 - 1)^2, x_hat uniform on real-fake segments."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def _describe(builder: Callable[..., Any]) -> str:
    """A stable name for the critic builder (no memory addresses): ``name(k=v, ...)``."""
    if isinstance(builder, functools.partial):
        args = [repr(a) for a in builder.args] + [f"{k}={v!r}" for k, v in builder.keywords.items()]
        return f"{_describe(builder.func)}({', '.join(args)})"
    return getattr(builder, "__qualname__", type(builder).__name__)


def neural_divergence(
    generate: Callable[[int], Tensor],
    real_images: Tensor,
    *,
    n_critic_steps: int,
    batch_size: int = 64,
    seed: int = 0,
    n_eval_batches: int = 10,
    reference_split: str = "test",
    critic_builder: Callable[[tuple[int, int, int]], nn.Module] | None = None,
    gp_lambda: float = GP_LAMBDA,
    lr: float = DEFAULT_LR,
    betas: tuple[float, float] = DEFAULT_BETAS,
    ema_decay: float = DEFAULT_EMA_DECAY,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a fresh WGAN-GP critic and report the neural divergence (see the module docstring).

    Args:
        generate: ``generate(k) -> (k, C, H, W)`` fresh samples in [-1, 1] (called under
            ``torch.no_grad``; put a generator module in eval mode yourself).
        real_images: held-out real images (N, C, H, W), float in [-1, 1] or uint8; N >= 2.
        n_critic_steps: critic updates (>= 1; small on CPU, thousands for a real evaluation).
        batch_size: real and fake images per step and per evaluation batch (default 64).
        seed: seeds the split, the critic's initialisation, sampling and generation (the
            caller's RNG state is restored).
        n_eval_batches: fresh batches averaged for the value (default 10).
        reference_split: name of the real split, recorded (default "test").
        critic_builder: ``builder((C, H, W)) -> nn.Module`` with one output per image (default
            :func:`build_default_critic`).
        gp_lambda: gradient-penalty weight (>= 0, default 10).
        lr: Adam learning rate (> 0, default 1e-4).
        betas: Adam betas, each in [0, 1) (default (0, 0.9)).
        ema_decay: EMA decay of the evaluated critic, in [0, 1] (default 0.999, with warm-up).
        eval_fraction: share of ``real_images`` kept for evaluation (default 0.25).
        device: where the critic runs (default: the device of ``real_images``).
        progress: tqdm bar on stderr.

    Returns:
        ``{KEY_ND: mean, KEY_ND_STD: std over eval batches, KEY_ND_BATCHES: per-batch values,
        KEY_PROTOCOL: NeuralDivergenceProtocol.to_dict()}``.

    Raises:
        ValueError: on invalid counts, fractions or optimizer settings, shapes or value ranges,
            all checked before the critic is trained.
        NonFiniteError: real images or a generated batch hold NaN or inf.
    """
    n_critic_steps = check_positive_int("n_critic_steps", n_critic_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    n_eval_batches = check_positive_int("n_eval_batches", n_eval_batches)
    seed = check_seed(seed)
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction!r}")
    if not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1], got {ema_decay!r}")
    if not 0.0 <= gp_lambda < math.inf:
        raise ValueError(f"gp_lambda must be a finite number >= 0, got {gp_lambda!r}")
    if not 0.0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if real_images.dim() != 4 or real_images.shape[0] < 2:
        raise ValueError(f"real_images must be (N >= 2, C, H, W), got {tuple(real_images.shape)}")
    dev = torch.device(device) if device is not None else real_images.device
    shape = tuple(real_images.shape[1:])
    warn_if_unsigned(real_images, "real_images")
    real_all = _as_images(real_images, shape, "real_images", dev)
    builder = critic_builder or build_default_critic

    with seeded(seed):
        perm = torch.randperm(real_all.shape[0], device=dev)
        n_eval = min(max(1, round(eval_fraction * real_all.shape[0])), real_all.shape[0] - 1)
        real_eval, real_train = real_all[perm[:n_eval]], real_all[perm[n_eval:]]
        critic = builder(shape).to(dev)
        critic.train()
        ema = copy.deepcopy(critic).requires_grad_(False)
        opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)

        def fresh(k: int) -> Tensor:
            with torch.no_grad():
                return _as_images(check_generated(generate(k), k), shape, "generated samples", dev)

        def real_batch(pool: Tensor) -> Tensor:
            return pool[torch.randint(pool.shape[0], (batch_size,), device=dev)]

        for step in tqdm(
            range(n_critic_steps), desc="neural divergence critic", file=sys.stderr,
            disable=not (progress and sys.stderr.isatty()),
        ):  # fmt: skip
            real, fake = real_batch(real_train), fresh(batch_size)
            loss = critic(fake).mean() - critic(real).mean()
            loss = loss + gp_lambda * _gradient_penalty(critic, real, fake)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # The shared update also copies buffers; the default critic has none (WGAN-GP needs
            # per-sample gradients, so no BatchNorm), and for a custom critic with buffers the
            # evaluated average should use the trained critic's current statistics.
            ema_update(ema, critic, min(ema_decay, (1.0 + step) / (_EMA_WARMUP + step)))

        ema.eval()
        values = []
        with torch.no_grad():
            for _ in range(n_eval_batches):
                real, fake = real_batch(real_eval), fresh(batch_size)
                values.append((ema(real).mean() - ema(fake).mean()).item())
    v = torch.tensor(values, dtype=torch.float64)
    protocol = NeuralDivergenceProtocol(
        reference_split=reference_split,
        n_real_train=int(real_train.shape[0]),
        n_real_eval=int(real_eval.shape[0]),
        n_critic_steps=n_critic_steps,
        batch_size=batch_size,
        n_eval_batches=n_eval_batches,
        gp_lambda=float(gp_lambda),
        lr=float(lr),
        betas=(float(betas[0]), float(betas[1])),
        ema_decay=float(ema_decay),
        critic=_describe(builder),
        n_critic_params=sum(p.numel() for p in critic.parameters()),
        seed=seed,
    )
    return {
        KEY_ND: v.mean().item(),
        KEY_ND_STD: v.std().item() if len(values) > 1 else 0.0,
        KEY_ND_BATCHES: values,
        KEY_PROTOCOL: protocol.to_dict(),
    }
