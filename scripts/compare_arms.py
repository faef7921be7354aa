"""Compare two arms of a finished sweep directly, with the report's Welch test and Holm's
correction over the metrics compared; the report itself compares each SRN arm with SN of its own
setting only.

Usage::

    python scripts/compare_arms.py SWEEP OUT_DIR KIND SETTING_A ARM_A SETTING_B ARM_B

e.g. ``python scripts/compare_arms.py scripts/sweep_gan_first_sn.py:gan_first_sn /tmp/firstsn gan
fashion-mnist/gan-cnn16-first-sn "srn(c=0.1)" fashion-mnist/gan-cnn16 "srn(c=0.1)"``. It reads
the run folders only (nothing is trained) and prints a Markdown table: A vs B per metric of the
claims of KIND, mean ± standard deviation over the runs counted, the difference A - B with its 95%
CI, Cohen's d, the raw p and Holm's p, and the seeds whose values the two arms share exactly.
"""

from __future__ import annotations

import statistics
import sys

from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro import sweeps
from stablerank.repro.claims import CLAIMS, METRICS, holm, welch
from stablerank.repro.records import by_setting, collect


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.3g} (n {len(values)})"


def main(argv: list[str]) -> None:
    sweep, out_dir, kind, setting_a, arm_a, setting_b, arm_b = argv
    runs = sweeps.build_sweep(ReproduceConfig(sweep=sweep, out_dir=out_dir))
    arms = by_setting(collect(runs), kind)
    a = [r for r in arms[setting_a][arm_a] if r.usable]
    b = [r for r in arms[setting_b][arm_b] if r.usable]
    names = [m for claim in CLAIMS if claim.kind == kind for m in claim.metrics]
    rows = []
    for name in names:
        metric = METRICS[name]
        (va, sa), (vb, sb) = metric.values(a), metric.values(b)
        b_by_seed = dict(zip(sb, vb, strict=True))
        same = [seed for seed, v in zip(sa, va, strict=True) if b_by_seed.get(seed) == v]
        rows.append((metric.label, va, vb, welch(va, vb), same))
    adjusted = holm([test.p_value for *_, test, _ in rows])
    print(f"A = {setting_a} {arm_a} ({len(a)} runs), B = {setting_b} {arm_b} ({len(b)} runs)\n")
    print("| metric | A | B | A - B [95% CI] | d [95% CI] | p / Holm p | seeds equal |")
    print("|---|---|---|---|---|---|---|")
    for (label, va, vb, t, same), p_holm in zip(rows, adjusted, strict=True):
        print(f"| {label} | {_mean_sd(va)} | {_mean_sd(vb)} | {t.diff:.4g} [{t.diff_low:.4g}, "
              f"{t.diff_high:.4g}] | {t.d:.2f} [{t.d_low:.2f}, {t.d_high:.2f}] | "
              f"{t.p_value:.3g} / {p_holm:.3g} | {len(same)} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
