"""Analysis of trained runs (digits, tiny MLP): outputs present and finite, consistent with the
trainer's own evaluation, and below the spectral upper bound of the Lipschitz constant."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from stablerank.config.classify import AnalyzeConfig, classify_preset
from stablerank.metrics import complexity
from stablerank.train import analyze, classify
from stablerank.train.results import ClassifierAnalysis, ClassifierResult, to_dict
from stablerank.train.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = AnalyzeConfig(n_pairs=300, n_jacobian=16, n_interpolated=16, jacobian_iterations=10)


def _finite_numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _finite_numbers(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _finite_numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


@pytest.fixture(scope="module")
def srn_run(tmp_path_factory):
    # 6 epochs at lr 0.1 fit the digits training set above 90% (measured ~0.97), so the
    # 10th-percentile margin is positive and the complexity measures are defined.
    root = tmp_path_factory.mktemp("srn")
    cfg = classify_preset("tiny", norm="srn", rank_ratio=0.5, epochs=6, lr=0.1,
                          out_dir=str(root), run_name="run", progress=False)  # fmt: skip
    classify.run(cfg)
    run_dir = RunDir.for_config(cfg).path
    return run_dir, analyze.run(SMALL, run_dir)


def test_analysis_file_and_plots_are_written(srn_run):
    run_dir, result = srn_run
    assert ClassifierAnalysis.from_json(run_dir) == result
    for name in ("el_hist.png", "accuracy.png", "srank.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not (run_dir / "shattering.png").exists()  # clean labels: no shattering curve
    assert result.protocol.plots == ("el_hist.png", "accuracy.png", "srank.png")


def test_deterministic_kernels_change_no_number_on_the_cpu(srn_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic=True sets it
    run_dir, result = srn_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    try:
        again = analyze.run(dataclasses.replace(SMALL, deterministic=True), copy)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert again.settings["deterministic"] and "deterministic" not in result.settings
    same = {"settings": result.settings, "protocol": dataclasses.replace(again.protocol,
            run_dir=result.protocol.run_dir)}  # fmt: skip
    assert dataclasses.replace(again, **same) == result


def test_the_quantiles_asked_for_are_the_ones_reported_and_older_files_still_read(
    srn_run, tmp_path
):
    # The result held three fixed quantile fields: other levels were computed, then dropped.
    run_dir = shutil.copytree(srn_run[0], tmp_path / "run")
    cfg = dataclasses.replace(SMALL, quantiles=(0.25, 0.75), plots=False)
    result = analyze.run(cfg, run_dir)
    for summary in (result.el_train, result.el_test, *result.jacobian.values()):
        assert list(summary.quantiles) == ["q25", "q75"]
        assert summary.quantiles["q25"] <= summary.quantiles["q75"] <= summary.max
    # analysis.json written before the quantiles were a dict held q50, q90 and q99 as fields.
    older = to_dict(srn_run[1])
    for summary in (older["el_train"], older["el_test"], *older["jacobian"].values()):
        summary.update(summary.pop("quantiles"))
    (run_dir / ClassifierAnalysis.FILE).write_text(json.dumps(older))
    assert ClassifierAnalysis.from_json(run_dir) == srn_run[1]


def test_the_summary_line_names_each_measure_and_says_when_the_margin_ones_are_undefined(
    srn_run,
):
    _, result = srn_run
    line = result.summary()
    assert line.startswith(f"eL max (test pairs) {result.el_test_max:.4g}, margin ")
    assert f"log10 Bartlett {result.log10_bartlett:.4g}" in line and "undefined" not in line
    unscaled = dataclasses.replace(result, log10_neyshabur=None, log10_bartlett=None)
    assert "Bartlett" not in unscaled.summary()
    assert unscaled.summary().endswith("margin-based measures are undefined (margin not positive)")


def test_the_stable_rank_figure_puts_each_srn_layer_against_its_own_target(srn_run, monkeypatch):
    run_dir, _ = srn_run
    drawn = {}

    def keep(fig, path):
        drawn[path.name] = fig.axes[0]
        return path

    monkeypatch.setattr(analyze, "save_figure", keep)
    cfg, _, _ = analyze.load_run(run_dir)
    trained = ClassifierResult.from_json(run_dir)
    ratios = {"train": torch.rand(8), "test": torch.rand(8)}
    analyze._write_plots(run_dir, cfg, trained, ratios, bins=5)
    ax = drawn["srank.png"]
    targets = {x.name: x.target_srank for x in trained.layers}
    srn = sorted(name for name, target in targets.items() if target is not None)
    curves = {line.get_label(): line.get_ydata() for line in ax.lines if line.get_label()[0] != "_"}
    assert sorted(curves) == srn  # the head (no SRN, no target) is left out
    last = analyze.read_log(run_dir)[-1]
    for name in srn:  # each curve is the raw stable rank over that layer's own r
        assert curves[name][-1] == pytest.approx(last[f"raw_srank/{name}"] / targets[name])
    assert [tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"] == [
        (1.0, 1.0)
    ]
    assert list(ax.get_xticks()) == [int(t) for t in ax.get_xticks()]  # whole epochs


def test_an_analysis_written_before_two_protocol_entries_existed_reads_back(srn_run, tmp_path):
    run_dir, result = srn_run
    older = json.loads((run_dir / "analysis.json").read_text())
    del older["protocol"]["jacobian_points"], older["protocol"]["plots"]
    (tmp_path / "analysis.json").write_text(json.dumps(older))
    read = ClassifierAnalysis.from_json(tmp_path)
    assert read.protocol.jacobian_points == {} and read.protocol.plots == ()
    assert read.jacobian == result.jacobian and read.protocol.loss == result.protocol.loss


def test_every_number_is_finite_and_the_measures_are_defined(srn_run):
    _, result = srn_run
    values = list(_finite_numbers({k: v for k, v in to_dict(result).items() if k != "protocol"}))
    assert values and all(math.isfinite(v) for v in values)
    assert result.margin > 0
    assert isinstance(result.log10_neyshabur, float)
    assert isinstance(result.log10_bartlett, float)
    assert set(result.jacobian) == {"train", "test", "interpolated"}
    assert result.el_train.n == SMALL.n_pairs  # no duplicate pairs
    assert result.protocol.norm == "srn"
    assert {k: s.n for k, s in result.jacobian.items()} == result.protocol.jacobian_points


def test_accuracy_matches_the_trainer_evaluation(srn_run):
    # Independent code paths (the trainer's DeviceLoader + evaluate vs analyze's own forward on
    # DatasetSplits.normalize) over the same images: equal up to float32 rounding of the inputs,
    # which does not flip any argmax here (exact fractions of 450 / 1347 examples).
    run_dir, result = srn_run
    trained = ClassifierResult.from_json(run_dir)
    assert result.test_acc == pytest.approx(trained.test_acc, abs=1e-12)
    assert result.train_acc == pytest.approx(trained.train_acc, abs=1e-12)
    test_loss = result.protocol.loss["test"]
    assert test_loss == pytest.approx(trained.test_loss, rel=1e-5)  # float32 sums
    assert result.protocol.loss["train"] == pytest.approx(trained.train_loss, rel=1e-5)


def test_the_margin_and_the_measures_over_it_are_the_training_sets(srn_run):
    # The 10th-percentile margin of the training set trained on (not the test split), and the
    # Neyshabur/Bartlett measures divided by that margin.
    run_dir, result = srn_run
    _, data, model = analyze.load_run(run_dir)
    with torch.no_grad():
        logits = model(data.splits.normalize(data.splits.train_x))
    margin = complexity.margin_quantile(logits, data.splits.train_y, SMALL.margin_quantile)
    assert result.margin == pytest.approx(margin, rel=1e-5)
    measures = complexity.spectral_complexity(model, margin)
    assert result.log10_neyshabur == pytest.approx(measures[complexity.KEY_LOG10_NEYSHABUR])
    assert result.log10_bartlett == pytest.approx(measures[complexity.KEY_LOG10_BARTLETT])


def test_lipschitz_estimates_stay_below_the_spectral_bound(srn_run):
    # For an MLP with ReLU (1-Lipschitz) the product of the layers' spectral norms bounds both
    # the pairwise ratios and every Jacobian norm; 1e-5 relative slack covers float32 rounding.
    _, result = srn_run
    bound = 10**result.log10_spectral_product
    assert result.el_test.max <= bound * (1 + 1e-5)
    for split in ("train", "test", "interpolated"):
        assert result.jacobian[split].max <= bound * (1 + 1e-5)
    # ... and the local form bounds the pairwise one on segments only loosely; both positive.
    assert result.el_train.quantiles["q50"] > 0


def test_every_jacobian_point_asked_for_is_measured(srn_run, tmp_path, monkeypatch):
    # The points were the first n_jacobian of the pair pool (2 * n_pairs images): fewer pairs than
    # half the points silently measured fewer points.
    run_dir = tmp_path / "run"
    shutil.copytree(srn_run[0], run_dir)
    cfg = dataclasses.replace(SMALL, n_pairs=5, n_jacobian=30, n_interpolated=4, plots=False)
    segments = []
    real_interpolate = analyze.lipschitz.interpolate

    def interpolate(x, y, n, seed=0):
        segments.append((x, y))
        return real_interpolate(x, y, n, seed=seed)

    monkeypatch.setattr(analyze.lipschitz, "interpolate", interpolate)
    result = analyze.run(cfg, run_dir)
    # The interpolated points lie on segments between pairs of the train pool.
    ((start, end),) = segments
    assert start is end and len(start) == 2 * cfg.n_pairs
    measured = {k: v.n for k, v in result.jacobian.items()}
    assert measured == {"train": 30, "test": 30, "interpolated": 4}
    few = analyze.run(dataclasses.replace(cfg, n_jacobian=2), run_dir)
    assert (result.el_train, result.el_test) == (few.el_train, few.el_test)  # the same pairs


def test_the_analysis_reads_the_data_where_it_is_told(srn_run, tmp_path, monkeypatch):
    # A run whose data moved: --data-dir points the analysis there (a relative one made absolute),
    # and the saved settings leave the default out, so earlier analyses still match.
    run_dir = tmp_path / "run"
    shutil.copytree(srn_run[0], run_dir)
    seen = []
    real = analyze.prepare_data

    def prepare(cfg):
        seen.append(cfg.data_dir)
        return real(cfg)

    monkeypatch.setattr(analyze, "prepare_data", prepare)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moved").mkdir()
    result = analyze.run(dataclasses.replace(SMALL, plots=False, data_dir="moved"), run_dir)
    assert seen == [str(tmp_path / "moved")]
    assert result.settings["data_dir"] == str(tmp_path / "moved")
    assert "data_dir" not in analyze.config_to_dict(SMALL)


def test_jacobian_iterations_0_measures_the_exact_norm_at_the_same_points(srn_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(srn_run[0], run_dir)
    exact = analyze.run(dataclasses.replace(SMALL, jacobian_iterations=0, plots=False), run_dir)
    assert exact.protocol.jacobian_iterations == 0
    power = srn_run[1]  # 10 power iterations from below: never above the exact norm
    for split, summary in exact.jacobian.items():
        assert summary.n == power.jacobian[split].n
        assert power.jacobian[split].max <= summary.max * (1 + 1e-5)
        assert summary.mean == pytest.approx(power.jacobian[split].mean, rel=0.05)


def test_a_damaged_final_checkpoint_is_refused_not_replaced_by_the_one_before(srn_run, tmp_path):
    # The newest intact checkpoint of a finished run is an earlier epoch's model when the last is
    # damaged: its measures would not be those of the run's metrics.json.
    run_dir = tmp_path / "run"
    shutil.copytree(srn_run[0], run_dir)
    newest = RunDir(run_dir).checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"5 of 6 epochs .*--overwrite"):
        analyze.run(dataclasses.replace(SMALL, plots=False), run_dir)
    # Loaded for a look (stablerank layers), the earlier weights come with a warning naming them.
    with pytest.warns(UserWarning, match=r"\(step_\d+\.pt\) holds 5 of 6 epochs: not the run's"):
        analyze.load_run_model(run_dir)


def test_random_label_runs_get_a_shattering_curve(tmp_path):
    dirs = []
    for norm in ("none", "sn"):
        cfg = classify_preset("tiny", norm=norm, label_noise=1.0, train_subset=200, batch_size=50,
                              epochs=2, out_dir=str(tmp_path), run_name=norm,
                              progress=False)  # fmt: skip
        classify.run(cfg)
        dirs.append(RunDir.for_config(cfg).path)
    result = analyze.run(AnalyzeConfig(n_pairs=50, n_jacobian=4, n_interpolated=0,
                                       jacobian_iterations=2), dirs[0])  # fmt: skip
    assert (dirs[0] / "shattering.png").read_bytes()[:8] == PNG_MAGIC
    # Scored with the random labels it trained on, as the trainer scored it.
    trained = ClassifierResult.from_json(dirs[0])
    assert result.train_acc == pytest.approx(trained.train_acc, abs=1e-12)
    assert "interpolated" not in result.jacobian
    out = analyze.plot_shattering(dirs, tmp_path / "cmp" / "shattering.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_missing_run_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist"):
        analyze.run(SMALL, tmp_path)


def test_a_damaged_config_file_is_named(srn_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(srn_run[0], run_dir)
    (run_dir / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"run/config\.json is damaged \(not JSON"):
        analyze.load_run_model(run_dir)
    # The commands that read a run folder name it too (they first ask whose run it is).
    from stablerank.cli import main

    for command in ("analyze", "layers"):
        assert main([command, str(run_dir)]) != 0
        assert "config.json is damaged" in capsys.readouterr().err


def test_load_run_model_restores_the_final_weights(srn_run):
    import torch

    from stablerank.train.checkpoint import load_checkpoint
    from stablerank.train.rundir import RunDir

    run_dir, _ = srn_run
    model = analyze.load_run_model(run_dir)
    assert not model.training
    saved = load_checkpoint(RunDir(run_dir).checkpoints()[-1])["model"]
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
