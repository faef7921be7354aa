"""The result sections of ``report.md``: tables of mean ± std over seeds and the figures.

Each ``*_section`` function takes the :class:`~stablerank.repro.results.RunRecord` objects (saved
JSON only), writes its figures into ``out_dir/figures`` (appending their paths to ``figures``) and
returns its markdown.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stablerank.repro import plots
from stablerank.repro.plan import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER
from stablerank.repro.results import RunRecord, stats

__all__ = [
    "FIGURES_DIR",
    "classify_section",
    "fmt_value",
    "gan_section",
    "group_runs",
    "rel_path",
    "shatter_section",
    "table",
]

FIGURES_DIR = "figures"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def group_runs(records: Sequence[RunRecord], kind: str) -> dict[str, list[RunRecord]]:
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


def rel_path(path: Path, out_dir: Path) -> str:
    try:
        return str(path.relative_to(out_dir))
    except ValueError:
        return str(path)


def fmt_value(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def classify_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## Classification, clean labels", ""]
    groups = group_runs(records, KIND_CLASSIFY)
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
            table(
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
            table(["norm", "n", *el_keys], _mode_rows(recs, [(k, _col(k, 3)) for k in el_keys])),
            "",
        ]
        cx = ("log10_neyshabur", "log10_bartlett", "log10_spectral_product", "sum_srank", "margin")
        ana = recs[0].protocol.get("analysis", {})
        out += [
            f"Sample-complexity measures (log10; margin quantile "
            f"{ana.get('margin_quantile')}; {ana.get('complexity_layers', '')}):",
            "",
            table(["norm", "n", *cx], _mode_rows(recs, [(k, _col(k, 4)) for k in cx])),
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
                out += [f"![{caption}]({rel_path(path, out_dir)})", ""]
        hists = [
            (r.mode, r.seed, r.path / "el_hist.png")
            for r in recs
            if (r.path / "el_hist.png").is_file()
        ]
        if hists:
            out += [
                "eLhist of each run (written by `stablerank analyze`): "
                + ", ".join(f"[{m} s{s}]({rel_path(p, out_dir)})" for m, s, p in sorted(hists)),
                "",
            ]
    return "\n".join(out)


def shatter_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## Shattering: random labels", ""]
    groups = group_runs(records, KIND_SHATTER)
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
            table(
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
            out += [f"![shattering curves]({rel_path(path, out_dir)})", ""]
    return "\n".join(out)


def gan_section(records: Sequence[RunRecord], out_dir: Path, figures: list[Path]) -> str:
    out = ["## GAN: SN-GAN vs SRN-GAN", ""]
    groups = group_runs(records, KIND_GAN)
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
            table(
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
                out += [f"![{caption}]({rel_path(path, out_dir)})", ""]
        grids = [
            (r.mode, r.seed, r.extra.get("sample_grid")) for r in recs if r.extra.get("sample_grid")
        ]
        if grids:
            out += ["Final sample grids (fixed latents):", ""]
            out += [
                f"- {m} seed {s}: ![{m} s{s}]({rel_path(Path(g), out_dir)})"
                for m, s, g in sorted(grids)
            ]
            out.append("")
    return "\n".join(out)
