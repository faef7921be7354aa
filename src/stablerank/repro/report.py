"""The reproduction report: ``report.md``, ``claims.json`` and figures, from saved results only.

Built from the typed run records (:mod:`stablerank.repro.records`) and the claims
(:mod:`stablerank.repro.claims`); never retrains. Every SRN arm shows how often its stable-rank
cap binds, every verdict comes from a test over seeds, diverged and failed runs are listed.
"""

from __future__ import annotations

import collections
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stablerank.repro.claims import (
    CANNOT_TELL,
    CLAIMS,
    METRICS,
    MIN_ACTIVE_FRACTION,
    NOT_A_TEST,
    NOT_REPRODUCED,
    REPRODUCED,
    ClaimResult,
    Comparison,
    detectable_effect,
    evaluate_claims,
    frozen_layers,
    share_text,
)
from stablerank.repro.records import RunRecord, by_setting
from stablerank.repro.sweeps import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER, KINDS, Run, arm_label
from stablerank.train.checkpoint import atomic_write_text
from stablerank.train.figures import new_figure, save_figure
from stablerank.train.records import DIRTY
from stablerank.train.results import GanResult, LayerStat, to_dict
from stablerank.train.rundir import RunDir

__all__ = ["CLAIMS_FILE", "REPORT_FILE", "claims_summary", "write_report"]

REPORT_FILE = "report.md"
CLAIMS_FILE = "claims.json"
FIGURES = "figures"
_FROZEN = "a frozen rank-one layer in an SRN arm"  # what a claim's caveats are about, in short
_TABLE_METRICS = {
    KIND_CLASSIFY: (
        "test_acc",
        "train_acc",
        "gap_acc",
        "log10_neyshabur",
        "log10_bartlett",
        "log10_spectral_product",
        "margin",
        "el_test_max",
    ),
    KIND_SHATTER: ("final_train_acc", "mean_train_acc"),
    KIND_GAN: ("fid", "is_mean", "neural_divergence", "d_el_max", "d_el_median", "d_jacobian_mean"),
}


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}" if percent else f"{value:.4g}"


def _cell(values: Sequence[float], percent: bool) -> str:
    if not values:
        return "n/a"
    mean = _fmt(statistics.fmean(values), percent)
    return mean if len(values) == 1 else f"{mean} ± {_fmt(statistics.stdev(values), percent)}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:  # an error message may hold a newline or a pipe
        text = (str(c).replace("\n", " ").replace("|", "\\|") for c in cells)
        return "| " + " | ".join(text) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *map(line, rows)])


def _active(recs: Sequence[RunRecord]) -> str:
    usable = [r.result for r in recs if r.usable]
    if not usable or usable[0].srn_active_fraction is None:
        return "-"
    text = share_text(statistics.fmean(r.srn_active_fraction for r in usable))
    means = [r.srn_active_fraction_mean for r in usable if r.srn_active_fraction_mean is not None]
    return f"{text} (over training {share_text(statistics.fmean(means))})" if means else text


def _setting_section(kind: str, setting: str, arms: dict[str, list[RunRecord]]) -> str:
    # A metric no usable run has a value for is not measured here (FID without a feature
    # network): no column of n/a; while none is usable (unfinished, diverged), every column shows.
    done = [r for recs in arms.values() for r in recs if r.usable]
    metrics = [
        METRICS[m] for m in _TABLE_METRICS[kind]
        if not done or any(METRICS[m].value(r) is not None for r in done)
    ]  # fmt: skip
    rows = []
    for arm, recs in arms.items():
        usable = [r for r in recs if r.usable]
        row = [arm, f"{len(usable)}/{len(recs)}", _active(recs)]
        rows.append(row + [_cell(m.values(usable)[0], m.percent) for m in metrics])
    headers = ["arm", "finished", "cap binds (end)"] + [
        m.label + (" (%)" if m.percent else "") for m in metrics
    ]
    run = next(iter(arms.values()))[0].run
    section = f"### {kind}: {setting}\n\n{_describe(run)}\n\n{_table(headers, rows)}\n"
    return section + _srank_table(arms)


def _srank_table(arms: dict[str, list[RunRecord]]) -> str:
    """Each layer's raw stable rank at the end of training, mean over seeds, per arm; SRN arms as
    ``raw / target``. It shows what the binary 'cap binds' hides: a raw weight held just below its
    target (the cap shaped training) against the SN arm's stable rank, which the cap would cut."""
    stats: dict[str, dict[str, list[LayerStat]]] = {}  # layer name -> arm -> one stat per seed
    for arm, recs in arms.items():
        for rec in (r for r in recs if r.usable):
            for layer in rec.result.layers:
                stats.setdefault(layer.name, {}).setdefault(arm, []).append(layer)
    if all(s.target_srank is None for by_arm in stats.values() for v in by_arm.values() for s in v):
        return ""  # no SRN arm here
    rows = []
    for name, by_arm in stats.items():
        row = [name]
        for arm in arms:
            seeds = by_arm.get(arm, [])
            raw = f"{statistics.fmean(s.raw_srank for s in seeds):.3g}" if seeds else "n/a"
            target = seeds[0].target_srank if seeds else None
            row.append(f"{raw} / {target:.3g}" if target else raw)
        rows.append(row)
    frozen = frozen_layers(r for recs in arms.values() for r in recs)
    frozen_text = "".join(
        f"\n**Not learning** in {arm}: the weight of {', '.join(names)} (target 1: the output is "
        "the rank-one u v^T of the initial weight's top singular pair, and no gradient of the "
        "loss reaches the raw weight; any bias it has still trains).\n"
        for arm, names in frozen.items()
    )  # fmt: skip
    return (
        "\nRaw stable rank of each layer at the end of training (mean over seeds; SRN arms: raw "
        "/ target r):\n\n" + _table(["layer", *arms], rows) + "\n" + frozen_text
    )


def _describe(run: Run) -> str:
    cfg = run.config
    if run.kind == KIND_GAN:
        first = " D's layers that read the image have SN in every arm."
        return (
            f"{cfg.arch} GAN on {cfg.dataset}, ngf {cfg.ngf}, ndf {cfg.ndf}, {cfg.g_steps} "
            f"generator steps, n_dis {cfg.n_dis}, batch {cfg.batch_size}; "
            f"{cfg.n_final_samples} samples for FID/IS."
            + (first if cfg.d_first_norm == "sn" else "")
        )
    subset = cfg.train_subset or "all"
    return (
        f"{cfg.model} (width {cfg.width:g}) on {subset} {cfg.dataset} images, "
        f"label noise {cfg.label_noise:g}, {cfg.epochs} epochs, {cfg.optimizer} lr "
        f"{cfg.lr:g} ({cfg.schedule} schedule), weight decay {cfg.weight_decay:g}, augmentation "
        f"{cfg.resolved_augment}, head {cfg.head}."
    )


def _comparison_row(c: Comparison, kind: str) -> list[str]:
    m, t = METRICS[c.metric], c.test
    diff = effect = p = "n/a"
    if t is not None:
        diff = f"{_fmt(t.diff, m.percent)} [{_fmt(t.diff_low, m.percent)}, "
        diff += f"{_fmt(t.diff_high, m.percent)}]"
        effect = f"{t.d:.2f} [{t.d_low:.2f}, {t.d_high:.2f}]"
        p = f"{t.p_value:.3g} / {c.p_adjusted:.3g}"
    active = " / ".join("n/a" if x is None else share_text(x)
                        for x in (c.srn_active_fraction_mean, c.sn_above_target))  # fmt: skip
    outcome = f"**{c.outcome}**"
    if c.seeds_needed:
        # GAN seeds alone can be added (--gan-seeds); --seeds would set every arm's, GANs too.
        flag = f": --gan-seeds {c.seeds_needed}" if kind == KIND_GAN else ""
        outcome += f" (~{c.seeds_needed} seeds/arm would decide{flag})"
    elif c.outcome == CANNOT_TELL and t is not None:
        outcome += " (more than 10,000 seeds/arm at this spread)"
    return [
        c.setting,
        f"{c.rank_ratio:g}",
        f"vs {c.reference}",
        m.label + (" (%; difference in pp)" if m.percent else ""),
        f"{len(c.srn_values)} / {len(c.ref_values)}",
        f"{_cell(c.srn_values, m.percent)} vs {_cell(c.ref_values, m.percent)}",
        diff,
        effect,
        p,
        active,
        outcome,
    ]


def _min_effects() -> str:
    """Each tested metric's smallest effect of interest, as the rule applies it, grouped by value
    (the metrics only the tables show have none)."""
    groups: dict[str, list[str]] = {}
    for m in dict.fromkeys(METRICS[name] for claim in CLAIMS for name in claim.metrics):
        if m.relative:
            size = f"{m.min_effect:.0%} of the reference"
        else:
            size = f"{100 * m.min_effect:g} pp" if m.percent else f"{m.min_effect:g}"
        groups.setdefault(size, []).append(m.name)
    return "; ".join(f"{size}: {', '.join(names)}" for size, names in groups.items())


def _family_ci(c: Comparison) -> str:
    """A tested row not decided by its p-value: the CI the rule read, beside the smallest effect."""
    m = METRICS[c.metric]
    unit = " pp" if m.percent else ""
    low, high = c.family_ci or (math.nan, math.nan)
    return (
        f"- {c.setting}, c = {c.rank_ratio:g}, {m.label} vs {c.reference}: {c.outcome}; the "
        f"difference's family-wise CI is [{_fmt(low, m.percent)}, {_fmt(high, m.percent)}]{unit}"
        f", the smallest effect of interest {_fmt(c.min_effect, m.percent)}{unit} "
        f"({'lower' if m.lower_is_better else 'higher'} is better)"
    )


def _claims_section(results: Sequence[ClaimResult], alpha: float) -> str:
    n_tests = sum(c.test is not None for r in results for c in r.comparisons)
    family = f"{1 - alpha / n_tests:.2%} here" if n_tests else "none tested here"
    tested = (f"the {n_tests} tested comparison{'' if n_tests == 1 else 's'} of this report"
              if n_tests else "the tested comparisons of a report (none in this one)")  # fmt: skip
    out = [
        "## Claims\n",
        f"Each comparison: Welch t-test over seeds, p-values Holm-corrected over {tested} "
        f"(family-wise alpha = {alpha:g}); 'srn vs ref': each arm's mean ± standard deviation "
        "over its seeds; the difference SRN - reference with "
        "its 95% CI; d = difference / RMS of the two standard deviations, with an approximate "
        "95% CI. **not a test**: the stable-rank cap binds on fewer than "
        f"{MIN_ACTIVE_FRACTION:.0%} of the SRN layers (averaged over training), so that arm is "
        "mostly spectral normalization (the layer tables below show where a raw stable rank is "
        "held at its target all the same). **SN above r**: the fraction of those layers whose "
        "stable rank in the SN arm (SRN without the cap) ends above SRN's target, where the cap "
        "would cut what SN training reaches; shown, not used by the rule. **not reproduced**: "
        "significantly worse, or the difference's CI at the family-wise level (1 - alpha / "
        f"tests = {family}, not the 95% CI of the table) excludes "
        "every improvement of at least the metric's smallest effect of interest "
        f"({_min_effects()}). The rows decided by that CI, and the tested rows that cannot tell, "
        "list it under their table.\n",
    ]
    for r in results:
        out.append(f"### Claim {r.claim.number}: {r.claim.text} - **{r.verdict}**\n")
        if r.claim.note:
            out.append(r.claim.note + "\n")
        out += [f"**Caveat**: {caveat}.\n" for caveat in r.caveats]
        if not r.comparisons:
            refs = " or ".join(r.claim.references)
            missing = {"no SRN arm": "have no SRN arm to test",
                       "no reference arm": f"have no {refs} arm beside an SRN arm to compare it "
                                           "with",
                       "not measured": "measure none of this claim's metrics (no analysis, or "
                                       "no feature network)"}.get(r.verdict)  # fmt: skip
            arms = "; ".join(f"{s}: {', '.join(sorted(a))}" for s, a in r.arms.items())
            out.append(f"This sweep's runs of this kind ({arms}) {missing}.\n" if missing
                       else "This sweep has no runs of this kind.\n")  # fmt: skip
            continue
        headers = [
            "setting",
            "c",
            "reference",
            "metric",
            "n (srn / ref)",
            "srn vs ref",
            "difference [95% CI]",
            "d [95% CI]",
            "p / Holm p",
            "cap binds (training mean) / SN above r (end)",
            "outcome",
        ]
        rows = [_comparison_row(c, r.claim.kind) for c in r.comparisons]
        out.append(_table(headers, rows) + "\n")
        not_a_test = {
            f"- {c.setting}, c = {c.rank_ratio:g}: {c.reason}"
            for c in r.comparisons
            if c.outcome == NOT_A_TEST
        }
        untested = {  # undecided without a test: no finished runs, or values missing
            f"- {c.setting}, c = {c.rank_ratio:g}, {METRICS[c.metric].label} vs {c.reference}: "
            f"{c.reason}"
            for c in r.comparisons
            if c.outcome == CANNOT_TELL and c.test is None
        }
        by_ci = [_family_ci(c) for c in r.comparisons  # tested, not significant
                 if c.p_adjusted is not None and c.p_adjusted >= alpha]  # fmt: skip
        out += sorted(not_a_test) + sorted(untested) + by_ci
        clean = {
            f"{c.setting} {k.removeprefix('clean_test_acc_')}: {_fmt(v, True)}%"
            for c in r.comparisons
            for k, v in c.context.items()
        }
        if clean:
            out.append(
                "- Read beside the clean-label test accuracy at the same c (a small c can reduce "
                "memorization by underfitting), from the classify runs of the same setting name "
                "and network (their data and schedule may differ): " + "; ".join(sorted(clean))
            )
        out.append("")
    return "\n".join(out)


def _problems(records: Sequence[RunRecord]) -> str:
    rows = [
        [r.run.name, r.state, (r.result.divergence if r.result else "") or r.problem]
        for r in records
        if not r.usable
    ]
    if not rows:
        return ""
    return (
        "## Runs not counted\n\nThese runs are left out of every mean and test (diverged, "
        "failed or not finished; a rerun of the same command retries failed and unfinished "
        "ones).\n\n" + _table(["run", "state", "why"], rows) + "\n"
    )


def _what_seeds_decide(results: Sequence[ClaimResult], alpha: float) -> str:
    """What the seeds can decide: per seed count of the tested comparisons, the smallest effect d
    detected with 80% power at the strictest Holm level of the report (alpha / tests)."""
    tested = [c for r in results for c in r.comparisons if c.test is not None]
    if not tested:
        return ""
    level = alpha / len(tested)
    counts = sorted({min(len(c.srn_values), len(c.ref_values)) for c in tested})
    parts = [
        f"{n} seeds per arm detect d >= {d:.1f}"
        for n in counts
        if (d := detectable_effect(n, level)) is not None
    ]
    return (
        f"\nWhat the seeds can decide: with {len(tested)} tests under Holm's correction the "
        f"strictest level is {level:.2g}, at which (80% power) " + "; ".join(parts) + ". A "
        "smaller true effect reads 'cannot tell' (the table gives the seeds that would decide "
        "it at the measured spread), and a single verdict is about these settings only."
    )


def _scope(records: Sequence[RunRecord]) -> str:
    """What the verdicts are about, read off the runs: the settings trained, and the feature
    network that scored the GANs (the paper's scores are Inception's)."""
    settings = ", ".join(sorted({r.run.setting for r in records}))
    text = (
        f"\nWhat this sweep can decide: a verdict is about the settings it trained ({settings}) "
        "and not beyond them; the paper's classifiers are CIFAR networks."
    )
    gans = [r.result for r in records if isinstance(r.result, GanResult)]
    scored = [g.protocol.scores for g in gans if g.protocol and g.protocol.scores]
    nets = sorted({score.feature_net for score in scored})
    if nets:
        text += f" Claim 4's FID and IS come from the feature network {', '.join(nets)}"
        if not any("inception" in net for net in nets):
            text += ", not from Inception as the paper's: compare them within this report only"
        text += "."
    elif gans:
        text += (" Claim 4 has no FID or IS here (the GAN runs were not scored with a "
                 "feature network); the neural divergence is its only metric.")  # fmt: skip
    return text + (
        " Within a setting every arm runs the same trainer config (data, learning rate and "
        "schedule, epochs or G steps, seeds); only the normalization and c differ, and no arm is "
        "tuned on its own. The budgets are the sweep's, set for its hardware, not the paper's: "
        "an arm still improving at the end is compared where training stopped."
    )


def _decides(results: Sequence[ClaimResult], records: Sequence[RunRecord], sweep: str,
             alpha: float) -> str:  # fmt: skip
    lines = [f"## Summary ({sweep})\n"]
    lines += [
        f"- Claim {r.claim.number} ({r.claim.text}): **{r.verdict}**{r.basis(alpha)}"
        + (f"; see its caveat: {_FROZEN}" if r.caveats else "")
        for r in results
    ]
    lines += [_what_seeds_decide(results, alpha), _scope(records)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def _arm_colors(records: Sequence[RunRecord]) -> dict[str, str]:
    """One colour per arm for every figure of a report: vanilla C0, SN C1, the SRN arms from C2
    in the order of their c (an arm keeps its colour whichever arms a figure draws)."""
    srn = sorted({r.run.arm: r.run.rank_ratio for r in records if r.run.norm == "srn"}.items(),
                 key=lambda arm_c: arm_c[1])  # fmt: skip
    return {"none": "C0", "sn": "C1", **{arm: f"C{2 + i}" for i, (arm, _) in enumerate(srn)}}


def _curve_plot(
    arms: dict[str, list[RunRecord]], attr: str, ylabel: str, title: str, path: Path, xlabel: str,
    colors: dict[str, str], *, fraction: bool = False, gate: float | None = None,
) -> Path | None:  # fmt: skip
    """Mean ± std over seeds of ``attr`` along training, one line per arm (None: nothing drawn).
    A ``fraction`` (accuracy, share of layers) is drawn in percent, as the tables give it, with
    its band clipped to [0, 100], where a std band would claim values above 100%. With ``gate``,
    ``attr`` is a fraction: the axis spans [0, 100] (an autoscaled 80-100 would look like a
    swing) and a dashed line marks the gate."""
    fraction = fraction or gate is not None
    scale, (low, high) = (100.0, (0.0, 100.0)) if fraction else (1.0, (-np.inf, np.inf))
    fig = new_figure()
    ax = fig.add_subplot()
    for arm, recs in arms.items():
        color = colors[arm]
        curves = [
            {p.step: getattr(p, attr) for p in r.result.curve if getattr(p, attr) is not None}
            for r in recs
            if r.usable
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        # The steps every seed logged (log_every is a runtime key); the legend counts the others.
        steps = sorted(set.intersection(*map(set, curves)))
        left = len(set().union(*curves)) - len(steps)
        ys = np.array([[c[s] for c in curves] for s in steps]).reshape(len(steps), len(curves))
        ys = scale * ys
        mean = ys.mean(axis=1)
        spread = ys.std(axis=1, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        note = f"; {left} steps not logged by every seed left out" if left else ""
        ax.plot(steps, mean, color=color, label=f"{arm} (n={len(curves)}{note})")
        band = np.clip(mean - spread, low, high), np.clip(mean + spread, low, high)
        ax.fill_between(steps, *band, color=color, alpha=0.2)
    if not ax.lines:
        return None
    if gate is not None:
        label = "gate: an arm averaging below it is not a test"
        ax.axhline(scale * gate, color="black", ls="--", lw=0.8, label=label)
        ax.set_ylim(-3, 103)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    clipped = ", clipped to [0, 100]" if fraction else ""
    ax.set_title(f"{title} (mean ± std over seeds{clipped})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _test_curve_label(arms: dict[str, list[RunRecord]]) -> str:
    """The per-epoch test accuracy's label: the trainer may score a seeded subset of the test
    split each epoch (``test_eval_size``), the tables the whole split at the end."""
    sizes = {(p.test_eval_size_per_epoch, p.test_size) for recs in arms.values() for r in recs
             if r.usable and (p := r.result.protocol) is not None}  # fmt: skip
    if len(sizes) == 1 and 0 < (size := sizes.pop())[0] < size[1]:
        return f"test accuracy, % (per epoch: {size[0]} of the {size[1]} test images)"
    return "test accuracy, %"


def _effects_plot(results: Sequence[ClaimResult], path: Path) -> Path | None:
    comps = [c for r in results for c in r.comparisons if c.test is not None]
    if not comps:
        return None
    labels = [
        f"C{c.claim} {METRICS[c.metric].label} vs {c.reference} ({c.setting}, c={c.rank_ratio:g})"
        for c in comps
    ]
    # The row labels sit left of the axes: widen the figure by their length (about 0.05 inch
    # a character at 7 pt), so the axes keep about 4.5 inches whatever the metrics' names.
    fig = new_figure((4.5 + 0.05 * max(map(len, labels)), 0.35 * len(comps) + 1.4))
    ax = fig.add_subplot()
    shown: set[str] = set()  # outcomes in the legend
    for i, c in enumerate(comps):
        sign = METRICS[c.metric].sign  # right = SRN better
        lo, hi = sorted((sign * c.test.d_low, sign * c.test.d_high))
        color = {REPRODUCED: "tab:green", NOT_REPRODUCED: "tab:red",
                 NOT_A_TEST: "tab:orange"}.get(c.outcome, "gray")  # fmt: skip
        ax.plot([lo, hi], [i, i], color=color)
        label = None if c.outcome in shown else c.outcome
        shown.add(c.outcome)
        ax.plot([sign * c.test.d], [i], "o", color=color, label=label)
    ax.legend(fontsize=7, loc="best")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels(labels, fontsize=7)
    # symlog: effects of d ~ 50 (shattering) and of d ~ 1 (GANs) stay readable on one axis
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(
        "effect size d, signed so that right = SRN better (symlog; the tables' d is SRN - "
        "reference)\nbars: 95% CI, uncorrected (the verdicts use "
        "Holm-corrected p and family-wise CIs)",
        fontsize=8,
    )
    ax.invert_yaxis()
    return save_figure(fig, path)


def _seeds_plot(comps: Sequence[Comparison], path: Path, colors: dict[str, str]) -> Path | None:
    """One panel per tested comparison of ``comps`` (one setting's): the reference arm's and
    the SRN arm's value of each seed, side by side. A mean ± std hides a seed that failed (a
    collapsed GAN) or one that carries the whole difference; the dots show it."""
    comps = [c for c in comps if c.test is not None]
    if not comps:
        return None
    cols = min(4, len(comps))
    rows = math.ceil(len(comps) / cols)
    fig = new_figure((3.0 * cols, 2.5 * rows))
    for i, c in enumerate(comps):
        ax = fig.add_subplot(rows, cols, i + 1)
        metric = METRICS[c.metric]
        scale = 100.0 if metric.percent else 1.0
        srn = arm_label("srn", c.rank_ratio)
        for x, (arm, values) in enumerate(((c.reference, c.ref_values), (srn, c.srn_values))):
            ys = scale * np.asarray(values, dtype=float)
            xs = x + np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else np.full(1, float(x))
            ax.plot(xs, ys, "o", ms=3.5, alpha=0.75, color=colors.get(arm, "gray"))
            ax.plot([x - 0.25, x + 0.25], [ys.mean()] * 2, color="black", lw=1)
        ax.set_xticks([0, 1], [c.reference, srn], fontsize=7)
        ax.set_xlim(-0.6, 1.6)
        unit = " (%)" if metric.percent else ""
        ax.set_title(f"C{c.claim} {metric.label}{unit}", fontsize=7)  # the figure is the setting's
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _figures(
    records: Sequence[RunRecord], results: Sequence[ClaimResult], out_dir: Path
) -> list[tuple[str, Path]]:
    """(title, path) of every figure drawn."""
    colors = _arm_colors(records)
    title = "Effect sizes of every tested comparison"
    figs = [(title, _effects_plot(results, out_dir / FIGURES / "effects.png"))]
    cap = "SRN layers whose cap binds, %"
    for kind, attr, label, fraction in (
        (KIND_SHATTER, "train_acc", "train accuracy on random labels, %", True),
        (KIND_CLASSIFY, "test_acc", "test accuracy, %", True),
        (KIND_GAN, "fid", "FID", False),
    ):
        xlabel = "generator step" if kind == KIND_GAN else "epoch"
        for setting, arms in by_setting(records, kind).items():
            name = f"{kind} {setting}"
            stem = out_dir / FIGURES / f"{kind}_{setting.replace('/', '_')}"
            path = Path(f"{stem}_{attr}.png")
            ylabel = _test_curve_label(arms) if attr == "test_acc" else label
            plot = _curve_plot(arms, attr, ylabel, name, path, xlabel, colors, fraction=fraction)
            figs.append((f"{name}: {ylabel}", plot))
            path = Path(f"{stem}_active.png")  # vanilla and SN record no binding: not drawn
            plot = _curve_plot(arms, "srn_active_fraction", cap, f"{name}: cap binding", path,
                               xlabel, colors, gate=MIN_ACTIVE_FRACTION)  # fmt: skip
            figs.append((f"{name}: {cap}", plot))
            comps = [c for r in results if r.claim.kind == kind for c in r.comparisons
                     if c.setting == setting]  # fmt: skip
            plot = _seeds_plot(comps, Path(f"{stem}_seeds.png"), colors)
            figs.append((f"{name}: every tested comparison seed by seed (bar: mean)", plot))
    return [(t, p) for t, p in figs if p is not None]


# ----------------------------------------------------------------------------- the report


def _trained_at(records: Sequence[RunRecord]) -> str:
    """The code commits the counted runs were trained at (their ``env.json``), with counts: a
    report rebuilt later, or a sweep resumed across commits, says so."""
    commits: collections.Counter[str] = collections.Counter()
    for rec in records:
        if rec.usable:
            try:
                env = json.loads(RunDir(rec.run.run_dir).env_file.read_text())
            except (OSError, ValueError):
                env = {}
            commit = env.get("git_commit") or "unknown"
            edited = " with uncommitted changes" if commit.endswith(DIRTY) else ""
            commits[commit[:7] + edited] += 1
    listed = ", ".join(f"{c} ({n} runs)" for c, n in commits.most_common())
    if not listed:
        return "no run trained"
    return f"trained at commit{'s' if len(commits) > 1 else ''} {listed}"


def write_report(
    out_dir: str | Path,
    records: Sequence[RunRecord],
    *,
    sweep: str,
    alpha: float,
    config: dict[str, Any],
    commit: str | None,
) -> tuple[Path, list[ClaimResult]]:
    """Write ``report.md``, ``claims.json`` and ``figures/`` into ``out_dir``.

    Returns:
        The report's path and the evaluated claims.
    """
    out_dir = Path(out_dir)
    results = evaluate_claims(records, alpha)
    claims_json = {
        "sweep": sweep,
        "alpha": alpha,
        "commit": commit,
        "min_active_fraction": MIN_ACTIVE_FRACTION,
        "claims": [
            {
                "number": r.claim.number,
                "text": r.claim.text,
                "verdict": r.verdict,
                "caveats": r.caveats,
                "comparisons": [c.to_dict() for c in r.comparisons],
            }
            for r in results
        ],
    }
    atomic_write_text(out_dir / CLAIMS_FILE, json.dumps(to_dict(claims_json), indent=2) + "\n")
    figures = _figures(records, results, out_dir)
    usable = sum(r.usable for r in records)
    parts = [
        f"# Stable Rank Normalization: reproduction report ({sweep})\n",
        f"{usable} of {len(records)} runs finished and counted; {_trained_at(records)}; this "
        f"report built at code commit {commit or 'unknown'}. Machine-readable verdicts: "
        f"[{CLAIMS_FILE}]({CLAIMS_FILE}).\n",
        _decides(results, records, sweep, alpha),
        _claims_section(results, alpha),
        "## Settings and per-arm results\n\nMean ± standard deviation over seeds; "
        "'cap binds' = fraction of SRN layers whose raw weight's stable rank exceeds the "
        "target at the end of training (and averaged over training).\n",
    ]
    for kind in KINDS:
        for setting, arms in by_setting(records, kind).items():
            parts.append(_setting_section(kind, setting, arms))
    if figures:
        parts.append("## Figures\n")
        parts += [f"**{title}**\n\n![{title}]({p.relative_to(out_dir)})\n" for title, p in figures]
    parts.append(_problems(records))
    parts.append(
        "## Configuration\n\n```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```\n"
    )
    path = out_dir / REPORT_FILE
    atomic_write_text(path, "\n".join(p for p in parts if p))
    return path, results


def claims_summary(results: Sequence[ClaimResult], alpha: float = 0.05) -> str:
    """One line per claim for the terminal."""
    return "\n".join(
        f"claim {r.claim.number}: {r.verdict}{r.basis(alpha)}"
        + (f"; caveat: {_FROZEN} (report.md)" if r.caveats else "")
        for r in results
    )
