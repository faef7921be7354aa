"""The paper's claims (docs/math.md §3), each split into sub-claims decided by tests over seeds.

A *comparison* puts the SRN arm of one setting and rank ratio beside a reference arm (vanilla or
SN) on one metric: an unpaired Welch t-test over seeds (diverged runs left out; arms with the
same seed share their data subset, so pairing them would be sharper and the unpaired test is
conservative), its p-value Holm-corrected with every other comparison of the report. The
outcomes (not a test, reproduced, not reproduced, cannot tell) are defined in
docs/reproduction.md, "How claims are decided".
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stablerank._optional import import_optional
from stablerank.repro.records import RunRecord, by_setting
from stablerank.repro.sweeps import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER

__all__ = [
    "CLAIMS",
    "METRICS",
    "Claim",
    "ClaimResult",
    "Comparison",
    "Metric",
    "detectable_effect",
    "evaluate_claims",
    "share_text",
    "welch",
]

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
CANNOT_TELL, NOT_A_TEST = "cannot tell", "not a test"
MIN_ACTIVE_FRACTION = 0.5  # below: SRN acts as SN on most layers, "not a test"
POWER = 0.8  # of the seed-count estimate for undecided comparisons


@dataclass(frozen=True)
class Metric:
    """A number read from a run's record: the attribute ``attr`` (default: ``name``) of its
    result, or of its analysis when the result has no such attribute (None when neither has)."""

    name: str  # key in claims.json
    label: str  # what the report prints
    lower_is_better: bool  # the direction the paper claims SRN moves it
    min_effect: float  # smallest improvement of interest, in the metric's unit...
    relative: bool = False  # ... or as a fraction of the reference arm's mean
    percent: bool = False  # a fraction shown as percentage points
    attr: str = ""
    # When a finished run has no value by design (said in the report); "" = it always has one
    # where the sweep measures it at all (no value in any run: not measured, e.g. FID on digits).
    undefined_when: str = ""

    @property
    def sign(self) -> float:
        """+1 where higher is better, -1 where lower is: an improvement is sign * (srn - ref)."""
        return -1.0 if self.lower_is_better else 1.0

    def value(self, rec: RunRecord) -> float | None:
        attr = self.attr or self.name
        source = rec.result if hasattr(rec.result, attr) else rec.analysis
        return getattr(source, attr, None)

    def values(self, recs: Sequence[RunRecord]) -> tuple[list[float], list[int]]:
        """The finite values of ``recs`` and the seeds they come from."""
        read = [(self.value(rec), rec.run.seed) for rec in recs]
        finite = [(float(v), seed) for v, seed in read if v is not None and math.isfinite(v)]
        return [v for v, _ in finite], [seed for _, seed in finite]


_RANDOM = "on random labels"
_NO_MARGIN = (
    "the training margin the measures divide by (a low quantile of the training set's margins) "
    "is not positive"
)
METRICS = {
    m.name: m
    for m in (
        Metric("gap_acc", "generalization gap (train - test accuracy)", True, 0.005, percent=True),
        Metric("test_acc", "test accuracy", False, 0.005, percent=True),
        Metric("train_acc", "train accuracy", False, 0.005, percent=True),
        Metric("final_train_acc", f"final train accuracy {_RANDOM}", True, 0.01, percent=True,
               attr="train_acc"),
        Metric("mean_train_acc", f"train accuracy {_RANDOM}, mean over epochs", True, 0.01,
               percent=True),
        Metric("log10_neyshabur", "log10 Neyshabur et al. 2018 measure", True, 0.05,
               undefined_when=_NO_MARGIN),
        Metric("log10_bartlett", "log10 Bartlett et al. 2017 measure", True, 0.05,
               undefined_when=_NO_MARGIN),
        Metric("log10_spectral_product", "log10 product of spectral norms (margin-free)", True,
               0.05),
        # Shown beside the measures, which divide by it; no claim tests it.
        Metric("margin", "training margin (the measures divide by it)", False, 0.05),
        Metric("el_test_max", "eL max, test pairs", True, 0.05, relative=True),
        Metric("fid", "FID", True, 0.02, relative=True),
        Metric("is_mean", "Inception-style score", False, 0.02, relative=True),
        Metric("neural_divergence", "neural divergence", True, 0.02, relative=True),
        Metric("d_el_max", "discriminator eL, max over pairs", True, 0.05, relative=True),
        Metric("d_el_median", "discriminator eL, median over pairs", True, 0.05, relative=True),
        Metric("d_jacobian_mean", "discriminator Jacobian spectral norm, mean over real and fake "
               "points", True, 0.05, relative=True),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, tested on runs of ``kind``: each metric against each reference."""

    number: int
    text: str
    kind: str
    metrics: tuple[str, ...]
    references: tuple[str, ...] = ("none", "sn")
    note: str = ""  # what the report says under the claim's heading (e.g. what is not measured)


CLAIMS = (
    Claim(
        1,
        "SRN improves generalization (test accuracy and generalization gap) over vanilla and SN",
        KIND_CLASSIFY,
        ("gap_acc", "test_acc"),
        note="A smaller gap without a higher test accuracy comes from fitting the training set "
        "less: read the gap beside the train and test accuracy of the settings' tables.",
    ),
    Claim(
        2,
        "SRN reduces memorization of random labels (shattering)",
        KIND_SHATTER,
        ("final_train_acc", "mean_train_acc"),
    ),
    Claim(
        3,
        "SRN lowers the sample-complexity measures",
        KIND_CLASSIFY,
        ("log10_neyshabur", "log10_bartlett"),
        note="Both measures divide by the training margin (a low quantile of the training set's "
        "margins, the settings' tables show it): a network that fits its training set less has "
        "a smaller margin and so larger measures, whatever its weights. "
        "The measures read each Linear/Conv weight as the forward uses it and leave "
        "BatchNorm's scales out. Where BatchNorm follows a layer, that layer's scale does not "
        "change the network's function, yet SN and SRN set its spectral norm to 1 by "
        "construction while vanilla's is free: against vanilla on a BatchNorm network, lower "
        "measures mostly follow from that, and the rows against SN are the ones that isolate "
        "SRN's cap. The ICLR version's third measure (Wei & Ma 2019) is not computed: the SRN "
        "paper does not state which data-dependent norms it combines, or how, and a guess under "
        "their name would not be their measure (docs/math.md, §2.4).",
    ),
    Claim(
        4,
        "SRN-GAN improves FID, IS and neural divergence over SN-GAN",
        KIND_GAN,
        ("fid", "is_mean", "neural_divergence"),
        ("sn",),
    ),
    Claim(
        5,
        "SRN-GAN discriminators have a lower empirical Lipschitz constant than SN-GAN's",
        KIND_GAN,
        ("d_el_max", "d_el_median", "d_jacobian_mean"),
        ("sn",),
    ),
)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class WelchTest:
    """Welch's t-test of mean(a) - mean(b), with the difference's CI and Cohen's d."""

    diff: float
    diff_low: float
    diff_high: float
    d: float
    d_low: float
    d_high: float
    p_value: float
    df: float


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchTest:
    """Welch's two-sided t-test and intervals; ``a`` and ``b`` need 2 values each.

    d is the difference over the root mean square of the two standard deviations; its CI uses
    the normal approximation of its standard error (Hedges & Olkin 1985).
    """
    stats = import_optional("scipy.stats", "a claim's t-test")

    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    na, nb = len(a), len(b)
    va, vb = sa * sa / na, sb * sb / nb
    diff = ma - mb
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical constants: no spread to test against
        p = 1.0 if diff == 0 else 0.0
        df = float(na + nb - 2)
    else:
        df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
        p = float(2 * stats.t.sf(abs(diff) / se, df))
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, df))
    pooled = math.sqrt((sa * sa + sb * sb) / 2)
    d = diff / pooled if pooled > 0 else math.copysign(math.inf, diff) if diff else 0.0
    se_d = math.sqrt((na + nb) / (na * nb) + d * d / (2 * (na + nb))) if math.isfinite(d) else 0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return WelchTest(
        diff, diff - t_crit * se, diff + t_crit * se, d, d - z * se_d, d + z * se_d, p, df
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate) of ``p_values``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


_MAX_EFFECT = 20.0  # d beyond which no seed count is worth reporting


def _power(n: int, nc: float, alpha: float, df: float | None = None) -> float:
    """Power of a two-sided t-test with ``n`` seeds per arm at level ``alpha`` for the
    noncentrality ``nc``, with ``df`` degrees of freedom (default 2n - 2: equal variances).
    scipy's noncentral t returns NaN deep in the far tail, where that tail's probability is 0."""
    stats = import_optional("scipy.stats", "a claim's t-test")

    df = 2 * n - 2 if df is None else df
    t_crit = stats.t.ppf(1 - alpha / 2, df)
    tails = (stats.nct.sf(t_crit, df, nc), stats.nct.cdf(-t_crit, df, nc))
    return sum(0.0 if math.isnan(p) else float(p) for p in tails)


def seeds_needed(std_a: float, std_b: float, effect: float, alpha: float) -> int | None:
    """Seeds per arm (equal arms) for a two-sided Welch test at level ``alpha`` to detect a true
    difference ``effect`` with 80% power (noncentral t with Welch's df at these spreads; None
    beyond 10,000 or without spread)."""
    var = std_a**2 + std_b**2
    if not effect or not math.isfinite(var) or var == 0:
        return None
    # Welch-Satterthwaite df for n seeds per arm: near n - 1 when one arm's spread dominates,
    # where 2n - 2 would promise power the Welch test does not have.
    per_seed = (var * var) / (std_a**4 + std_b**4)
    for n in range(2, 10_001):
        if _power(n, abs(effect) / math.sqrt(var / n), alpha, (n - 1) * per_seed) >= POWER:
            return n
    return None


def detectable_effect(n: int, alpha: float) -> float | None:
    """The smallest effect size d (difference over the common standard deviation) that a
    two-sided Welch test with ``n`` seeds per arm detects at level ``alpha`` with 80% power
    (noncentral t, equal arms; None for n < 2 or beyond d = 20)."""
    optimize = import_optional("scipy.optimize", "a claim's power analysis")

    if n < 2:
        return None

    def power_gap(d: float) -> float:
        return _power(n, d * math.sqrt(n / 2), alpha) - POWER

    if power_gap(_MAX_EFFECT) < 0:
        return None
    return float(optimize.brentq(power_gap, 1e-6, _MAX_EFFECT))


# ----------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """SRN at one rank ratio vs a reference arm, on one metric of one setting."""

    claim: int
    metric: str
    setting: str
    rank_ratio: float
    reference: str
    srn_values: list[float]
    ref_values: list[float]
    srn_seeds: list[int]
    ref_seeds: list[int]
    # The SRN arm's binding fraction, mean over seeds: averaged over training, and at its end
    # (as a run's metrics.json names them).
    srn_active_fraction_mean: float | None
    srn_active_fraction: float | None
    sn_above_target: float | None = None
    finished: tuple[int, int] = (0, 0)  # usable runs of the SRN and the reference arm
    test: WelchTest | None = None
    p_adjusted: float | None = None
    outcome: str = CANNOT_TELL
    reason: str = ""
    seeds_needed: int | None = None
    context: dict[str, float | None] = field(default_factory=dict)
    # The difference's CI at the family-wise level (1 - alpha / tests), which the rule reads, and
    # the smallest improvement of interest as applied (absolute units); set once tested.
    family_ci: tuple[float, float] | None = None
    min_effect: float | None = None

    def to_dict(self) -> dict[str, object]:
        srn = _mean_std(self.srn_values) if self.srn_values else (math.nan, math.nan)
        ref = _mean_std(self.ref_values) if self.ref_values else (math.nan, math.nan)
        t = self.test
        return {
            "claim": self.claim,
            "metric": self.metric,
            "setting": self.setting,
            "rank_ratio": self.rank_ratio,
            "reference": self.reference,
            "n_srn": len(self.srn_values),
            "n_ref": len(self.ref_values),
            "finished_srn": self.finished[0],
            "finished_ref": self.finished[1],
            "seeds_srn": self.srn_seeds,
            "seeds_ref": self.ref_seeds,
            "values_srn": self.srn_values,  # seed by seed, in the order of seeds_srn
            "values_ref": self.ref_values,
            "mean_srn": srn[0],
            "std_srn": srn[1],
            "mean_ref": ref[0],
            "std_ref": ref[1],
            "diff": t.diff if t else None,
            "diff_ci": [t.diff_low, t.diff_high] if t else None,
            "d": t.d if t else None,
            "d_ci": [t.d_low, t.d_high] if t else None,
            "p_value": t.p_value if t else None,
            "p_adjusted": self.p_adjusted,
            "srn_active_fraction_mean": self.srn_active_fraction_mean,
            "srn_active_fraction": self.srn_active_fraction,
            "sn_above_target": self.sn_above_target,
            "outcome": self.outcome,
            "reason": self.reason,
            "seeds_needed": self.seeds_needed,
            "context": self.context,
            "diff_ci_family": list(self.family_ci) if self.family_ci else None,
            "min_effect": self.min_effect,
        }


@dataclass
class ClaimResult:
    claim: Claim
    comparisons: list[Comparison]
    arms: dict[str, frozenset[str]] = field(default_factory=dict)  # per setting of the kind
    caveats: list[str] = field(default_factory=list)  # what the reader must know (frozen layers)

    @property
    def verdict(self) -> str:
        """reproduced / not reproduced / mixed / cannot tell / not a test, or why there is no
        comparison: no runs / no SRN arm / no reference arm (in no setting beside an SRN arm) /
        not measured (the runs measure none of the claim's metrics)."""
        outcomes = {c.outcome for c in self.comparisons}
        if not outcomes:
            with_srn = [a for a in self.arms.values() if any(x.startswith("srn") for x in a)]
            if not self.arms:
                return "no runs"
            if not with_srn:
                return "no SRN arm"
            if not any(a & set(self.claim.references) for a in with_srn):
                return "no reference arm"
            return "not measured"
        decided = outcomes & {REPRODUCED, NOT_REPRODUCED}
        if decided == {REPRODUCED, NOT_REPRODUCED}:
            return "mixed"
        if decided:
            return decided.pop()
        return CANNOT_TELL if CANNOT_TELL in outcomes else NOT_A_TEST

    def basis(self, alpha: float = 0.05) -> str:
        """What the verdict rests on, said after it: `` (2 of 6 comparisons decided; ...)`` with
        how many undecided ones show SRN better or worse at ``alpha`` before Holm's correction (a
        verdict from the decided rows alone can hide a strong signal the other way, and "cannot
        tell" a strong lean); "" when there is neither a decided nor a leaning comparison."""
        decided = [c for c in self.comparisons if c.outcome in (REPRODUCED, NOT_REPRODUCED)]
        leaning = Counter(
            "better" if METRICS[c.metric].sign * c.test.diff > 0 else "worse"
            for c in self.comparisons
            if c.outcome == CANNOT_TELL and c.test is not None and c.test.p_value < alpha
        )  # fmt: skip
        if not decided and not leaning:
            return ""
        text = f"{len(decided)} of {len(self.comparisons)} comparisons decided"
        if leaning:
            shown = " and ".join(f"{n} SRN {way}" for way, n in sorted(leaning.items()))
            text += f"; undecided, but p < {alpha:g} before Holm's correction: {shown}"
        return f" ({text})"


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.fmean(v) if v else None


def share_text(share: float) -> str:
    """A share of layers as a percentage: whole at 0 and 1, else with one decimal, so that a share
    such as 0.495, just under the gate, prints 49.5% and not 50%."""
    return f"{share:.0%}" if share in (0.0, 1.0) else f"{share:.1%}"


def frozen_layers(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """Per arm, the SRN layers of the usable ``records`` whose target is 1 below min(m, n): their
    output u v^T does not depend on the raw weight, which gets no gradient from the loss and so
    does not learn (docs/library.md, "A target of 1")."""
    out: dict[str, set[str]] = {}
    for rec in records:
        for layer in rec.result.layers if rec.usable else ():
            if layer.target_srank == 1 and min(layer.shape) > 1:
                out.setdefault(rec.run.arm, set()).add(layer.name)
    return {arm: sorted(names) for arm, names in out.items()}


def sn_above_target(srn: Sequence[RunRecord], sn: Sequence[RunRecord]) -> float | None:
    """Fraction of the SRN arm's layers whose cap can act where the SN arm's trained weight (SRN
    without the cap) ends with a stable rank above SRN's target r: where the cap would cut what
    SN training reaches, mean over the SN seeds. Shown beside the binding fraction, which misses a
    raw weight held just below r; the gate does not use it (docs/reproduction.md)."""
    sn_srank: dict[str, list[float]] = {}
    for rec in sn:
        for layer in rec.result.layers:
            sn_srank.setdefault(layer.name, []).append(layer.srank)
    targets = {x.name: x.target_srank for x in srn[0].result.layers if x.active is not None}
    above = [statistics.fmean(sn_srank[n]) > r for n, r in targets.items() if n in sn_srank]
    return sum(above) / len(above) if above else None


def _comparisons(claim: Claim, records: Sequence[RunRecord]) -> list[Comparison]:
    """Every SRN arm against each reference arm the sweep has, per metric of the claim. An arm
    whose runs all failed, and a metric undefined in some runs, still give a comparison (decided
    "cannot tell" with the reason); only a metric the sweep does not measure is left out."""
    out = []
    clean = by_setting([r for r in records if r.usable], KIND_CLASSIFY)
    # A metric is measured when some run of the claim's kind has a value for it (NaN included:
    # a value that is not finite is "cannot tell", never left out); decided over the whole sweep,
    # so a metric does not vanish with a failed arm or appear because one did. While no run of
    # the kind has a result (all unfinished or failed) every metric counts: "cannot tell". A
    # metric undefined by design in some runs (undefined_when) counts always.
    read = [r for r in records if r.run.kind == claim.kind and r.result is not None]
    measured = [m for m in claim.metrics if METRICS[m].undefined_when or not read
                or any(METRICS[m].value(r) is not None for r in read)]  # fmt: skip
    for setting, all_arms in by_setting(records, claim.kind).items():
        arms = {arm: [r for r in recs if r.usable] for arm, recs in all_arms.items()}
        for arm, srn in arms.items():
            if not arm.startswith("srn"):
                continue
            srn_all = all_arms[arm]
            c = srn_all[0].run.rank_ratio
            counterfactual = sn_above_target(srn, arms.get("sn", ())) if srn else None
            for metric_name, ref in itertools.product(measured, claim.references):
                if ref not in arms:  # the sweep has no such arm (a GAN has no vanilla arm)
                    continue
                metric = METRICS[metric_name]
                sv, ss = metric.values(srn)
                rv, rs = metric.values(arms[ref])
                comp = Comparison(
                    claim.number,
                    metric_name,
                    setting,
                    c,
                    ref,
                    sv,
                    rv,
                    ss,
                    rs,
                    _mean([r.result.srn_active_fraction_mean for r in srn]),
                    _mean([r.result.srn_active_fraction for r in srn]),
                    counterfactual,
                    (len(srn), len(arms[ref])),
                )
                # Memorization is read beside the clean accuracy at the same c: a tiny c
                # "reduces memorization" by underfitting.
                if claim.kind == KIND_SHATTER and _same_network(srn_all[0], clean.get(setting)):
                    acc = METRICS["test_acc"]
                    comp.context = {
                        f"clean_test_acc_{a}": _mean(acc.values(clean[setting][a])[0])
                        for a in (arm, ref)
                        if a in clean[setting]
                    }
                out.append(comp)
    return out


def _same_network(record: RunRecord, clean: dict[str, list[RunRecord]] | None) -> bool:
    """Whether the clean runs of the setting (by arm; None: none) train the network of
    ``record``'s random-label run: only then is their accuracy its context."""
    if not clean:
        return False
    other = next(iter(clean.values()))[0].run.config
    fields = ("dataset", "model", "depth", "width")
    return all(getattr(record.run.config, f) == getattr(other, f) for f in fields)


def _decide(comp: Comparison) -> None:
    if not all(comp.finished):
        comp.outcome = CANNOT_TELL
        arms = (("SRN", comp.finished[0]), (comp.reference, comp.finished[1]))
        empty = " and ".join(name for name, n in arms if not n)
        comp.reason = f"no finished run in the {empty} arm"
        return
    active, when = comp.srn_active_fraction_mean, "averaged over training"
    if active is None:  # runs that logged no activity along training: their end
        active, when = comp.srn_active_fraction, "at the end of training"
    if active is None or active < MIN_ACTIVE_FRACTION:
        comp.outcome = NOT_A_TEST
        comp.reason = (
            "no SRN layer whose cap can act (a target r >= min(m, n) makes SRN exactly SN), or "
            "SRN's activity was not recorded"
            if active is None
            else f"the stable-rank cap binds on {share_text(active)} of the SRN layers, {when} "
            f"(< {MIN_ACTIVE_FRACTION:.0%}): mostly spectral normalization, not a test "
            "by the rule; a raw stable rank held at its target in the layer table means the cap "
            "still shaped training"
        )
        if active is not None and comp.sn_above_target is not None:
            above = share_text(comp.sn_above_target)
            comp.reason += f" (the SN arm's stable rank ends above r on {above} of these layers)"
        return
    missing = comp.finished[0] - len(comp.srn_values), comp.finished[1] - len(comp.ref_values)
    if any(missing):
        # A test on the runs that have a value would drop the others, which differ on purpose
        # (e.g. the networks that fit worst have no positive margin): not decided.
        comp.outcome = CANNOT_TELL
        why = METRICS[comp.metric].undefined_when or "it is not finite"
        comp.reason = (
            f"no value in {missing[0]} of {comp.finished[0]} SRN runs and {missing[1]} of "
            f"{comp.finished[1]} {comp.reference} runs ({why})"
        )
        if comp.srn_values or comp.ref_values:
            comp.reason += "; a test on the rest would leave them out"
        return
    if len(comp.srn_values) < 2 or len(comp.ref_values) < 2:
        comp.outcome = CANNOT_TELL
        comp.reason = "fewer than 2 finished seeds in an arm"
        return
    comp.test = welch(comp.srn_values, comp.ref_values)


def _finish(comp: Comparison, alpha: float, n_tests: int) -> None:
    """The outcome from the Holm-adjusted p-value and the improvement's CI at the family-wise
    level (1 - alpha / n_tests, Bonferroni): each kind of decision holds the family-wise error
    rate alpha on its own (the two together are not guaranteed to)."""
    metric, t = METRICS[comp.metric], comp.test
    assert t is not None and comp.p_adjusted is not None  # Precondition: tested
    sign = metric.sign
    wide = welch(comp.srn_values, comp.ref_values, confidence=1 - alpha / n_tests)
    improvement_high = max(sign * wide.diff_low, sign * wide.diff_high)
    ref_mean, s_ref = _mean_std(comp.ref_values)
    min_effect = metric.min_effect * (abs(ref_mean) if metric.relative else 1.0)
    comp.family_ci, comp.min_effect = (wide.diff_low, wide.diff_high), min_effect
    level = f"{1 - alpha / n_tests:.2%} CI of the difference (family-wise level)"
    if comp.p_adjusted < alpha:
        better = sign * t.diff > 0
        comp.outcome = REPRODUCED if better else NOT_REPRODUCED
        comp.reason = f"significant ({'better' if better else 'worse'} than {comp.reference})"
    elif improvement_high < min_effect:
        comp.outcome = NOT_REPRODUCED
        comp.reason = f"no improvement of at least the smallest effect is within the {level}"
    else:
        comp.outcome = CANNOT_TELL
        s_srn = _mean_std(comp.srn_values)[1]
        # The measured difference, whichever way it points (a worse SRN arm is decided "not
        # reproduced" once it is significant), and never below the smallest effect of interest.
        effect = max(abs(t.diff), min_effect)
        comp.seeds_needed = seeds_needed(s_srn, s_ref, effect, alpha / n_tests)
        comp.reason = (
            f"not significant, and the {level} still holds an improvement of at least "
            "the smallest effect"
        )


def evaluate_claims(records: Sequence[RunRecord], alpha: float = 0.05) -> list[ClaimResult]:
    """Every claim with its comparisons decided (Holm over all tested comparisons)."""
    results = []
    for claim in CLAIMS:
        settings = by_setting(records, claim.kind)
        caveats = [
            f"{setting}, {arm}: SRN's target is r = 1 on {', '.join(names)}, so that weight is "
            "rank one and gets no gradient (any bias it has does): it keeps its initial top "
            "singular pair, and the arm's network is partly frozen, not only capped "
            "(docs/library.md)"
            for setting, arms in settings.items()
            for arm, names in frozen_layers(r for recs in arms.values() for r in recs).items()
        ]
        arms = {setting: frozenset(arms) for setting, arms in settings.items()}
        results.append(ClaimResult(claim, _comparisons(claim, records), arms, caveats))
    comps = [c for r in results for c in r.comparisons]
    for comp in comps:
        _decide(comp)
    tested = [c for c in comps if c.test is not None]
    for comp, p in zip(tested, holm([c.test.p_value for c in tested]), strict=True):
        comp.p_adjusted = p
        _finish(comp, alpha, len(tested))
    return results
