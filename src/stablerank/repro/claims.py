"""The paper's claims (SPEC section 3) and the rule that decides each from our numbers.

Each :class:`Claim` names the runs it reads (``classify``, ``shatter`` or ``gan``), the metrics
with their direction (which way is "better for SRN"), and the reference normalizations SRN is
compared with. :func:`evaluate_claims` applies :func:`decide` to every (setting, SRN rank ratio,
reference, metric) comparison and combines them into a verdict.

Decision rule (stated in the report, see :data:`RULE_TEXT`): for one comparison, with per-seed
values a (SRN) and b (reference), the difference of means d = mean(a) - mean(b), signed so that
d > 0 favours SRN, and its standard error se = sqrt(s_a^2/n_a + s_b^2/n_b) (sample standard
deviations; Welch). The comparison *supports* the claim when d > z*se, *contradicts* it when
d < -z*se, and *cannot tell* when |d| <= z*se or when either side has fewer than 2 seeds (no
spread to compare with). z defaults to 2 (about a 95% two-sided interval for large n; with few
seeds it is lenient: a t quantile would be larger). A claim is **reproduced** when every
comparison supports it, **not reproduced** when at least one contradicts it, and otherwise
**cannot tell**.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CANNOT_TELL",
    "CLAIMS",
    "CONTRADICTS",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "RULE_TEXT",
    "SUPPORTS",
    "Claim",
    "ClaimResult",
    "Comparison",
    "MetricSpec",
    "decide",
    "evaluate_claims",
]

SUPPORTS, CONTRADICTS, CANNOT_TELL = "supports", "contradicts", "cannot tell"
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
_MIN_SEEDS = 2  # a standard deviation needs two values

RULE_TEXT = (
    "For each comparison (setting, SRN rank ratio c, reference normalization, metric) we take "
    "the per-seed values, the difference of the means d (signed so that d > 0 favours SRN) and "
    "its standard error se = sqrt(s_srn^2/n_srn + s_ref^2/n_ref) (sample standard deviations). "
    "The comparison **supports** the claim if d > z*se, **contradicts** it if d < -z*se, and "
    "**cannot tell** if |d| <= z*se or if either side has fewer than 2 seeds. A claim is "
    "**reproduced** when every comparison supports it, **not reproduced** when at least one "
    "contradicts it, and **cannot tell** otherwise. z = {z:g}; with few seeds this is lenient "
    "(a t-test would ask for more), so read 'reproduced' from 2-3 seeds as suggestive."
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a claim: the key in the run's flat metrics, a label and its direction."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Claim:
    """One claim of SPEC 3.

    Attributes:
        number: its number in SPEC 3.
        text: the claim in words.
        kind: the runs it reads (``classify``, ``shatter``, ``gan``).
        metrics: what is compared and which way is better.
        references: normalizations SRN is compared with.
        paper: callable(setting) -> text with the paper's figures for a matching setting, or
            None when the setting differs.
    """

    number: int
    text: str
    kind: str
    metrics: tuple[MetricSpec, ...]
    references: tuple[str, ...]
    paper: Callable[[Mapping[str, Any]], str | None] = field(default=lambda setting: None)


@dataclass(frozen=True)
class Comparison:
    """One SRN-vs-reference comparison on one metric."""

    group: str
    srn_mode: str
    ref_mode: str
    metric: MetricSpec
    mean_srn: float
    mean_ref: float
    n_srn: int
    n_ref: int
    diff: float  # signed: > 0 favours SRN
    se: float
    outcome: str
    reason: str


@dataclass(frozen=True)
class ClaimResult:
    """The verdict on one claim with the comparisons behind it."""

    claim: Claim
    verdict: str
    comparisons: tuple[Comparison, ...]
    note: str = ""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return mean, math.sqrt(var)


def decide(
    srn: Sequence[float], ref: Sequence[float], *, higher_is_better: bool, z: float = 2.0
) -> tuple[str, float, float, str]:
    """Apply the decision rule to one comparison.

    Args:
        srn: per-seed values of the SRN runs (non-empty).
        ref: per-seed values of the reference runs (non-empty).
        higher_is_better: direction of the metric.
        z: standard errors a difference must exceed (default 2).

    Returns:
        (outcome, d, se, reason): outcome in {SUPPORTS, CONTRADICTS, CANNOT_TELL}; d the
        difference of means signed so that d > 0 favours SRN; se its standard error (nan with
        fewer than 2 seeds on a side); reason a short explanation.

    Raises:
        ValueError: on an empty side or a non-positive z.
    """
    if not srn or not ref:
        raise ValueError(f"srn and ref must be non-empty, got {len(srn)} and {len(ref)} values")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    (ma, sa), (mb, sb) = _mean_std(srn), _mean_std(ref)
    d = (ma - mb) if higher_is_better else (mb - ma)
    if min(len(srn), len(ref)) < _MIN_SEEDS:
        return CANNOT_TELL, d, math.nan, f"fewer than {_MIN_SEEDS} seeds on a side: no spread"
    se = math.sqrt(sa**2 / len(srn) + sb**2 / len(ref))
    if d > z * se:
        return SUPPORTS, d, se, f"d = {d:.4g} > {z:g} se = {z * se:.3g}"
    if d < -z * se:
        return CONTRADICTS, d, se, f"d = {d:.4g} < -{z:g} se = {-z * se:.3g}"
    return CANNOT_TELL, d, se, f"|d| = {abs(d):.3g} <= {z:g} se = {z * se:.3g}"


def _cifar10_gan_figures(setting: Mapping[str, Any]) -> str | None:
    if setting.get("dataset") == "cifar10" and str(setting.get("feature_net", "")).startswith(
        "inception"
    ):
        return (
            "paper (CIFAR-10, Inception features): SRN-GAN IS 8.53, FID 19.83; SN-GAN (its own "
            "paper) IS 8.22, FID 21.7"
        )
    return None


def _cifar_classifier_figures(setting: Mapping[str, Any]) -> str | None:
    if setting.get("dataset") in ("cifar10", "cifar100"):
        return (
            "paper (v1 abstract, CIFAR-10/100 over the five architectures): SRN gives an "
            "11.3% smaller generalization gap than the unnormalized network"
        )
    return None


CLAIMS: tuple[Claim, ...] = (
    Claim(
        1,
        "SRN improves test accuracy and the generalization gap over vanilla and SN "
        "(ResNet-110, WRN-28-10, DenseNet-BC-100, VGG-19, AlexNet on CIFAR-10/100).",
        "classify",
        (
            MetricSpec("test_acc", "test accuracy", True),
            MetricSpec("gap_acc", "generalization gap (train - test accuracy)", False),
        ),
        ("none", "sn"),
        _cifar_classifier_figures,
    ),
    Claim(
        2,
        "SRN reduces memorization of random labels (shattering): it fits them less or slower.",
        "shatter",
        (
            MetricSpec("final_train_acc", "train accuracy on random labels, last epoch", False),
            MetricSpec(
                "mean_train_acc", "train accuracy on random labels, mean over epochs", False
            ),
        ),
        ("none", "sn"),
    ),
    Claim(
        3,
        "SRN lowers the sample-complexity measures (Neyshabur et al. 2018, Bartlett et al. "
        "2017; log10, 10th-percentile margin).",
        "classify",
        (
            MetricSpec("log10_neyshabur", "log10 Neyshabur measure", False),
            MetricSpec("log10_bartlett", "log10 Bartlett measure", False),
        ),
        ("none", "sn"),
    ),
    Claim(
        4,
        "SRN-GAN (SRN on every discriminator layer) improves IS, FID and neural divergence "
        "over SN-GAN (CIFAR-10, CIFAR-100, CelebA).",
        "gan",
        (
            MetricSpec("is_mean", "Inception Score (own feature net offline)", True),
            MetricSpec("fid", "FID", False),
            MetricSpec("neural_divergence", "neural divergence", False),
        ),
        ("sn",),
        _cifar10_gan_figures,
    ),
    Claim(
        5,
        "SRN-GAN discriminators have a lower empirical Lipschitz constant than SN-GAN ones.",
        "gan",
        (
            MetricSpec("d_el_max", "discriminator eL, max over all pairs", False),
            MetricSpec("d_el_q50", "discriminator eL, median over all pairs", False),
        ),
        ("sn",),
    ),
)


def evaluate_claims(
    values: Mapping[tuple[str, str, str], Mapping[str, Sequence[float]]],
    *,
    z: float = 2.0,
    claims: Sequence[Claim] = CLAIMS,
) -> list[ClaimResult]:
    """Decide every claim from per-seed metric values.

    Args:
        values: ``{(kind, group, mode): {metric key: per-seed values}}`` (missing or None
            values are left out by the caller).
        z: the decision rule's threshold in standard errors (default 2).
        claims: the claims to decide (default :data:`CLAIMS`).

    Returns:
        One :class:`ClaimResult` per claim, in order. A claim with no runs to compare is
        "cannot tell" with a note saying why.
    """
    results = []
    for claim in claims:
        comparisons: list[Comparison] = []
        groups = sorted({g for (k, g, _m) in values if k == claim.kind})
        for group in groups:
            modes = {m for (k, g, m) in values if k == claim.kind and g == group}
            for srn_mode in sorted(m for m in modes if m.startswith("srn")):
                for ref in claim.references:
                    if ref not in modes:
                        continue
                    for metric in claim.metrics:
                        a = values[(claim.kind, group, srn_mode)].get(metric.key) or []
                        b = values[(claim.kind, group, ref)].get(metric.key) or []
                        if not a or not b:
                            continue
                        outcome, d, se, reason = decide(
                            a, b, higher_is_better=metric.higher_is_better, z=z
                        )
                        comparisons.append(
                            Comparison(
                                group,
                                srn_mode,
                                ref,
                                metric,
                                _mean_std(a)[0],
                                _mean_std(b)[0],
                                len(a),
                                len(b),
                                d,
                                se,
                                outcome,
                                reason,
                            )
                        )
        outcomes = {c.outcome for c in comparisons}
        note = ""
        if not comparisons:
            verdict, note = CANNOT_TELL, "no SRN and reference runs with this metric in this plan"
        elif CONTRADICTS in outcomes:
            verdict = NOT_REPRODUCED
        elif outcomes == {SUPPORTS}:
            verdict = REPRODUCED
        else:
            verdict = CANNOT_TELL
        results.append(ClaimResult(claim, verdict, tuple(comparisons), note))
    return results
