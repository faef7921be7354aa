"""GAN trainer and config: run files, exact resume (also after Ctrl-C), refused resumes, the
metrics hook, PNG grids, restoring a run (``load_gan_run``), config validation, and a 2-process
DDP run (gloo, CPU).

Runs use the 8x8 ``digits`` set (bundled with scikit-learn) and widths of 8, so each takes about
a second on one CPU core."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import stablerank as sr
import stablerank.train.gan as gan_train
from stablerank.config import (
    config_from_dict,
    config_hash,
    config_to_dict,
    diff_configs,
)
from stablerank.config.gan import _DATASETS, GAN_PRESETS, GanConfig
from stablerank.data import DATASETS
from stablerank.data import load_dataset as DATASETS_LOADED
from stablerank.metrics.features import (
    FeatureExtractor,
    available_feature_extractors,
    register_feature_extractor,
)
from stablerank.train.checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
)
from stablerank.train.figures import GRID_PAD
from stablerank.train.gan_models import load_gan_run
from stablerank.train.results import GanResult
from stablerank.train.rundir import RunDir

TINY = {
    "dataset": "digits",
    "arch": "cnn",
    "ngf": 8,
    "ndf": 8,
    "z_dim": 16,
    "batch_size": 16,
    "device": "cpu",
    "n_final_samples": 0,
    "progress": False,
    "log_every": 1,
    "sample_every": 2,
}
# Enough state to catch any part a resume could miss: labels, SRN buffers, EMA, Adam, LR decay,
# several D steps per G step, and a stop in the middle of a checkpoint interval.
RESUME = {
    **TINY,
    "conditional": True,
    "d_norm": "srn",
    "ema": 0.9,
    "lr_decay": "linear",
    "n_dis": 2,
    "g_steps": 6,
    "checkpoint_every": 2,
}
STOP = 3


def _cfg(tmp_path: Path, name: str, **over: object) -> GanConfig:
    return config_from_dict(GanConfig, {**TINY, "out_dir": str(tmp_path), "run_name": name, **over})


def _final_state(run_dir: Path, step: int) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}.pt")


def _assert_states_equal(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for key in ("opt_g", "opt_d"):
        for pid, sa in a[key]["state"].items():
            for name, value in sa.items():
                assert torch.equal(value, b[key]["state"][pid][name]), f"{key}[{pid}].{name}"


def _train(cfg: GanConfig, **kwargs) -> Path:
    """Run the trainer; return the run folder."""
    gan_train.run(cfg, **kwargs)
    return RunDir.for_config(cfg).path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gan")
    return _train(config_from_dict(GanConfig, {**RESUME, "out_dir": str(tmp),
                                               "run_name": "full"}))  # fmt: skip


def test_run_writes_its_folder(uninterrupted):
    run_dir = uninterrupted
    for name in ("config.json", "env.json", "log.jsonl", "log.csv", "metrics.json",
                 "d_layers.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == [
        "step_0000002.png", "step_0000004.png", "step_0000006.png"]  # fmt: skip
    # keep_checkpoints=2 (default) of steps 2, 4, 6
    assert [p.name for p in RunDir(run_dir).checkpoints()] == [
        "step_0000004.pt", "step_0000006.pt"]  # fmt: skip
    # the checksums of pruned checkpoints go with them
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.sha256")) == [
        "step_0000004.pt.sha256", "step_0000006.pt.sha256"]  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in records)
    assert records[-1]["lr_g"] == 0.0  # linear decay reaches 0 at g_steps
    # lr_g logged is the next step's: step s (0-based) trains at lr * (1 - s / g_steps) ...
    lr_g, lr_d = (json.loads((run_dir / "config.json").read_text())[k] for k in ("lr_g", "lr_d"))
    assert [r["lr_g"] for r in records] == pytest.approx([lr_g * (1 - s / 6) for s in range(1, 7)])
    # ... and both optimizers took the last step (s = 5) at the decayed rate.
    state = _final_state(run_dir, 6)
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(lr_g / 6)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(lr_d / 6)
    written = json.loads((run_dir / "metrics.json").read_text())["protocol"]
    assert written["scores"] is None and written["baselines"] == {}  # the typed layout
    result = GanResult.from_json(run_dir)
    assert result.steps == 6 and not result.diverged
    assert (result.d_loss, result.g_loss) == (records[-1]["d_loss"], records[-1]["g_loss"])
    assert result.protocol.d_norm == "srn" and result.protocol.scores is None  # not scored
    # D's SRN activity is logged with the losses and summarised in the result.
    assert all(r["srn_active_fraction"] is not None for r in records)
    assert result.srn_active_fraction is not None and 0 <= result.srn_active_fraction <= 1
    assert result.srn_active_fraction_mean == pytest.approx(
        sum(r["srn_active_fraction"] for r in records) / len(records)
    )
    assert json.loads((run_dir / "config.json").read_text())["rank_ratio"] == 0.1
    # SRN-normalized D: every layer's spectral norm is ~1 (power iteration tracks; 1% slack)
    for row in json.loads((run_dir / "d_layers.json").read_text()):
        assert row["norm"] == "srn"
        assert row["sigma_max"] == pytest.approx(1.0, abs=1e-2), row["name"]


def test_resume_continues_bitwise(tmp_path, uninterrupted):
    cfg = config_from_dict(GanConfig, {**RESUME, "out_dir": str(tmp_path), "run_name": "cut"})
    run_dir = _train(cfg, stop_at=STOP)
    assert [p.name for p in RunDir(run_dir).checkpoints()][-1] == f"step_{STOP:07d}.pt"
    assert not (run_dir / "metrics.json").exists()
    gan_train.run(dataclasses.replace(cfg, resume=True))
    _assert_states_equal(_final_state(uninterrupted, 6), _final_state(run_dir, 6))
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing duplicated or lost across the resume


def test_stop_at_adds_no_log_record_so_the_result_is_the_uninterrupted_ones(tmp_path):
    # Logged every 2 steps: a stop at step 3 must not log step 3, which would enter the curve,
    # the mean SRN activity and the divergence rule's last points.
    over = {**RESUME, "log_every": 2, "out_dir": str(tmp_path)}
    full = gan_train.run(config_from_dict(GanConfig, {**over, "run_name": "full"}))
    cfg = config_from_dict(GanConfig, {**over, "run_name": "cut"})
    run_dir = _train(cfg, stop_at=STOP)
    resumed = gan_train.run(dataclasses.replace(cfg, resume=True))
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert resumed.curve == full.curve
    assert resumed.srn_active_fraction_mean == full.srn_active_fraction_mean


def test_ctrl_c_saves_a_consistent_checkpoint(tmp_path, uninterrupted, monkeypatch):
    calls = {"n": 0}
    real_g_loss = gan_train.compute_g_loss

    def g_loss_then_sigint(d_fake, loss):  # Ctrl-C arrives in the middle of G step STOP
        calls["n"] += 1
        if calls["n"] == STOP:
            signal.raise_signal(signal.SIGINT)
        return real_g_loss(d_fake, loss)

    monkeypatch.setattr(gan_train, "compute_g_loss", g_loss_then_sigint)
    cfg = config_from_dict(GanConfig, {**RESUME, "out_dir": str(tmp_path), "run_name": "sigint"})
    # The classifier's message too (tests/train/test_rundir.py): what is kept, how to go on.
    with pytest.raises(KeyboardInterrupt, match=f"G step {STOP} kept in .*--resume"):
        gan_train.run(cfg)
    run_dir = RunDir.for_config(cfg).path
    assert RunDir(run_dir).checkpoints()[-1].name == f"step_{STOP:07d}.pt"
    monkeypatch.setattr(gan_train, "compute_g_loss", real_g_loss)
    gan_train.run(dataclasses.replace(cfg, resume=True))
    _assert_states_equal(_final_state(uninterrupted, 6), _final_state(run_dir, 6))


@pytest.mark.parametrize("gap_s", [0.0, 3600.0])
def test_a_second_ctrl_c_stops_at_once_unless_it_is_the_same_one(
    tmp_path, uninterrupted, monkeypatch, capfd, gap_s
):
    """Two SIGINTs in G step STOP: a second Ctrl-C (gap 0 s) raises in that step, before its
    checkpoint, and the newest periodic checkpoint is the resume point; the same Ctrl-C arriving
    twice (the terminal's and an executor's relay, within the gap) still ends the step with a
    checkpoint there. Either way the resumed run ends bitwise as the uninterrupted one."""
    import stablerank.train.runtime as runtime

    monkeypatch.setattr(runtime, "_FORCE_AFTER_S", gap_s)
    calls = {"n": 0}
    real_g_loss = gan_train.compute_g_loss

    def g_loss_then_two_sigints(d_fake, loss):
        calls["n"] += 1
        if calls["n"] == STOP:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_g_loss(d_fake, loss)

    monkeypatch.setattr(gan_train, "compute_g_loss", g_loss_then_two_sigints)
    cfg = config_from_dict(GanConfig, {**RESUME, "out_dir": str(tmp_path), "run_name": "twice"})
    kept = "the newest checkpoint" if gap_s == 0 else f"G step {STOP}"
    with pytest.raises(KeyboardInterrupt, match=f"{kept} kept in .*--resume"):
        gan_train.run(cfg)
    assert "Ctrl-C again to stop now" in capfd.readouterr().err
    folder = RunDir.for_config(cfg)
    newest = (
        (STOP // RESUME["checkpoint_every"]) * RESUME["checkpoint_every"] if gap_s == 0 else STOP
    )
    assert folder.checkpoints()[-1].name == f"step_{newest:07d}.pt"
    assert folder.read_status()["status"] == "interrupted"
    monkeypatch.setattr(gan_train, "compute_g_loss", real_g_loss)
    gan_train.run(dataclasses.replace(cfg, resume=True))
    _assert_states_equal(_final_state(uninterrupted, 6), _final_state(folder.path, 6))


def test_resume_refuses_a_changed_config_and_reuse_needs_resume(tmp_path):
    cfg = _cfg(tmp_path, "r", g_steps=2, checkpoint_every=1)
    first = gan_train.run(cfg)
    assert gan_train.run(cfg) == first  # finished: the stored result, nothing retrained
    # Its metrics.json damaged: resumed, the final checkpoint is scored again, to the same result.
    RunDir.for_config(cfg).metrics_file.write_text("{")
    again = gan_train.run(dataclasses.replace(cfg, resume=True))
    assert dataclasses.replace(again, train_seconds=0.0) == dataclasses.replace(
        first, train_seconds=0.0
    )
    unfinished = _cfg(tmp_path, "u", g_steps=2, checkpoint_every=1)
    gan_train.run(unfinished, stop_at=1)
    with pytest.raises(FileExistsError, match="resume=True"):
        gan_train.run(unfinished)
    with pytest.raises(ValueError, match=r"lr_g: 0\.0001 -> 0\.0003"):
        gan_train.run(dataclasses.replace(cfg, resume=True, lr_g=3e-4))
    # monitoring keys may change
    gan_train.run(dataclasses.replace(cfg, resume=True, sample_every=0, log_every=5))


class _PixelFeatures(torch.nn.Module):
    """Stand-in feature network for 8x8 digits: pixels as features, a fixed linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Linear(64, 10)
        torch.nn.init.normal_(self.classifier.weight, generator=torch.Generator().manual_seed(0))

    def extract(self, x):
        f = x.flatten(1)
        return f, self.classifier(f)


def _pixel_extractor(**_: object) -> FeatureExtractor:
    return FeatureExtractor("test-pixels", _PixelFeatures(), input_shape=(1, 8, 8),
                            num_features=64, num_classes=10, weights_sha256="none")  # fmt: skip


# torchmetrics' KID warns that it buffers all features; ours are 50 x 64 numbers.
@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
@pytest.mark.parametrize("d_norm", ["sn", "srn"])
def test_evaluation_hook_and_baselines(tmp_path, d_norm):
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    n = 50
    cfg = _cfg(tmp_path, "eval", g_steps=2, eval_every=1, n_eval_samples=n, d_norm=d_norm,
               n_final_samples=n, feature_net="test-pixels")  # fmt: skip
    run_dir = _train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    protocol = GanResult.from_json(run_dir).protocol
    assert protocol.scores.feature_net == "test-pixels"
    assert protocol.scores.reference_split == "test"
    assert protocol.scores.n_fake == n
    assert protocol.scores.is_splits == 5  # splits of 10 samples at least (10 classes)
    assert protocol.baselines["real_train"].sample_source == "train"
    # The samples are compared with the whole test split (the real baseline draws train images).
    assert protocol.scores.n_real == len(DATASETS_LOADED("digits").test_x)
    # Every score of both baselines, as of the generator.
    baselines = [f"{b}_{k}" for b in ("untrained", "real_train")
                 for k in ("fid", "kid_mean", "kid_std", "is_mean", "is_std")]  # fmt: skip
    for key in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", *baselines):
        assert np.isfinite(metrics[key]), key
    # real training digits are far closer to the test digits than an untrained G's blur
    assert metrics["real_train_fid"] < 0.5 * metrics["untrained_fid"]
    evals = [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
             if "eval_fid" in r]  # fmt: skip
    assert [r["step"] for r in evals] == [1, 2]
    # One curve point per step, its FID and SRN activity merged from the step's two records.
    curve = GanResult.from_json(run_dir).curve
    assert [(p.step, p.fid) for p in curve] == [(r["step"], r["eval_fid"]) for r in evals]
    assert all((p.srn_active_fraction is not None) == (d_norm == "srn") for p in curve)
    # Files written before the protocols were typed hold the scores' protocol flat beside the
    # run's own entries: they read back as the same typed result.
    scores = metrics["protocol"].pop("scores")
    older = dict(metrics, protocol={**metrics["protocol"], **scores})
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "metrics.json").write_text(json.dumps(older))
    assert "feature_net" in older["protocol"] and "scores" not in older["protocol"]
    assert GanResult.from_json(tmp_path / "older") == GanResult.from_json(run_dir)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_a_resume_under_the_same_protocol_keeps_the_untrained_generators_scores(tmp_path):
    # They cannot be redone after step 0: a resumed run must carry them, not drop them.
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    cfg = _cfg(tmp_path, "keep", g_steps=1, n_final_samples=20, feature_net="test-pixels")
    splits = DATASETS_LOADED("digits")
    G, _ = gan_train.build_gan_models(cfg, 1, 8, None)
    evaluator = gan_train.Evaluator(cfg, splits.test_x, G, None, torch.device("cpu"))
    fresh = gan_train.score_baselines(evaluator, splits.train_x, 20, cfg.seed)
    resumed = gan_train.score_baselines(evaluator, splits.train_x, 20, cfg.seed, fresh)
    assert resumed["untrained_"] is fresh["untrained_"]
    assert resumed["real_train_"] == fresh["real_train_"]  # seeded: the same images again


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_resume_with_another_final_protocol_rescores_the_real_baseline_only(tmp_path, capsys):
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    cfg = _cfg(tmp_path, "base", g_steps=2, checkpoint_every=1, n_final_samples=40,
               feature_net="test-pixels")  # fmt: skip
    run_dir = _train(cfg, stop_at=1)
    # n_final_samples is a runtime key: a resume may change it, but the untrained generator's
    # scores (made at step 0 with 40 samples) cannot be redone, so they are left out.
    gan_train.run(dataclasses.replace(cfg, resume=True, n_final_samples=50, data_dir=str(tmp_path)))
    assert "leaves them out" in capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["untrained_fid"] is None and np.isfinite(metrics["real_train_fid"])
    protocol = GanResult.from_json(run_dir).protocol
    assert protocol.scores.n_fake == 50
    assert list(protocol.baselines) == ["real_train"]
    assert protocol.baselines["real_train"].n_fake == 50
    # Finished: the same command returns the stored result, but another final protocol with
    # --resume scores the run again.
    rescored = gan_train.run(dataclasses.replace(cfg, resume=True, n_final_samples=60))
    assert rescored.protocol.scores.n_fake == 60
    assert gan_train.run(dataclasses.replace(cfg, n_final_samples=60)) == rescored


def test_an_unknown_feature_net_leaves_no_run_files_that_block_the_corrected_run(tmp_path):
    cfg = _cfg(tmp_path, "feat", g_steps=1, n_final_samples=20, feature_net="nope")
    with pytest.raises(ValueError, match="unknown feature extractor 'nope'"):
        gan_train.run(cfg)
    assert not (tmp_path / "feat" / "log.jsonl").exists()
    # feature_net and n_final_samples are runtime keys: the corrected command reuses the folder.
    assert gan_train.run(dataclasses.replace(cfg, n_final_samples=0)).steps == 1


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_rescoring_an_sn_ema_run_scores_the_generator_it_would_score_from_the_start(tmp_path):
    # The final checkpoint holds G_ema's standing statistics; refreshing them again would also
    # step the power iteration of an SN-normalized G (g_norm="sn") and change the samples.
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    over = {"g_steps": 2, "ema": 0.9, "g_norm": "sn", "feature_net": "test-pixels"}
    direct = gan_train.run(_cfg(tmp_path, "direct", n_final_samples=30, **over))
    cfg = _cfg(tmp_path, "rescored", n_final_samples=20, **over)
    gan_train.run(cfg)
    rescored = gan_train.run(dataclasses.replace(cfg, resume=True, n_final_samples=30))
    assert rescored.fid == direct.fid and rescored.is_mean == direct.is_mean


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance`")
def test_a_damaged_metrics_file_is_scored_again_to_the_same_scores(tmp_path):
    # The finished run's metrics.json lost: resuming scores the final checkpoint again, and the
    # FID, KID, IS and both baselines come out as the first time (same samples, same features).
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    cfg = _cfg(tmp_path, "scored", g_steps=2, d_norm="srn", rank_ratio=0.5, n_final_samples=30,
               feature_net="test-pixels")  # fmt: skip
    first = gan_train.run(cfg)
    assert math.isfinite(first.fid) and first.fid > 0
    RunDir.for_config(cfg).metrics_file.unlink()
    again = gan_train.run(dataclasses.replace(cfg, resume=True))
    assert dataclasses.replace(again, train_seconds=0.0) == dataclasses.replace(
        first, train_seconds=0.0
    )


def test_mixed_precision_off_never_calls_autocast(monkeypatch):
    # Before torch 2.5, torch.autocast("mps", enabled=False) raises: with amp off both trainers
    # run on Apple GPUs only because autocast is not entered at all.
    from stablerank.train.runtime import mixed_precision

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported autocast device_type 'mps'")

    monkeypatch.setattr(torch, "autocast", refuse)
    with mixed_precision(torch.device("mps"), False):
        pass
    with pytest.raises(RuntimeError, match="device_type 'mps'"):
        mixed_precision(torch.device("mps"), True)


def test_amp_needs_cuda_even_when_the_device_is_auto(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(tmp_path, "amp", device="auto", amp=True)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        gan_train.run(cfg)
    assert not (tmp_path / "amp").exists()  # refused before any work


@pytest.mark.parametrize("d_norm", ["sn", "srn"])
def test_d_norm_embedding_normalizes_the_projection(tmp_path, d_norm):
    cfg = _cfg(tmp_path, "emb", conditional=True, d_norm=d_norm, d_norm_embedding=True)
    G, D = gan_train.build_gan_models(cfg, channels=1, image_size=8, num_classes=10)
    assert parametrize.is_parametrized(D.embed, "weight")
    assert parametrize.is_parametrized(D.linear, "weight")
    assert not any(parametrize.is_parametrized(m) for m in G.modules())  # g_norm="none"
    plain = _cfg(tmp_path, "plain", conditional=True, d_norm=d_norm)
    _, D = gan_train.build_gan_models(plain, channels=1, image_size=8, num_classes=10)
    assert not parametrize.is_parametrized(D.embed)  # excluded by default
    assert parametrize.is_parametrized(D.linear, "weight")


@pytest.mark.parametrize(
    ("arch", "conditional"), [("cnn", False), ("cnn", True), ("resnet", False)]
)
def test_d_first_norm_sn_puts_the_layers_reading_the_image_under_sn_the_rest_under_srn(
    tmp_path, arch, conditional
):
    over = {"arch": arch, "conditional": conditional, "ndf": 8, "d_norm": "srn"}
    plain, cfg = _cfg(tmp_path, "p", **over), _cfg(tmp_path, "f", **over, d_first_norm="sn")
    classes = 10 if conditional else None
    torch.manual_seed(0)
    _, D_plain = gan_train.build_gan_models(plain, channels=3, image_size=32, num_classes=classes)
    torch.manual_seed(0)
    _, D = gan_train.build_gan_models(cfg, channels=3, image_size=32, num_classes=classes)
    # The layers that see the image, found by a hook on a forward: the first conv of the cnn, the
    # first ResNet block's conv1 and its shortcut, which reads the image average-pooled (a
    # 3-column matrix: r = 1 at c = 0.1).
    x = torch.randn(2, 3, 32, 32)
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    reads_x = []

    def hook(name, inputs):
        if inputs[0] is x or torch.equal(inputs[0], pooled):
            reads_x.append(name)

    for name, layer in D.named_modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_pre_hook(lambda m, a, name=name: hook(name, a))
    D.eval()(x, torch.zeros(2, dtype=torch.long) if conditional else None)
    norms = {row.name: row.norm for row in sr.layer_report(D)}
    assert sorted(reads_x) == sorted(D.input_layers)
    assert {n: k for n, k in norms.items() if k == "sn"} == dict.fromkeys(reads_x, "sn"), norms
    assert set(norms.values()) == {"sn", "srn"}
    # Registered in module order: every layer starts from the same power-iteration vectors as
    # with SRN on every layer, so the two differ in those layers' normalization only.
    for name, layer in D.named_modules():
        if parametrize.is_parametrized(layer, "weight"):
            ours = layer.parametrizations.weight[0]
            theirs = D_plain.get_submodule(name).parametrizations.weight[0]
            init = getattr(ours, "_u", None)
            if name not in reads_x and init is not None:
                assert torch.equal(ours._u, theirs._u) and torch.equal(ours._v, theirs._v), name


def test_d_first_norm_is_recorded_and_refused_without_normalization(tmp_path):
    cfg = _cfg(tmp_path, "first", d_norm="srn", d_first_norm="sn")
    assert cfg.run_label.endswith("srn0.1-first-sn")
    # At its default the field is left out of the config dict, so the runs made before it
    # existed keep their hash and folder; set, it is recorded and changes the hash.
    plain = _cfg(tmp_path, "first", d_norm="srn")
    assert "d_first_norm" not in config_to_dict(plain)
    assert config_to_dict(plain, complete=True)["d_first_norm"] == "same"  # --print-config's
    assert config_to_dict(cfg)["d_first_norm"] == "sn"
    assert config_hash(cfg) != config_hash(plain)
    # A resume refused for it names the saved run's value, the default it was saved without.
    saved, current = config_to_dict(plain), config_to_dict(cfg)
    assert diff_configs(saved, current, cls=GanConfig) == ["d_first_norm: 'same' -> 'sn'"]
    assert diff_configs(config_to_dict(cfg), config_to_dict(plain)) == [
        "d_first_norm: 'sn' -> '<missing>'"  # without the class, only what the dicts hold
    ]
    # With d_norm="sn" every layer has SN anyway: the same network (a control arm of a sweep).
    same = _cfg(tmp_path, "first", d_norm="sn", d_first_norm="sn")
    assert set(same.unused()) == {"rank_ratio", "d_first_norm"}
    _, D_sn = gan_train.build_gan_models(same, channels=1, image_size=8, num_classes=None)
    assert {row.norm for row in sr.layer_report(D_sn)} == {"sn"}
    with pytest.raises(ValueError, match="d_first_norm='sn' needs d_norm sn or srn"):
        _cfg(tmp_path, "first", d_norm="none", d_first_norm="sn")


def test_save_image_grid_round_trips_through_a_png_reader(tmp_path):
    rng = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        images = torch.rand(5, channels, 6, 7, generator=rng) * 2 - 1
        path = tmp_path / f"grid{channels}.png"
        gan_train.save_image_grid(images, path, nrow=3)
        read = matplotlib.image.imread(path)  # Pillow's PNG decoder: float in [0, 1]
        pad = GRID_PAD
        assert read.shape[:2] == (2 * (6 + pad) + pad, 3 * (7 + pad) + pad)
        expected = ((images + 1) * 127.5).round().to(torch.uint8)
        cell = read[pad : pad + 6, 2 * (7 + pad) + pad :][:, :7]  # row 0, column 2: image 2
        cell = cell[..., :channels] if cell.ndim == 3 else cell[..., None]  # drop alpha
        got = torch.from_numpy((cell * 255).round().astype(np.uint8)).permute(2, 0, 1)
        assert torch.equal(got, expected[2])


def test_a_g_step_takes_n_dis_d_updates_on_fresh_batches_then_g_and_its_ema(tmp_path, monkeypatch):
    """n_dis = 2: real batches 0..5 over 3 G steps, D's loss with its real outputs first, the
    EMA generator the average of G's steps, and the last step's losses logged and reported even
    when log_every does not divide g_steps."""
    seen: dict = {"b": [], "d_args": []}
    real_batches, real_build = gan_train.real_batches, gan_train.build_gan_models
    real_d_loss = gan_train.compute_d_loss

    def batches(*args, **kwargs):
        inner = real_batches(*args, **kwargs)

        def batch(b):
            seen["b"].append(b)
            x, y = inner(b)
            seen.setdefault("x0", x)
            return x, y

        return batch

    def build(*args, **kwargs):
        seen["G"], seen["D"] = real_build(*args, **kwargs)
        return seen["G"], seen["D"]

    def d_loss(d_real, d_fake, loss):
        if not seen["d_args"]:  # D's first update: its outputs on the real batch come first
            with torch.no_grad():
                seen["D"].eval()  # u, v as the training forward just left them
                seen["d_args"] = [seen["D"](seen["x0"], None), d_real, d_fake]
                seen["D"].train()
        return real_d_loss(d_real, d_fake, loss)

    monkeypatch.setattr(gan_train, "real_batches", batches)
    monkeypatch.setattr(gan_train, "build_gan_models", build)
    monkeypatch.setattr(gan_train, "compute_d_loss", d_loss)
    cfg = _cfg(tmp_path, "steps", n_dis=2, g_steps=3, log_every=2, ema=0.9, checkpoint_every=1)
    result = gan_train.run(cfg)
    assert seen["b"] == [0, 1, 2, 3, 4, 5]
    on_real, d_real, d_fake = seen["d_args"]
    torch.testing.assert_close(d_real, on_real.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(d_fake, on_real.float())
    run_dir = RunDir.for_config(cfg).path
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    assert (result.d_loss, result.g_loss) == (records[-1]["d_loss"], records[-1]["g_loss"])
    # G_ema after step 3 = 0.9 G_ema after step 2 + 0.1 G after step 3 (parameters; buffers are
    # copied, then replaced by standing statistics for the grids).
    two, three = _final_state(run_dir, 2), _final_state(run_dir, 3)
    names = [name for name, _ in seen["G"].named_parameters()]
    assert names and not torch.equal(two["G_ema"][names[0]], three["G_ema"][names[0]])
    for name in names:
        expected = 0.9 * two["G_ema"][name] + 0.1 * three["G"][name]
        torch.testing.assert_close(three["G_ema"][name], expected, rtol=1e-5, atol=1e-7)


def test_standing_statistics_are_the_exact_mean_over_their_own_stream():
    from stablerank.train import gan_sampling
    from stablerank.train.runtime import stream_seed

    class G(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.bn = torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)

        def forward(self, z, y=None):
            return self.bn(self.linear(z))

    g = G().eval()
    g.bn.momentum = 0.3
    gan_sampling.refresh_bn_stats(g, z_dim=4, num_classes=None, device=torch.device("cpu"), seed=5)
    assert not g.training and g.bn.momentum == 0.3  # mode and momentum restored
    gen = torch.Generator().manual_seed(stream_seed(5, 0, 0, gan_sampling._STREAM_BN))
    with torch.no_grad():
        h = torch.stack([g.linear(torch.randn(64, 4, generator=gen)) for _ in range(16)])
    # BatchNorm's running statistics with momentum None: the plain average of the 16 batches'
    # means and unbiased variances, over 1,024 fresh samples.
    torch.testing.assert_close(g.bn.running_mean, h.mean(dim=(0, 1)))
    torch.testing.assert_close(g.bn.running_var, h.var(dim=1).mean(dim=0))
    assert gan_sampling.BN_STAT_SAMPLES == 16 * 64


@pytest.mark.parametrize(
    ("num_classes", "rows"),
    [
        (2, [0, 1] * 4),
        (10, list(range(10))),
        (16, list(range(16))),
        (100, [k * 100 // 16 for k in range(16)]),
    ],
)
def test_a_conditional_grid_shows_one_class_a_row_and_every_class_up_to_16(num_classes, rows):
    from stablerank.train.gan_sampling import grid_labels

    # 8 images a row; a 10-class grid used to show 8 rows cycling over 8 of the 10 classes.
    assert grid_labels(num_classes, 8).tolist() == [k for k in rows for _ in range(8)]


# ----------------------------------------------------------------------------------------------
# Restoring a run: load_gan_run
# ----------------------------------------------------------------------------------------------


def _run_capturing_models(tmp_path: Path, monkeypatch, name: str, **over: object):
    """A tiny conditional run; returns its config, the trainer's own D and its sampler (the
    generator it drew grids with and would score), as they are when ``run`` returns."""
    seen: dict = {}
    real_build, real_sampler = gan_train.build_gan_models, gan_train.Sampler

    def build(*args, **kwargs):
        seen["G"], seen["D"] = real_build(*args, **kwargs)
        return seen["G"], seen["D"]

    def sampler(*args, **kwargs):
        seen["sampler"] = real_sampler(*args, **kwargs)
        return seen["sampler"]

    monkeypatch.setattr(gan_train, "build_gan_models", build)
    monkeypatch.setattr(gan_train, "Sampler", sampler)
    cfg = _cfg(tmp_path, name, conditional=True, d_norm="srn", n_dis=2, g_steps=3, **over)
    gan_train.run(cfg)
    return cfg, seen["D"], seen["sampler"].G


@pytest.mark.parametrize(
    "over",
    [
        # EMA, statistics refreshed after the last checkpoint: load_gan_run recomputes them.
        {"ema": 0.9, "g_norm": "sn", "sample_every": 2},
        # EMA, statistics refreshed before it (a grid at step 3): reused, not refreshed again
        # (with g_norm="sn" a second refresh would also move G's power-iteration vectors).
        {"ema": 0.9, "g_norm": "sn", "sample_every": 1},
        {"ema": 0.0},  # the raw generator with the running statistics of training
    ],
    ids=["ema-refreshed-on-load", "ema-standing-in-checkpoint", "raw"],
)
def test_load_gan_run_restores_the_trainers_models_bitwise(tmp_path, monkeypatch, over):
    cfg, D_trained, G_trained = _run_capturing_models(tmp_path, monkeypatch, "load", **over)
    torch.manual_seed(123)
    expected_rng = torch.rand(1)
    torch.manual_seed(123)
    run = load_gan_run(Path(cfg.out_dir) / "load")
    assert torch.rand(1) == expected_rng  # rebuilding does not draw from the caller's RNG
    assert (run.step, run.num_classes, run.image_shape) == (3, 10, (1, 8, 8))
    assert run.ema == (cfg.ema > 0) and run.config == dataclasses.replace(cfg, resume=False)
    assert not run.G.training and not run.D.training
    gen = torch.Generator().manual_seed(7)
    z, y = torch.randn(32, cfg.z_dim, generator=gen), torch.randint(10, (32,), generator=gen)
    x = torch.rand(32, 1, 8, 8, generator=gen) * 2 - 1
    G_trained.eval()
    D_trained.eval()
    with torch.no_grad():
        assert torch.equal(run.G(z, y), G_trained(z, y))
        assert torch.equal(run.D(x, y), D_trained(x, y))
    for name, value in G_trained.state_dict().items():  # BN statistics and u/v included
        assert torch.equal(run.G.state_dict()[name], value), f"G.{name}"


def test_load_gan_run_picks_a_checkpoint_and_the_raw_generator(tmp_path):
    cfg = _cfg(tmp_path, "pick", ema=0.9, g_steps=4, checkpoint_every=2)
    run_dir = _train(cfg)
    run = load_gan_run(run_dir, checkpoint=2, ema=False)
    assert run.step == 2 and not run.ema and run.num_classes is None
    assert run.checkpoint == run_dir / "checkpoints" / "step_0000002.pt"
    saved = _final_state(run_dir, 2)["G"]
    assert all(torch.equal(run.G.state_dict()[k], v) for k, v in saved.items())
    assert load_gan_run(run_dir, checkpoint=run.checkpoint).step == 2
    assert load_gan_run(run_dir).step == 4  # default: the newest


def test_load_gan_run_rebuilds_quietly_and_names_a_diverged_runs_last_weights(tmp_path):
    # c = 0.1 gives D's first convolution (8 x 9) the target r = 1: the trainer warns, the
    # loader does not repeat it.
    cfg = _cfg(tmp_path, "rank-one", d_norm="srn", rank_ratio=0.1, g_steps=4, checkpoint_every=2)
    with pytest.warns(sr.RankOneWarning):
        run_dir = _train(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_gan_run(run_dir)
    # A run that diverged before its end: its last checkpoint is what there is, said so.
    (run_dir / "checkpoints" / "step_0000004.pt").unlink()
    RunDir(run_dir).write_status(status="diverged")
    with pytest.warns(UserWarning, match=r"holds 2 of 4 steps: the run diverged before its end"):
        load_gan_run(run_dir)


def test_load_gan_run_skips_a_corrupt_newest_checkpoint_as_resuming_does(tmp_path, capsys):
    cfg = _cfg(tmp_path, "torn", ema=0.9, g_steps=4, checkpoint_every=2)
    run_dir = _train(cfg)
    newest = run_dir / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # cut by a kill mid-write
    with pytest.warns(UserWarning, match=r"\(step_0000002.pt\) holds 2 of 4 steps: not the run"):
        assert load_gan_run(run_dir).step == 2
    assert "step_0000004.pt" in capsys.readouterr().err
    with pytest.raises(CorruptCheckpointError):  # asked for by name: no fallback
        load_gan_run(run_dir, checkpoint=4)


def test_load_gan_run_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"GAN run folder '{missing}' does not exist"):
        load_gan_run(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/checkpoints' holds no step_\*\.pt"):
        load_gan_run(tmp_path / "empty")
    run_dir = _train(_cfg(tmp_path, "one", g_steps=1, checkpoint_every=1))
    with pytest.raises(FileNotFoundError, match=r"checkpoints/step_0000009\.pt' does not exist"):
        load_gan_run(run_dir, checkpoint=9)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GAN_PRESETS))
def test_presets_are_valid_configs(name):
    cfg = config_from_dict(GanConfig, GAN_PRESETS[name])
    assert cfg.g_steps >= 1


def test_sngan_presets_follow_spec_4():
    cnn, resnet = GAN_PRESETS["sngan-cnn"], GAN_PRESETS["sngan-resnet"]
    assert (cnn["lr_g"], cnn["beta1"], cnn["beta2"], cnn["n_dis"]) == (1e-4, 0.5, 0.999, 1)
    assert (resnet["lr_g"], resnet["beta1"], resnet["beta2"], resnet["n_dis"]) == (2e-4, 0, 0.9, 5)
    assert resnet["lr_decay"] == "linear" and cnn["batch_size"] == resnet["batch_size"] == 64


def test_config_datasets_are_loadable_names():
    assert set(_DATASETS) <= set(DATASETS)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"d_norm": "weightnorm"}, ValueError, "d_norm"),
        ({"g_norm": "srn"}, ValueError, "g_norm"),
        ({"rank_ratio": 0.0}, ValueError, "rank_ratio"),
        ({"rank_ratio": 1.5}, ValueError, "rank_ratio"),
        ({"n_dis": 0}, ValueError, "n_dis"),
        ({"batch_size": "many"}, TypeError, "batch_size"),
        ({"ema": 1.0}, ValueError, "ema"),
        ({"d_norm_embedding": True}, ValueError, "conditional"),
        ({"d_norm_embedding": True, "conditional": True, "d_norm": "none"}, ValueError, "d_norm"),
        ({"amp": True, "device": "cpu"}, ValueError, "amp"),
        ({"eval_every": 10, "g_steps": 5}, ValueError, "eval_every"),
        ({"n_final_samples": 1}, ValueError, r"n_final_samples must be 0 .* or >= 2, got 1"),
        ({"n_steps": 5}, ValueError, "valid keys"),
    ],
)
def test_config_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        config_from_dict(GanConfig, overrides)


# ----------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------

_DDP_WORKER = """
import json, sys, torch
import stablerank.train.gan as tg
from stablerank.config import config_from_dict
from stablerank.config.gan import GanConfig

models, real_build, real_end = {}, tg.build_gan_models, tg.end_worker

def build(*args, **kwargs):
    models["G"], models["D"] = real_build(*args, **kwargs)
    return models["G"], models["D"]

tg.build_gan_models = build
tg.end_worker = lambda info: models.setdefault("info", info)
tg.run(config_from_dict(GanConfig, json.loads(sys.argv[1])))
info = models["info"]
torch.save({k: models[k].state_dict() for k in "GD"}, f"{sys.argv[2]}/rank{info.rank}.pt")
real_end(info)
"""


@pytest.mark.slow
def test_ddp_two_processes_keep_d_buffers_identical(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    cfg = {**TINY, "d_norm": "srn", "conditional": True, "g_steps": 3, "batch_size": 16,
           "out_dir": str(tmp_path), "run_name": "ddp"}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), json.dumps(cfg), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    d_buffers = [k for k in rank0["D"] if k.endswith(("_u", "_v"))]
    assert d_buffers, "SRN vectors missing from D"
    for name, value in rank0["D"].items():  # D's parameters and SRN u/v: bitwise equal
        assert torch.equal(value, rank1["D"][name]), f"D.{name}"
    for name, value in rank0["G"].items():
        if "running_" in name or "num_batches" in name:
            # BatchNorm statistics are broadcast from rank 0 at each G forward, which then adds
            # its own batch's statistics: after the last forward they differ (rank 0's are saved).
            continue
        assert torch.equal(value, rank1["G"][name]), f"G.{name}"
    log = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]


def test_the_summary_line_shows_the_scores_there_are():
    bare = GanResult(steps=7, d_loss=1.0, g_loss=2.0)
    assert bare.summary() == "7 G steps, no final scores"
    scored = GanResult(steps=7, d_loss=1.0, g_loss=2.0, fid=16.343, untrained_fid=61.45,
                       is_mean=2.139, srn_active_fraction=0.5)  # fmt: skip
    assert scored.summary() == (
        "7 G steps, FID 16.34, untrained G's FID 61.45, IS 2.139; SRN's cap binds on 50% of "
        "D's layers"
    )


def test_divergence_rule():
    ok = [{"step": i, "d_loss": 1.0, "g_loss": 1.0} for i in range(1, 6)]
    assert gan_train.divergence_of(ok) == ""
    nan = [*ok, {"step": 6, "d_loss": float("nan"), "g_loss": 1.0}]
    assert "non-finite loss at G step 6" in gan_train.divergence_of(nan)
    collapse = [*ok, *({"step": i, "d_loss": 0.0, "g_loss": 1e5} for i in range(6, 9))]
    assert "discriminator collapse" in gan_train.divergence_of(collapse)
    # Both halves of the rule at each of the last 3 points: D near 0 alone, or G large alone, or
    # 2 logged points only, is no collapse.
    d_only = [*ok, *({"step": i, "d_loss": 0.0, "g_loss": 1.0} for i in range(6, 9))]
    g_only = [*ok, *({"step": i, "d_loss": 1.0, "g_loss": 1e5} for i in range(6, 9))]
    short = [{"step": i, "d_loss": 0.0, "g_loss": 1e5} for i in (1, 2)]
    assert [gan_train.divergence_of(r) for r in (d_only, g_only, short)] == ["", "", ""]
    # A non-finite G loss is as much a divergence as a non-finite D loss.
    g_inf = [*ok, {"step": 6, "d_loss": 1.0, "g_loss": float("inf")}]
    assert "non-finite loss at G step 6" in gan_train.divergence_of(g_inf)
    # log.jsonl stores a non-finite loss as null, read back as None.
    g_null = [*ok, {"step": 6, "d_loss": 1.0, "g_loss": None}]
    assert "non-finite loss at G step 6" in gan_train.divergence_of(g_null)
    # One collapsed point among healthy ones is not a collapse.
    assert gan_train.divergence_of([*ok, {"step": 6, "d_loss": 0.0, "g_loss": 1e5}, *ok]) == ""


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_a_non_finite_loss_ends_the_gan_as_diverged(tmp_path, monkeypatch, ctrl_c):
    """Also when Ctrl-C comes in the very step whose loss is NaN: diverged, not interrupted."""
    real = gan_train.compute_d_loss
    calls = {"n": 0}

    def nan_from_the_third(d_real, d_fake, loss):
        calls["n"] += 1
        out = real(d_real, d_fake, loss)
        if ctrl_c and calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return out * float("nan") if calls["n"] >= 3 else out

    monkeypatch.setattr(gan_train, "compute_d_loss", nan_from_the_third)
    try:
        run_dir = _train(_cfg(tmp_path, "nan", g_steps=6, log_every=1, d_norm="sn"))
    except KeyboardInterrupt as err:  # would stop pytest itself
        pytest.fail(f"a diverged run reported an interruption: {err}")
    result = GanResult.from_json(run_dir)
    assert result.diverged and "non-finite" in result.divergence
    assert result.steps == 3  # stopped at the first logged NaN, not trained on
    assert result.d_layers == () and result.srn_active_fraction is None  # no NaN spectra
    assert RunDir(run_dir).read_status()["status"] == "diverged"


def test_the_last_line_of_a_collapsed_run_says_why_it_diverged(tmp_path, monkeypatch, capsys):
    # A collapse is found after training, from the logged losses: nothing else prints it.
    monkeypatch.setattr(gan_train, "divergence_of", lambda records: "discriminator collapse: X")
    run_dir = _train(_cfg(tmp_path, "collapse", g_steps=1))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("diverged: 1 G steps") and "discriminator collapse: X" in last
    assert last.endswith(f"results in {run_dir}")


def test_non_finite_samples_at_a_periodic_evaluation_end_the_run_as_diverged(tmp_path, monkeypatch):
    # NaN from the first D update, but losses are logged only at step 4: the evaluation at step 2
    # meets the NaN samples first.
    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)
    real = gan_train.compute_d_loss
    monkeypatch.setattr(gan_train, "compute_d_loss", lambda *a: real(*a) * float("nan"))
    cfg = _cfg(tmp_path, "evalnan", g_steps=4, log_every=4, eval_every=2, n_eval_samples=20,
               feature_net="test-pixels")  # fmt: skip
    run_dir = _train(cfg)
    result = GanResult.from_json(run_dir)
    assert result.diverged and "not finite at G step 2" in result.divergence
    assert result.steps == 2 and RunDir(run_dir).read_status()["status"] == "diverged"


def test_num_threads_sets_torchs_threads_and_stays_out_of_the_folder_name(tmp_path):
    default_name = RunDir.for_config(_cfg(tmp_path, None, g_steps=1)).path
    cfg = _cfg(tmp_path, None, num_threads=1, g_steps=1)
    assert RunDir.for_config(cfg).path == default_name  # where it runs, not what it computes
    before = torch.get_num_threads()
    try:
        gan_train.run(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_deterministic_is_set_by_every_run_and_stays_out_of_the_folder_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # records the variable's state for the
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # teardown, which the run's setting changes
    default_name = RunDir.for_config(_cfg(tmp_path, None, g_steps=1)).path
    cfg = _cfg(tmp_path, None, deterministic=True, g_steps=1)
    assert RunDir.for_config(cfg).path == default_name  # how it runs, not what it computes
    try:
        gan_train.run(cfg)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a missing kernel warns
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # before cuBLAS starts
        # The next run in this process (the same one, finished, here) sets its own choice.
        gan_train.run(dataclasses.replace(cfg, deterministic=False))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_kernels_asked_for_after_cuda_started_warn_of_cublas(monkeypatch):
    from stablerank.train.runtime import use_deterministic_kernels

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    try:
        with pytest.warns(UserWarning, match="after CUDA started in this process"):
            use_deterministic_kernels(True)
    finally:
        torch.use_deterministic_algorithms(False)


def test_stop_at_must_be_a_step(tmp_path):
    with pytest.raises(ValueError, match="stop_at must be >= 1"):
        gan_train.run(_cfg(tmp_path, "s"), stop_at=0)


def test_non_finite_samples_mark_the_run_diverged_instead_of_failing(tmp_path, monkeypatch):
    from stablerank.metrics import NonFiniteError

    if "test-pixels" not in available_feature_extractors():
        register_feature_extractor("test-pixels", _pixel_extractor)

    real_call = gan_train.Evaluator.__call__
    calls = []

    def nan_after_training(self, n_fake):  # the untrained baseline scores; the final does not
        calls.append(n_fake)
        if len(calls) > 1:
            raise NonFiniteError("generated images contain 64 non-finite values")
        return real_call(self, n_fake)

    monkeypatch.setattr(gan_train.Evaluator, "__call__", nan_after_training)
    cfg = _cfg(tmp_path, "nansamples", g_steps=2, n_final_samples=50, feature_net="test-pixels")
    run_dir = _train(cfg)
    result = GanResult.from_json(run_dir)
    assert result.diverged and "not finite" in result.divergence and result.fid is None


@pytest.mark.slow
def test_a_compiled_gan_trains_as_the_eager_one_and_saves_the_plain_networks(tmp_path):
    # G and D compiled (D's SRN parametrization inside the graph): the same training to float32
    # rounding, and checkpoints with the uncompiled networks' keys, which load_gan_run reads.
    over = {"d_norm": "srn", "rank_ratio": 0.5, "g_steps": 3}
    cfg = _cfg(tmp_path, "eager", **over)
    eager = _train(cfg)
    compiled = _train(_cfg(tmp_path, "compiled", compile=True, **over))
    a, b = _final_state(eager, 3), _final_state(compiled, 3)
    for key in ("G", "D"):
        assert a[key].keys() == b[key].keys()
        # G's conv biases feed BatchNorm, so their gradient is zero up to rounding, which Adam
        # turns into steps of about lr either way: up to 2 * lr * g_steps apart.
        atol = 2 * cfg.lr_g * cfg.g_steps if key == "G" else 1e-5
        for name in a[key]:
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-4, atol=atol, msg=name)
    logged = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
              for d in (eager, compiled)]  # fmt: skip
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert [r[key] for r in logged[1]] == pytest.approx([r[key] for r in logged[0]], rel=1e-4)
    load_gan_run(compiled, ema=False)
