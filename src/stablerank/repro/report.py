"""``report.md`` and its figures, built only from the saved files of the run folders.

:func:`write_report` reads ``out_dir`` (``plan.json`` and each run's ``spec.json``,
``status.json``, ``metrics.json``, ``analysis.json``, ``gan_analysis.json``, ``log.jsonl``,
``env.json``; never a model or a dataset), decides the claims (:mod:`stablerank.repro.claims`)
and writes ``out_dir/report.md`` with PNG figures in ``out_dir/figures``. ``stablerank
reproduce`` calls it at the end; ``stablerank reproduce --report-only`` (or this function) rebuilds
it from what is there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablerank.repro.claims import CLAIMS, RULE_TEXT, Claim, ClaimResult, evaluate_claims
from stablerank.repro.plan import KIND_CLASSIFY, KIND_GAN
from stablerank.repro.results import (
    PLAN_FILE,
    RunRecord,
    collect_runs,
    per_seed_values,
    read_json,
    stats,
)
from stablerank.repro.sections import (
    FIGURES_DIR,
    classify_section,
    fmt_value,
    gan_section,
    group_runs,
    rel_path,
    shatter_section,
    table,
)

__all__ = ["FIGURES_DIR", "REPORT_FILE", "Report", "claims_summary", "write_report"]

REPORT_FILE = "report.md"
DEFAULT_Z = 2.0


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced."""

    path: Path
    claims: tuple[ClaimResult, ...]
    n_runs: int
    n_done: int
    n_failed: int
    figures: tuple[Path, ...]
    z: float = DEFAULT_Z


# ----------------------------------------------------------------------------- sections


def _claims_section(results: Sequence[ClaimResult], records: Sequence[RunRecord], z: float) -> str:
    out = ["## Claims (SPEC section 3)", "", RULE_TEXT.format(z=z), ""]
    settings = _settings(records)
    for res in results:
        c = res.claim
        out += [f"### Claim {c.number}: {res.verdict.upper()}", "", f"*{c.text}*", ""]
        if res.note:
            out += [f"Note: {res.note}{_missing_note(c, records)}.", ""]
        groups = sorted({cmp.group for cmp in res.comparisons}) or sorted(
            {r.group for r in records if r.kind == c.kind}
        )
        for group in groups:
            figures = c.paper(settings.get((c.kind, group), {}))
            out.append(
                f"- {group}: "
                + (
                    figures
                    or "setting differs from the paper's "
                    f"({_describe_setting(settings.get((c.kind, group), {}))}); its reported "
                    "figures are not comparable with ours"
                )
            )
        if c.number == 1:
            out += _relative_gap_lines(records)
        out.append("")
        if res.comparisons:
            rows = [
                [
                    cmp.group,
                    cmp.srn_mode,
                    cmp.ref_mode,
                    cmp.metric.label,
                    f"{cmp.mean_srn:.4g} (n={cmp.n_srn})",
                    f"{cmp.mean_ref:.4g} (n={cmp.n_ref})",
                    f"{cmp.diff:+.3g}",
                    fmt_value(cmp.se, 2),
                    cmp.outcome,
                ]
                for cmp in res.comparisons
            ]
            out += [
                table(
                    [
                        "setting",
                        "SRN",
                        "vs",
                        "metric",
                        "SRN mean",
                        "ref mean",
                        "d (>0 favours SRN)",
                        "se",
                        "outcome",
                    ],
                    rows,
                ),
                "",
            ]
    return "\n".join(out)


def _missing_note(claim: Claim, records: Sequence[RunRecord]) -> str:
    """Why a claim's metrics are missing from finished runs, where the saved JSON says."""
    runs = [r for r in records if r.kind == claim.kind and r.done]
    if not runs:
        return ""
    keys = [m.key for m in claim.metrics]
    missing = [r for r in runs if all(r.metrics.get(k) is None for k in keys)]
    negative = [r for r in missing if (r.metrics.get("margin") or 0.0) <= 0.0]
    if "log10_neyshabur" in keys and negative:
        return (
            f" ({len(negative)} of {len(runs)} finished runs have a non-positive "
            "10th-percentile training margin: more than 10% of their training images are "
            "misclassified, so the margin-normalized measures are undefined; train longer, "
            "e.g. the standard preset)"
        )
    if missing:
        return f" ({len(missing)} of {len(runs)} finished runs lack {', '.join(keys)})"
    return ""


def _settings(records: Sequence[RunRecord]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        s = {
            "dataset": rec.config.get("dataset"),
            "model": rec.config.get("model") or rec.config.get("arch"),
        }
        if rec.kind == KIND_GAN:
            s["feature_net"] = rec.protocol.get("metrics", {}).get("feature_net") or rec.config.get(
                "feature_net"
            )
        out.setdefault((rec.kind, rec.group), s)
    return out


def _describe_setting(s: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items() if v) or "unknown"


def _relative_gap_lines(records: Sequence[RunRecord]) -> list[str]:
    lines = []
    for group, recs in sorted(group_runs(records, KIND_CLASSIFY).items()):
        base = stats(r.metrics.get("gap_acc") for r in recs if r.mode == "none")
        for mode in sorted({r.mode for r in recs if r.mode.startswith("srn")}):
            s = stats(r.metrics.get("gap_acc") for r in recs if r.mode == mode)
            if base.n and s.n and base.mean > 0:
                lines.append(
                    f"- ours, {group}: {mode} changes the mean generalization gap by "
                    f"{100 * (s.mean - base.mean) / base.mean:+.1f}% relative to none "
                    f"({s.mean:.4f} vs {base.mean:.4f})"
                )
    return lines


def _provenance_section(records: Sequence[RunRecord], out_dir: Path) -> str:
    plan = read_json(out_dir / PLAN_FILE) or {}
    envs = [r.env for r in records if r.env]
    keys = (
        "stablerank",
        "git_commit",
        "torch",
        "python",
        "platform",
        "cpu_count",
        "torch_threads",
        "device",
        "cuda_device",
        "cuda",
    )
    out = ["## Provenance", ""]
    for key in keys:
        values = sorted({str(e.get(key)) for e in envs if e.get(key) is not None})
        if values:
            out.append(f"- {key}: {', '.join(values)}")
    hw = plan.get("hardware")
    if hw:
        out.append(f"- planned on: {hw}")
    if plan.get("config"):
        cfg = plan["config"]
        out.append(f"- reproduce config: `{ {k: v for k, v in cfg.items() if k != 'progress'} }`")
    total = sum(float(r.status.get("wall_time_s") or 0) for r in records)
    out += [f"- total wall time of the runs: {total / 60:.1f} min", "", "### Runs", ""]
    rows = []
    for r in records:
        st = r.status.get("status", "not run")
        err = r.status.get("error", "")
        rows.append(
            [
                f"[{r.name}]({rel_path(r.path, out_dir)})",
                r.kind,
                r.mode,
                r.seed,
                st,
                fmt_value(r.status.get("wall_time_s"), 4),
                err[:120],
            ]
        )
    out += [table(["run", "kind", "norm", "seed", "status", "wall time (s)", "error"], rows), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- entry points


def write_report(out_dir: str | Path, *, decision_z: float | None = None) -> Report:
    """Build ``out_dir/report.md`` and ``out_dir/figures/*.png`` from the saved run files.

    Args:
        out_dir: the reproduction folder (``plan.json`` and ``runs/``).
        decision_z: threshold of the claims' decision rule in standard errors (default: the
            plan's ``decision_z``, else 2).

    Returns:
        A :class:`Report` (path, claim verdicts, run counts, figures).
    """
    out_dir = Path(out_dir)
    plan = read_json(out_dir / PLAN_FILE) or {}
    z = decision_z or plan.get("config", {}).get("decision_z") or DEFAULT_Z
    records = collect_runs(out_dir)
    results = evaluate_claims(per_seed_values(records), z=z, claims=CLAIMS)
    figures: list[Path] = []
    n_done = sum(r.done for r in records)
    n_failed = sum(r.status.get("status") == "failed" for r in records)
    header = [
        "# Stable Rank Normalization: reproduction report",
        "",
        f"Preset/config: `{plan.get('preset', 'custom')}`; {len(records)} runs planned, {n_done} "
        f"finished, {n_failed} failed. Built from the saved JSON/JSONL of the run folders only "
        "(`stablerank reproduce --report-only` rebuilds it). Every number is a mean over seeds "
        "with its sample standard deviation and the number of seeds n.",
        "",
        "Summary: " + "; ".join(f"claim {r.claim.number}: **{r.verdict}**" for r in results),
        "",
    ]
    body = [
        _claims_section(results, records, z),
        classify_section(records, out_dir, figures),
        shatter_section(records, out_dir, figures),
        gan_section(records, out_dir, figures),
        _provenance_section(records, out_dir),
    ]
    path = out_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + body) + "\n")
    return Report(path, tuple(results), len(records), n_done, n_failed, tuple(figures), z)


def claims_summary(report: Report) -> str:
    """A few lines for the terminal: where the report is and each claim's verdict."""
    lines = [
        f"report: {report.path}  ({report.n_done}/{report.n_runs} runs finished"
        + (f", {report.n_failed} FAILED" if report.n_failed else "")
        + ")"
    ]
    lines.append(
        "claims (SRN vs references; a comparison counts when the mean difference over seeds "
        f"exceeds {report.z:g} standard errors, see the report):"
    )
    for res in report.claims:
        counts = defaultdict(int)
        for cmp in res.comparisons:
            counts[cmp.outcome] += 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or res.note
        lines.append(
            f"  claim {res.claim.number}: {res.verdict:<15} ({detail})  {res.claim.text[:70]}..."
        )
    return "\n".join(lines)
