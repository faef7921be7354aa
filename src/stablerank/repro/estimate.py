"""Rough wall-time estimates of a plan (``stablerank reproduce --dry-run``).

:func:`estimate_seconds` counts each run's floating-point work (multiply-accumulates of its
networks per image, measured with forward hooks, times images, epochs, steps and evaluation
samples) and divides it by an effective throughput: :data:`CPU_REFERENCE` for 2 CPU cores
(scaled by thread count), times a documented, guessed speed-up on a GPU (:data:`CUDA_SPEEDUP`).
These are estimates (a factor of 2 either way; more on a shared machine), printed as such by
:func:`format_plan`.

.. note:: Calibration. This project's CPU machine has 2 AMD EPYC cores with AVX2/FMA at
    2.45 GHz: a peak of 2.45e9 x 16 = 39 GFLOP/s per core in float32. Measured on it (one
    thread, CPU time, the machine shared with other jobs): the small CNN trains at ~30 GFLOP/s
    per core at widths 1 and 0.5 (36.5M and 9.2M MACs/image forward) and evaluates at ~30 with
    batches of 100 (~12 with batches of 1,000: cache misses), but only at ~20 (train) and ~11
    (eval) at width 0.25; the standard-CNN GAN at width 16 at ~19; one WGAN-GP critic step of
    the neural divergence costs ~0.05 s of fixed overhead plus its arithmetic. We take
    50 GFLOP/s for 2 idle cores and scale narrow networks down (:func:`_efficiency`). A full
    small-CNN Fashion-MNIST epoch is therefore about 5 minutes on 2 cores, not seconds.
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
    """Effective float32 throughput of 2 idle CPU cores of this project's machine (see the
    module note)."""

    gflops: float = 50.0
    threads: int = 2


CPU_REFERENCE = CpuReference()
_FLOP_PER_MAC = 2
_TRAIN_PASSES = 3  # forward + backward (~2 forwards)
_RESIDUAL_EFFICIENCY = 0.6  # many thin layers and skip connections: fewer FLOP/s
_NORM_OVERHEAD = {"none": 1.0, "sn": 1.1, "srn": 1.15}  # power iteration (+ rank-1 update)
_RUN_OVERHEAD_S = 5.0  # per run: dataset load, model build, files
_EPOCH_OVERHEAD_S = 0.2  # per epoch: exact-SVD layer log, atomic checkpoint
# Analysis: JVP/VJP through torch.func costs ~3 forwards per power iteration.
_JACOBIAN_PASSES = 3
# GAN networks: (G forward, D forward) MACs per image at the reference width.
_GAN_MACS = {"cnn": (26.7e6, 55.1e6, 64), "resnet": (840.6e6, 272.1e6, 128)}
_FEATURE_NET_MACS = 7.6e6  # fmnist-cnn; Inception-v3 is ~5.7G at 299x299
_INCEPTION_MACS = 5.7e9
_CRITIC_MACS_64 = 21.1e6  # default WGAN-GP critic of the neural divergence at width 64, 28x28
_CRITIC_PASSES = 9  # real + fake forward/backward, gradient penalty's double backward (measured)
_CRITIC_STEP_OVERHEAD_S = 0.05  # per critic step on 2 CPU cores (autograd, EMA, sampling)
_FULL_EFFICIENCY_WIDTH = 0.5  # narrower nets than this use the cores less well
# One GPU against 2 CPU cores: a guess, not a measurement. ~200x for nets of ~50M MACs/image,
# growing with the square root of the size (a GPU is fed better by big convs: ~2000x for
# WRN-28-10 with bfloat16 autocast).
CUDA_SPEEDUP = 200.0
_CUDA_SPEEDUP_MACS = 50e6
_CUDA_SPEEDUP_CAP = 2000.0


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
            factor = CUDA_SPEEDUP * math.sqrt(max(1.0, macs / _CUDA_SPEEDUP_MACS))
            return min(_CUDA_SPEEDUP_CAP, factor)
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


def _efficiency(width: float) -> float:
    """Relative throughput of a network at ``width`` (fraction of its reference width): narrow
    convs leave the vector units idle (measured ~0.67 at width 0.25)."""
    return min(1.0, max(0.3, math.sqrt(width / _FULL_EFFICIENCY_WIDTH)))


def _seconds(flop: float, macs: float, hw: Hardware, efficiency: float = 1.0) -> float:
    return flop / (CPU_REFERENCE.gflops * 1e9 * efficiency * hw.speedup(macs))


def estimate_seconds(spec: RunSpec, hw: Hardware) -> float:
    """Rough wall time of ``spec`` on ``hw`` (training plus its analysis/evaluation stage).

    Work (FLOP) over an effective throughput (see the module note); an estimate that can be off
    by a factor of 2 either way (and more on a busy machine).
    """
    c = spec.config
    if isinstance(c, ClassifyConfig):
        _, n_train, n_test = _DATASET_SHAPE.get(c.dataset, (32, 50000, 10000))
        n = c.train_subset or n_train
        n_eval = n_test + (min(c.train_eval_size, n) if c.train_eval_size else n)
        macs = _classifier_macs(c.model, c.width, c.dataset)
        eff = 1.0 if c.model == "mlp" else _efficiency(c.width)
        if c.model.startswith(("resnet", "wrn", "densenet")):
            eff *= _RESIDUAL_EFFICIENCY
        per_epoch = (n * _TRAIN_PASSES * _NORM_OVERHEAD[c.norm] + n_eval) * macs * _FLOP_PER_MAC
        seconds = c.epochs * (_seconds(per_epoch, macs, hw, eff) + _EPOCH_OVERHEAD_S)
        if spec.analyze is not None:
            a = spec.analyze
            forwards = (a.n_margin or n) + n_test + 4 * a.n_pairs  # margins, test, pair pools
            forwards += (
                (2 * a.n_jacobian + a.n_interpolated) * a.jacobian_iterations * (_JACOBIAN_PASSES)
            )
            seconds += _seconds(forwards * macs * _FLOP_PER_MAC, macs, hw, eff)
        return _RUN_OVERHEAD_S + seconds
    g_ref, d_ref, ref_width = _GAN_MACS[c.arch]
    g_macs = (c.ngf / ref_width) ** 2 * g_ref
    d_macs = (c.ndf / ref_width) ** 2 * d_ref
    # D step: G forward on B + D forward/backward on 2B; G step: G and D forward/backward on B.
    per_image = c.n_dis * (g_macs + 2 * _TRAIN_PASSES * d_macs) + _TRAIN_PASSES * (g_macs + d_macs)
    flop = c.g_steps * c.batch_size * per_image * _FLOP_PER_MAC
    seconds = _seconds(flop, g_macs + d_macs, hw, _efficiency(c.ndf / ref_width))
    n_eval = (c.g_steps // c.eval_every) if c.eval_every else 0
    feature_macs = _INCEPTION_MACS if c.feature_net.startswith("inception") else _FEATURE_NET_MACS
    if c.n_final_samples or n_eval:  # test-split features, baselines, final and periodic scores
        samples = 10000 + 3 * c.n_final_samples + n_eval * c.n_eval_samples
        seconds += _seconds(samples * (feature_macs + g_macs) * _FLOP_PER_MAC, feature_macs, hw)
    if spec.gan_eval is not None:
        e = spec.gan_eval
        critic = _CRITIC_MACS_64 * (e.nd_critic_width / 64) ** 2
        flop = 2 * e.nd_critic_steps * e.nd_batch_size * (_CRITIC_PASSES * critic + g_macs)
        eff = _efficiency(e.nd_critic_width / 64)
        seconds += _seconds(flop * _FLOP_PER_MAC, critic, hw, eff)
        seconds += 2 * e.nd_critic_steps * _CRITIC_STEP_OVERHEAD_S / hw.speedup(critic)
    return _RUN_OVERHEAD_S + seconds


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
        f"whole plan). This is an estimate (the runs' floating-point work over the throughput of "
        f"{CPU_REFERENCE.gflops:g} GFLOP/s measured for 2 CPU cores)"
        + (f" and a guessed GPU speed-up (>= {CUDA_SPEEDUP:g}x)" if hw.device == "cuda" else "")
        + "; expect a factor of 2 either way, more on a shared machine."
    )
    return "\n".join(lines)
