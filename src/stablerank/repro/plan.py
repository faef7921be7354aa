"""Expand a :class:`~stablerank.config.reproduce.ReproduceConfig` into concrete runs.

Each run is a :class:`RunSpec`: a fully resolved trainer config (``ClassifyConfig`` or
``GanConfig``) plus the post-training stage (classifier analysis, or the GAN's neural divergence
and discriminator eL). Its folder is ``out_dir/runs/<slug>-<hash>``: a readable slug (dataset,
model, normalization, seed) and :func:`~stablerank.config.config_hash` of the resolved trainer
config without its runtime keys (:data:`RUNTIME_KEYS`: where and how it runs, never what it
computes). The same config therefore always maps to the same folder, and any changed field that
alters the computation maps to a new one.

Runs (SPEC 3):

* ``classify``: dataset x model x mode x seed, clean labels; mode is ``none``, ``sn`` or
  ``srn<c>`` for each rank ratio c (claims 1 and 3);
* ``shatter``: the same modes on random labels (claim 2);
* ``gan``: discriminator ``sn`` vs ``srn<c>`` x seeds (claims 4 and 5).

:func:`estimate_seconds` gives a rough time per run from per-image costs measured on 2 CPU cores
(see :data:`CPU_REFERENCE`); :func:`format_plan` prints the plan with them (``--dry-run``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stablerank.config import config_from_dict, config_hash
from stablerank.config.classify import CLASSIFY_PRESETS, AnalyzeConfig, ClassifyConfig
from stablerank.config.gan import GAN_PRESETS, GanConfig
from stablerank.config.reproduce import ReproduceConfig

__all__ = [
    "CPU_REFERENCE",
    "CUDA_SPEEDUP",
    "KIND_CLASSIFY",
    "KIND_GAN",
    "KIND_SHATTER",
    "RUNS_DIR",
    "RUNTIME_KEYS",
    "GanEvalSettings",
    "Hardware",
    "RunSpec",
    "build_plan",
    "detect_hardware",
    "estimate_seconds",
    "format_plan",
    "mode_label",
    "run_state",
]

KIND_CLASSIFY, KIND_SHATTER, KIND_GAN = "classify", "shatter", "gan"
RUNS_DIR = "runs"  # run folders live in out_dir/runs/
# Keys that say where and how a run executes, not what it computes: left out of the folder hash
# so that e.g. a resumed run on another device or with a progress bar finds its folder.
RUNTIME_KEYS = ("run_dir", "out_dir", "run_name", "resume", "progress", "device", "num_threads")
_SHATTER_PRESET = "shatter"
_GAN_BASE_CHECKPOINTS = 4  # checkpoints per GAN run at least (finer resume of long runs)

# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class GanEvalSettings:
    """What is measured on a finished GAN run beside FID/KID/IS (claims 4 and 5)."""

    nd_critic_steps: int
    nd_eval_batches: int
    d_el_pairs: int
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One run of the plan.

    Attributes:
        kind: ``classify``, ``shatter`` or ``gan``.
        slug: readable part of the folder name.
        digest: config hash (the cache key).
        config: the trainer config, its run folder set.
        mode: normalization label (``none``, ``sn``, ``srn0.3``).
        seed: the run's seed.
        group: the setting this run is one seed/mode of (e.g. ``fashion-mnist/small_cnn``).
        analyze: classifier analysis settings (None: no analysis stage).
        gan_eval: GAN evaluation settings (None: none).
    """

    kind: str
    slug: str
    digest: str
    config: Any
    mode: str
    seed: int
    group: str
    analyze: AnalyzeConfig | None = None
    gan_eval: GanEvalSettings | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.slug}-{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        """What ``spec.json`` of the run folder holds (read by the report)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "slug": self.slug,
            "digest": self.digest,
            "mode": self.mode,
            "seed": self.seed,
            "group": self.group,
            "config": self.config.to_dict()
            if hasattr(self.config, "to_dict")
            else dataclasses.asdict(self.config),
            "analyze": self.analyze.to_dict() if self.analyze else None,
            "gan_eval": self.gan_eval.to_dict() if self.gan_eval else None,
        }


def mode_label(norm: str, rank_ratio: float | None) -> str:
    """``none`` / ``sn`` / ``srn<c>`` (e.g. ``srn0.3``)."""
    return f"srn{rank_ratio:g}" if norm == "srn" else norm


def _modes(norms: Sequence[str], ratios: Sequence[float]) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    for norm in norms:
        out += [(norm, c) for c in ratios] if norm == "srn" else [(norm, None)]
    return out


def _digest(cfg: Any) -> str:
    return config_hash(cfg, exclude=RUNTIME_KEYS)


def _classify_base(dataset: str, model: str) -> dict[str, Any]:
    """The classification trainer preset of (dataset, model): the recipe the paper's setting
    uses (CIFAR: the family's standard recipe; Fashion-MNIST: the issue-3 presets)."""
    if dataset in ("cifar10", "cifar100") and f"cifar10-{model}" in CLASSIFY_PRESETS:
        return {**CLASSIFY_PRESETS[f"cifar10-{model}"], "dataset": dataset}
    if dataset == "fashion-mnist" and model == "resnet20":
        return dict(CLASSIFY_PRESETS["fmnist-resnet20"])
    if dataset == "fashion-mnist":
        return {**CLASSIFY_PRESETS["fmnist-cnn"], "model": model}
    return {"dataset": dataset, "model": model}


def _runtime(cfg: ReproduceConfig) -> dict[str, Any]:
    return {
        "device": cfg.device,
        "progress": cfg.progress,
        "num_threads": cfg.num_threads,
        "data_dir": cfg.data_dir,
    }


def _classify_specs(cfg: ReproduceConfig, runs_root: Path) -> list[RunSpec]:
    analyze = AnalyzeConfig(
        n_pairs=cfg.n_pairs,
        n_jacobian=cfg.n_jacobian,
        n_interpolated=cfg.n_interpolated,
        jacobian_iterations=cfg.jacobian_iterations,
        device=cfg.device,
        num_threads=cfg.num_threads,
    )
    specs = []
    for dataset in cfg.datasets:
        for model in cfg.models:
            for norm, c in _modes(cfg.norms, cfg.rank_ratios):
                for seed in cfg.seeds:
                    data = {
                        **_classify_base(dataset, model),
                        **_runtime(cfg),
                        "width": cfg.width,
                        "norm": norm,
                        "seed": seed,
                        "train_subset": cfg.train_subset,
                        "train_eval_size": cfg.train_eval_size,
                        "normalize_head": cfg.normalize_head,
                    }
                    if cfg.epochs:
                        data["epochs"] = cfg.epochs
                    if c is not None:
                        data["rank_ratio"] = c
                    specs.append(
                        _classifier_spec(
                            KIND_CLASSIFY,
                            data,
                            f"{dataset}_{model}_w{cfg.width:g}",
                            f"{dataset}/{model}",
                            mode_label(norm, c),
                            seed,
                            runs_root,
                            analyze,
                        )
                    )
    return specs


def _shatter_specs(cfg: ReproduceConfig, runs_root: Path) -> list[RunSpec]:
    width = cfg.shatter_width or cfg.width
    specs = []
    for model in cfg.shatter_models:
        for norm, c in _modes(cfg.norms, cfg.rank_ratios):
            for seed in cfg.shatter_seeds:
                data = {
                    **CLASSIFY_PRESETS[_SHATTER_PRESET],
                    **_runtime(cfg),
                    "dataset": cfg.shatter_dataset,
                    "model": model,
                    "width": width,
                    "norm": norm,
                    "seed": seed,
                    "train_subset": cfg.shatter_subset,
                    "epochs": cfg.shatter_epochs,
                    "label_noise": cfg.shatter_label_noise,
                    "normalize_head": cfg.normalize_head,
                }
                if cfg.shatter_lr:
                    data["lr"] = cfg.shatter_lr
                if c is not None:
                    data["rank_ratio"] = c
                slug = (
                    f"shatter_{cfg.shatter_dataset}_{model}_w{width:g}_p{cfg.shatter_label_noise:g}"
                )
                group = (
                    f"{cfg.shatter_dataset}/{model}, {cfg.shatter_label_noise:.0%} random labels"
                )
                specs.append(
                    _classifier_spec(
                        KIND_SHATTER, data, slug, group, mode_label(norm, c), seed, runs_root, None
                    )
                )
    return specs


def _classifier_spec(
    kind: str,
    data: dict[str, Any],
    slug: str,
    group: str,
    mode: str,
    seed: int,
    runs_root: Path,
    analyze: AnalyzeConfig | None,
) -> RunSpec:
    train_cfg = config_from_dict(ClassifyConfig, data)
    digest = _digest(train_cfg)
    slug = f"{slug}_{mode}_s{seed}"
    train_cfg = dataclasses.replace(train_cfg, run_dir=str(runs_root / f"{slug}-{digest}"))
    return RunSpec(kind, slug, digest, train_cfg, mode, seed, group, analyze=analyze)


def _gan_specs(cfg: ReproduceConfig, runs_root: Path) -> list[RunSpec]:
    base = dict(GAN_PRESETS[cfg.gan_preset])
    steps = cfg.gan_steps or base.get("g_steps", GanConfig.g_steps)
    settings = GanEvalSettings(cfg.nd_critic_steps, cfg.nd_eval_batches, cfg.d_el_pairs)
    specs = []
    for norm, c in _modes(cfg.gan_norms, cfg.gan_rank_ratios):
        for seed in cfg.gan_seeds:
            data: dict[str, Any] = {
                **base,
                "dataset": cfg.gan_dataset,
                "d_norm": norm,
                "seed": seed,
                "g_steps": steps,
                "device": cfg.device,
                "progress": cfg.progress,
                "data_dir": cfg.data_dir,
                "feature_net": cfg.gan_feature_net,
                "feature_weights": cfg.gan_feature_weights,
                "checkpoint_every": max(
                    1, min(base.get("checkpoint_every", steps), steps // _GAN_BASE_CHECKPOINTS)
                ),
                "eval_every": steps // cfg.gan_eval_points if cfg.gan_eval_points else 0,
                "n_eval_samples": cfg.gan_eval_samples,
            }
            if cfg.gan_width:
                data["ngf"] = data["ndf"] = cfg.gan_width
            if cfg.gan_n_samples >= 0:
                data["n_final_samples"] = cfg.gan_n_samples
            if cfg.gan_ema >= 0:
                data["ema"] = cfg.gan_ema
            if c is not None:
                data["rank_ratio"] = c
            gan_cfg = config_from_dict(GanConfig, data)
            digest = _digest(gan_cfg)
            mode = mode_label(norm, c)
            slug = f"gan_{cfg.gan_dataset}_{gan_cfg.arch}_{mode}_s{seed}"
            gan_cfg = dataclasses.replace(
                gan_cfg, out_dir=str(runs_root), run_name=f"{slug}-{digest}"
            )
            specs.append(
                RunSpec(
                    KIND_GAN,
                    slug,
                    digest,
                    gan_cfg,
                    mode,
                    seed,
                    f"{cfg.gan_dataset}/{gan_cfg.arch}",
                    gan_eval=settings,
                )
            )
    return specs


def build_plan(cfg: ReproduceConfig) -> list[RunSpec]:
    """All runs of ``cfg`` in execution order (classification, shattering, GAN).

    Raises:
        ValueError: a combination the trainers reject (their message names the field).
    """
    runs_root = Path(cfg.out_dir) / RUNS_DIR
    specs: list[RunSpec] = []
    if cfg.only in ("all", "classify"):
        specs += _classify_specs(cfg, runs_root) + _shatter_specs(cfg, runs_root)
    if cfg.only in ("all", "gan"):
        specs += _gan_specs(cfg, runs_root)
    return specs


def run_dir_of(spec: RunSpec) -> Path:
    """The run folder of ``spec``."""
    c = spec.config
    return Path(c.run_dir) if isinstance(c, ClassifyConfig) else Path(c.out_dir) / c.run_name


__all__ += ["run_dir_of"]


def run_state(spec: RunSpec) -> str:
    """``done``, ``failed``, ``partial`` (a checkpoint to resume from) or ``new``."""
    run_dir = run_dir_of(spec)
    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    if status.get("status") == "done":
        return "done"
    if status.get("status") == "failed":
        return "failed"
    if (run_dir / "checkpoint.pt").exists() or any((run_dir / "checkpoints").glob("*.pt")):
        return "partial"
    return "new"


# ----------------------------------------------------------------------------- estimates

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
