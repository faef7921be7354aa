"""Read the saved results of a reproduction (JSON/JSONL only; never a model or a dataset).

:func:`collect_runs` turns every run folder of ``out_dir`` into a :class:`RunRecord` with a flat
``metrics`` dict (the keys the report's tables and the claims use, :data:`CLASSIFY_KEYS`,
:data:`SHATTER_KEYS`, :data:`GAN_KEYS`), the per-epoch/step log, the saved protocol records and
the provenance files. :func:`stats` and :func:`per_seed_values` aggregate over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stablerank.repro.plan import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER, RUNS_DIR

__all__ = [
    "CLASSIFY_KEYS",
    "GAN_KEYS",
    "PLAN_FILE",
    "SHATTER_KEYS",
    "SPEC_FILE",
    "STATUS_FILE",
    "RunRecord",
    "Stats",
    "collect_runs",
    "per_seed_values",
    "read_json",
    "stats",
]

PLAN_FILE = "plan.json"
SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
_QUANTILES = ("q50", "q90", "q99")

CLASSIFY_KEYS = (
    "test_acc",
    "train_acc",
    "gap_acc",
    "gap_loss",
    "el_train_max",
    "el_train_q50",
    "el_train_q90",
    "el_train_q99",
    "el_test_max",
    "el_test_q50",
    "el_test_q90",
    "el_test_q99",
    "jac_train_max",
    "jac_test_max",
    "jac_interpolated_max",
    "log10_neyshabur",
    "log10_bartlett",
    "log10_spectral_product",
    "sum_srank",
    "margin",
)
SHATTER_KEYS = ("final_train_acc", "mean_train_acc", "final_test_acc")
GAN_KEYS = (
    "fid",
    "kid_mean",
    "is_mean",
    "neural_divergence",
    "neural_divergence_real_train",
    "d_el_max",
    "d_el_q50",
    "untrained_fid",
    "untrained_is_mean",
    "real_train_fid",
    "real_train_kid_mean",
    "real_train_is_mean",
    "d_jac_real_max",
    "d_jac_fake_max",
)


def read_json(path: Path) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable (a run killed mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill: the rest is still useful
            continue
    return out


@dataclass
class RunRecord:
    """What the report knows about one run folder."""

    name: str
    kind: str
    group: str
    mode: str
    seed: int
    path: Path
    status: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status.get("status") == "done"


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


def _classify_metrics(path: Path, rec: RunRecord) -> None:
    final = read_json(path / "metrics.json") or {}
    analysis = read_json(path / "analysis.json") or {}
    m = rec.metrics
    for key in ("test_acc", "train_acc", "gap_acc", "gap_loss"):
        m[key] = final.get(key)
    for split in ("train", "test"):
        for q in ("max", *_QUANTILES):
            m[f"el_{split}_{q}"] = _get(analysis, "el_pairwise", split, q)
    for split in ("train", "test", "interpolated"):
        m[f"jac_{split}_max"] = _get(analysis, "jacobian_norm", split, "max")
    for key in (
        "log10_neyshabur",
        "log10_bartlett",
        "log10_spectral_product",
        "sum_srank",
        "margin",
    ):
        m[key] = _get(analysis, "complexity", key)
    rec.protocol = {"train": final.get("protocol", {}), "analysis": analysis.get("protocol", {})}
    rec.extra["layers"] = final.get("layers", [])


def _shatter_metrics(rec: RunRecord) -> None:
    accs = [r["train_acc"] for r in rec.log if r.get("train_acc") is not None]
    rec.metrics["final_train_acc"] = accs[-1] if accs else None
    rec.metrics["mean_train_acc"] = sum(accs) / len(accs) if accs else None
    tests = [r["test_acc"] for r in rec.log if r.get("test_acc") is not None]
    rec.metrics["final_test_acc"] = tests[-1] if tests else None
    final = read_json(rec.path / "metrics.json") or {}
    rec.protocol = {"train": final.get("protocol", {})}


def _gan_metrics(path: Path, rec: RunRecord) -> None:
    final = read_json(path / "metrics.json") or {}
    extra = read_json(path / "gan_analysis.json") or {}
    m = rec.metrics
    for key in (
        "fid",
        "kid_mean",
        "is_mean",
        "untrained_fid",
        "untrained_is_mean",
        "real_train_fid",
        "real_train_kid_mean",
        "real_train_is_mean",
    ):
        m[key] = final.get(key)
    m["neural_divergence"] = extra.get("neural_divergence")
    m["neural_divergence_real_train"] = extra.get("neural_divergence_real_train")
    values = [v for vs in (extra.get("d_el_values") or {}).values() for v in vs]
    m["d_el_max"] = max(values) if values else None
    m["d_el_q50"] = _median(values) if values else None
    for split in ("real", "fake"):
        m[f"d_jac_{split}_max"] = _get(extra, "d_jacobian_norm", split, "max")
    rec.protocol = {"metrics": final.get("protocol", {}), "extra": extra.get("protocol", {})}
    rec.extra["d_el_values"] = extra.get("d_el_values") or {}
    grids = sorted((path / "samples").glob("step_*.png"))
    rec.extra["sample_grid"] = grids[-1] if grids else None


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _run_names(out_dir: Path) -> list[str]:
    """The runs of the current plan (``plan.json``), else every folder with a ``spec.json``."""
    plan = read_json(out_dir / PLAN_FILE)
    if plan and "runs" in plan:
        return [r["name"] for r in plan["runs"]]
    return sorted(p.parent.name for p in (out_dir / RUNS_DIR).glob(f"*/{SPEC_FILE}"))


def collect_runs(out_dir: str | Path) -> list[RunRecord]:
    """Every run of ``out_dir`` (in plan order), read from its saved files.

    Runs whose folder is missing (never started) come back with an empty status, so the report
    can list them as not run.
    """
    out_dir = Path(out_dir)
    records = []
    for name in _run_names(out_dir):
        path = out_dir / RUNS_DIR / name
        spec = read_json(path / SPEC_FILE)
        if spec is None:
            plan = read_json(out_dir / PLAN_FILE) or {}
            spec = next((r for r in plan.get("runs", []) if r["name"] == name), None)
            if spec is None:
                continue
        rec = RunRecord(
            name,
            spec["kind"],
            spec["group"],
            spec["mode"],
            int(spec["seed"]),
            path,
            status=read_json(path / STATUS_FILE) or {},
            env=read_json(path / "env.json") or {},
            config=spec.get("config") or {},
        )
        rec.log = _read_jsonl(path / "log.jsonl")
        if rec.kind == KIND_CLASSIFY:
            _classify_metrics(path, rec)
        elif rec.kind == KIND_SHATTER:
            _shatter_metrics(rec)
        elif rec.kind == KIND_GAN:
            _gan_metrics(path, rec)
        records.append(rec)
    return records


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (nan for n = 1) and count over seeds."""

    mean: float
    std: float
    n: int

    def format(self, digits: int = 4, scale: float = 1.0) -> str:
        if self.n == 0:
            return "n/a"
        mean = f"{self.mean * scale:.{digits}g}"
        if self.n == 1:
            return f"{mean} (n=1)"
        return f"{mean} ± {self.std * scale:.2g} (n={self.n})"


def stats(values: Iterable[float | None]) -> Stats:
    """:class:`Stats` of the finite values (None and nan are left out)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return Stats(math.nan, math.nan, 0)
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return Stats(mean, std, len(v))


def per_seed_values(records: Iterable[RunRecord]) -> dict[tuple[str, str, str], dict[str, list]]:
    """``{(kind, group, mode): {metric: [finite per-seed values]}}`` of the finished runs."""
    out: dict[tuple[str, str, str], dict[str, list]] = {}
    for rec in records:
        if not rec.done:
            continue
        slot = out.setdefault((rec.kind, rec.group, rec.mode), {})
        for key, value in rec.metrics.items():
            if value is not None and math.isfinite(float(value)):
                slot.setdefault(key, []).append(float(value))
    return out
