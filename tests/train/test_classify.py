"""The classification trainer on sklearn digits (8x8, 1,347 train / 450 test images) at tiny
widths: each norm trains, resume is bitwise exact on the CPU, config mismatches are refused."""

from __future__ import annotations

import json
import math
import signal
import time

import pytest
import torch

from stablerank.config import config_to_dict
from stablerank.config.classify import ClassifyConfig, classify_preset
from stablerank.train import classify
from stablerank.train import rundir as rundir_module
from stablerank.train.checkpoint import load_checkpoint
from stablerank.train.results import ClassifierResult
from stablerank.train.rundir import RunDir

CHANCE = 0.1  # 10 balanced digit classes


def tiny(tmp_path, **overrides) -> ClassifyConfig:
    """Seconds-long run: MLP of width 0.25 (hidden 128) on digits."""
    return classify_preset(
        "tiny", out_dir=str(tmp_path), run_name="run", progress=False, **overrides
    )


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def train(cfg: ClassifyConfig):
    """The run's folder and its typed result."""
    result = classify.run(cfg)
    return RunDir.for_config(cfg).path, result


@pytest.mark.parametrize("norm", ["none", "sn", "srn"])
def test_each_norm_trains_and_writes_the_run_folder(tmp_path, norm):
    run_dir, result = train(tiny(tmp_path, norm=norm, epochs=3, lr=0.1))
    for name in ("config.json", "env.json", "log.jsonl", "log.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    # One checkpoint layout for both trainers: named by the optimizer step (21 steps per epoch
    # here), the newest 2 kept, each with its SHA-256.
    assert [p.name for p in RunDir(run_dir).checkpoints()] == ["step_0000042.pt", "step_0000063.pt"]
    assert (run_dir / "checkpoints" / "step_0000063.pt.sha256").is_file()
    logged = records(run_dir)
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    # Learning happened: 3 epochs of an MLP on digits are far above chance (measured ~0.9).
    assert result.test_acc > 5 * CHANCE and result.train_acc > 5 * CHANCE
    assert result.gap_acc == pytest.approx(result.train_acc - result.test_acc, abs=1e-12)
    assert result.protocol.norm == norm and result.protocol.head == "none"
    assert ClassifierResult.from_json(run_dir) == result
    assert RunDir(run_dir).read_status()["status"] == "done" and RunDir(run_dir).is_done()
    # The head ("classifier") is left out; every other layer carries the norm.
    layers = {layer.name: layer for layer in result.layers}
    assert layers["classifier"].norm == "none"
    assert {layer.norm for name, layer in layers.items() if name != "classifier"} == {norm}
    # Per-layer stats logged every epoch, all finite; SRN's activity each epoch for srn only.
    for r in logged:
        assert math.isfinite(r["srank/features.1"]) and math.isfinite(r["sigma_max/classifier"])
        assert (r["srn_active_fraction"] is None) == (norm != "srn")
    if norm == "srn":
        # The activity is the share of SRN layers whose raw stable rank exceeds the target.
        srn = [layer for layer in result.layers if layer.norm == "srn"]
        expected = sum(layer.raw_srank > layer.target_srank for layer in srn) / len(srn)
        assert result.srn_active_fraction == pytest.approx(expected)
        mean = sum(r["srn_active_fraction"] for r in logged) / len(logged)
        assert result.srn_active_fraction_mean == pytest.approx(mean)
    else:
        assert result.srn_active_fraction is None and result.srn_active_fraction_mean is None


def test_sn_head_on_request_and_srn_caps_stable_rank(tmp_path):
    cfg = tiny(tmp_path, model="small_cnn", width=0.25, norm="srn", rank_ratio=0.3,
               head="sn", epochs=1, augment="crop", train_subset=384)  # fmt: skip
    _, result = train(cfg)
    norms = {layer.name: layer.norm for layer in result.layers}
    assert norms.pop("classifier") == "sn" and set(norms.values()) == {"srn"}
    assert result.protocol.head == "sn"
    # The last epoch's logged layer columns are the final layers: the raw weight's stable rank
    # and the normalized one's, which differ where the cap binds.
    last = records(RunDir.for_config(cfg).path)[-1]
    for layer in result.layers:
        assert last[f"raw_srank/{layer.name}"] == pytest.approx(layer.raw_srank, rel=1e-6)
        assert last[f"srank/{layer.name}"] == pytest.approx(layer.srank, rel=1e-6)
    assert any(layer.raw_srank > 1.1 * layer.srank for layer in result.layers)
    for layer in result.layers:
        if layer.norm == "srn":
            # SRN's forward output has stable rank min(srank, r) once u, v have converged; after
            # a handful of 1-iteration steps the estimate is close but not exact: 10% slack.
            assert layer.srank <= 1.1 * max(layer.target_srank, 1.0), layer


def test_a_non_finite_loss_ends_the_run_as_diverged(tmp_path):
    # lr 1e6 on an MLP: the loss is inf or NaN within the first epoch.
    run_dir, result = train(tiny(tmp_path, lr=1e6, epochs=3, norm="none", test_eval_size=100))
    assert result.diverged and "non-finite" in result.divergence
    assert result.protocol.test_size == 100  # its test numbers are the last epoch's subset
    assert ClassifierResult.from_json(run_dir).diverged
    assert len(records(run_dir)) < 3  # it stopped instead of training on NaN


def test_the_trainer_says_its_folder_and_how_the_run_ended(tmp_path, capsys):
    run_dir, result = train(tiny(tmp_path, norm="srn", epochs=1))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"run folder: {run_dir}"
    fraction = f"{result.srn_active_fraction:.0%}"
    assert lines[-1] == (
        f"done: train acc {result.train_acc:.4f}, test acc {result.test_acc:.4f}, gap "
        f"{result.gap_acc:+.4f}; SRN's cap binds on {fraction} of its layers; results in {run_dir}"
    )
    run_dir, result = train(tiny(tmp_path / "nan", lr=1e6, epochs=3, norm="none"))
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("diverged: train acc") and "SRN" not in last  # no SRN layer: no clause


def _assert_same_run(straight, resumed):
    """Same final weights (SRN vectors and BatchNorm statistics included) and the same log,
    timings aside."""
    a = load_checkpoint(RunDir(straight).checkpoints()[-1])
    b = load_checkpoint(RunDir(resumed).checkpoints()[-1])
    assert a["model"].keys() == b["model"].keys() and any(k.endswith("_u") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = records(straight), records(resumed)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if not k.endswith("_s")} == {
            k: v for k, v in y.items() if not k.endswith("_s")
        }


def test_resume_after_a_kill_gives_bitwise_the_same_weights(tmp_path, monkeypatch):
    # BatchNorm, SRN (u, v buffers), crop augmentation, SGD momentum and a cosine lr: every piece
    # of state a resume must restore.
    kw = dict(model="small_cnn", width=0.25, norm="srn", augment="crop", epochs=3,
              train_subset=384, train_eval_size=100)  # fmt: skip
    straight, _ = train(tiny(tmp_path / "a", **kw))

    class Killed(Exception):
        pass

    real_save = rundir_module.save_checkpoint
    calls = []

    def save_then_die(path, state):
        calls.append(state["epoch"])
        if state["epoch"] == 2:  # die after epoch 2 was logged but before its checkpoint
            raise Killed
        real_save(path, state)

    monkeypatch.setattr(rundir_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        classify.run(tiny(tmp_path / "b", **kw))
    monkeypatch.setattr(rundir_module, "save_checkpoint", real_save)
    killed_dir = tmp_path / "b" / "run"
    assert load_checkpoint(RunDir(killed_dir).checkpoints()[-1])["epoch"] == 1
    assert len(records(killed_dir)) == 2  # epoch 2 logged, not checkpointed

    resumed, _ = train(tiny(tmp_path / "b", resume=True, **kw))
    finished = [load_checkpoint(RunDir(d).checkpoints()[-1])["epoch"] for d in (straight, resumed)]
    assert finished == [3, 3]
    # The log was truncated to the checkpoint and continued: same epochs, same numbers.
    assert [r["epoch"] for r in records(resumed)] == [1, 2, 3]
    _assert_same_run(straight, resumed)


def test_ctrl_c_inside_an_epoch_checkpoints_that_step_and_resume_is_bitwise(tmp_path, monkeypatch):
    # As the GAN trainer: Ctrl-C ends the step in progress, a checkpoint holds that step (here
    # batch 3 of epoch 2: 384 images in batches of 64), and the resumed run replays epoch 2 from
    # batch 4 to bitwise the uninterrupted run's weights and log (running numbers included).
    kw = dict(model="small_cnn", width=0.25, norm="srn", augment="crop", epochs=3,
              train_subset=384, train_eval_size=100)  # fmt: skip
    real_build = classify.build_model

    def with_dropout(cfg, splits):  # no built-in model draws: dropout checks the per-step seeds
        return torch.nn.Sequential(torch.nn.Dropout(0.3), real_build(cfg, splits))

    monkeypatch.setattr(classify, "build_model", with_dropout)
    straight, _ = train(tiny(tmp_path / "a", **kw))
    stop = 6 + 3
    real_lr_at = classify.lr_at

    def lr_at_then_sigint(cfg, step, steps_per_epoch):  # Ctrl-C arrives during step `stop`
        if step >= 6:  # epoch 2's steps before the Ctrl-C: slow, for its time to be seen
            time.sleep(0.1)
        if step == stop - 1:
            signal.raise_signal(signal.SIGINT)
        return real_lr_at(cfg, step, steps_per_epoch)

    monkeypatch.setattr(classify, "lr_at", lr_at_then_sigint)
    with pytest.raises(KeyboardInterrupt, match=f"checkpoint of step {stop} kept in .*--resume"):
        classify.run(tiny(tmp_path / "b", **kw))
    monkeypatch.setattr(classify, "lr_at", real_lr_at)
    cut = RunDir(tmp_path / "b" / "run")
    assert cut.read_status()["status"] == "interrupted"
    state = load_checkpoint(cut.checkpoints()[-1])
    assert cut.checkpoints()[-1].name == f"step_{stop:07d}.pt"
    assert (state["epoch"], state["batch"]) == (1, 3) and state["epoch_sums"][2] == 3 * 64
    assert [r["epoch"] for r in records(cut.path)] == [1]
    resumed, _ = train(tiny(tmp_path / "b", resume=True, **kw))
    _assert_same_run(straight, resumed)
    # Epoch 2's time counts its steps before the Ctrl-C (0.3 s of sleep), not only those after.
    assert state["epoch_seconds"] >= 0.3
    assert records(cut.path)[1]["train_time_s"] >= state["epoch_seconds"]

    # stop_at (the tests' Ctrl-C) at an epoch boundary and inside an epoch, then resume twice.
    assert classify.run(tiny(tmp_path / "c", **kw), stop_at=6) is None
    assert classify.run(tiny(tmp_path / "c", resume=True, **kw), stop_at=15) is None
    assert RunDir(tmp_path / "c" / "run").checkpoints()[-1].name == "step_0000015.pt"
    assert RunDir(tmp_path / "c" / "run").read_status()["status"] == "interrupted"
    resumed, _ = train(tiny(tmp_path / "c", resume=True, **kw))
    _assert_same_run(straight, resumed)


def test_ctrl_c_in_the_step_that_diverges_ends_the_run_as_diverged(tmp_path, monkeypatch):
    cfg = tiny(tmp_path / "a", lr=1e6, epochs=3, norm="none")
    _, result = train(cfg)  # lr 1e6: a non-finite loss within the first epoch
    step = int(result.divergence.rpartition("at step ")[2])
    real_lr_at = classify.lr_at

    def lr_at_then_sigint(cfg, s, steps_per_epoch):  # Ctrl-C during the diverging step
        if s == step - 1:
            signal.raise_signal(signal.SIGINT)
        return real_lr_at(cfg, s, steps_per_epoch)

    monkeypatch.setattr(classify, "lr_at", lr_at_then_sigint)
    try:
        run_dir, again = train(tiny(tmp_path / "b", lr=1e6, epochs=3, norm="none"))
    except KeyboardInterrupt as err:  # would stop pytest itself
        pytest.fail(f"a diverged run reported an interruption: {err}")
    assert again.diverged and again.divergence == result.divergence
    assert RunDir(run_dir).read_status()["status"] == "diverged"
    with pytest.raises(ValueError, match="stop_at must be >= 1"):
        classify.run(tiny(tmp_path / "c"), stop_at=0)


def test_resume_refuses_a_different_config_and_leaves_the_run_as_it_was(tmp_path):
    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    classify.run(tiny(finished, epochs=1))
    classify.run(tiny(stopped, epochs=2), stop_at=1)
    for folder, status in ((finished, "done"), (stopped, "interrupted")):
        with pytest.raises(ValueError, match=r"refusing to resume(.|\n)*lr: 0.05 -> 0.1"):
            classify.run(tiny(folder, epochs=1 if folder == finished else 2, lr=0.1, resume=True))
        # Not marked failed: it still resumes under its own config (a sweep still counts it).
        assert RunDir(folder / "run").read_status()["status"] == status, folder
        assert not RunDir(folder / "run").error_file.exists()
    # Without config.json, the checkpoint's own config still refuses it.
    (stopped / "run" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"from the checkpoint's(.|\n)*lr: 0.05 -> 0.1"):
        classify.run(tiny(stopped, epochs=2, lr=0.1, resume=True))


def test_resume_allows_runtime_only_differences(tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic=True sets it
    classify.run(tiny(tmp_path, epochs=1))
    # data_dir too: a sweep resumed with another (or no) --data-dir finds its folder (the sweep's
    # hash leaves it out), so resuming must accept it.
    try:
        classify.run(tiny(tmp_path, epochs=1, resume=True, num_threads=1, device="cpu",
                          data_dir=str(tmp_path), deterministic=True))  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_finished_run_is_not_trained_again_and_resume_without_checkpoint_starts_fresh(
    tmp_path, capsys
):
    first = classify.run(tiny(tmp_path, epochs=1))
    log = rundir_module.RunDir.for_config(tiny(tmp_path, epochs=1)).log_jsonl.read_bytes()
    capsys.readouterr()
    # The same command again, with or without resume: the stored result, nothing retrained.
    assert classify.run(tiny(tmp_path, epochs=1)) == first
    assert classify.run(tiny(tmp_path, epochs=1, resume=True)) == first
    err = capsys.readouterr().err
    assert err.count("holds this run, finished: nothing to train (the trainers' --overwrite") == 2
    assert "epoch" not in err
    folder = rundir_module.RunDir.for_config(tiny(tmp_path, epochs=1))
    assert folder.log_jsonl.read_bytes() == log
    # Its metrics.json damaged: with resume, the final checkpoint is scored again, to the same
    # result; without, the folder's checkpoints are not overwritten.
    folder.metrics_file.write_text("{")
    with pytest.raises(FileExistsError, match="pass --resume"):
        classify.run(tiny(tmp_path, epochs=1))
    again = classify.run(tiny(tmp_path, epochs=1, resume=True))
    assert "metrics.json does not read" in capsys.readouterr().err
    assert again == first
    assert folder.log_jsonl.read_bytes() == log
    # An unfinished run (interrupted at a step) is not "finished": a rerun without resume is
    # refused, as it would overwrite its checkpoints.
    unfinished = tiny(tmp_path / "unfinished", epochs=2)
    classify.run(unfinished, stop_at=1)
    with pytest.raises(FileExistsError, match="holds checkpoints; pass --resume to continue it"):
        classify.run(unfinished)
    fresh = classify.run(tiny(tmp_path / "other", epochs=1, resume=True))
    assert "starting from scratch" in capsys.readouterr().err
    assert fresh == classify.run(tiny(tmp_path / "third", epochs=1))


def test_random_labels_are_trained_on_and_scored(tmp_path):
    cfg = tiny(tmp_path, label_noise=1.0, train_subset=200, epochs=1, batch_size=50,
               test_eval_size=100)  # fmt: skip
    data = classify.prepare_data(cfg)
    assert data.splits.num_train == 200 and len(data.eval_y) == 200  # train_eval_size 0 = all
    assert torch.equal(data.eval_y, data.splits.train_y)  # scored with the labels trained on
    # With 10 classes, a uniformly random label equals the true one with probability 1/10; of
    # 200 labels, fewer than 40 agreeing is a > 4-sigma certainty (binomial sd ~4.2).
    assert (data.splits.train_y == data.clean_y).sum() < 40
    # Same seed, same random labels (fixed for the whole run and for `analyze`).
    assert torch.equal(classify.prepare_data(cfg).splits.train_y, data.splits.train_y)
    run_dir, result = train(cfg)
    assert result.protocol.augment == "none" and result.protocol.train_size == 200
    # The logged curve scored 100 test digits; metrics.json scores all 450.
    assert result.protocol.test_eval_size_per_epoch == 100
    assert round(result.test_acc * 450, 6).is_integer()
    assert round(records(run_dir)[0]["test_acc"] * 100, 6).is_integer()


def test_the_train_accuracy_subset_is_not_biased_towards_noisy_labels(tmp_path):
    # Under partial noise the eval subset must hold noisy labels in the share the training set
    # does; drawn from the corruption's own permutation it took the corrupted positions first.
    cfg = tiny(tmp_path, label_noise=0.5, train_subset=1000, train_eval_size=200)
    data = classify.prepare_data(cfg)
    changed = data.splits.train_y != data.clean_y  # about 0.5 * 9/10 of the positions
    train_x = data.splits.train_x.flatten(1)
    same = (data.eval_x.flatten(1)[:, None] == train_x[None]).all(-1)
    same &= data.eval_y[:, None] == data.splits.train_y[None]
    eval_changed = torch.stack([changed[row.nonzero()[0, 0]] for row in same])
    # 200 examples: sd of the share ~0.035 around 0.45; the biased draw gave above 0.9.
    assert abs(eval_changed.float().mean() - changed.float().mean()) < 0.15
    # label_noise 0.5 replaces half the labels by uniform ones, 1/10 of which are the true one:
    # 1,000 labels, sd of the share ~0.016.
    assert abs(changed.float().mean() - 0.45) < 0.05


def test_train_accuracy_is_scored_on_the_train_eval_subset(tmp_path):
    # train_eval_size images of the 1,347: an accuracy over all of them is never a multiple of
    # 1/100 (1,347 has no factor in common with 100) unless it is 0 or 1.
    run_dir, result = train(tiny(tmp_path, epochs=1, train_eval_size=100))
    (logged,) = records(run_dir)
    assert 0 < logged["train_acc"] < 1 and round(logged["train_acc"] * 100, 6).is_integer()
    assert result.train_acc == logged["train_acc"] and result.protocol.train_eval_size == 100


def test_an_epoch_record_scores_each_loader_and_divides_the_running_sums():
    # The running sums are (loss sum, correct, count); eval-mode numbers come from the loaders.
    scores = {"test": (0.9, 0.6), "train-eval": (0.2, 0.95)}
    sums = torch.tensor([30.0, 40.0, 50.0], dtype=torch.float64)
    record = classify._epoch_record(1, 0.01, sums, 0.0, "test", "train-eval", scores.__getitem__)
    assert record["epoch"] == 2 and record["lr"] == 0.01
    assert (record["test_loss"], record["test_acc"]) == (0.9, 0.6)
    assert (record["train_loss"], record["train_acc"]) == (0.2, 0.95)
    assert record["gap_acc"] == pytest.approx(0.95 - 0.6)  # positive when overfitting
    assert record["gap_loss"] == pytest.approx(0.9 - 0.2)
    assert record["train_loss_running"] == pytest.approx(30 / 50)
    assert record["train_acc_running"] == pytest.approx(40 / 50)


def test_the_result_takes_the_whole_test_split_and_averages_the_binding_over_epochs(tmp_path):
    cfg = tiny(tmp_path, norm="srn", test_eval_size=100)
    splits = classify.prepare_data(cfg).splits
    model = classify.build_model(cfg, splits.dataset_shape)
    logged = [
        {"epoch": e, "train_acc": (0.81, 0.82, 0.83)[e - 1], "train_loss": 0.5, "test_acc": 0.7,
         "test_loss": 0.6, "srn_active_fraction": active}
        for e, active in ((1, 0.0), (2, 0.5), (3, 1.0))
    ]  # fmt: skip
    result = classify._result_of(cfg, logged, logged[-1], (0.9, 0.65), model, "", splits,
                                 1347, 100, 1)  # fmt: skip
    # The whole test split's numbers replace the last epoch's subset ones, the gap with them.
    assert (result.test_loss, result.test_acc, result.train_acc) == (0.9, 0.65, 0.83)
    assert result.gap_acc == pytest.approx(0.83 - 0.65)
    assert result.gap_loss == pytest.approx(0.9 - 0.5)
    assert (result.protocol.test_size, result.protocol.test_eval_size_per_epoch) == (450, 100)
    assert result.srn_active_fraction_mean == pytest.approx(0.5)  # over the epochs, not the end
    assert [p.srn_active_fraction for p in result.curve] == [0.0, 0.5, 1.0]
    subset = classify._result_of(cfg, logged, logged[-1], None, model, "", splits, 1347, 100, 1)
    assert (subset.test_acc, subset.protocol.test_size) == (0.7, 100)


def test_lr_schedule_values():
    steps = 10
    cos = ClassifyConfig(epochs=4, lr=0.2, schedule="cosine")
    assert classify.lr_at(cos, 0, steps) == pytest.approx(0.2)
    assert classify.lr_at(cos, 20, steps) == pytest.approx(0.1)  # half way: cos(pi/2) = 0
    step = ClassifyConfig(epochs=4, lr=0.2, schedule="step", milestones=(0.5, 0.75), lr_gamma=0.1)
    assert [classify.lr_at(step, s, steps) for s in (19, 20, 29, 30)] == pytest.approx(
        [0.2, 0.02, 0.02, 0.002]
    )
    warm = ClassifyConfig(epochs=4, lr=0.2, schedule="none", warmup_epochs=1)
    assert [classify.lr_at(warm, s, steps) for s in (0, 9, 10)] == pytest.approx([0.02, 0.2, 0.2])


def test_global_batch_must_fit_the_data(tmp_path):
    # A subset smaller than a batch is refused when the config is built (before any work) ...
    with pytest.raises(ValueError, match=r"batch_size \(256\) must be <= train_subset \(200\)"):
        tiny(tmp_path, train_subset=200, batch_size=256)
    # ... and a batch larger than the whole dataset (1,347 digits) when the data is read.
    refused = (
        r"batch_size \(--batch-size\) must be <= 1347, the training images of digits; got 2048"
    )
    with pytest.raises(ValueError, match=refused):
        classify.run(tiny(tmp_path, batch_size=2048))


def test_a_model_argument_the_family_refuses_makes_no_run_folder(tmp_path):
    # As a missing data folder: refused before the run folder (lock, status, error.txt) exists.
    with pytest.raises(TypeError, match=r"'mlp' does not take \['depth'\]"):
        classify.run(tiny(tmp_path, depth=7))
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2"):
        classify.run(tiny(tmp_path, model="resnet", depth=7))
    assert not list(tmp_path.iterdir())


def test_run_dir_name_spells_out_the_protocol():
    cfg = ClassifyConfig(dataset="digits", model="mlp", norm="srn", rank_ratio=0.3, seed=2)
    name = RunDir.for_config(cfg).path.name
    assert name.startswith("digits-mlp-srn0.3-s2-")
    assert RunDir.for_config(cfg).path.parent.name == cfg.out_dir
    # Runtime-only fields do not change the folder (so a resume finds it).
    same = ClassifyConfig(**{**config_to_dict(cfg), "milestones": (0.5, 0.75), "num_threads": 1,
                             "device": "cpu", "resume": True})  # fmt: skip
    assert RunDir.for_config(same).path.name == name


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_and_saves_the_plain_model(tmp_path):
    # torch.compile over SRN's parametrization: the same training to float32 rounding, and the
    # checkpoint holds the uncompiled model's keys, so analyze and layers read it as any run.
    from stablerank.train.analyze import load_run_model

    eager_dir, eager = train(tiny(tmp_path / "eager", norm="srn", rank_ratio=0.3, epochs=1))
    compiled_dir, compiled = train(
        tiny(tmp_path / "compiled", norm="srn", rank_ratio=0.3, epochs=1, compile=True)
    )
    a = load_checkpoint(RunDir(eager_dir).checkpoints()[-1])["model"]
    b = load_checkpoint(RunDir(compiled_dir).checkpoints()[-1])["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    assert compiled.test_acc == pytest.approx(eager.test_acc, abs=0.01)
    assert compiled.srn_active_fraction == eager.srn_active_fraction
    load_run_model(compiled_dir)  # strict load into a fresh, uncompiled model


def test_a_run_killed_after_its_last_epoch_ends_from_its_log_whose_nulls_read_as_nan(tmp_path):
    """Trained to the end but killed before ``metrics.json``: the rerun trains nothing and takes
    the final numbers from the last record of ``log.jsonl``, which holds null for a non-finite
    value (strict JSON)."""
    cfg = tiny(tmp_path, epochs=1)
    run_dir, first = train(cfg)
    (run_dir / "metrics.json").unlink()
    last = records(run_dir)[-1]
    assert last["test_loss"] == pytest.approx(first.test_loss)
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    lines[-1] = json.dumps({**last, "test_loss": None})
    (run_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
    again = classify.run(tiny(tmp_path, epochs=1, resume=True))
    assert math.isnan(again.test_loss) and again.test_acc == first.test_acc
