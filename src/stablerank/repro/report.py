"""The reproduction report: ``report.md``, ``claims.json`` and figures, from saved results only.

Built from the typed run records (:mod:`stablerank.repro.records`) and the claims
(:mod:`stablerank.repro.claims`); never retrains. Every SRN arm shows how often its stable-rank
cap binds, every verdict comes from a test over seeds, diverged and failed runs are listed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stablerank.repro.claims import (
    METRICS,
    MIN_ACTIVE_FRACTION,
    ClaimResult,
    Comparison,
    evaluate_claims,
)
from stablerank.repro.records import RunRecord
from stablerank.repro.sweeps import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER, Run
from stablerank.train.checkpoint import atomic_write_text
from stablerank.train.results import to_dict

__all__ = ["CLAIMS_FILE", "REPORT_FILE", "claims_summary", "write_report"]

REPORT_FILE = "report.md"
CLAIMS_FILE = "claims.json"
FIGURES = "figures"
_TABLE_METRICS = {
    KIND_CLASSIFY: (
        "test_acc",
        "train_acc",
        "gap_acc",
        "log10_neyshabur",
        "log10_bartlett",
        "log10_spectral_product",
        "el_test_max",
    ),
    KIND_SHATTER: ("final_train_acc", "mean_train_acc"),
    KIND_GAN: ("fid", "is_mean", "neural_divergence", "d_el_max", "d_el_median"),
}


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}" if percent else f"{value:.4g}"


def _cell(values: Sequence[float], percent: bool) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return _fmt(mean, percent)
    return f"{_fmt(mean, percent)} ± {_fmt(statistics.stdev(values), percent)}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _arm_order(arm: str) -> tuple[int, str]:
    return ({"none": 0, "sn": 1}.get(arm, 2), arm)


def _settings(records: Sequence[RunRecord], kind: str) -> dict[str, dict[str, list[RunRecord]]]:
    out: dict[str, dict[str, list[RunRecord]]] = {}
    for rec in records:
        if rec.run.kind == kind:
            out.setdefault(rec.run.setting, {}).setdefault(rec.run.arm, []).append(rec)
    return {s: dict(sorted(a.items(), key=lambda kv: _arm_order(kv[0]))) for s, a in out.items()}


def _active(recs: Sequence[RunRecord]) -> str:
    ends = [r.result.srn_active_fraction for r in recs if r.usable]
    means = [r.result.srn_active_fraction_mean for r in recs if r.usable]
    if not ends or ends[0] is None:
        return "-"
    mean = [m for m in means if m is not None]
    return (
        f"{statistics.fmean(ends):.0%} (over training {statistics.fmean(mean):.0%})"
        if mean
        else f"{statistics.fmean(ends):.0%}"
    )


def _setting_section(kind: str, setting: str, arms: dict[str, list[RunRecord]]) -> str:
    metrics = [METRICS[m] for m in _TABLE_METRICS[kind]]
    rows = []
    for arm, recs in arms.items():
        usable = [r for r in recs if r.usable]
        row = [arm, f"{len(usable)}/{len(recs)}", _active(recs)]
        for m in metrics:
            values = [v for v in (m.read(r) for r in usable) if v is not None and math.isfinite(v)]
            row.append(_cell(values, m.percent))
        rows.append(row)
    headers = ["arm", "finished", "cap binds (end)"] + [
        m.label + (" (%)" if m.percent else "") for m in metrics
    ]
    run = next(iter(arms.values()))[0].run
    return f"### {kind}: {setting}\n\n{_describe(run)}\n\n{_table(headers, rows)}\n"


def _describe(run: Run) -> str:
    cfg = run.config
    if run.kind == KIND_GAN:
        return (
            f"{cfg.arch} GAN on {cfg.dataset}, ngf = ndf = {cfg.ndf}, {cfg.g_steps} "
            f"generator steps, n_dis {cfg.n_dis}, batch {cfg.batch_size}; "
            f"{cfg.n_final_samples} samples for FID/IS."
        )
    subset = cfg.train_subset or "all"
    return (
        f"{cfg.model} (width {cfg.width:g}) on {subset} {cfg.dataset} images, "
        f"label noise {cfg.label_noise:g}, {cfg.epochs} epochs, {cfg.optimizer} lr "
        f"{cfg.lr:g} ({cfg.schedule}), weight decay {cfg.weight_decay:g}, augmentation "
        f"{cfg.resolved_augment}, head {getattr(cfg, 'head', 'none')}."
    )


def _comparison_row(c: Comparison) -> list[str]:
    m = METRICS[c.metric]
    d = c.to_dict()
    ci = d["diff_ci"]
    diff = (
        "n/a"
        if c.test is None
        else (
            f"{_fmt(c.test.diff, m.percent)} [{_fmt(ci[0], m.percent)}, {_fmt(ci[1], m.percent)}]"
        )
    )
    effect = (
        "n/a" if c.test is None else f"{c.test.d:.2f} [{c.test.d_low:.2f}, {c.test.d_high:.2f}]"
    )
    p = "n/a" if c.test is None else f"{c.test.p_value:.3g} / {c.p_adjusted:.3g}"
    active = "n/a" if c.srn_active_fraction is None else f"{c.srn_active_fraction:.0%}"
    outcome = f"**{c.outcome}**"
    if c.seeds_needed:
        outcome += f" (~{c.seeds_needed} seeds/arm would decide)"
    elif c.outcome == "cannot tell" and c.test is not None:
        outcome += " (more than 10,000 seeds/arm at this spread)"
    return [
        c.setting,
        f"{c.rank_ratio:g}",
        f"vs {c.reference}",
        m.label + (" (pp)" if m.percent else ""),
        f"{len(c.srn_values)} / {len(c.ref_values)}",
        f"{_cell(c.srn_values, m.percent)} vs {_cell(c.ref_values, m.percent)}",
        diff,
        effect,
        p,
        active,
        outcome,
    ]


def _claims_section(results: Sequence[ClaimResult], alpha: float) -> str:
    out = [
        "## Claims\n",
        f"Each comparison: Welch t-test over seeds, p-values Holm-corrected over the "
        f"{sum(c.test is not None for r in results for c in r.comparisons)} tested comparisons "
        f"of this report (family-wise alpha = {alpha:g}); the difference SRN - reference with "
        "its 95% CI; d = difference / RMS of the two standard deviations, with an approximate "
        "95% CI. **not a test**: the stable-rank cap binds on fewer than "
        f"{MIN_ACTIVE_FRACTION:.0%} of the SRN layers (averaged over training), so that arm is "
        "spectral normalization. **not reproduced**: significantly worse, or the CI excludes "
        "every improvement of at least the metric's smallest effect of interest (0.5 pp "
        "accuracy, 1 pp on random labels, 0.05 in log10 measures, 2-5% of the reference for "
        "GAN scores and eL).\n",
    ]
    for r in results:
        out.append(f"### Claim {r.claim.number}: {r.claim.text} - **{r.verdict}**\n")
        if not r.comparisons:
            out.append("No finished runs of this kind in this sweep.\n")
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
            "cap binds",
            "outcome",
        ]
        out.append(_table(headers, [_comparison_row(c) for c in r.comparisons]) + "\n")
        notes = sorted(
            {
                f"- {c.setting}, c = {c.rank_ratio:g}: {c.reason}"
                for c in r.comparisons
                if c.outcome == "not a test"
            }
        )
        context = [c for c in r.comparisons if c.context]
        if context:
            notes.append(
                "- Read beside the clean-label test accuracy at the same c (a small c "
                "can reduce memorization by underfitting): "
                + "; ".join(
                    sorted(
                        {
                            f"{c.setting} {k.removeprefix('clean_test_acc_')}: {_fmt(v, True)}%"
                            for c in context
                            for k, v in c.context.items()
                        }
                    )
                )
            )
        out += [*notes, ""]
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


def _decides(results: Sequence[ClaimResult], sweep: str) -> str:
    lines = [f"## Summary ({sweep})\n"]
    for r in results:
        lines.append(f"- Claim {r.claim.number} ({r.claim.text}): **{r.verdict}**")
    lines.append(
        "\nWhat this sweep can decide: its networks are small and trained on Fashion-MNIST "
        "subsets, so a verdict here is about these settings, not about the paper's CIFAR "
        "architectures; claim 4 is scored with this project's own Fashion-MNIST feature "
        "network, not Inception."
        if sweep in ("quick", "tiny", "standard")
        else ""
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def _figure(figsize: tuple[float, float] = (6.4, 4.0)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _curve_plot(
    arms: dict[str, list[RunRecord]], attr: str, ylabel: str, title: str, path: Path
) -> Path | None:
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for arm, recs in arms.items():
        curves = [
            [(p.step, getattr(p, attr)) for p in r.result.curve if getattr(p, attr) is not None]
            for r in recs
            if r.usable
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
        ys = [[dict(c)[s] for c in curves] for s in steps]
        mean = [statistics.fmean(y) for y in ys]
        spread = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
        line = ax.plot(steps, mean, label=f"{arm} (n={len(curves)})")[0]
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, spread, strict=True)],
            [m + s for m, s in zip(mean, spread, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch" if "gan" not in title else "generator step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _effects_plot(results: Sequence[ClaimResult], path: Path) -> Path | None:
    comps = [c for r in results for c in r.comparisons if c.test is not None]
    if not comps:
        return None
    fig = _figure((7.0, 0.35 * len(comps) + 1.2))
    ax = fig.add_subplot()
    for i, c in enumerate(comps):
        sign = -1.0 if METRICS[c.metric].lower_is_better else 1.0  # right = SRN better
        lo, hi = sorted((sign * c.test.d_low, sign * c.test.d_high))
        color = {"reproduced": "tab:green", "not reproduced": "tab:red"}.get(c.outcome, "gray")
        ax.plot([lo, hi], [i, i], color=color)
        ax.plot([sign * c.test.d], [i], "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels(
        [
            f"C{c.claim} {c.metric} vs {c.reference} ({c.setting}, c={c.rank_ratio:g})"
            for c in comps
        ],
        fontsize=7,
    )
    # symlog: effects of d ~ 50 (shattering) and of d ~ 1 (GANs) stay readable on one axis
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("effect size d (symlog), right = SRN better; bars: 95% CI")
    ax.invert_yaxis()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _figures(
    records: Sequence[RunRecord], results: Sequence[ClaimResult], out_dir: Path
) -> list[tuple[str, Path]]:
    figs: list[tuple[str, Path | None]] = [
        (
            "Effect sizes of every tested comparison",
            _effects_plot(results, out_dir / FIGURES / "effects.png"),
        ),
    ]
    for kind, attr, label in (
        (KIND_SHATTER, "train_acc", "train accuracy on random labels"),
        (KIND_CLASSIFY, "test_acc", "test accuracy"),
        (KIND_GAN, "fid", "FID"),
    ):
        for setting, arms in _settings(records, kind).items():
            stem = f"{kind}_{setting.replace('/', '_')}"
            figs.append(
                (
                    f"{kind} {setting}: {label}",
                    _curve_plot(
                        arms,
                        attr,
                        label,
                        f"{kind} {setting}",
                        out_dir / FIGURES / f"{stem}_{attr}.png",
                    ),
                )
            )
            srn = {a: r for a, r in arms.items() if a.startswith("srn")}
            figs.append(
                (
                    f"{kind} {setting}: fraction of SRN layers whose cap binds",
                    _curve_plot(
                        srn,
                        "srn_active_fraction",
                        "fraction of SRN layers whose cap binds",
                        f"{kind} {setting}: cap binding",
                        out_dir / FIGURES / f"{stem}_active.png",
                    ),
                )
            )
    return [(t, p) for t, p in figs if p is not None]


# ----------------------------------------------------------------------------- the report


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
        f"{usable} of {len(records)} runs finished and counted; code commit {commit or 'unknown'}."
        f" Machine-readable verdicts: [{CLAIMS_FILE}]({CLAIMS_FILE}).\n",
        _decides(results, sweep),
        _claims_section(results, alpha),
        "## Settings and per-arm results\n\nMean ± standard deviation over seeds; "
        "'cap binds' = fraction of SRN layers whose raw weight's stable rank exceeds the "
        "target at the end of training (and averaged over training).\n",
    ]
    for kind in (KIND_CLASSIFY, KIND_SHATTER, KIND_GAN):
        for setting, arms in _settings(records, kind).items():
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


def claims_summary(results: Sequence[ClaimResult]) -> str:
    """One line per claim for the terminal."""
    return "\n".join(f"claim {r.claim.number}: {r.verdict}" for r in results)
