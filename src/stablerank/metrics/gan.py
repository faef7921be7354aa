"""FID, KID and IS of a generator (or of any image set), each result carrying its protocol.

Pipeline (torch-fidelity's shape): images -> features once per set (:func:`extract_features`,
cacheable as a :class:`FeatureSet`) -> statistics and scores by torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance``, and the IS here (torchmetrics'
``InceptionScore`` computation on exactly ``is_splits`` splits). The feature network runs once
per image; the two torchmetrics objects receive its outputs through a pass-through module (their
documented custom-``feature`` path), so no torch-fidelity is needed.

.. note::
    Scores are computed from the features of the calling process only (torchmetrics'
    cross-process sync is off), so under DDP call these functions on one rank (rank 0) and let
    the others skip them; no collective is entered.

torchmetrics is in the ``experiments`` extra and imported only when a score is computed; without
it :func:`compute_gan_metrics` raises ModuleNotFoundError naming
``pip install "stablerank[experiments]"``.
Non-finite images, features or logits raise ValueError before any linear algebra (NaN reaching
LAPACK's eigensolvers can crash the process).

Image contract: float (N, C, H, W) in [-1, 1] (a tanh generator's output) or uint8 [0, 255]
(see :mod:`stablerank.metrics.features`).

Scores depend on every protocol choice (docs/math.md §2.5): the feature network and its weights, the
reference split (train and test statistics differ), the sample counts, the IS splits and the KID
subsets. :class:`Protocol` records all of them in each result under ``"protocol"``; compare only
scores with equal protocols, and read them beside :func:`real_vs_real_baseline` (train vs test
with the same protocol) to see the scale.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stablerank._optional import import_optional
from stablerank.metrics._checks import (
    check_finite,
    check_generated,
    check_positive_int,
    check_seed,
    seeded,
)
from stablerank.metrics.features import (
    DEFAULT_FEATURE_NET,
    FeatureExtractor,
    build_feature_extractor,
    warn_if_unsigned,
)

__all__ = [
    "ALL_GAN_METRICS",
    "DEFAULT_IS_SPLITS",
    "DEFAULT_KID_SUBSETS",
    "DEFAULT_KID_SUBSET_SIZE",
    "IMAGE_RANGE",
    "KEY_FID",
    "KEY_IS_MEAN",
    "KEY_IS_STD",
    "KEY_KID_MEAN",
    "KEY_KID_STD",
    "KEY_PROTOCOL",
    "MIN_IS_SPLIT_SIZE",
    "FeatureSet",
    "Protocol",
    "compute_gan_metrics",
    "extract_features",
    "is_splits_for",
    "real_vs_real_baseline",
]

KEY_FID = "fid"
KEY_KID_MEAN = "kid_mean"
KEY_KID_STD = "kid_std"
KEY_IS_MEAN = "is_mean"
KEY_IS_STD = "is_std"
KEY_PROTOCOL = "protocol"
METRIC_FID, METRIC_KID, METRIC_IS = "fid", "kid", "is"
ALL_GAN_METRICS = (METRIC_FID, METRIC_KID, METRIC_IS)
# Protocol defaults of torch-fidelity / SN-GAN reporting (IS on 10 splits), one table.
DEFAULT_IS_SPLITS = 10
# A split of k samples scores an IS of at most k: below this many (or the network's classes, if
# fewer) per split, the score says more about k than about the images.
MIN_IS_SPLIT_SIZE = 100
DEFAULT_KID_SUBSETS = 100
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_BATCH_SIZE = 250
DEFAULT_SEED = 0
IMAGE_RANGE = "[-1, 1]"
SOURCE_GENERATOR = "generator"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Every choice a GAN score depends on (docs/math.md §2.5: pin and print them).

    Attributes:
        feature_net: registry name of the feature network.
        weights_sha256: sha256 of its weights file.
        reference_split: which real images the samples are compared with (e.g. "train", "test").
        n_real: number of reference images.
        n_fake: number of scored samples.
        is_splits: IS splits.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size actually used (capped by n_real and n_fake).
        seed: seed of sample generation and of the IS/KID shuffles.
        sample_source: what produced the scored samples ("generator", or a real split for the
            real-vs-real baseline).
        image_range: the value range images were given in.
    """

    feature_net: str
    weights_sha256: str
    reference_split: str
    n_real: int
    n_fake: int
    is_splits: int
    kid_subsets: int
    kid_subset_size: int
    seed: int
    sample_source: str = SOURCE_GENERATOR
    image_range: str = IMAGE_RANGE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """Features (and logits) of one image set, as cached by :func:`extract_features`.

    Attributes:
        features: (N, d) float64 on the CPU.
        logits: (N, K) float64 on the CPU, or None when the network has no classifier.
        feature_net: name of the network that produced them.
        weights_sha256: its weights hash (a cache key: a different network must not reuse them).
        split: what the images are ("train", "test", "generator", ...).
    """

    features: Tensor
    logits: Tensor | None
    feature_net: str
    weights_sha256: str
    split: str

    @property
    def n(self) -> int:
        return int(self.features.shape[0])


class _Passthrough(nn.Module):
    """Hands precomputed features to torchmetrics (``num_features`` spares it a dummy forward)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _resolve_extractor(feature_net: str | FeatureExtractor) -> FeatureExtractor:
    if isinstance(feature_net, FeatureExtractor):
        return feature_net
    if isinstance(feature_net, str):
        return build_feature_extractor(feature_net)
    raise TypeError(
        f"feature_net must be a registered name or a FeatureExtractor, got {type(feature_net)}"
    )


def _count(images: Tensor | Callable[[int], Tensor], n: int | None, name: str) -> int:
    """How many images are used: ``n`` (required for a callable, at most N of a tensor), or all N
    of a tensor. ``name`` is the caller's argument, named in the errors."""
    if callable(images) and not isinstance(images, Tensor):
        if n is None:
            raise ValueError(f"{name} is required for a generate(k) callable")
        total = n
    else:
        total = images.shape[0] if n is None else n
        if total > images.shape[0]:
            raise ValueError(f"{name} must be <= the {images.shape[0]} images given, got {n}")
    total = check_positive_int(name, total)
    return total


def extract_features(
    images: Tensor | Callable[[int], Tensor],
    feature_net: str | FeatureExtractor = DEFAULT_FEATURE_NET,
    *,
    split: str,
    n: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> FeatureSet:
    """Run the feature network once over a set of images (or ``n`` samples of a generator).

    Args:
        images: a tensor (N, C, H, W) (the first ``n`` are used when ``n`` is given), or
            ``generate(k) -> (k, C, H, W)`` called with k <= ``batch_size`` until ``n`` samples
            exist. Put a generator module in eval mode yourself.
        feature_net: registry name or :class:`FeatureExtractor` (default "fmnist-cnn").
        split: label stored with the features ("train", "test", "generator", ...).
        n: number of images (required for a callable; default all of a tensor).
        batch_size: images per forward pass (default 250); does not change the features of
            given images, but it is the ``k`` of each ``generate(k)`` call, and a generator that
            draws its latents per call (:func:`stablerank.train.gan_sampling.make_generate`)
            draws other (equally random) samples for another ``k``.
        seed: torch seed while ``generate`` runs (the caller's RNG state is restored).
        progress: show a tqdm bar on stderr (default False).

    Returns:
        The :class:`FeatureSet`.

    Raises:
        ValueError: on a missing or invalid ``n``, a generator returning the wrong count, or
            non-finite (NaN/inf) images or features.
    """
    extractor = _resolve_extractor(feature_net)
    batch_size = check_positive_int("batch_size", batch_size)
    total = _count(images, n, "n")
    feats, logits = [], []
    bar = tqdm(
        total=total, desc=f"features[{split}]", file=sys.stderr, unit="img",
        disable=not (progress and sys.stderr.isatty()),
    )  # fmt: skip
    if isinstance(images, Tensor):
        warn_if_unsigned(images[:total], f"images of split {split!r}")
    with seeded(seed):
        for start in range(0, total, batch_size):
            k = min(batch_size, total - start)
            if isinstance(images, Tensor):
                batch = images[start : start + k]
            else:
                with torch.no_grad():
                    batch = check_generated(images(k), k)
            check_finite(batch, f"images of split {split!r} (batch at index {start})")
            f, lg = extractor.extract(batch)
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
            bar.update(k)
    bar.close()
    return FeatureSet(
        features=torch.cat(feats),
        logits=torch.cat(logits) if logits else None,
        feature_net=extractor.name,
        weights_sha256=extractor.weights_sha256,
        split=split,
    )


def _torchmetrics_class(module: str, name: str, what: str) -> Any:
    """A torchmetrics class, imported on first use (torchmetrics is an optional extra)."""
    return getattr(import_optional(f"torchmetrics.image.{module}", what), name)


def _fid(real: Tensor, fake: Tensor) -> float:
    check_finite(real, "real features")
    check_finite(fake, "fake features")
    metric = _torchmetrics_class("fid", "FrechetInceptionDistance", "FID")(
        feature=_Passthrough(real.shape[1]), normalize=False, sync_on_compute=False
    )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def _kid(
    real: Tensor, fake: Tensor, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    check_finite(real, "real features")
    check_finite(fake, "fake features")
    kid_class = _torchmetrics_class("kid", "KernelInceptionDistance", "KID")
    with warnings.catch_warnings():
        # torchmetrics warns that KID buffers all features: we hold them already anyway.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = kid_class(
            feature=_Passthrough(real.shape[1]), subsets=subsets, subset_size=subset_size,
            sync_on_compute=False,
        )  # fmt: skip
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with seeded(seed):  # KID draws its subsets with torch.randperm
        mean, std = metric.compute()
    return float(mean), float(std)


def _inception_score(logits: Tensor, splits: int, seed: int) -> tuple[float, float]:
    """Mean and std of the IS over exactly ``splits`` near-equal splits of a seeded shuffle.

    torchmetrics' ``InceptionScore`` computation, except that it splits with ``torch.chunk``,
    which makes fewer splits than asked when they do not divide N (25 into 10 gives 9), so the
    protocol's ``is_splits`` would not be what was used. ``tensor_split`` makes ``splits`` splits
    (sizes differ by at most one) and equals ``chunk`` when they divide N: the mean is then
    torchmetrics' bit for bit. The std is the population one over splits (torch-fidelity's and
    Salimans et al.'s; torchmetrics applies Bessel's correction).
    """
    check_finite(logits, "fake logits")
    with seeded(seed):  # the shuffle torchmetrics draws
        logits = logits[torch.randperm(logits.shape[0])]
    prob, log_prob = logits.softmax(dim=1), logits.log_softmax(dim=1)

    def split_score(p: Tensor, lp: Tensor) -> Tensor:
        # A class no sample of the split gives any probability adds 0 * (lp - log 0): 0, not NaN.
        kl = torch.where(p > 0, p * (lp - p.mean(dim=0, keepdim=True).log()), 0.0)
        return kl.sum(dim=1).mean().exp()

    scores = torch.stack(
        [split_score(p, lp) for p, lp in zip(prob.tensor_split(splits),
                                             log_prob.tensor_split(splits), strict=True)]
    )  # fmt: skip
    # The population std over splits, as torch-fidelity and Salimans et al.'s code report it.
    return float(scores.mean()), float(scores.std(unbiased=False))


def is_splits_for(n: int, num_classes: int | None) -> int:
    """The IS splits of ``n`` samples: the usual :data:`DEFAULT_IS_SPLITS`, fewer where a split
    would hold fewer than :data:`MIN_IS_SPLIT_SIZE` samples, or than ``num_classes`` (the
    feature network's) when those are fewer; at least 1."""
    per_split = min(num_classes or MIN_IS_SPLIT_SIZE, MIN_IS_SPLIT_SIZE)
    return max(1, min(DEFAULT_IS_SPLITS, n // per_split))


def compute_gan_metrics(
    generate: Callable[[int], Tensor] | Tensor,
    real_images: Tensor | FeatureSet,
    *,
    feature_net: str | FeatureExtractor = DEFAULT_FEATURE_NET,
    n_fake: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference_split: str | None = None,
    is_splits: int = DEFAULT_IS_SPLITS,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = DEFAULT_SEED,
    metrics: str | Collection[str] = ALL_GAN_METRICS,
    sample_source: str = SOURCE_GENERATOR,
    progress: bool = False,
) -> dict[str, Any]:
    """FID, KID and IS of generated samples against real images, with the protocol attached.

    .. math::
        \\mathrm{FID} = \\lVert \\mu_r - \\mu_g \\rVert^2
        + \\operatorname{tr}(\\Sigma_r + \\Sigma_g - 2 (\\Sigma_r \\Sigma_g)^{1/2})

    KID is the unbiased MMD with the cubic polynomial kernel, averaged over ``kid_subsets``
    random subsets; IS is :math:`\\exp(\\mathbb{E}_x \\mathrm{KL}(p(y|x) \\Vert p(y)))` over
    ``is_splits`` splits of the seeded shuffle, their sizes differing by at most one (mean and std
    over splits).

    Args:
        generate: ``generate(k) -> (k, C, H, W)`` images in [-1, 1] (run under ``torch.no_grad``
            and the torch seed ``seed``, the caller's RNG restored), or a tensor of samples.
        real_images: reference images (N, C, H, W), or their cached :class:`FeatureSet`.
        feature_net: registry name or :class:`FeatureExtractor` (default "fmnist-cnn").
        n_fake: number of samples (required for a callable; default all of a tensor).
        batch_size: images per forward pass (default 250); does not change the scores of
            given samples, but may change the samples ``generate`` draws (see
            :func:`extract_features`).
        reference_split: name of the real split (required for a tensor; a FeatureSet has it).
        is_splits: IS splits (default 10; at most ``n_fake``).
        kid_subsets: KID subsets (default 100).
        kid_subset_size: KID subset size (default 1000, >= 2, capped at min(n_real, n_fake)).
        seed: seed of generation and of the IS/KID shuffles (default 0).
        metrics: one of "fid", "kid", "is", or a collection of them (default all).
        sample_source: recorded in the protocol (default "generator").
        progress: tqdm bars on stderr.

    Returns:
        dict with ``KEY_FID``, ``KEY_KID_MEAN``, ``KEY_KID_STD``, ``KEY_IS_MEAN``, ``KEY_IS_STD``
        (those requested; floats) and ``KEY_PROTOCOL`` (:meth:`Protocol.to_dict`).

    Raises:
        ValueError: unknown metric names, missing ``reference_split``, a FeatureSet from another
            feature network, too few samples, IS requested of a network without classifier or
            with more splits than samples (all these before any feature is extracted), or
            non-finite (NaN/inf) images, features or logits (checked before any linear algebra).
        ModuleNotFoundError: torchmetrics is not installed (the ``experiments`` extra).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = set(metrics) - set(ALL_GAN_METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics must name some of {ALL_GAN_METRICS}, got {sorted(metrics)}")
    is_splits = check_positive_int("is_splits", is_splits)
    kid_subsets = check_positive_int("kid_subsets", kid_subsets)
    kid_subset_size = check_positive_int("kid_subset_size", kid_subset_size)
    seed = check_seed(seed)
    if kid_subset_size < 2:  # the unbiased MMD averages over pairs of distinct samples
        raise ValueError(f"kid_subset_size must be an integer >= 2, got {kid_subset_size}")
    extractor = _resolve_extractor(feature_net)
    n_fake = _count(generate, n_fake, "n_fake")
    n_real = real_images.n if isinstance(real_images, FeatureSet) else real_images.shape[0]
    if min(n_real, n_fake) < 2:  # also keeps the KID subset size, capped by both, >= 2
        raise ValueError(f"need >= 2 real and fake images, got {n_real} and {n_fake}")
    if METRIC_IS in metrics:
        if extractor.num_classes is None:
            raise ValueError(f"{extractor.name} has no classifier: IS is unavailable")
        if is_splits > n_fake:
            raise ValueError(f"is_splits must be <= n_fake ({n_fake}), got {is_splits}")
        most = is_splits_for(n_fake, extractor.num_classes)
        if is_splits > most:
            warnings.warn(
                f"IS over {is_splits} splits of {n_fake} samples: a split of "
                f"{n_fake // is_splits} samples scores at most that, whatever the images; use "
                f"at most {most} splits (is_splits_for) or more samples",
                stacklevel=2,
            )
    if isinstance(real_images, FeatureSet):
        real = real_images
        if (real.feature_net, real.weights_sha256) != (extractor.name, extractor.weights_sha256):
            raise ValueError(
                f"real_images features come from {real.feature_net} ({real.weights_sha256[:12]}),"
                f" not {extractor.name} ({extractor.weights_sha256[:12]}): recompute them"
            )
        if reference_split is not None and reference_split != real.split:
            raise ValueError(
                f"reference_split {reference_split!r} differs from the FeatureSet's {real.split!r}"
            )
    else:
        if reference_split is None:
            raise ValueError("reference_split is required (e.g. 'train' or 'test') for a tensor")
        real = extract_features(
            real_images, extractor, split=reference_split, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    fake = extract_features(
        generate, extractor, split=sample_source, n=n_fake, batch_size=batch_size, seed=seed,
        progress=progress,
    )  # fmt: skip
    subset_size = min(kid_subset_size, real.n, fake.n)
    protocol = Protocol(
        feature_net=extractor.name,
        weights_sha256=extractor.weights_sha256,
        reference_split=real.split,
        n_real=real.n,
        n_fake=fake.n,
        is_splits=is_splits,
        kid_subsets=kid_subsets,
        kid_subset_size=subset_size,
        seed=seed,
        sample_source=sample_source,
    )
    out: dict[str, Any] = {}
    if METRIC_FID in metrics:
        out[KEY_FID] = _fid(real.features, fake.features)
    if METRIC_KID in metrics:
        out[KEY_KID_MEAN], out[KEY_KID_STD] = _kid(
            real.features, fake.features, kid_subsets, subset_size, seed
        )
    if METRIC_IS in metrics:
        if fake.logits is None:
            raise ValueError(f"{extractor.name} has no classifier: IS is unavailable")
        out[KEY_IS_MEAN], out[KEY_IS_STD] = _inception_score(fake.logits, is_splits, seed)
    out[KEY_PROTOCOL] = protocol.to_dict()
    if any(isinstance(v, float) and not math.isfinite(v) for v in out.values()):
        warnings.warn(f"non-finite GAN metric in {out}", RuntimeWarning, stacklevel=2)
    return out


def real_vs_real_baseline(
    train: Tensor,
    test: Tensor,
    *,
    feature_net: str | FeatureExtractor = DEFAULT_FEATURE_NET,
    n: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    is_splits: int = DEFAULT_IS_SPLITS,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> dict[str, Any]:
    """The scores of real test images against the train split: the scale of a perfect generator.

    FID/KID of ``test`` (first ``n`` images) against ``train`` as reference, and the IS of those
    test images. Score a generator with ``reference_split="train"`` and ``n_fake`` equal to the
    ``n`` used here to put its numbers on this scale (sample-size bias of FID included).

    Args:
        train: reference images (N, C, H, W).
        test: held-out real images (M, C, H, W).
        n: how many test images act as samples (1 <= n <= M; default all of ``test``).
        Others as in :func:`compute_gan_metrics`.

    Returns:
        The dict of :func:`compute_gan_metrics`, protocol ``sample_source="test"``.

    Raises:
        ValueError: as :func:`compute_gan_metrics`, or ``n`` outside [1, M].
    """
    return compute_gan_metrics(
        test[: _count(test, n, "n")],
        train,
        feature_net=feature_net,
        batch_size=batch_size,
        reference_split="train",
        is_splits=is_splits,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        seed=seed,
        sample_source="test",
        progress=progress,
    )
