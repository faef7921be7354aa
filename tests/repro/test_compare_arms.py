"""scripts/compare_arms.py: its Welch, Holm and Fisher numbers against scipy's, and the seeds whose
values two arms share, on typed records built here (no run folder)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
from scipy import stats

from stablerank.repro.records import RunRecord
from stablerank.repro.sweeps import KIND_GAN, tiny
from stablerank.train.results import GanAnalysis, GanResult, Summary

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_arms.py"


def _script():
    spec = importlib.util.spec_from_file_location("compare_arms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _arm(values: list[tuple[float, float]], state: str = "done") -> list[RunRecord]:
    """One record per (FID, IS), seeds 0, 1, ...; every other metric a function of the FID."""
    run = next(r for r in tiny(seeds=1, gan_seeds=1) if r.kind == KIND_GAN)
    out = []
    for seed, (fid, is_mean) in enumerate(values):
        el = Summary(max=fid / 100, mean=fid / 200, n=4, quantiles={"q50": fid / 300})
        analysis = GanAnalysis(
            neural_divergence=fid / 10, neural_divergence_std=0.1,
            neural_divergence_real_train=0.1, d_el={"real-real": el},
            d_el_values={"real-real": (fid / 300, fid / 100)},
            d_jacobian={"real": Summary(max=1.0, mean=fid / 50, n=8)},
        )  # fmt: skip
        result = GanResult(steps=2, d_loss=0.5, g_loss=1.0, fid=fid, is_mean=is_mean)
        config = dataclasses.replace(run.config, seed=seed)
        out.append(RunRecord(dataclasses.replace(run, config=config), state, result, analysis))
    return out


def test_the_table_and_the_collapse_line_agree_with_scipy():
    compare = _script().compare
    a = _arm([(20.0, 2.0), (22.0, 1.0), (25.0, 1.1), (30.0, 1.9), (21.0, 2.1)])
    b = _arm([(20.0, 2.0), (15.0, 2.2), (16.0, 2.1), (14.0, 1.05), (18.0, 2.3)])
    failed = _arm([(99.0, 1.0)], state="failed")  # not usable: left out of both tests
    lines = compare(a + failed, b, KIND_GAN, collapsed_below=1.2)
    fid_row = next(line for line in lines if line.startswith("| FID |")).split(" | ")
    fa, fb = [r.result.fid for r in a], [r.result.fid for r in b]
    welch = stats.ttest_ind(fa, fb, equal_var=False)
    p_raw, p_holm = (float(x) for x in fid_row[5].split(" / "))
    assert p_raw == pytest.approx(welch.pvalue, rel=1e-2)
    # Every metric here but IS is a linear function of the FID, so 5 of the 6 tests have the
    # FID's p. Holm by hand: the i-th smallest of m p values times m - i, running maximum.
    p_is = stats.ttest_ind([r.result.is_mean for r in a], [r.result.is_mean for r in b],
                           equal_var=False).pvalue  # fmt: skip
    ordered = sorted([welch.pvalue] * 5 + [p_is])
    holm = [min(1.0, max((6 - i) * p for i, p in enumerate(ordered[: k + 1]))) for k in range(6)]
    assert p_holm == pytest.approx(holm[ordered.index(welch.pvalue)], rel=1e-2)
    assert fid_row[1].startswith(f"{sum(fa) / 5:.4g} ± ") and fid_row[1].endswith("(n 5)")
    assert fid_row[6] == "1 |"  # seed 0 has the same FID in both arms
    fisher = stats.fisher_exact([[2, 3], [1, 4]]).pvalue
    assert lines[-1] == (f"Collapsed (IS < 1.2): A 2 of 5 (seeds [1, 2]), B 1 of 5 (seeds [3]); "
                         f"Fisher's exact test, two-sided: p = {fisher:.3g}")  # fmt: skip
    assert len([line for line in lines if line.startswith("| ")]) == 1 + 6  # header, 6 metrics


def test_a_metric_without_values_is_a_row_of_n_a_out_of_holms_family():
    # Runs scored without a feature network have no FID or IS: the other metrics are still tested,
    # Holm over those four alone; --collapsed-below, which reads IS, is refused.
    compare = _script().compare

    def unscored(values):
        return [dataclasses.replace(r, result=dataclasses.replace(r.result, fid=None, is_mean=None))
                for r in _arm(values)]  # fmt: skip

    a = unscored([(20.0, 2.0), (22.0, 1.0), (25.0, 1.1)])
    b = unscored([(15.0, 2.2), (16.0, 2.1), (14.0, 1.05)])
    lines = compare(a, b, KIND_GAN)
    fid_row = next(line for line in lines if line.startswith("| FID |"))
    assert "n/a (n 0)" in fid_row and "fewer than 2 values" in fid_row
    nd_row = next(line for line in lines if line.startswith("| neural divergence |")).split(" | ")
    p_raw, p_holm = (float(x) for x in nd_row[5].split(" / "))
    assert p_holm == pytest.approx(min(1.0, 4 * p_raw), rel=1e-2)  # 4 tests, all the same p
    with pytest.raises(ValueError, match="--collapsed-below reads each run's Inception-style"):
        compare(a, b, KIND_GAN, collapsed_below=1.2)


def test_bad_arguments_are_named(tmp_path, capsys):
    main = _script().main
    for argv, said in (
        (["tiny", str(tmp_path), "nope", "s", "a", "s", "b"], "kind must be one of"),
        (["tiny", str(tmp_path / "missing"), "gan", "s", "a", "s", "b"], "holds no runs/ folder"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit):
        main(["tiny", str(tmp_path), "classify", "digits/nope", "sn", "digits/mlp", "sn"])
    assert "setting A 'digits/nope' is not one of the sweep's classify settings: digits/" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["tiny", str(tmp_path), "classify", "digits/mlp", "srn(c=0.9)", "digits/mlp", "sn"])
    assert "arm A 'srn(c=0.9)' is not one of digits/mlp's arms: none, sn, srn(c=" in (
        capsys.readouterr().err
    )
