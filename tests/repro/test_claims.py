"""Claims: Welch tests against scipy, Holm against a hand computation, and the verdict rules
(not a test when the cap does not bind, reproduced / not reproduced / cannot tell) on typed fake
records built from the real sweep's runs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from scipy import stats

from stablerank.repro import claims, report
from stablerank.repro.records import RunRecord
from stablerank.repro.sweeps import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER, tiny
from stablerank.train.results import (
    ClassifierAnalysis,
    ClassifierProtocol,
    ClassifierResult,
    EpochRecord,
    GanAnalysis,
    GanProtocol,
    GanResult,
    LayerStat,
    ScoreProtocol,
    Summary,
)


def test_welch_matches_scipy_and_interval_covers_difference():
    a, b = [0.10, 0.12, 0.11, 0.13], [0.15, 0.16, 0.18]
    t = claims.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert t.diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert t.diff_low < t.diff < t.diff_high
    # The 95% CI of the difference excludes 0 exactly when p < 0.05.
    assert (t.diff_high < 0) == (t.p_value < 0.05)


def test_holm_hand_computed():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04, monotone)
    assert claims.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_seeds_needed_grows_with_spread():
    small = claims.seeds_needed(0.01, 0.01, 0.01, 0.05)
    large = claims.seeds_needed(0.03, 0.03, 0.01, 0.05)
    assert small is not None and large is not None and large > small
    # effect = one standard deviation: the normal approximation 2 (z_0.975 + z_0.8)^2 = 15.7
    # seeds; the t distribution needs one more.
    assert claims.seeds_needed(1.0, 1.0, 1.0, 0.05) == 17


def test_seeds_needed_counts_welchs_df_when_one_arm_holds_the_spread():
    # 5 seeds per arm with SDs 1.3 and 0.008 and a difference of 3.51: Welch's t = 6.15 on
    # df = 4.0 misses the level 0.05 / 30 (critical t 7.53), so 5 seeds do not decide it; with
    # the equal-variance df (8) the count came out as 5 all the same.
    level = 0.05 / 30
    welch = claims.welch([3.51 + 1.3 * z for z in (-1.26, -0.63, 0, 0.63, 1.26)],
                         [0.008 * z for z in (-1.26, -0.63, 0, 0.63, 1.26)])  # fmt: skip
    assert welch.df == pytest.approx(4.0, abs=0.01) and welch.p_value * 30 > 0.05
    needed = claims.seeds_needed(1.3, 0.008, 3.51, level)
    pooled = math.sqrt((1.3**2 + 0.008**2) / 2)  # the same variance, shared by both arms
    assert needed > 5 and needed > claims.seeds_needed(pooled, pooled, 3.51, level) == 5


def test_detectable_effect_is_the_inverse_of_seeds_needed():
    level = 0.05 / 19
    for n in (3, 5, 10):
        d = claims.detectable_effect(n, level)
        # d is in units of the common standard deviation: std 1 in each arm
        assert claims.seeds_needed(1.0, 1.0, d * 1.01, level) == n
        assert claims.seeds_needed(1.0, 1.0, d * 0.99, level) == n + 1
    assert claims.detectable_effect(1, 0.05) is None
    assert claims.detectable_effect(2, level) is None  # beyond d = 20


def test_large_effects_need_few_seeds_despite_scipys_nan_tail():
    # scipy's noncentral t gives NaN for the far lower tail here; that tail is 0, so 3 seeds
    # per arm suffice (the NaN used to be read as no power: 4).
    assert claims.seeds_needed(1.0, 1.0, 8.0, 0.0026) == 3


def _record(run, gap: float, test_acc: float, active: float | None) -> RunRecord:
    result = ClassifierResult(
        train_acc=test_acc + gap, test_acc=test_acc, train_loss=0.1, test_loss=0.3,
        gap_acc=gap, gap_loss=0.2, epochs=2,
        curve=(EpochRecord(1, train_acc=0.5), EpochRecord(2, train_acc=test_acc + gap)),
        srn_active_fraction=active, srn_active_fraction_mean=active,
    )  # fmt: skip
    return RunRecord(run, "done", result)


def _records(srn_gap: list[float], active: float, kind: str = KIND_CLASSIFY,
             ref_spread: float = 0.002) -> list[RunRecord]:  # fmt: skip
    runs = [r for r in tiny(seeds=len(srn_gap)) if r.kind == kind]
    recs = []
    for run in runs:
        i = run.seed
        if run.norm == "srn":
            recs.append(_record(run, srn_gap[i], 0.80, active))
        else:  # vanilla and SN: a gap of 0.10 with a little spread
            recs.append(_record(run, 0.10 + ref_spread * i, 0.80, None))
    return recs


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The report's figures by file name, kept instead of saved."""
    from stablerank.repro import report

    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        return path

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def _comparison(results, metric: str, reference: str) -> claims.Comparison:
    claim = next(r for r in results if r.claim.number == 1)
    return next(c for c in claim.comparisons if c.metric == metric and c.reference == reference)


def test_srn_that_shrinks_the_gap_reproduces_claim_1_gap():
    results = claims.evaluate_claims(_records([0.05, 0.052, 0.049, 0.051], active=1.0))
    comp = _comparison(results, "gap_acc", "none")
    assert comp.outcome == claims.REPRODUCED and comp.p_adjusted < 0.05
    assert comp.test.diff == pytest.approx(0.0505 - 0.103, abs=1e-9)


def test_cap_that_does_not_bind_is_not_a_test_whatever_the_numbers():
    results = claims.evaluate_claims(_records([0.05, 0.052, 0.049, 0.051], active=0.25))
    comp = _comparison(results, "gap_acc", "none")
    assert comp.outcome == claims.NOT_A_TEST and "binds on 25.0% of" in comp.reason
    assert next(r for r in results if r.claim.number == 1).verdict == claims.NOT_A_TEST
    # claims.json names the gate's number as a run's metrics.json does: over training, _mean.
    saved = comp.to_dict()
    assert saved["srn_active_fraction_mean"] == 0.25 and "srn_active_fraction" in saved
    # Each seed's value, in the order of its seeds, so a reader can check the means.
    assert saved["seeds_srn"] == [0, 1, 2, 3]
    assert saved["values_srn"] == pytest.approx([0.05, 0.052, 0.049, 0.051])
    assert saved["values_ref"] == pytest.approx([0.10, 0.102, 0.104, 0.106])
    # The gate reads the mean over training, not the end: binding over training, not at the end.
    recs = _records([0.05, 0.052, 0.049, 0.051], 0.6)
    recs = [dataclasses.replace(r, result=dataclasses.replace(r.result, srn_active_fraction=0.1))
            if r.run.norm == "srn" else r for r in recs]  # fmt: skip
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "none")
    assert comp.outcome == claims.REPRODUCED
    assert comp.to_dict()["srn_active_fraction"] == pytest.approx(0.1)  # the end, as metrics.json


def test_equal_arms_with_tight_spread_are_not_reproduced():
    # SRN's gap equals the references' within 0.05 pp: even the family-wise CI excludes a 0.5 pp
    # improvement.
    recs = _records([0.1001, 0.1004, 0.1005, 0.1010], active=1.0, ref_spread=0.0003)
    results = claims.evaluate_claims(recs)
    comp = _comparison(results, "gap_acc", "sn")
    assert comp.outcome == claims.NOT_REPRODUCED and "CI" in comp.reason, comp.reason


def test_noisy_arms_cannot_tell_and_say_how_many_seeds():
    results = claims.evaluate_claims(_records([0.02, 0.16, 0.06, 0.12], active=1.0))
    comp = _comparison(results, "gap_acc", "none")
    assert comp.outcome == claims.CANNOT_TELL and comp.seeds_needed and comp.seeds_needed > 4


def test_a_noisy_worse_arm_gets_the_seeds_that_decide_its_measured_difference():
    # SRN's gap is worse by ~0.04 with a large spread: more seeds would show it significantly
    # worse. The count is for that difference, not for the 0.5 pp improvement it does not show.
    results = claims.evaluate_claims(_records([0.08, 0.20, 0.12, 0.18], active=1.0))
    comp = _comparison(results, "gap_acc", "none")
    assert comp.outcome == claims.CANNOT_TELL and comp.test.diff > 0
    s_srn, s_ref = (claims.statistics.stdev(v) for v in (comp.srn_values, comp.ref_values))
    n_tests = sum(c.test is not None for r in results for c in r.comparisons)
    expected = claims.seeds_needed(s_srn, s_ref, comp.test.diff, 0.05 / n_tests)
    assert comp.seeds_needed == expected and 4 < expected < 100


def test_worse_srn_is_not_reproduced():
    results = claims.evaluate_claims(_records([0.20, 0.201, 0.199, 0.202], active=1.0))
    assert _comparison(results, "gap_acc", "none").outcome == claims.NOT_REPRODUCED


def test_diverged_runs_are_left_out():
    recs = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    recs = [
        dataclasses.replace(r, result=dataclasses.replace(r.result, diverged=True,
                                                          divergence="loss nan at epoch 1"))
        if r.run.norm == "srn" and r.run.seed == 0 else r
        for r in recs
    ]  # fmt: skip
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "none")
    assert len(comp.srn_values) == 3 and 0 not in comp.srn_seeds


def test_shattering_comparisons_carry_the_clean_accuracy_at_the_same_c():
    recs = _records([0.05, 0.052], active=1.0) + _records([0.05, 0.052], 1.0, KIND_SHATTER)
    claim2 = next(r for r in claims.evaluate_claims(recs) if r.claim.number == 2)
    assert claim2.comparisons
    context = claim2.comparisons[0].context
    assert any(k.startswith("clean_test_acc_srn") for k in context)
    assert all(math.isclose(v, 0.80) for v in context.values())
    # Clean runs of another network (a wider MLP, another model) under the same setting name are
    # no context.
    shatter = [r for r in recs if r.run.kind == KIND_SHATTER]
    for other in ({"width": 2.0}, {"model": "small_cnn"}):
        clean = [dataclasses.replace(r, run=dataclasses.replace(
            r.run, config=dataclasses.replace(r.run.config, **other))) for r in recs
            if r.run.kind == KIND_CLASSIFY]  # fmt: skip
        claim2 = next(r for r in claims.evaluate_claims(clean + shatter) if r.claim.number == 2)
        assert claim2.comparisons and not any(c.context for c in claim2.comparisons), other


def test_report_shows_each_layers_raw_stable_rank_against_its_target(tmp_path):
    # The layer table: per arm, the mean raw stable rank over seeds; SRN arms as "raw / target".
    from stablerank.repro.report import write_report

    def layer(raw: float, target: float | None) -> LayerStat:
        active = None if target is None else raw > target
        return LayerStat("features.1", "srn" if target else "sn", (8, 16), 1.0, raw, raw,
                         target, active)  # fmt: skip

    recs = []
    for rec in _records([0.05, 0.052, 0.049], active=0.2):
        srn = rec.run.norm == "srn"
        raws = (3.9, 4.0, 4.1) if srn else (20.0, 22.0, 24.0)
        layers = (layer(raws[rec.run.seed], 4.0 if srn else None),)
        recs.append(dataclasses.replace(rec, result=dataclasses.replace(rec.result, layers=layers)))
    path, _ = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    text = path.read_text()
    assert "| features.1 | 22 | 22 | 4 / 4 |" in text
    assert "mostly spectral normalization, not a test by the rule" in text
    assert "Not learning" not in text
    # A target of 1 on a layer of more than one row and column: named as not learning.
    ones = [dataclasses.replace(r, result=dataclasses.replace(r.result, layers=(
        layer(3.0, 1.0 if r.run.norm == "srn" else None),))) for r in recs]  # fmt: skip
    path, results = write_report(tmp_path, ones, sweep="tiny", alpha=0.05, config={}, commit=None)
    text = path.read_text()
    assert "**Not learning** in srn(c=0.1): the weight of features.1 (target 1:" in text
    # ... and said where the claims of that kind are read: the summary, the claim, claims.json.
    assert results[0].caveats == results[2].caveats and results[1].caveats == []
    assert "see its caveat: a frozen rank-one layer" in text.split("## Claims")[0]
    assert "**Caveat**: digits/mlp, srn(c=0.1): SRN's target is r = 1 on features.1" in text
    saved = json.loads((tmp_path / "claims.json").read_text())["claims"]
    assert saved[0]["caveats"] == results[0].caveats and saved[3]["caveats"] == []


def _gan_record(run, jacobian_real: float, jacobian_fake: float) -> RunRecord:
    el = Summary(max=0.2, mean=0.05, n=10, quantiles={"q50": 0.04})
    analysis = GanAnalysis(
        neural_divergence=1.0, neural_divergence_std=0.1, neural_divergence_real_train=0.1,
        d_el={"real-real": el},
        d_jacobian={"real": Summary(max=2.0, mean=jacobian_real, n=64),
                    "fake": Summary(max=2.0, mean=jacobian_fake, n=64)},
    )  # fmt: skip
    result = GanResult(steps=2, d_loss=0.5, g_loss=1.0, srn_active_fraction_mean=1.0)
    return RunRecord(run, "done", result, analysis)


def test_claim_5_tests_the_mean_jacobian_norm_over_real_and_fake_points():
    runs = [r for r in tiny(seeds=2, gan_seeds=4) if r.kind == KIND_GAN]
    recs = [
        _gan_record(r, 0.4 + 0.01 * r.seed, 0.6) if r.norm == "srn"
        else _gan_record(r, 0.9 + 0.01 * r.seed, 1.1)
        for r in runs
    ]  # fmt: skip
    claim5 = next(r for r in claims.evaluate_claims(recs) if r.claim.number == 5)
    comp = next(c for c in claim5.comparisons if c.metric == "d_jacobian_mean")
    # the mean over all 128 points: (mean_real * 64 + mean_fake * 64) / 128
    assert comp.srn_values == pytest.approx([0.5 + 0.005 * s for s in range(4)])
    assert comp.ref_values == pytest.approx([1.0 + 0.005 * s for s in range(4)])
    assert comp.outcome == claims.REPRODUCED
    # The per-arm table leaves out what no run measured (FID and IS: no feature network here).
    from stablerank.repro.records import by_setting
    from stablerank.repro.report import _setting_section

    ((setting, arms),) = by_setting(recs, KIND_GAN).items()
    header = _setting_section(KIND_GAN, setting, arms).split("| arm |")[1].splitlines()[0]
    assert "FID" not in header and "IS" not in header and "divergence" in header


def test_report_says_what_the_seeds_can_decide_and_why_wei_ma_is_missing(tmp_path):
    from stablerank.repro.report import write_report

    recs = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    path, results = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    text = path.read_text()
    n_tests = sum(c.test is not None for r in results for c in r.comparisons)
    d = claims.detectable_effect(4, 0.05 / n_tests)
    assert f"with {n_tests} tests under Holm's correction" in text
    assert f"4 seeds per arm detect d >= {d:.1f}" in text
    assert "Wei & Ma 2019) is not computed" in text
    # The smallest effects of interest are stated as the rule applies them (METRICS).
    assert "smallest effect of interest (0.5 pp: gap_acc, test_acc; 1 pp:" in text
    assert "2% of the reference: fid, is_mean, neural_divergence; 5% of the reference: " in text
    assert "margin" not in text.split("smallest effect of interest")[1].split(")")[0]  # untested


def test_the_report_says_its_scope_from_the_runs_it_read(tmp_path):
    from stablerank.repro.report import write_report

    def scope(recs) -> str:
        text = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)[0]
        return next(line for line in text.read_text().splitlines() if "this sweep" in line)

    gans = [_gan_record(r, 0.5, 0.5) for r in tiny(seeds=2) if r.kind == KIND_GAN]
    unscored = scope(_records([0.05, 0.05], active=1.0) + gans)
    # The digits sweep used to be described as Fashion-MNIST runs scored with its feature network.
    assert "(digits/gan, digits/mlp)" in unscored and "Fashion-MNIST" not in unscored
    assert "the GAN runs were not scored with a feature network" in unscored

    def scored(rec: RunRecord, net: str) -> RunRecord:
        score = ScoreProtocol(net, "sha", "test", 100, 100, 10, 10, 100, 0)
        protocol = GanProtocol("raw", "running", "sn", None, "rule", None, scores=score)
        result = dataclasses.replace(rec.result, fid=20.0, protocol=protocol)
        return dataclasses.replace(rec, result=result)

    own = scope([scored(r, "fmnist-cnn") for r in gans])
    assert "from the feature network fmnist-cnn, not from Inception" in own
    inception = scope([scored(r, "inception-v3") for r in gans])
    assert "feature network inception-v3." in inception and "not from Inception" not in inception
    assert "no arm is tuned on its own" in inception


def test_the_report_says_when_ds_first_layer_has_sn_in_every_arm(tmp_path):
    from stablerank.repro.report import write_report

    def first_sn(rec: RunRecord) -> RunRecord:
        config = dataclasses.replace(rec.run.config, d_first_norm="sn")
        return dataclasses.replace(rec, run=dataclasses.replace(rec.run, config=config))

    gans = [_gan_record(r, 0.5, 0.5) for r in tiny(seeds=2) if r.kind == KIND_GAN]
    for recs, said in ((gans, False), ([first_sn(r) for r in gans], True)):
        text = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)[0]
        assert ("D's layers that read the image have SN in every arm." in text.read_text()) is said


def test_the_report_names_the_commits_its_runs_were_trained_at(tmp_path):
    # It named only the commit that built the report, which may be later than the training's.
    from stablerank.config.reproduce import ReproduceConfig
    from stablerank.repro.report import write_report

    where = ReproduceConfig(sweep="tiny", out_dir=str(tmp_path))
    recs = [dataclasses.replace(r, run=r.run.placed(where)) for r in _records([0.05], active=1.0)]
    for rec, commit in zip(recs, ["a" * 40, "a" * 40, "b" * 40 + "+dirty"], strict=True):
        rec.run.run_dir.mkdir(parents=True)
        (rec.run.run_dir / "env.json").write_text(json.dumps({"git_commit": commit}))
    report = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit="c" * 40)[0]
    header = report.read_text().splitlines()[2]
    assert header.startswith(
        "3 of 3 runs finished and counted; trained at commits aaaaaaa (2 runs)"
    )
    built = "; this report built at code commit " + "c" * 40
    assert "bbbbbbb with uncommitted changes (1 runs)" + built in header


def test_the_binding_figure_spans_0_to_100_percent_and_marks_the_gate(tmp_path, drawn):
    from stablerank.repro import report

    def binding(rec: RunRecord) -> RunRecord:  # SRN at 0.9 and 1.0 along training
        active = None if rec.run.norm != "srn" else (0.9, 1.0)
        curve = tuple(
            dataclasses.replace(p, test_acc=0.8, srn_active_fraction=active and active[i])
            for i, p in enumerate(rec.result.curve)
        )
        return dataclasses.replace(rec, result=dataclasses.replace(rec.result, curve=curve))

    recs = [binding(r) for r in _records([0.05, 0.05], active=0.95)]
    report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    axes = {name: fig.axes[0] for name, fig in drawn.items()}
    ax = axes["classify_digits_mlp_active.png"]
    assert ax.get_ylim() == (-3, 103)  # not autoscaled around 90%
    gates = [line for line in ax.lines if line.get_linestyle() == "--"]
    gate = 100 * claims.MIN_ACTIVE_FRACTION
    assert [tuple(line.get_ydata()) for line in gates] == [pytest.approx((gate, gate))]
    assert axes["classify_digits_mlp_test_acc.png"].get_ylim() != (-3, 103)


def test_the_effects_figure_names_each_row_by_its_metrics_label_and_fits_the_labels(
    tmp_path, drawn
):
    from stablerank.repro import report

    recs = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    fig = drawn["effects.png"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any(claims.METRICS["gap_acc"].label in text for text in labels)
    assert not any(" gap_acc " in text for text in labels)  # not the claims.json key
    # The figure widens with its longest label, leaving the axes their width.
    assert fig.get_figwidth() >= 4.5 + 0.05 * max(map(len, labels))


def test_the_curves_bands_say_what_they_are_and_keep_fractions_in_0_100(tmp_path, drawn):
    from stablerank.repro import report

    def spread(rec: RunRecord) -> RunRecord:  # seeds 0 and 1 at 1.0 and 0.5: mean ± std 0.75 ± 0.35
        value = (1.0, 0.5)[rec.run.seed]
        active = value if rec.run.norm == "srn" else None
        curve = tuple(dataclasses.replace(p, test_acc=value, srn_active_fraction=active)
                      for p in rec.result.curve)  # fmt: skip
        return dataclasses.replace(rec, result=dataclasses.replace(rec.result, curve=curve))

    recs = [spread(r) for r in _records([0.05, 0.05], active=0.95)]
    report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    axes = {name: fig.axes[0] for name, fig in drawn.items()}
    for name in ("classify_digits_mlp_active.png", "classify_digits_mlp_test_acc.png"):
        ax = axes[name]
        (line, *_), (band, *_) = ax.lines, ax.collections
        # In percent, as the tables give accuracies: the mean of 1.0 and 0.5 is 75%.
        assert line.get_ydata() == pytest.approx([75.0, 75.0])
        band_y = band.get_paths()[0].vertices[:, 1]
        assert band_y.max() == 100.0
        assert band_y.min() == pytest.approx(100 * (0.75 - math.sqrt(0.125)))
        assert "mean ± std over seeds, clipped to [0, 100]" in ax.get_title()
        assert ax.get_ylabel().endswith(", %")
    # An arm keeps its colour across the setting's figures (the binding one drew SRN in the
    # colour the accuracy one gives vanilla).
    colours = [
        {line.get_label(): line.get_color() for line in axes[name].lines}
        for name in ("classify_digits_mlp_active.png", "classify_digits_mlp_test_acc.png")
    ]
    srn = next(label for label in colours[0] if label.startswith("srn"))
    assert colours[0][srn] == colours[1][srn] != colours[1]["none (n=2)"]


def test_the_seeds_figure_shows_every_tested_comparisons_values_seed_by_seed(tmp_path, drawn):
    from stablerank.repro import report

    recs = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    text = report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    results = claims.evaluate_claims(recs)
    tested = [c for r in results for c in r.comparisons if c.test is not None]
    fig = drawn["classify_digits_mlp_seeds.png"]  # one figure per setting
    assert len(fig.axes) == len(tested) >= 2  # one panel per tested comparison
    assert "figures/classify_digits_mlp_seeds.png" in text[0].read_text()
    for ax, c in zip(fig.axes, tested, strict=True):
        dots = [line for line in ax.lines if line.get_marker() == "o"]
        scale = 100 if claims.METRICS[c.metric].percent else 1
        # The reference's seeds at x near 0, SRN's near 1, each value as claims.json has it.
        assert [list(d.get_ydata()) for d in dots] == [
            pytest.approx([scale * v for v in c.ref_values]),
            pytest.approx([scale * v for v in c.srn_values]),
        ]
        assert all(abs(x) < 0.5 for x in dots[0].get_xdata())
        assert all(abs(x - 1) < 0.5 for x in dots[1].get_xdata())
        assert claims.METRICS[c.metric].label in ax.get_title()


@pytest.mark.parametrize("shift", [1, 2])  # seed 1 logged at steps 2, 3 or 3, 4; seed 0 at 1, 2
def test_a_curve_says_which_steps_not_every_seed_logged_it_left_out(tmp_path, shift, drawn):
    # log_every is a runtime key: seeds of an arm may log different steps. The curve draws the
    # common ones; it dropped the others silently, and with none in common the report failed
    # (numpy's AxisError).
    from stablerank.repro import report

    recs = []
    for rec in _records([0.05, 0.05], active=0.95):
        curve = tuple(dataclasses.replace(p, step=p.step + shift * rec.run.seed, test_acc=0.8)
                      for p in rec.result.curve)  # fmt: skip
        recs.append(dataclasses.replace(rec, result=dataclasses.replace(rec.result, curve=curve)))
    report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    axes = {name: fig.axes[0] for name, fig in drawn.items()}
    (none, *_) = axes["classify_digits_mlp_test_acc.png"].lines
    assert list(none.get_xdata()) == ([2] if shift == 1 else [])
    left = 2 if shift == 1 else 4
    assert none.get_label() == f"none (n=2; {left} steps not logged by every seed left out)"


def test_the_test_accuracy_curve_names_the_subset_it_scores_each_epoch(tmp_path, drawn):
    # The trainer scores a seeded subset of the test split each epoch (test_eval_size) and the
    # whole split once at the end: the curve's last point is not the tables' test accuracy.
    from stablerank.repro import report

    fields = {f.name: 0 for f in dataclasses.fields(ClassifierProtocol)}
    protocol = ClassifierProtocol(**fields | {"test_size": 10000, "test_eval_size_per_epoch": 2000})
    recs = []
    for rec in _records([0.05, 0.05], active=0.95):
        curve = tuple(dataclasses.replace(p, test_acc=0.8) for p in rec.result.curve)
        result = dataclasses.replace(rec.result, curve=curve, protocol=protocol)
        recs.append(dataclasses.replace(rec, result=result))
    text = report.write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    label = "test accuracy, % (per epoch: 2000 of the 10000 test images)"
    assert drawn["classify_digits_mlp_test_acc.png"].axes[0].get_ylabel() == label
    assert f"classify digits/mlp: {label}" in text[0].read_text()


def _with_layers(rec: RunRecord, layers: tuple[LayerStat, ...]) -> RunRecord:
    return dataclasses.replace(rec, result=dataclasses.replace(rec.result, layers=layers))


def test_sn_above_target_counts_the_layers_the_cap_would_cut_and_the_gate_ignores_it():
    # SRN holds both layers just below r = 10 (the binary rule: inactive); the SN arm ends at a
    # stable rank of 30 on the first layer (the cap would cut it) and 5 on the second.
    def layer(name: str, norm: str, srank: float, target: float | None) -> LayerStat:
        active = None if target is None else srank > target
        return LayerStat(name, norm, (64, 64), 1.0, srank, srank, target, active)

    recs = []
    for rec in _records([0.05, 0.052, 0.049, 0.051], active=0.0):
        if rec.run.norm == "srn":
            rec = _with_layers(rec, (layer("a", "srn", 9.9, 10.0), layer("b", "srn", 4.0, 10.0)))
        elif rec.run.norm == "sn":
            rec = _with_layers(rec, (layer("a", "sn", 30.0, None), layer("b", "sn", 5.0, None)))
        recs.append(rec)
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "none")
    assert comp.sn_above_target == 0.5
    assert comp.outcome == claims.NOT_A_TEST  # the rule is the binding fraction alone
    assert "ends above r on 50.0% of these layers" in comp.reason
    assert comp.to_dict()["sn_above_target"] == 0.5


def test_runs_not_counted_say_why_in_one_table_row_each(tmp_path):
    from stablerank.repro import records, report
    from stablerank.train.rundir import RunDir

    base = tiny(seeds=1)[0]

    def problem(**status):
        out = str(tmp_path / str(len(list(tmp_path.iterdir()))))
        run = dataclasses.replace(base, config=dataclasses.replace(base.config, out_dir=out))
        folder = RunDir(run.run_dir)
        if status:
            folder.write_status(**status)
        return run, records._problem(run)

    failed = {"status": "failed", "stage": "train", "error": "RuntimeError: boom"}
    assert problem(**failed)[1] == "in train: RuntimeError: boom"
    assert problem(status="interrupted", stage="analysis")[1] == "in analysis: interrupted"
    # Finished, but its result file is gone: not counted, and a rerun scores it again.
    run, why = problem(status="done", stage="finished")
    assert why == f"[Errno 2] No such file or directory: '{run.run_dir / 'metrics.json'}': a " \
        "rerun scores its final checkpoint again"  # fmt: skip
    assert problem()[1] == "not trained yet"
    # "running" with nobody holding the lock: its process was killed; the report says it stopped.
    run, why = problem(status="running", stage="train")
    assert why == "in train: stopped while running (no process holds its lock); a rerun resumes it"
    folder = RunDir(run.run_dir)
    with folder.lock():
        assert folder.is_locked() and records._problem(run) == "in train: running"
    assert not folder.is_locked()
    run = tiny(seeds=1)[0]
    error = "refusing to resume:\n  seed: 0 -> 1 | x"  # multi-line, with a pipe
    text = report._problems([RunRecord(run, "failed", problem=error)])
    rows = [line for line in text.splitlines() if run.name in line]
    assert rows == [f"| {run.name} | failed | refusing to resume:   seed: 0 -> 1 \\| x |"]


def _classifier_with_analysis(rec: RunRecord, neyshabur: float | None) -> RunRecord:
    analysis = ClassifierAnalysis(
        train_acc=0.9, test_acc=0.8, gap_acc=0.1, gap_loss=0.2, el_train=Summary(1.0, 0.5, 4),
        el_test=Summary(1.0, 0.5, 4), jacobian={}, margin=0.1 if neyshabur else -0.2,
        log10_spectral_product=1.0, sum_srank=3.0, log10_neyshabur=neyshabur,
        log10_bartlett=neyshabur,
    )  # fmt: skip
    return dataclasses.replace(rec, analysis=analysis)


def _claim3(recs: list[RunRecord], reference: str = "none") -> claims.Comparison:
    claim3 = next(r for r in claims.evaluate_claims(recs) if r.claim.number == 3)
    return next(
        c for c in claim3.comparisons if c.metric == "log10_neyshabur" and c.reference == reference
    )


def test_a_measure_undefined_in_runs_is_undecided_and_says_why_never_left_out(tmp_path):
    from stablerank.repro.report import write_report

    base = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    # No positive margin in any run: the comparison is there, "cannot tell", with the reason.
    comp = _claim3([_classifier_with_analysis(r, None) for r in base])
    assert comp.outcome == claims.CANNOT_TELL and comp.test is None
    assert (
        "no value in 4 of 4 SRN runs" in comp.reason and "margins) is not positive" in comp.reason
    )
    # In one seed only: a test on the other three would drop it, so it is not decided either.
    recs = [_classifier_with_analysis(r, None if r.run.seed == 0 and r.run.norm == "srn"
                                      else 3.0 + 0.01 * r.run.seed) for r in base]  # fmt: skip
    comp = _claim3(recs)
    assert comp.outcome == claims.CANNOT_TELL and "no value in 1 of 4 SRN runs" in comp.reason
    assert comp.to_dict()["finished_srn"] == 4 and comp.to_dict()["n_srn"] == 3
    text = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)[0]
    assert "no value in 1 of 4 SRN runs" in text.read_text()
    # The setting's table shows the margin the measures divide by (0.1 here, -0.2 where undefined).
    header = next(line for line in text.read_text().splitlines() if line.startswith("| arm |"))
    assert "training margin (the measures divide by it)" in header
    # Defined everywhere: tested as before.
    assert _claim3([_classifier_with_analysis(r, 3.0 + 0.01 * r.run.seed) for r in base]).test


def test_an_arm_whose_runs_all_failed_is_reported_not_dropped():
    recs = [
        dataclasses.replace(r, state="failed", result=None) if r.run.norm == "sn" else r
        for r in _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    ]
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "sn")
    assert comp.outcome == claims.CANNOT_TELL and comp.reason == "no finished run in the sn arm"
    assert _comparison(claims.evaluate_claims(recs), "gap_acc", "none").test is not None


def test_a_claim_whose_runs_have_not_finished_cannot_tell_and_is_not_reported_as_no_runs():
    # A partial report (runs interrupted or not started yet) used to say "no runs" and "This
    # sweep has no runs of this kind" for claims 1 and 2.
    recs = [
        RunRecord(r.run, "partial") if r.run.kind in (KIND_CLASSIFY, KIND_SHATTER) else r
        for r in _records([0.05, 0.052, 0.049], active=1.0)
        + _records([0.05, 0.052, 0.049], active=1.0, kind=KIND_SHATTER)
    ]
    results = claims.evaluate_claims(recs)
    for number in (1, 2):
        claim = next(r for r in results if r.claim.number == number)
        assert claim.verdict == claims.CANNOT_TELL and claim.comparisons
        reasons = {c.reason for c in claim.comparisons}
        assert reasons == {f"no finished run in the SRN and {ref} arm" for ref in ("none", "sn")}


def test_a_metric_is_left_out_only_when_no_run_of_the_sweep_measures_it():
    gans = [r for r in tiny(seeds=2, gan_seeds=3) if r.kind == KIND_GAN]

    def gan(run, fid: float | None) -> RunRecord:
        rec = _gan_record(run, 0.5, 0.5)
        return dataclasses.replace(rec, result=dataclasses.replace(rec.result, fid=fid))

    def fid_rows(recs) -> list[claims.Comparison]:
        claim4 = next(r for r in claims.evaluate_claims(recs) if r.claim.number == 4)
        return [c for c in claim4.comparisons if c.metric == "fid"]

    # FID not finite in every run: measured, so "cannot tell", never silently dropped (the claim's
    # verdict used to come from IS and the neural divergence alone).
    (row,) = fid_rows([gan(r, math.nan) for r in gans])
    assert row.outcome == claims.CANNOT_TELL and "not finite" in row.reason
    # Not measured at all (digits: no feature network), with every SRN run failed: no FID row
    # (a failed arm used to make the unmeasured metrics appear as "no finished run" rows).
    recs = [RunRecord(r, "failed") if r.norm == "srn" else gan(r, None) for r in gans]
    assert fid_rows(recs) == []


def test_rows_not_decided_by_their_p_value_list_the_ci_the_rule_read(tmp_path):
    from stablerank.repro.report import write_report

    recs = _records([0.1001, 0.1004, 0.1005, 0.1010], active=1.0, ref_spread=0.0003)
    path, results = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    comp = _comparison(results, "gap_acc", "sn")
    assert comp.outcome == claims.NOT_REPRODUCED and comp.p_adjusted >= 0.05
    n_tests = sum(c.test is not None for r in results for c in r.comparisons)
    wide = claims.welch(comp.srn_values, comp.ref_values, confidence=1 - 0.05 / n_tests)
    assert comp.family_ci == (wide.diff_low, wide.diff_high) and comp.min_effect == 0.005
    low, high = (f"{100 * x:.2f}" for x in comp.family_ci)
    text = path.read_text()
    assert f"vs sn: not reproduced; the difference's family-wise CI is [{low}, {high}] pp" in text
    assert f"(1 - alpha / tests = {1 - 0.05 / n_tests:.2%} here, not the 95% CI" in text
    saved = json.loads((tmp_path / "claims.json").read_text())["claims"][0]["comparisons"]
    assert any(c["diff_ci_family"] == pytest.approx(list(comp.family_ci)) for c in saved)


def test_the_gate_says_when_it_read_the_end_of_training():
    recs = [
        dataclasses.replace(r, result=dataclasses.replace(r.result, srn_active_fraction_mean=None,
                                                          srn_active_fraction=0.2))
        if r.run.norm == "srn" else r
        for r in _records([0.05, 0.05], active=0.2)
    ]  # fmt: skip
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "none")
    assert (
        comp.outcome == claims.NOT_A_TEST
        and "20.0% of the SRN layers, at the end of" in comp.reason
    )


def test_a_share_just_under_the_gate_never_prints_as_the_gate():
    # 0.495 printed "49%" in the claims rows and "50%" in the arm table (two means, whole %).
    assert claims.share_text(0.49499999999999994) == claims.share_text(0.495) == "49.5%"
    assert (claims.share_text(0.0), claims.share_text(1.0)) == ("0%", "100%")
    assert claims._mean([0.5, 0.49, 0.5, 0.49]) == 0.495  # the same mean as the arm table's


def test_a_report_with_no_tested_comparison_does_not_quote_a_family_wise_level(tmp_path):
    # It said "Holm-corrected over the 0 tested comparisons" and a family-wise level of 95.00%,
    # then "over the no tested comparisons".
    from stablerank.repro.report import write_report

    recs = _records([0.05, 0.05], active=0.0)  # every comparison "not a test"
    text = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)[0]
    claims_text = text.read_text()
    assert "over the tested comparisons of a report (none in this one)" in claims_text
    assert "none tested here" in claims_text
    assert "95.00% here" not in claims_text


# ------------------------------------------------------------------ what a mutation pass found
# Each test below fails when one line of claims.py is changed (a mutation pass of session 15
# found these lines untested): the Welch intervals, Holm's monotone cap, the two-sided power, the
# verdict of a claim, the gate's boundary, the Holm-adjusted decision, the relative smallest
# effect, the seeds-needed floor and the direction of "SN above r".


def test_welch_intervals_match_the_textbook_formulas():
    a, b = [0.10, 0.12, 0.11, 0.16, 0.09], [0.15, 0.16, 0.18]
    t = claims.welch(a, b, confidence=0.9)
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert t.df == pytest.approx(df, rel=1e-12)
    half = stats.t.ppf(0.95, df) * math.sqrt(va + vb)
    assert (t.diff_low, t.diff_high) == pytest.approx((t.diff - half, t.diff + half), rel=1e-12)
    d = t.diff / math.sqrt((stats.tvar(a) + stats.tvar(b)) / 2)
    se_d = math.sqrt((5 + 3) / (5 * 3) + d * d / (2 * (5 + 3)))  # Hedges & Olkin
    assert t.d == pytest.approx(d, rel=1e-12)
    assert (t.d_low, t.d_high) == pytest.approx((d - 1.6449 * se_d, d + 1.6449 * se_d), rel=1e-4)


def test_holm_is_monotone_and_capped_at_1():
    # sorted: 0.01 x 4 = 0.04, 0.03 x 3 = 0.09, 0.04 x 2 = 0.08 -> 0.09 (monotone), 0.5 x 1
    assert claims.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert claims.holm([0.6, 0.7]) == [1.0, 1.0]


def test_power_is_two_sided():
    # without an effect a two-sided test rejects at its level: both tails together
    assert claims._power(5, 0.0, 0.05) == pytest.approx(0.05, rel=1e-9)
    assert claims._power(5, -3.0, 0.05) == pytest.approx(claims._power(5, 3.0, 0.05), rel=1e-9)


@pytest.mark.parametrize(
    ("outcomes", "verdict"),
    [
        ((), "no runs"),
        ((claims.REPRODUCED, claims.NOT_REPRODUCED, claims.CANNOT_TELL), "mixed"),
        ((claims.REPRODUCED, claims.CANNOT_TELL, claims.NOT_A_TEST), claims.REPRODUCED),
        ((claims.NOT_REPRODUCED, claims.NOT_A_TEST), claims.NOT_REPRODUCED),
        ((claims.NOT_A_TEST, claims.CANNOT_TELL), claims.CANNOT_TELL),
        ((claims.NOT_A_TEST,), claims.NOT_A_TEST),
    ],
)
def test_a_claims_verdict_from_its_comparisons(outcomes, verdict):
    comps = [dataclasses.make_dataclass("C", ["outcome"])(o) for o in outcomes]
    assert claims.ClaimResult(claims.CLAIMS[0], comps).verdict == verdict


def test_a_claim_without_a_comparison_says_why():
    # SRN arms alone, vanilla and SN alone, SRN and SN in two settings of their own, and both in
    # one setting with nothing measured: runs, but nothing to compare.
    recs = _records([0.05, 0.052], 1.0)
    srn_only = [r for r in recs if r.run.arm.startswith("srn")]
    refs_only = [r for r in recs if not r.run.arm.startswith("srn")]
    apart = srn_only + [dataclasses.replace(r, run=dataclasses.replace(r.run, setting="other"))
                        for r in refs_only]  # fmt: skip
    unmeasured = [dataclasses.replace(r, result=None, state="new") for r in recs]
    for records, verdict, said in (
        (srn_only, "no reference arm", "have no none or sn arm beside an SRN arm to compare it"),
        (apart, "no reference arm", "(digits/mlp: srn(c="),
        (refs_only, "no SRN arm", "have no SRN arm to test"),
    ):
        results = claims.evaluate_claims(records)
        assert results[0].verdict == verdict
        assert results[3].verdict == "no runs"  # no GAN runs at all
        text = report._claims_section(results, 0.05)
        assert said in text and "This sweep has no runs of this kind" in text
    # Every metric unmeasured needs runs that have results without any claim-1 value; runs not
    # trained yet still give "cannot tell" comparisons, never a silent skip.
    assert claims.evaluate_claims(unmeasured)[0].verdict == claims.CANNOT_TELL
    # GAN runs without an analysis or a feature network: SN and SRN side by side, nothing measured.
    gans = [RunRecord(r, "done", GanResult(steps=2, d_loss=0.5, g_loss=1.0))
            for r in tiny(seeds=1, gan_seeds=2) if r.kind == KIND_GAN]  # fmt: skip
    results = claims.evaluate_claims(gans)
    assert results[3].verdict == results[4].verdict == "not measured"
    assert "measure none of this claim's metrics" in report._claims_section(results, 0.05)


def test_the_gate_tests_an_arm_that_binds_on_exactly_half_its_layers():
    comp = _comparison(claims.evaluate_claims(_records([0.05, 0.052, 0.049, 0.051], 0.5)),
                       "gap_acc", "none")  # fmt: skip
    assert comp.outcome == claims.REPRODUCED


def test_the_decision_uses_the_holm_adjusted_p_value():
    recs = _records([0.085, 0.095, 0.09, 0.10], active=1.0, ref_spread=0.004)
    comp = _comparison(claims.evaluate_claims(recs), "gap_acc", "none")
    assert comp.test.p_value < 0.05 <= comp.p_adjusted  # significant alone, not in the family
    assert comp.outcome == claims.CANNOT_TELL


def test_a_relative_smallest_effect_scales_with_the_reference_and_floors_the_seed_count():
    runs = [r for r in tiny(seeds=2, gan_seeds=4) if r.kind == KIND_GAN]
    recs = []
    for r in runs:  # FID: SRN 30.1 ± 5, SN 30 ± 5 (a difference far below 2% of 30)
        fid = 30.0 + (0.1 if r.norm == "srn" else 0.0) + 5.0 * (-1.5, -0.5, 0.5, 1.5)[r.seed]
        rec = _gan_record(r, 0.5, 0.5)
        recs.append(dataclasses.replace(rec, result=dataclasses.replace(rec.result, fid=fid)))
    results = claims.evaluate_claims(recs)
    comp = next(c for res in results for c in res.comparisons if c.metric == "fid")
    assert comp.min_effect == pytest.approx(0.02 * 30.0)
    assert comp.outcome == claims.CANNOT_TELL
    n_tests = sum(c.test is not None for res in results for c in res.comparisons)
    sd = stats.tstd(comp.srn_values)
    assert comp.seeds_needed == claims.seeds_needed(sd, sd, 0.6, 0.05 / n_tests)


def test_sn_above_target_counts_the_sn_layers_above_r_not_below():
    def layer(name: str, norm: str, srank: float, target: float | None) -> LayerStat:
        return LayerStat(
            name, norm, (64, 64), 1.0, srank, srank, target, None if target is None else False
        )

    srn, sn = _records([0.05, 0.052], active=1.0)[:2], _records([0.05, 0.052], active=1.0)[:2]
    srn = [_with_layers(r, tuple(layer(n, "srn", 9.0, 10.0) for n in "abc")) for r in srn]
    sn = [_with_layers(r, (layer("a", "sn", 30.0, None), layer("b", "sn", 40.0, None),
                           layer("c", "sn", 5.0, None))) for r in sn]  # fmt: skip
    assert claims.sn_above_target(srn, sn) == pytest.approx(2 / 3)


def test_the_arm_table_counts_finished_runs_only_and_averages_the_binding_over_seeds():
    from stablerank.repro import report
    from stablerank.repro.records import by_setting

    def layer(raw: float) -> LayerStat:  # SRN holds the normalized weight at its target of 4
        return LayerStat("features.1", "srn", (8, 16), 1.0, 4.0, raw, 4.0, raw > 4.0)

    recs = []
    for rec in _records([0.05, 0.052, 0.049], active=None):
        if rec.run.norm == "srn":  # seed 2 diverged: none of its numbers may count
            seed = rec.run.seed
            result = dataclasses.replace(
                rec.result, srn_active_fraction=(0.2, 0.4, 1.0)[seed],
                srn_active_fraction_mean=(0.1, 0.2, 1.0)[seed],
                layers=(layer((3.9, 4.3, 99.0)[seed]),),
                diverged=seed == 2, divergence="loss nan at epoch 1" if seed == 2 else "",
            )  # fmt: skip
            rec = dataclasses.replace(rec, result=result)
        recs.append(rec)
    ((setting, arms),) = by_setting(recs, KIND_CLASSIFY).items()
    text = report._setting_section(KIND_CLASSIFY, setting, arms)
    srn_arm = next(arm for arm in arms if arm.startswith("srn"))
    row = next(line for line in text.splitlines() if line.startswith(f"| {srn_arm} |"))
    cells = row.strip("| ").split(" | ")
    # 2 of 3 finished; the cap binds on 30% at the end and 15% over training (means of seeds 0, 1)
    assert cells[:3] == [srn_arm, "2/3", "30.0% (over training 15.0%)"]
    gap = report._cell([0.05, 0.052], percent=True)
    assert gap in cells and report._cell([0.05, 0.052, 0.9], percent=True) not in cells
    # The layer table: the raw weight's stable rank (not the capped one), finished seeds only.
    assert "| features.1 | n/a | n/a | 4.1 / 4 |" in text
    # The diverged run is listed with its reason.
    problems = report._problems(recs)
    assert f"| {arms[srn_arm][2].run.name} | done | loss nan at epoch 1 |" in problems


def test_a_cell_is_the_mean_and_the_sample_standard_deviation():
    from stablerank.repro import report

    assert report._cell([1.0, 2.0, 3.0], percent=False) == "2 ± 1"  # stdev, not pstdev (0.8165)
    assert report._cell([0.5], percent=True) == "50.00" and report._cell([], False) == "n/a"


def test_a_claim_row_shows_the_counts_and_the_raw_then_the_holm_p(tmp_path):
    from stablerank.repro.report import write_report

    recs = _records([0.05, 0.052, 0.049, 0.051], active=1.0)
    recs = [
        dataclasses.replace(r, state="failed", result=None)
        if r.run.norm == "none" and r.run.seed == 3 else r
        for r in recs
    ]  # fmt: skip
    path, results = write_report(tmp_path, recs, sweep="tiny", alpha=0.05, config={}, commit=None)
    text = path.read_text()
    comp = _comparison(results, "gap_acc", "none")
    n_tests = sum(c.test is not None for r in results for c in r.comparisons)
    assert n_tests > 1 and comp.p_adjusted > comp.test.p_value
    label = "| vs none | generalization gap"
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {comp.setting} |") and label in line)  # fmt: skip
    cells = row.strip("| ").split(" | ")
    assert cells[4] == "4 / 3"
    assert cells[8] == f"{comp.test.p_value:.3g} / {comp.p_adjusted:.3g}"
    assert f"(1 - alpha / tests = {1 - 0.05 / n_tests:.2%} here" in text


def test_a_gan_row_that_cannot_tell_names_the_flag_that_adds_its_seeds():
    # --gan-seeds adds GAN seeds alone; --seeds would change every arm's, so no flag is named for
    # a classifier row.
    from stablerank.repro.report import _comparison_row

    comp = claims.Comparison(
        claim=4, metric="fid", setting="s", rank_ratio=0.1, reference="sn", srn_values=[2.0, 3.0],
        ref_values=[1.0, 2.0], srn_seeds=[0, 1], ref_seeds=[0, 1], srn_active_fraction_mean=1.0,
        srn_active_fraction=1.0, seeds_needed=41,
    )  # fmt: skip
    assert _comparison_row(comp, KIND_GAN)[-1].endswith(
        "(~41 seeds/arm would decide: --gan-seeds 41)"
    )
    assert _comparison_row(comp, KIND_CLASSIFY)[-1].endswith("(~41 seeds/arm would decide)")


def test_the_headline_says_what_the_verdict_rests_on():
    """A verdict read from the decided comparisons alone can hide a strong signal the other way
    (SRN's test accuracy far lower, p 0.007 before Holm and 0.07 after): the summary says how
    many were decided and how the undecided ones lean before the correction."""

    def comparison(metric, reference, srn, ref, outcome):
        comp = claims.Comparison(1, metric, "s", 0.1, reference, srn, ref, [0, 1, 2], [0, 1, 2],
                                 1.0, 1.0, finished=(3, 3), outcome=outcome)  # fmt: skip
        comp.test = claims.welch(srn, ref)
        return comp

    lower, higher = [0.30, 0.33, 0.35], [0.70, 0.71, 0.72]
    result = claims.ClaimResult(claims.CLAIMS[0], [
        comparison("gap_acc", "none", [0.01, 0.02, 0.015], [0.1, 0.11, 0.12], claims.REPRODUCED),
        comparison("test_acc", "none", lower, higher, claims.CANNOT_TELL),  # worse, p < 0.05
        comparison("test_acc", "sn", lower, [0.31, 0.36, 0.32], claims.CANNOT_TELL),  # p > 0.05
    ])  # fmt: skip
    assert result.comparisons[1].test.p_value < 0.05 < result.comparisons[2].test.p_value
    assert result.verdict == claims.REPRODUCED
    assert result.basis() == (
        " (1 of 3 comparisons decided; undecided, but p < 0.05 before Holm's correction: "
        "1 SRN worse)"
    )
    assert result.basis(alpha=1e-6) == " (1 of 3 comparisons decided)"
    undecided = claims.ClaimResult(claims.CLAIMS[0], result.comparisons[1:])
    assert undecided.verdict == claims.CANNOT_TELL and undecided.basis() == (
        " (0 of 2 comparisons decided; undecided, but p < 0.05 before Holm's correction: "
        "1 SRN worse)"
    )
    assert undecided.basis(alpha=1e-6) == ""  # nothing decided, nothing leaning: the verdict


def test_each_arm_keeps_one_colour_in_every_figure():
    # The SRN arms by c, whichever setting draws which: c = 0.1 is not C3 in one setting and C2
    # in the next.
    from stablerank.repro.report import _arm_colors

    recs = []
    for c in (0.3, 0.1, 0.05):
        recs += _records([0.05, 0.052], 1.0)[-1:]  # an SRN record, then its c replaced
        run = recs[-1].run
        recs[-1] = dataclasses.replace(recs[-1], run=dataclasses.replace(
            run, config=dataclasses.replace(run.config, rank_ratio=c)))  # fmt: skip
    colors = _arm_colors(recs)
    assert colors["none"] == "C0" and colors["sn"] == "C1"
    assert [colors[f"srn(c={c:g})"] for c in (0.05, 0.1, 0.3)] == ["C2", "C3", "C4"]
