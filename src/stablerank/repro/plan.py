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

:mod:`stablerank.repro.estimate` prints the plan with estimated times (``--dry-run``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablerank.config import config_from_dict, config_hash, config_to_dict
from stablerank.config.classify import CLASSIFY_PRESETS, AnalyzeConfig, ClassifyConfig
from stablerank.config.gan import GAN_PRESETS, GanConfig
from stablerank.config.reproduce import ReproduceConfig

__all__ = [
    "KIND_CLASSIFY",
    "KIND_GAN",
    "KIND_SHATTER",
    "RUNS_DIR",
    "RUNTIME_KEYS",
    "GanEvalSettings",
    "RunSpec",
    "build_plan",
    "mode_label",
    "run_dir_of",
    "run_dir_of_config",
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
    nd_critic_width: int = 64
    nd_batch_size: int = 64
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
    config: ClassifyConfig | GanConfig
    mode: str
    seed: int
    group: str
    analyze: AnalyzeConfig | None = None
    gan_eval: GanEvalSettings | None = None

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
            "config": config_to_dict(self.config),
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
    """Fields every classifier run takes from the reproduce config as they are."""
    extra = {"eval_batch_size": cfg.eval_batch_size} if cfg.eval_batch_size else {}
    return {
        **extra,
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
        n_margin=cfg.n_margin,
        **({"batch_size": cfg.eval_batch_size} if cfg.eval_batch_size else {}),
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
                    # The curve needs only the accuracies; per-layer SVDs would cost more than
                    # a small model's epoch.
                    "log_layers": False,
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
    settings = GanEvalSettings(
        cfg.nd_critic_steps,
        cfg.nd_eval_batches,
        cfg.d_el_pairs,
        nd_critic_width=cfg.nd_critic_width,
        nd_batch_size=cfg.nd_batch_size,
    )
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


def run_dir_of_config(cfg: ClassifyConfig | GanConfig) -> Path:
    """The run folder a trainer config names (``run_dir``, or ``out_dir/run_name``)."""
    if isinstance(cfg, ClassifyConfig):
        return Path(cfg.run_dir)
    return Path(cfg.out_dir) / cfg.run_name


def run_dir_of(spec: RunSpec) -> Path:
    """The run folder of ``spec``."""
    return run_dir_of_config(spec.config)


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
