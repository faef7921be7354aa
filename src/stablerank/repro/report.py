"""``report.md`` and its figures, built only from the saved files of the run folders.

:func:`write_report` reads ``out_dir`` (``plan.json`` and each run's ``spec.json``,
``status.json``, ``metrics.json``, ``analysis.json``, ``gan_analysis.json``, ``log.jsonl``,
``env.json``; never a model or a dataset), decides the claims (:mod:`stablerank.repro.claims`)
and writes ``out_dir/report.md`` with PNG figures in ``out_dir/figures``. ``stablerank
reproduce`` calls it at the end; ``stablerank reproduce --report-only`` (or this function) rebuilds
it from what is there.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablerank.repro import plots
from stablerank.repro.claims import CLAIMS, RULE_TEXT, ClaimResult, evaluate_claims
from stablerank.repro.plan import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER
from stablerank.repro.results import (
    PLAN_FILE,
    RunRecord,
    collect_runs,
    per_seed_values,
    read_json,
    stats,
)

__all__ = ["FIGURES_DIR", "REPORT_FILE", "Report", "claims_summary", "write_report"]

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
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


# ----------------------------------------------------------------------------- helpers


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _groups(records: Sequence[RunRecord], kind: str) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = defaultdict(list)
    for rec in records:
        if rec.kind == kind and rec.done:
            out[rec.group].append(rec)
    return dict(out)


def _mode_rows(recs: Sequence[RunRecord], columns: Sequence[tuple[str, Callable]]) -> list[list]:
    by_mode: dict[str, list[RunRecord]] = defaultdict(list)
    for rec in recs:
        by_mode[rec.mode].append(rec)
    rows = []
    for mode in sorted(by_mode, key=lambda m: ({"none": 0, "sn": 1}.get(m, 2), m)):
        group = by_mode[mode]
        rows.append([mode, len(group)] + [fmt(group) for _, fmt in columns])
    return rows


def _col(key: str, digits: int = 4, scale: float = 1.0) -> Callable[[Sequence[RunRecord]], str]:
    return lambda recs: stats(r.metrics.get(key) for r in recs).format(digits, scale)


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return str(path.relative_to(out_dir))
    except ValueError:
        return str(path)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


# ----------------------------------------------------------------------------- sections


def _claims_section(results: Sequence[ClaimResult], records: Sequence[RunRecord], z: float) -> str:
    out = ["## Claims (SPEC section 3)", "", RULE_TEXT.format(z=z), ""]
    settings = _settings(records)
    for res in results:
        c = res.claim
        out += [f"### Claim {c.number}: {res.verdict.upper()}", "", f"*{c.text}*", ""]
        if res.note:
            out += [f"Note: {res.note}.", ""]
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
                    _fmt(cmp.se, 2),
                    cmp.outcome,
                ]
                for cmp in res.comparisons
            ]
            out += [
                _table(
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
    for group, recs in sorted(_groups(records, KIND_CLASSIFY).items()):
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


def _classify_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## Classification, clean labels", ""]
    groups = _groups(records, KIND_CLASSIFY)
    if not groups:
        return "\n".join([*out, "No finished clean-label runs in this plan.", ""])
    for group, recs in sorted(groups.items()):
        proto = recs[0].protocol.get("train", {})
        out += [
            f"### {group}",
            "",
            f"Train images: {proto.get('train_size')}, test images: {proto.get('test_size')}, "
            f"epochs: {proto.get('epochs')}, augment: {proto.get('augment')}, head "
            f"normalized: {proto.get('head_normalized')}. Train accuracy: "
            f"{proto.get('train_acc', 'n/a')} ({proto.get('train_eval_size')} images).",
            "",
            "Accuracy and generalization gap (mean ± std over seeds, n = seeds):",
            "",
        ]
        out += [
            _table(
                ["norm", "n", "test acc", "train acc", "gap (acc)", "gap (loss)"],
                _mode_rows(
                    recs, [(k, _col(k)) for k in ("test_acc", "train_acc", "gap_acc", "gap_loss")]
                ),
            ),
            "",
        ]
        out += [
            "Empirical Lipschitz constant (pairwise ratios, eval mode; Jacobian: spectral "
            "norm at data points):",
            "",
        ]
        el_keys = (
            "el_train_max",
            "el_train_q50",
            "el_train_q99",
            "el_test_max",
            "el_test_q50",
            "el_test_q99",
            "jac_test_max",
            "jac_interpolated_max",
        )
        out += [
            _table(["norm", "n", *el_keys], _mode_rows(recs, [(k, _col(k, 3)) for k in el_keys])),
            "",
        ]
        cx = ("log10_neyshabur", "log10_bartlett", "log10_spectral_product", "sum_srank", "margin")
        ana = recs[0].protocol.get("analysis", {})
        out += [
            f"Sample-complexity measures (log10; margin quantile "
            f"{ana.get('margin_quantile')}; {ana.get('complexity_layers', '')}):",
            "",
            _table(["norm", "n", *cx], _mode_rows(recs, [(k, _col(k, 4)) for k in cx])),
            "",
        ]
        slug = plots.slugify(group)
        for fig_fn, name, caption in (
            (plots.plot_el_quantiles, f"el_{slug}.png", "eL quantiles of the classifiers"),
            (
                plots.plot_layer_spectra,
                f"layers_{slug}.png",
                "per-layer spectral norm and stable rank over training",
            ),
        ):
            path = fig_fn(recs, out_dir / FIGURES_DIR / name, f"{group}: {caption}")
            if path:
                figures.append(path)
                out += [f"![{caption}]({_rel(path, out_dir)})", ""]
        hists = [
            (r.mode, r.seed, r.path / "el_hist.png")
            for r in recs
            if (r.path / "el_hist.png").is_file()
        ]
        if hists:
            out += [
                "eLhist of each run (written by `stablerank analyze`): "
                + ", ".join(f"[{m} s{s}]({_rel(p, out_dir)})" for m, s, p in sorted(hists)),
                "",
            ]
    return "\n".join(out)


def _shatter_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## Shattering: random labels", ""]
    groups = _groups(records, KIND_SHATTER)
    if not groups:
        return "\n".join([*out, "No finished random-label runs in this plan.", ""])
    for group, recs in sorted(groups.items()):
        proto = recs[0].protocol.get("train", {})
        out += [
            f"### {group}",
            "",
            f"{proto.get('train_size')} training images, label noise "
            f"{proto.get('label_noise')}, augment {proto.get('augment')}, "
            f"{proto.get('epochs')} epochs. Lower train accuracy on random labels = less "
            "memorization.",
            "",
            _table(
                [
                    "norm",
                    "n",
                    "random-label train acc (last epoch)",
                    "mean over epochs",
                    "test acc (last epoch)",
                ],
                _mode_rows(
                    recs,
                    [(k, _col(k)) for k in ("final_train_acc", "mean_train_acc", "final_test_acc")],
                ),
            ),
            "",
        ]
        path = plots.plot_shattering(
            recs,
            out_dir / FIGURES_DIR / f"shatter_{plots.slugify(group)}.png",
            f"shattering: {group}",
        )
        if path:
            figures.append(path)
            out += [f"![shattering curves]({_rel(path, out_dir)})", ""]
    return "\n".join(out)


def _gan_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## GAN: SN-GAN vs SRN-GAN", ""]
    groups = _groups(records, KIND_GAN)
    if not groups:
        return "\n".join([*out, "No finished GAN runs in this plan.", ""])
    for group, recs in sorted(groups.items()):
        p = recs[0].protocol.get("metrics", {})
        nd = recs[0].protocol.get("extra", {}).get("neural_divergence", {})
        out += [
            f"### {group}",
            "",
            f"Protocol: feature net `{p.get('feature_net')}` (weights sha256 "
            f"`{str(p.get('weights_sha256'))[:16]}...`), reference split "
            f"`{p.get('reference_split')}` ({p.get('n_real')} images), {p.get('n_fake')} "
            f"samples, IS splits {p.get('is_splits')}, KID {p.get('kid_subsets')} subsets of "
            f"{p.get('kid_subset_size')}, generator {p.get('generator')}, seed "
            f"{p.get('seed')}. Neural divergence: fresh WGAN-GP critic "
            f"(lambda {nd.get('gp_lambda')}), {nd.get('n_critic_steps')} steps, batch "
            f"{nd.get('batch_size')}, {nd.get('n_eval_batches')} evaluation batches on "
            f"{nd.get('n_real_eval')} held-out `{nd.get('reference_split')}` images.",
            "",
        ]
        keys = ("fid", "kid_mean", "is_mean", "neural_divergence", "d_el_max", "d_el_q50")
        rows = _mode_rows(recs, [(k, _col(k)) for k in keys])
        rows.append(
            [
                "untrained G",
                len(recs),
                _col("untrained_fid")(recs),
                "",
                _col("untrained_is_mean")(recs),
                "",
                "",
                "",
            ]
        )
        rows.append(
            [
                "real train images",
                len(recs),
                _col("real_train_fid")(recs),
                _col("real_train_kid_mean")(recs),
                _col("real_train_is_mean")(recs),
                _col("neural_divergence_real_train")(recs),
                "",
                "",
            ]
        )
        out += [
            "FID/KID lower is better, IS higher (max = number of classes with the own "
            "feature net), neural divergence lower; the last two rows are the ends of the "
            "scale under the same protocol:",
            "",
            _table(
                ["d_norm", "n", "FID", "KID", "IS", "neural div.", "D eL max", "D eL median"], rows
            ),
            "",
        ]
        slug = plots.slugify(group)
        for fig_fn, name, caption in (
            (plots.plot_fid_curves, f"fid_{slug}.png", "FID over training"),
            (plots.plot_d_el_hist, f"d_el_{slug}.png", "discriminator eLhist"),
        ):
            path = fig_fn(recs, out_dir / FIGURES_DIR / name, f"{group}: {caption}")
            if path:
                figures.append(path)
                out += [f"![{caption}]({_rel(path, out_dir)})", ""]
        grids = [
            (r.mode, r.seed, r.extra.get("sample_grid")) for r in recs if r.extra.get("sample_grid")
        ]
        if grids:
            out += ["Final sample grids (fixed latents):", ""]
            out += [
                f"- {m} seed {s}: ![{m} s{s}]({_rel(Path(g), out_dir)})"
                for m, s, g in sorted(grids)
            ]
            out.append("")
    return "\n".join(out)


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
                f"[{r.name}]({_rel(r.path, out_dir)})",
                r.kind,
                r.mode,
                r.seed,
                st,
                _fmt(r.status.get("wall_time_s"), 4),
                err[:120],
            ]
        )
    out += [_table(["run", "kind", "norm", "seed", "status", "wall time (s)", "error"], rows), ""]
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
        _classify_section(records, out_dir, figures),
        _shatter_section(records, out_dir, figures),
        _gan_section(records, out_dir, figures),
        _provenance_section(records, out_dir),
    ]
    path = out_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header + body) + "\n")
    return Report(path, tuple(results), len(records), n_done, n_failed, tuple(figures))


def claims_summary(report: Report) -> str:
    """A few lines for the terminal: where the report is and each claim's verdict."""
    lines = [
        f"report: {report.path}  ({report.n_done}/{report.n_runs} runs finished"
        + (f", {report.n_failed} FAILED" if report.n_failed else "")
        + ")"
    ]
    for res in report.claims:
        counts = defaultdict(int)
        for cmp in res.comparisons:
            counts[cmp.outcome] += 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or res.note
        lines.append(
            f"  claim {res.claim.number}: {res.verdict:<15} ({detail})  {res.claim.text[:70]}..."
        )
    return "\n".join(lines)
