"""The report's figures (PNG, matplotlib's Agg canvas, no pyplot global state).

Each function takes :class:`~stablerank.repro.results.RunRecord` objects (saved JSON only), writes
one PNG and returns its path, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stablerank.repro.results import RunRecord

__all__ = [
    "plot_d_el_hist",
    "plot_el_quantiles",
    "plot_fid_curves",
    "plot_layer_spectra",
    "plot_shattering",
    "slugify",
]

_BINS = 50
_MIN_BINS = 10
_PAIR_ORDER = ("real-real", "fake-fake", "real-fake")  # as in stablerank.repro.gan_eval
_MAX_LEGEND = 12  # a legend for more layers hides the plot
_ALPHA_BAND = 0.2
_LEGEND_HEADROOM = 3.0  # factor on a log axis's top limit


def slugify(text: str) -> str:
    """A file-name-safe version of a group name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _figure(figsize: tuple[float, float] = (6.4, 4.2)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def _by_mode(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = defaultdict(list)
    for rec in records:
        out[rec.mode].append(rec)
    return dict(sorted(out.items(), key=lambda kv: _mode_order(kv[0])))


def _mode_order(mode: str) -> tuple[int, str]:
    return ({"none": 0, "sn": 1}.get(mode, 2), mode)


def _mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list, list, list]:
    """Mean and std over runs at the x values all runs share."""
    common = set.intersection(*(set(x for x, _ in c) for c in curves)) if curves else set()
    xs = sorted(common)
    means, stds = [], []
    for x in xs:
        ys = [dict(c)[x] for c in curves]
        m = sum(ys) / len(ys)
        means.append(m)
        stds.append(math.sqrt(sum((y - m) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0)
    return xs, means, stds


def plot_shattering(records: Sequence[RunRecord], path: Path, title: str) -> Path | None:
    """Train accuracy on random labels vs epoch, mean ± std over seeds per normalization."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for mode, recs in _by_mode(records).items():
        curves = [
            [(r["epoch"], r["train_acc"]) for r in rec.log if "train_acc" in r] for rec in recs
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        xs, means, stds = _mean_curve(curves)
        ax.plot(xs, means, marker="o", markersize=3, label=f"{mode} (n={len(curves)})")
        ax.fill_between(
            xs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            alpha=_ALPHA_BAND,
        )
        drawn = True
    if not drawn:
        return None
    ax.set(
        xlabel="epoch",
        ylabel="train accuracy on random labels (eval mode)",
        ylim=(0, 1.02),
        title=title,
    )
    ax.legend()
    return _save(fig, path)


def plot_el_quantiles(records: Sequence[RunRecord], path: Path, title: str) -> Path | None:
    """Pairwise eL of classifiers: median, q90, q99 and max per normalization (train and test
    pairs), mean over seeds with the seed spread as error bars."""
    from stablerank.repro.results import stats

    fig = _figure((7.5, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    modes = _by_mode(records)
    if not modes:
        return None
    levels = ("q50", "q90", "q99", "max")
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for j, level in enumerate(levels):
            s = [
                stats(r.metrics.get(f"el_{split}_{level}") for r in recs) for recs in modes.values()
            ]
            xs = [i + (j - 1.5) * 0.12 for i in range(len(modes))]
            ax.errorbar(
                xs,
                [v.mean for v in s],
                yerr=[0 if v.n < 2 else v.std for v in s],
                fmt="o",
                capsize=3,
                label=level,
            )
        ax.set_xticks(range(len(modes)), list(modes))
        ax.set(title=f"{split} pairs", yscale="log")
    axes[0].set_ylabel("pairwise empirical Lipschitz ratio")
    # Headroom above the points (log axis) for a one-row legend that hides nothing.
    low, high = axes[0].get_ylim()
    axes[0].set_ylim(low, high * _LEGEND_HEADROOM)
    axes[0].legend(fontsize="small", ncol=len(levels), loc="upper left")
    fig.suptitle(title)
    return _save(fig, path)


def plot_layer_spectra(records: Sequence[RunRecord], path: Path, title: str) -> Path | None:
    """Per-layer spectral norm (top) and stable rank (bottom) over training, one column per
    normalization (the lowest seed of each)."""
    modes = {m: min(recs, key=lambda r: r.seed) for m, recs in _by_mode(records).items()}
    modes = {
        m: r for m, r in modes.items() if r.log and any(k.startswith("srank/") for k in r.log[-1])
    }
    if not modes:
        return None
    fig = _figure((3.6 * len(modes), 6.0))
    axes = fig.subplots(2, len(modes), squeeze=False, sharey="row")
    for col, (mode, rec) in enumerate(modes.items()):
        epochs = [r["epoch"] for r in rec.log]
        for row, prefix in enumerate(("sigma_max/", "srank/")):
            ax = axes[row][col]
            keys = [k for k in rec.log[-1] if k.startswith(prefix)]
            for key in keys:
                ax.plot(
                    epochs,
                    [r.get(key, math.nan) for r in rec.log],
                    marker=".",
                    label=key.removeprefix(prefix),
                )
            ax.set(
                yscale="log",
                xlabel="epoch" if row else None,
                title=f"{mode} (seed {rec.seed})" if not row else None,
            )
            if col == 0:
                ax.set_ylabel("spectral norm (exact)" if not row else "stable rank")
        if col == len(modes) - 1 and len(keys) <= _MAX_LEGEND:
            axes[1][col].legend(fontsize="xx-small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_d_el_hist(records: Sequence[RunRecord], path: Path, title: str) -> Path | None:
    """Discriminator eLhist: one panel per pair type, the normalizations overlaid (seeds
    pooled), on shared bins."""
    modes = _by_mode([r for r in records if r.extra.get("d_el_values")])
    if not modes:
        return None
    found = {t for recs in modes.values() for r in recs for t in r.extra["d_el_values"]}
    types = [t for t in _PAIR_ORDER if t in found] + sorted(found - set(_PAIR_ORDER))
    fig = _figure((4.0 * len(types), 3.8))
    axes = fig.subplots(1, len(types), squeeze=False)[0]
    for ax, kind in zip(axes, types, strict=True):
        pooled = {
            m: [v for r in recs for v in r.extra["d_el_values"].get(kind, [])]
            for m, recs in modes.items()
        }
        values = [v for vs in pooled.values() for v in vs]
        if not values:
            continue
        lo, hi = min(values), max(values)
        # ~2 sqrt(n) bins per series (at most _BINS): a few hundred pairs stay readable.
        bins = max(_MIN_BINS, min(_BINS, int(2 * math.sqrt(len(values) / len(pooled)))))
        edges = [lo + (hi - lo if hi > lo else 1.0) * i / bins for i in range(bins + 1)]
        for mode, vs in pooled.items():
            ax.hist(vs, bins=edges, alpha=0.5, label=mode)
        ax.set(title=kind, xlabel="|D(x) - D(x')| / ||x - x'||", ylabel="pairs")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_fid_curves(records: Sequence[RunRecord], path: Path, title: str) -> Path | None:
    """FID during training (``eval_fid`` of the GAN log), mean ± std over seeds per norm."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for mode, recs in _by_mode(records).items():
        curves = [
            [(r["step"], r["eval_fid"]) for r in rec.log if r.get("eval_fid") is not None]
            for rec in recs
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        xs, means, stds = _mean_curve(curves)
        ax.errorbar(
            xs,
            means,
            yerr=stds if len(curves) > 1 else None,
            marker="o",
            capsize=3,
            label=f"{mode} (n={len(curves)})",
        )
        drawn = True
    if not drawn:
        return None
    ax.set(xlabel="generator step", ylabel="FID (lower is better)", yscale="log", title=title)
    ax.legend()
    return _save(fig, path)
