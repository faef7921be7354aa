"""Compare two arms of a finished sweep directly, with the report's Welch test and Holm's
correction over the metrics compared; the report itself compares each SRN arm with SN of its own
setting only.

Usage::

    python scripts/compare_arms.py SWEEP OUT_DIR KIND SETTING_A ARM_A SETTING_B ARM_B
        [--collapsed-below IS]

e.g. ``python scripts/compare_arms.py scripts/sweep_gan_first_sn.py:gan_first_sn /tmp/firstsn gan
fashion-mnist/gan-cnn16-first-sn "srn(c=0.1)" fashion-mnist/gan-cnn16 "srn(c=0.1)"``. It reads
the run folders only (nothing is trained) and prints a Markdown table: A vs B per metric of the
claims of KIND, mean ± standard deviation over the runs counted, the difference A - B with its 95%
CI, Cohen's d, the raw p and Holm's p, and the seeds whose values the two arms share exactly.
``--collapsed-below IS`` (GAN runs) also counts the runs whose Inception-style score is below IS
(a collapsed generator) in each arm, with Fisher's exact test (two-sided) of the two rates and
the seeds of those runs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro import sweeps
from stablerank.repro.claims import CLAIMS, METRICS, holm, welch
from stablerank.repro.records import RunRecord, by_setting, collect


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4g} (n 1)" if values else "n/a (n 0)"
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.3g} (n {len(values)})"


def compare(
    a: Sequence[RunRecord], b: Sequence[RunRecord], kind: str, collapsed_below: float | None = None
) -> list[str]:
    """The lines of the Markdown table of arm ``a`` against arm ``b`` (their usable runs) on the
    metrics of the claims of ``kind``, and with ``collapsed_below`` the collapse line."""
    a, b = [r for r in a if r.usable], [r for r in b if r.usable]
    rows = []
    for name in [m for claim in CLAIMS if claim.kind == kind for m in claim.metrics]:
        metric = METRICS[name]
        (va, sa), (vb, sb) = metric.values(a), metric.values(b)
        b_by_seed = dict(zip(sb, vb, strict=True))
        same = [seed for seed, v in zip(sa, va, strict=True) if b_by_seed.get(seed) == v]
        # Fewer than 2 values in an arm (a measure undefined where the margin is not positive,
        # FID without a feature network): no test, and no place in Holm's family.
        test = welch(va, vb) if min(len(va), len(vb)) >= 2 else None
        rows.append((metric.label, va, vb, test, same))
    adjusted = iter(holm([t.p_value for *_, t, _ in rows if t is not None]))
    lines = ["| metric | A | B | A - B [95% CI] | d [95% CI] | p / Holm p | seeds equal |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, va, vb, t, same in rows:
        diff = d = p = "n/a (fewer than 2 values in an arm)"
        if t is not None:
            diff = f"{t.diff:.4g} [{t.diff_low:.4g}, {t.diff_high:.4g}]"
            d = f"{t.d:.2f} [{t.d_low:.2f}, {t.d_high:.2f}]"
            p = f"{t.p_value:.3g} / {next(adjusted):.3g}"
        lines.append(f"| {label} | {_mean_sd(va)} | {_mean_sd(vb)} | {diff} | {d} | {p} | "
                     f"{len(same)} |")  # fmt: skip
    if collapsed_below is not None:
        from scipy.stats import fisher_exact

        if any(r.result.is_mean is None for r in (*a, *b)):
            raise ValueError("--collapsed-below reads each run's Inception-style score, which "
                             "runs scored without a feature network do not have")  # fmt: skip
        low = [[r.run.seed for r in arm if r.result.is_mean < collapsed_below] for arm in (a, b)]
        table = [[len(low[0]), len(a) - len(low[0])], [len(low[1]), len(b) - len(low[1])]]
        p = fisher_exact(table).pvalue
        lines += ["", f"Collapsed (IS < {collapsed_below:g}): A {len(low[0])} of {len(a)} (seeds "
                  f"{sorted(low[0])}), B {len(low[1])} of {len(b)} (seeds {sorted(low[1])}); "
                  f"Fisher's exact test, two-sided: p = {p:.3g}"]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, text in (
        ("sweep", "the sweep, as reproduce --sweep takes it (quick, FILE.py:FUNCTION, ...)"),
        ("out_dir", "the sweep's out dir (holding runs/)"),
        ("kind", f"the runs' kind: {', '.join(sweeps.KINDS)}"),
        ("setting_a", "arm A's setting, e.g. fashion-mnist/mlp"),
        ("arm_a", "arm A: none, sn or srn(c=C)"),
        ("setting_b", "arm B's setting"),
        ("arm_b", "arm B"),
    ):
        parser.add_argument(name, help=text)
    parser.add_argument("--collapsed-below", type=float, metavar="IS", help="count GAN runs "
                        "whose Inception-style score is below IS, Fisher's exact test")  # fmt: skip
    args = parser.parse_args(argv)
    if args.kind not in sweeps.KINDS:
        parser.error(f"kind must be one of {', '.join(sweeps.KINDS)}, got {args.kind!r}")
    if not (Path(args.out_dir) / sweeps.RUNS_DIR).is_dir():
        parser.error(f"out_dir {args.out_dir} holds no {sweeps.RUNS_DIR}/ folder of a sweep")
    runs = sweeps.build_sweep(ReproduceConfig(sweep=args.sweep, out_dir=args.out_dir))
    arms = by_setting(collect(runs), args.kind)
    picked = []
    chosen = (("A", args.setting_a, args.arm_a), ("B", args.setting_b, args.arm_b))
    for which, setting, arm in chosen:
        if setting not in arms:
            parser.error(f"setting {which} {setting!r} is not one of the sweep's {args.kind} "
                         f"settings: {', '.join(arms) or 'none'}")  # fmt: skip
        if arm not in arms[setting]:
            parser.error(f"arm {which} {arm!r} is not one of {setting}'s arms: "
                         f"{', '.join(arms[setting])}")  # fmt: skip
        picked.append(arms[setting][arm])
    a, b = picked
    print(f"A = {args.setting_a} {args.arm_a} ({sum(r.usable for r in a)} runs), "
          f"B = {args.setting_b} {args.arm_b} ({sum(r.usable for r in b)} runs)\n")  # fmt: skip
    print("\n".join(compare(a, b, args.kind, args.collapsed_below)))


if __name__ == "__main__":
    main()
