"""FID/KID/IS of the GAN trainer: periodic evaluation, the untrained and real-data baselines, and
the final ``metrics.json`` (named keys plus ``protocol``) with ``d_layers.json``.

Samples come from :func:`~stablerank.train.gan_sampling.make_generate` (their own RNG stream, eval
mode), so scoring never changes training. Post-training measures that need a trained critic or the
discriminator's eL live in :mod:`stablerank.repro.gan_eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stablerank.config.gan import GanConfig
from stablerank.metrics.features import build_feature_extractor
from stablerank.metrics.gan import (
    DEFAULT_IS_SPLITS,
    KEY_PROTOCOL,
    compute_gan_metrics,
    extract_features,
)
from stablerank.report import layer_report
from stablerank.train.checkpoint import atomic_write_json
from stablerank.train.gan_sampling import (
    _STREAM_EVAL,
    BN_STAT_SAMPLES,
    _stream_seed,
    make_generate,
)
from stablerank.train.records import MetricLog

# Keys of metrics.json; :mod:`stablerank.train.gan` publishes them (callers import them there).
KEY_STEPS = "g_steps"
KEY_D_LOSS = "d_loss"
KEY_G_LOSS = "g_loss"
KEY_TRAIN_SECONDS = "train_seconds"
# Prefixes of the baseline scores in metrics.json (e.g. "untrained_fid", "real_train_fid").
PREFIX_UNTRAINED = "untrained_"
PREFIX_REAL_TRAIN = "real_train_"
# FID/KID/IS compare samples with the whole test split, with this project's own feature network
# where one exists (no Inception weights offline).
_REFERENCE_SPLIT = "test"
_DEFAULT_FEATURE_NETS = {"fashion-mnist": "fmnist-cnn"}


def _feature_net_name(cfg: GanConfig) -> str:
    if cfg.feature_net != "auto":
        return cfg.feature_net
    if cfg.dataset in _DEFAULT_FEATURE_NETS:
        return _DEFAULT_FEATURE_NETS[cfg.dataset]
    raise ValueError(
        f"no offline feature network for dataset {cfg.dataset!r}: set feature_net (e.g. "
        "'inception-v3' with feature_weights) or turn evaluation off (eval_every=0, "
        "n_final_samples=0)"
    )


class _Evaluator:
    """FID/KID/IS of the sampling generator against the whole test split (rank 0 only).

    The test split's features are extracted once. Samples come from their own RNG stream (the
    same latents at every evaluation), in eval mode, so evaluating never changes training.
    """

    def __init__(
        self, cfg: GanConfig, test_x: torch.Tensor, G: nn.Module, num_classes: int | None,
        device: torch.device,
    ) -> None:  # fmt: skip
        kwargs: dict[str, Any] = {"device": device}
        if cfg.feature_weights is not None:
            kwargs["weights_path"] = cfg.feature_weights
        self.extractor = build_feature_extractor(_feature_net_name(cfg), **kwargs)
        self.real = extract_features(test_x, self.extractor, split=_REFERENCE_SPLIT)
        self.cfg, self.G, self.num_classes, self.device = cfg, G, num_classes, device

    def __call__(self, n_fake: int) -> dict[str, Any]:
        generate = make_generate(self.G, z_dim=self.cfg.z_dim, num_classes=self.num_classes,
                                 device=self.device, seed=self.cfg.seed)  # fmt: skip
        return compute_gan_metrics(
            generate, self.real, feature_net=self.extractor, n_fake=n_fake,
            is_splits=min(DEFAULT_IS_SPLITS, n_fake), seed=self.cfg.seed,
        )  # fmt: skip


def _scores_only(scores: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {prefix + k: v for k, v in scores.items() if k != KEY_PROTOCOL}


def _baselines(evaluator: _Evaluator, train_x: torch.Tensor, n: int, seed: int
               ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The two ends of the scale, with the final evaluation's protocol: an untrained generator
    (call before training) and ``n`` real training images (a seeded subset) as "samples"."""
    gen = torch.Generator().manual_seed(_stream_seed(seed, 0, 0, _STREAM_EVAL))
    subset = train_x[torch.randperm(len(train_x), generator=gen)[:n]]
    real = compute_gan_metrics(
        subset, evaluator.real, feature_net=evaluator.extractor,
        is_splits=min(DEFAULT_IS_SPLITS, n), seed=seed, sample_source="train",
    )  # fmt: skip
    return {PREFIX_UNTRAINED: evaluator(n), PREFIX_REAL_TRAIN: real}


def _write_final_metrics(
    run_dir: Path,
    cfg: GanConfig,
    scores: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]] | None,
    D: nn.Module,
    step: int,
    train_seconds: float,
    log: MetricLog | None,
) -> None:
    """``metrics.json`` (named keys + protocol) and ``d_layers.json`` (D's spectra)."""
    last = [r for r in (log.records() if log else []) if KEY_D_LOSS in r]
    result: dict[str, Any] = {
        KEY_STEPS: step,
        KEY_TRAIN_SECONDS: train_seconds,
        KEY_D_LOSS: last[-1][KEY_D_LOSS] if last else None,
        KEY_G_LOSS: last[-1][KEY_G_LOSS] if last else None,
    }
    protocol: dict[str, Any] = {
        "generator": "ema" if cfg.ema > 0 else "raw",
        "generator_bn": (
            f"standing statistics of {BN_STAT_SAMPLES} samples"
            if cfg.ema > 0
            else "running statistics of training"
        ),
        "d_norm": cfg.d_norm,
        "rank_ratio": cfg.rank_ratio if cfg.d_norm == "srn" else None,
    }
    if scores is not None:
        protocol.update(scores[KEY_PROTOCOL])
        result.update(_scores_only(scores))
    if baselines:
        protocol["baselines"] = {}
        for prefix, base in baselines.items():
            result.update(_scores_only(base, prefix))
            protocol["baselines"][prefix.rstrip("_")] = base[KEY_PROTOCOL]
    result[KEY_PROTOCOL] = protocol
    atomic_write_json(run_dir / "metrics.json", result)
    layer_report(D).to_json(run_dir / "d_layers.json")
