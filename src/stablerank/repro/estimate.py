"""Rough wall-time estimates of a plan (``stablerank reproduce --dry-run``).

:func:`estimate_seconds` scales per-step costs measured on this project's 2-core CPU machine
(:data:`CPU_REFERENCE`) by the multiply-accumulate counts of each run's network, its epochs or
steps and its evaluation work; a GPU gets a documented, guessed speed-up (:data:`CUDA_SPEEDUP`).
These are estimates (a factor of 2 either way; more on a shared machine), printed as such by
:func:`format_plan`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from stablerank.config.classify import ClassifyConfig
from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro.plan import RunSpec, run_state

__all__ = [
    "CPU_REFERENCE",
    "CUDA_SPEEDUP",
    "CpuReference",
    "Hardware",
    "detect_hardware",
    "estimate_seconds",
    "format_plan",
]

# Multiply-accumulates per image of each classifier at width 1 (forward; measured with forward
# hooks on the built models). Family names use their default depth. Width w scales them by ~w^2.
_MACS_28 = {"small_cnn": 36.5e6, "resnet20": 30.8e6, "mlp": 0.67e6}
_MACS_32 = {
    "small_cnn": 47.7e6,
    "resnet20": 40.6e6,
    "resnet": 40.6e6,
    "resnet56": 125.8e6,
    "resnet110": 252.9e6,
    "wrn28_10": 5243e6,
    "wrn": 5243e6,
    "densenet_bc100": 288e6,
    "densenet_bc": 288e6,
    "vgg19": 398e6,
    "vgg": 398e6,
    "alexnet": 32.8e6,
    "mlp": 0.8e6,
}
_DATASET_SHAPE = {  # (image side, train images, test images)
    "fashion-mnist": (28, 60000, 10000),
    "cifar10": (32, 50000, 10000),
    "cifar100": (32, 50000, 10000),
    "digits": (8, 1437, 360),
    "mnist1d": (0, 4000, 1000),
}


@dataclass(frozen=True)
class CpuReference:
    """Per-step costs measured on this project's 2-core CPU machine (torch 2.13, 2 threads)."""

    small_cnn_epoch_s: float = 27.0  # 390k-param small CNN, one 60k-image Fashion-MNIST epoch
    resnet20_step_s: float = 0.2  # ResNet-20, one training step at batch 128 (28x28)
    dcgan_iter_s: float = 0.1  # standard-CNN GAN, one G iteration (n_dis 1, batch 64, width 64)
    threads: int = 2


CPU_REFERENCE = CpuReference()
# Training step vs forward-only cost per image (backward ~ 2 forwards; measured nearer 0.5 here).
_EVAL_COST = 0.5
_NORM_OVERHEAD = {"none": 1.0, "sn": 1.15, "srn": 1.2}  # power iteration (+ rank-1 update)
_RUN_OVERHEAD_S = 4.0  # process-level: dataset load, model build, files
_EPOCH_OVERHEAD_S = 0.5  # per epoch: exact-SVD layer log, checkpoint
# One GPU against 2 CPU cores: a documented guess, not a measurement. ~25x for nets of about
# 50M multiply-accumulates per image, growing with the square root of the size (a GPU is fed
# better by big convs: ~250x for WRN-28-10).
CUDA_SPEEDUP = 25.0
_CUDA_SPEEDUP_MACS = 50e6
_GAN_MACS = {  # (G forward, D forward) MACs per image at the SN-GAN reference widths
    "cnn": (26.7e6, 55.1e6, 64),
    "resnet": (840.6e6, 272.1e6, 128),
}
_FEATURE_NET_MS = 0.15  # feature net + generation per FID/KID/IS sample on 2 cores
_ND_STEP_S = 0.06  # one WGAN-GP critic step (width 64, batch 64) incl. fresh samples


@dataclass(frozen=True)
class Hardware:
    """Where the runs will execute (for the estimate)."""

    device: str  # "cpu" or "cuda"
    name: str
    threads: int

    def speedup(self, macs: float = _CUDA_SPEEDUP_MACS) -> float:
        """Speed relative to :data:`CPU_REFERENCE` (2 CPU threads) for a net of ``macs``
        multiply-accumulates per image."""
        if self.device == "cuda":
            return CUDA_SPEEDUP * math.sqrt(max(1.0, macs / _CUDA_SPEEDUP_MACS))
        # Linear in threads is optimistic; the square root is closer on small convs.
        return math.sqrt(max(1, self.threads) / CPU_REFERENCE.threads)


def detect_hardware(cfg: ReproduceConfig) -> Hardware:
    """The device the runs will use (``cfg.device``, ``auto`` resolved) and its thread count."""
    import torch

    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cuda:
        return Hardware("cuda", torch.cuda.get_device_name(0), torch.get_num_threads())
    threads = cfg.num_threads or torch.get_num_threads()
    return Hardware("cpu", f"CPU ({os.cpu_count()} cores, {threads} torch threads)", threads)


def _classifier_macs(model: str, width: float, dataset: str) -> float:
    side = _DATASET_SHAPE.get(dataset, (32, 0, 0))[0]
    if side == 28 and model in _MACS_28:
        return _MACS_28[model] * width**2
    return _MACS_32.get(model, _MACS_32["resnet20"]) * (side / 32) ** 2 * width**2


def _per_image_train_s(model: str, width: float, dataset: str) -> float:
    macs = _classifier_macs(model, width, dataset)
    ref = CPU_REFERENCE
    if model.startswith(("resnet", "wrn", "densenet")):  # many thin layers: slower per MAC
        per_mac = ref.resnet20_step_s / 128 / _MACS_28["resnet20"]
    else:
        per_mac = ref.small_cnn_epoch_s / 60000 / _MACS_28["small_cnn"]
    return macs * per_mac


def estimate_seconds(spec: RunSpec, hw: Hardware) -> float:
    """Rough wall time of ``spec`` on ``hw`` (training plus its analysis/evaluation stage).

    Scaled from :data:`CPU_REFERENCE` by multiply-accumulate counts; an estimate that can be off
    by a factor of 2 either way (and more on a busy machine).
    """
    c = spec.config
    if isinstance(c, ClassifyConfig):
        _, n_train, n_test = _DATASET_SHAPE.get(c.dataset, (32, 50000, 10000))
        n = c.train_subset or n_train
        n_eval = n_test + (min(c.train_eval_size, n) if c.train_eval_size else n)
        img = _per_image_train_s(c.model, c.width, c.dataset) * _NORM_OVERHEAD[c.norm]
        seconds = c.epochs * (n * img + n_eval * img * _EVAL_COST + _EPOCH_OVERHEAD_S)
        if spec.analyze is not None:
            a = spec.analyze
            forwards = n + n_test + 8 * a.n_pairs  # margins, test, two pair pools of 2n each
            jac_points = 2 * a.n_jacobian + a.n_interpolated
            seconds += img * (_EVAL_COST * forwards + jac_points * a.jacobian_iterations)
        return _RUN_OVERHEAD_S + seconds / hw.speedup(_classifier_macs(c.model, c.width, c.dataset))
    g_macs, d_macs, ref_width = _GAN_MACS[c.arch]
    g_cost = (c.ngf / ref_width) ** 2 * g_macs
    d_cost = (c.ndf / ref_width) ** 2 * d_macs
    # D step: G forward on B + D forward/backward on 2B; G step: G and D forward/backward on B.
    per_iter = c.n_dis * (g_cost + 6 * d_cost) + 3 * (g_cost + d_cost)
    ref_macs = 7 * _GAN_MACS["cnn"][0] + 9 * _GAN_MACS["cnn"][1]  # n_dis 1 at width 64
    iter_s = CPU_REFERENCE.dcgan_iter_s * per_iter / ref_macs * c.batch_size / 64
    seconds = c.g_steps * iter_s
    n_eval = (c.g_steps // c.eval_every) if c.eval_every else 0
    samples = 3 * c.n_final_samples + n_eval * c.n_eval_samples + 10000
    seconds += samples * _FEATURE_NET_MS / 1000
    if spec.gan_eval is not None:
        seconds += spec.gan_eval.nd_critic_steps * _ND_STEP_S
    return _RUN_OVERHEAD_S + seconds / hw.speedup(g_cost + d_cost)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(specs: Sequence[RunSpec], hw: Hardware) -> str:
    """The plan as text: one line per run with its state and estimated time, then the total."""
    lines = [f"plan: {len(specs)} runs on {hw.name} ({hw.device})"]
    total = remaining = 0.0
    for spec in specs:
        c = spec.config
        length = f"{c.epochs} ep" if isinstance(c, ClassifyConfig) else f"{c.g_steps} it"
        est = estimate_seconds(spec, hw)
        state = run_state(spec)
        total += est
        remaining += 0.0 if state == "done" else est
        lines.append(
            f"  [{state:>7}] {spec.kind:<8} {spec.name:<62} {length:>8}  ~{_duration(est)}"
        )
    lines.append(
        f"estimated time: ~{_duration(remaining)} still to run (~{_duration(total)} for the "
        f"whole plan). This is an estimate scaled from per-step costs measured on 2 CPU cores"
        + (f" and a guessed GPU speed-up (>= {CUDA_SPEEDUP:g}x)" if hw.device == "cuda" else "")
        + "; expect a factor of 2 either way, more on a shared machine."
    )
    return "\n".join(lines)
