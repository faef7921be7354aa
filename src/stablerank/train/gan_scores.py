"""FID/KID/IS of the GAN trainer: periodic evaluation, the untrained and real-data baselines, and
the final ``metrics.json`` (named keys plus ``protocol``) with ``d_layers.json``.

Samples come from :func:`stablerank.train.gan_sampling.make_generate` (their own RNG stream, eval
mode), so scoring never changes training. Post-training measures that need a trained critic or the
discriminator's eL live in :mod:`stablerank.train.gan_analysis`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stablerank.config.gan import GanConfig
from stablerank.layers import layer_report
from stablerank.metrics.features import FeatureExtractor, build_feature_extractor
from stablerank.metrics.gan import (
    KEY_PROTOCOL,
    compute_gan_metrics,
    extract_features,
    is_splits_for,
)
from stablerank.train.gan_sampling import BN_STAT_SAMPLES, STREAM_EVAL, make_generate
from stablerank.train.results import (
    EpochRecord,
    GanProtocol,
    GanResult,
    ScoreProtocol,
    active_fraction,
    layer_stats,
    mean_active_fraction,
)
from stablerank.train.rundir import RunDir
from stablerank.train.runtime import stream_seed

# Keys of the log and of metrics.json.
KEY_D_LOSS = "d_loss"
KEY_G_LOSS = "g_loss"
KEY_SRN_ACTIVE = "srn_active_fraction"  # of D, logged with the losses
# Prefixes of the baseline scores in metrics.json (e.g. "untrained_fid", "real_train_fid").
PREFIX_UNTRAINED = "untrained_"
PREFIX_REAL_TRAIN = "real_train_"
# FID/KID/IS compare samples with the whole test split, with this project's own feature network
# where one exists (no Inception weights offline).
_REFERENCE_SPLIT = "test"


def scoring_network(cfg: GanConfig, device: torch.device | str = "cpu") -> FeatureExtractor | None:
    """The feature network of ``cfg``'s FID/KID/IS (None when the run scores nothing), with its
    weights read: the trainer's, and ``reproduce``'s check before any run starts."""
    if not (cfg.eval_every or cfg.n_final_samples):
        return None
    assert cfg.scoring_net is not None  # Precondition: GanConfig refuses scoring without one.
    kwargs: dict[str, Any] = {"device": device}
    if cfg.feature_weights is not None:
        kwargs["weights_path"] = cfg.feature_weights
    return build_feature_extractor(cfg.scoring_net, **kwargs)


class Evaluator:
    """FID/KID/IS of the sampling generator against the whole test split (rank 0 only).

    The test split's features are extracted once. Samples come from their own RNG stream (the
    same latents at every evaluation), in eval mode, so evaluating never changes training.
    """

    def __init__(
        self, cfg: GanConfig, test_x: torch.Tensor, G: nn.Module, num_classes: int | None,
        device: torch.device,
    ) -> None:  # fmt: skip
        extractor = scoring_network(cfg, device)
        assert extractor is not None  # Precondition: built only for a run that scores.
        self.extractor = extractor
        self.real = extract_features(test_x, self.extractor, split=_REFERENCE_SPLIT)
        self.cfg, self.G, self.num_classes, self.device = cfg, G, num_classes, device

    def __call__(self, n_fake: int) -> dict[str, Any]:
        generate = make_generate(self.G, z_dim=self.cfg.z_dim, num_classes=self.num_classes,
                                 device=self.device, seed=self.cfg.seed)  # fmt: skip
        return compute_gan_metrics(
            generate, self.real, feature_net=self.extractor, n_fake=n_fake,
            is_splits=is_splits_for(n_fake, self.extractor.num_classes), seed=self.cfg.seed,
        )  # fmt: skip


def scores_only(scores: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {prefix + k: v for k, v in scores.items() if k != KEY_PROTOCOL}


def score_baselines(
    evaluator: Evaluator, train_x: torch.Tensor, n: int, seed: int,
    saved: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The two ends of the scale, with the final evaluation's protocol: an untrained generator
    and ``n`` real training images. A fresh run (``saved`` None) scores both; call it before
    training. A resumed run recomputes the real one (seeded, so unchanged when the protocol is)
    and keeps the untrained one, which cannot be redone after step 0, only when it was scored
    under the same protocol (resuming may change ``n_final_samples`` or the feature network)."""
    gen = torch.Generator().manual_seed(stream_seed(seed, 0, 0, STREAM_EVAL))
    real = compute_gan_metrics(
        train_x[torch.randperm(len(train_x), generator=gen)[:n]], evaluator.real,
        feature_net=evaluator.extractor, seed=seed, sample_source="train",
        is_splits=is_splits_for(n, evaluator.extractor.num_classes),
    )  # fmt: skip
    if saved is None:
        return {PREFIX_UNTRAINED: evaluator(n), PREFIX_REAL_TRAIN: real}
    untrained = saved.get(PREFIX_UNTRAINED)
    same = {**real[KEY_PROTOCOL], "sample_source": None}
    if untrained is None or {**untrained[KEY_PROTOCOL], "sample_source": None} != same:
        print("resume: the untrained generator's scores were made under another protocol (or "
              "none were); metrics.json leaves them out", file=sys.stderr)  # fmt: skip
        return {PREFIX_REAL_TRAIN: real}
    return {PREFIX_UNTRAINED: untrained, PREFIX_REAL_TRAIN: real}


# A discriminator that wins outright: its loss ~0 while the generator's explodes.
COLLAPSE_D_LOSS = 1e-3
COLLAPSE_G_LOSS = 50.0
COLLAPSE_POINTS = 3
DIVERGENCE_RULE = (
    f"a non-finite loss, or D's loss below {COLLAPSE_D_LOSS:g} while G's exceeds "
    f"{COLLAPSE_G_LOSS:g} at each of the last {COLLAPSE_POINTS} logged points"
)


def divergence_of(records: list[dict[str, Any]]) -> str:
    """Why a GAN run diverged by :data:`DIVERGENCE_RULE`, from its logged losses ('' when it did
    not)."""
    losses = [r for r in records if KEY_D_LOSS in r]
    for r in losses:
        # None: a non-finite loss, as log.jsonl stores it (strict JSON)
        if not all(r[k] is not None and math.isfinite(r[k]) for k in (KEY_D_LOSS, KEY_G_LOSS)):
            return f"non-finite loss at G step {r['step']}"
    tail = losses[-COLLAPSE_POINTS:]
    if len(tail) == COLLAPSE_POINTS and all(
        r[KEY_D_LOSS] < COLLAPSE_D_LOSS and r[KEY_G_LOSS] > COLLAPSE_G_LOSS for r in tail
    ):
        return (f"discriminator collapse: D loss < {COLLAPSE_D_LOSS:g} and G loss > "
                f"{COLLAPSE_G_LOSS:g} at the last {COLLAPSE_POINTS} logged points (G loss "
                f"{tail[-1][KEY_G_LOSS]:.4g} at step {tail[-1]['step']})")  # fmt: skip
    return ""


def write_result(
    run_dir: Path,
    cfg: GanConfig,
    scores: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]] | None,
    D: nn.Module,
    step: int,
    train_seconds: float,
    records: list[dict[str, Any]],
    divergence: str,
    data_dir: str | None,
) -> GanResult:
    """The run's :class:`stablerank.train.results.GanResult` (``metrics.json``) and
    ``d_layers.json`` (D's spectra)."""
    last = next((r for r in reversed(records) if KEY_D_LOSS in r), {})
    flat: dict[str, Any] = {}
    protocols: dict[str, ScoreProtocol] = {}
    if scores is not None:
        flat.update(scores_only(scores))
    for prefix, base in (baselines or {}).items():
        flat.update(scores_only(base, prefix))
        protocols[prefix.rstrip("_")] = ScoreProtocol(**base[KEY_PROTOCOL])
    protocol = GanProtocol(
        generator="ema" if cfg.ema > 0 else "raw",
        generator_bn=f"standing statistics of {BN_STAT_SAMPLES} samples"
        if cfg.ema > 0
        else "running statistics of training",
        d_norm=cfg.d_norm,
        rank_ratio=cfg.rank_ratio if cfg.d_norm == "srn" else None,
        d_first_norm=cfg.d_first_norm,
        divergence_rule=DIVERGENCE_RULE,
        data_dir_read=data_dir,
        scores=ScoreProtocol(**scores[KEY_PROTOCOL]) if scores is not None else None,
        baselines=protocols,
    )
    # One point per step that has an evaluation FID or an SRN activity (a step's loss record
    # and its evaluation record merge).
    points: dict[int, dict[str, Any]] = {}
    for r in records:
        for key, name in (("eval_fid", "fid"), (KEY_SRN_ACTIVE, "srn_active_fraction")):
            if r.get(key) is not None:
                points.setdefault(r["step"], {})[name] = r[key]
    curve = tuple(EpochRecord(step=step, **p) for step, p in sorted(points.items()))
    report = layer_report(D)
    layers = layer_stats(report) if not divergence else ()
    fields = {f.name for f in dataclasses.fields(GanResult)}
    result = GanResult(
        steps=step, d_loss=last.get(KEY_D_LOSS), g_loss=last.get(KEY_G_LOSS),
        **{k: v for k, v in flat.items() if k in fields},
        curve=curve, d_layers=layers, srn_active_fraction=active_fraction(layers),
        srn_active_fraction_mean=mean_active_fraction(curve),
        diverged=bool(divergence), divergence=divergence, train_seconds=train_seconds,
        data_dir=data_dir, protocol=protocol,
    )  # fmt: skip
    result.to_json(run_dir)
    report.to_json(RunDir(run_dir).d_layers_file)
    return result
