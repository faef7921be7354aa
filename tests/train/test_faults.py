"""Faults and bad input (issue 12): another run's results are never taken over, a torn log line,
a cut or altered checkpoint and a crafted one each end in a resumed run or one clear error, never
in silently changed results or in code run from a file."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import shutil

import pytest
import torch

from stablerank.config import config_from_dict
from stablerank.config.classify import ClassifyConfig, classify_preset
from stablerank.config.gan import GanConfig
from stablerank.train import analyze, classify
from stablerank.train import gan as gan_train
from stablerank.train.checkpoint import CorruptCheckpointError, load_checkpoint
from stablerank.train.results import ClassifierResult, GanResult
from stablerank.train.rundir import RunDir


def _tiny(tmp_path, **kw) -> ClassifyConfig:
    return classify_preset("tiny", out_dir=str(tmp_path), run_name="run", progress=False, **kw)


def _gan(tmp_path, **kw) -> GanConfig:
    base = {"dataset": "digits", "arch": "cnn", "ngf": 8, "ndf": 8, "z_dim": 16, "batch_size": 16,
            "device": "cpu", "n_final_samples": 0, "progress": False, "log_every": 1,
            "sample_every": 0, "g_steps": 4, "checkpoint_every": 1, "d_norm": "srn",
            "out_dir": str(tmp_path), "run_name": "g"}  # fmt: skip
    return config_from_dict(GanConfig, {**base, **kw})


def test_a_folder_with_another_runs_results_is_not_taken_over(tmp_path):
    cfg = _tiny(tmp_path, epochs=1)
    first = classify.run(cfg)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # results without a checkpoint
    other = dataclasses.replace(cfg, lr=0.1)
    with pytest.raises(FileExistsError, match="already holds a run's results") as err:
        classify.run(other)
    assert "another run (lr: 0.05 -> 0.1)" in str(err.value) and "--resume" not in str(err.value)
    assert ClassifierResult.from_json(tmp_path / "run") == first  # untouched
    assert classify.run(dataclasses.replace(cfg, overwrite=True)) == first


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    cfg = _tiny(tmp_path, epochs=2)
    straight = classify.run(_tiny(tmp_path / "a", epochs=2))
    classify.run(dataclasses.replace(cfg, epochs=2))
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"epoch": 3, "train_ac')  # a kill mid-write
    resumed = classify.run(dataclasses.replace(cfg, resume=True))
    assert resumed == straight
    assert log.read_text().count("\n") == 2


def test_a_flipped_bit_in_a_checkpoint_is_a_clear_error(tmp_path):
    cfg = _tiny(tmp_path, epochs=1)
    classify.run(cfg)
    path = RunDir(tmp_path / "run").checkpoints()[-1]  # the only one: epoch 1
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=r"step_0000021\.pt.*SHA-256"):
        load_checkpoint(path)
    # with no intact checkpoint left, loading the run is one clear error
    with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint .*remove the run"):
        analyze.load_run_model(tmp_path / "run")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "checkpoint.pt"
    with path.open("wb") as fh:
        pickle.dump({"model": payload}, fh)
    with pytest.raises(CorruptCheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save([1, 2], path)
    with pytest.raises(CorruptCheckpointError, match="does not hold a dict"):
        load_checkpoint(path)


def test_gan_resume_falls_back_to_the_older_intact_checkpoint(tmp_path, capsys):
    straight = gan_train.run(_gan(tmp_path / "a"))
    cfg = _gan(tmp_path / "b")
    gan_train.run(cfg, stop_at=3)
    newest = tmp_path / "b" / "g" / "checkpoints" / "step_0000003.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # cut by a kill mid-write
    resumed = gan_train.run(dataclasses.replace(cfg, resume=True))
    assert "trying the previous checkpoint" in capsys.readouterr().err
    assert dataclasses.replace(resumed, train_seconds=0.0) == dataclasses.replace(
        straight, train_seconds=0.0
    )


def test_gan_run_name_cannot_leave_out_dir(tmp_path):
    for name in ("../../x", "/abs/x", "a/b", ".."):
        with pytest.raises(ValueError, match="run_name must be a plain folder name"):
            _gan(tmp_path, run_name=name)


@pytest.mark.parametrize(
    ("cls", "field", "value", "match"),
    [
        (GanConfig, "beta1", 1.0, r"'beta1' must be >= 0.0 and < 1.0, got 1.0"),
        (GanConfig, "beta2", 1.0, r"'beta2' must be >= 0.0 and < 1.0, got 1.0"),
        (GanConfig, "ema", 1.0, r"'ema' must be >= 0.0 and < 1.0, got 1.0"),
        (GanConfig, "device", "tpu:0", "device must be"),
        (ClassifyConfig, "label_noise", math.nan, "finite"),
        (ClassifyConfig, "lr", math.inf, "finite"),
    ],
)
def test_config_refuses_what_the_code_would_reject_later(cls, field, value, match):
    with pytest.raises(ValueError, match=match):
        cls(**{field: value})


def test_a_missing_data_folder_is_refused_before_a_run_folder_is_made(tmp_path):
    from stablerank.data import DatasetNotFoundError

    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        classify.run(_tiny(tmp_path / "c", dataset="fashion-mnist", data_dir=missing))
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        gan_train.run(_gan(tmp_path / "g", dataset="fashion-mnist", data_dir=missing))
    assert not (tmp_path / "c").exists() and not (tmp_path / "g").exists()


def test_a_gan_scored_without_a_feature_network_is_refused_when_its_config_is_built():
    # `gan --dataset digits` used to train, then fail at the final scoring.
    with pytest.raises(ValueError, match="no offline feature network for dataset 'digits'"):
        GanConfig(dataset="digits")
    with pytest.raises(ValueError, match="no offline feature network"):
        GanConfig(dataset="digits", n_final_samples=0, eval_every=1)
    assert GanConfig(dataset="digits", n_final_samples=0).scoring_net is None  # nothing scored
    assert GanConfig(dataset="digits", feature_net="test-pixels").scoring_net == "test-pixels"
    assert GanConfig().scoring_net == "fmnist-cnn"


def test_resumed_gan_result_is_typed(tmp_path):
    result = gan_train.run(_gan(tmp_path, g_steps=2))
    assert isinstance(result, GanResult) and result.steps == 2
    assert torch.isfinite(torch.tensor(result.d_loss))


def test_stale_temporary_files_of_a_killed_write_are_removed_on_start(tmp_path):
    cfg = _tiny(tmp_path, epochs=2)
    classify.run(cfg, stop_at=2)  # unfinished: a rerun resumes it
    stale = tmp_path / "run" / "checkpoints" / ".step_0000002.pt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)  # what a kill inside a checkpoint write leaves
    status_tmp = tmp_path / "run" / ".status.json.def456.tmp"  # ... or inside a status write
    status_tmp.write_text("{")
    classify.run(dataclasses.replace(cfg, resume=True))
    assert not stale.exists() and not status_tmp.exists()


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    from stablerank.train import checkpoint

    folder = RunDir(tmp_path)
    folder.write_status(status="running")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        folder.write_status(status="done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
    assert folder.read_status() == {"status": "running"}


_KILL_WORKER = """
import sys
from stablerank.config.classify import classify_preset
from stablerank.train import classify
cfg = classify_preset("tiny", out_dir=sys.argv[1], run_name="run", progress=False, epochs=200,
                      num_threads=1,
                      model="small_cnn", width=0.25, train_subset=256, norm="srn", resume=True)
classify.run(cfg)
"""


@pytest.mark.slow
def test_killed_at_random_points_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random moments (inside epochs, checkpoint and log writes alike), then the
    same command again: the end result is the uninterrupted run's, bitwise."""
    import random
    import subprocess
    import sys
    import time

    script = tmp_path / "worker.py"
    script.write_text(_KILL_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch(run_dir):
        argv = [sys.executable, str(script), str(run_dir)]
        return subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    t0 = time.perf_counter()
    reference = launch(tmp_path / "straight")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    whole = time.perf_counter() - t0  # start-up s (import, data: ~2-3 s) and training W (~8 s)
    rng = random.Random(0)
    killed = tmp_path / "killed"
    kills = 0
    # Kills after 20-35% of the whole run's time land in every phase (start-up, epochs, their
    # checkpoint and log writes) and, scaled to this machine's speed, are at least three: two
    # killed launches train at most 2 (0.35 (s + W) - s), so the third needs at least
    # s + 0.3 W + 1.3 s, more than its 0.35 (s + W) unless training takes about 40 times the
    # start-up. (Fixed sleeps of 1-5 s let a fast machine finish after two kills.) A rerun of
    # the finished run returns at once, so the loop stops once it is done.
    for _ in range(10):
        proc = launch(killed)
        time.sleep(rng.uniform(0.2, 0.35) * whole)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait(timeout=60)
        if RunDir(killed / "run").is_done():
            break
    final = launch(killed)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert kills >= 3  # the test did interrupt the run
    a = ClassifierResult.from_json(tmp_path / "straight" / "run")
    b = ClassifierResult.from_json(killed / "run")
    assert a == b


def test_analysing_a_diverged_run_is_an_error(tmp_path):
    cfg = _tiny(tmp_path, lr=1e6, epochs=2)
    assert classify.run(cfg).diverged
    with pytest.raises(ValueError, match="diverged"):
        analyze.run(analyze.AnalyzeConfig(n_pairs=10, n_jacobian=2), tmp_path / "run")


def test_an_unfinished_run_is_not_analysed_so_no_analysis_outlives_its_training(tmp_path):
    # Interrupted runs used to be analysed from their newest checkpoint (a partial model), and
    # the analysis stayed beside the results of the resumed training.
    from stablerank.config.gan import GanAnalysisConfig
    from stablerank.train import gan_analysis

    classify.run(_tiny(tmp_path, epochs=2), stop_at=1)
    with pytest.raises(ValueError, match=r"has not finished training .*status: interrupted"):
        analyze.run(analyze.AnalyzeConfig(n_pairs=10, n_jacobian=2), tmp_path / "run")
    assert not (tmp_path / "run" / "analysis.json").exists()
    RunDir(tmp_path / "run").write_status(status="running")  # as a kill -9 leaves it
    with pytest.raises(ValueError, match="running when it was stopped, no process holds it"):
        analyze.run(analyze.AnalyzeConfig(n_pairs=10, n_jacobian=2), tmp_path / "run")
    gan_train.run(_gan(tmp_path), stop_at=2)
    with pytest.raises(ValueError, match="has not finished training"):
        gan_analysis.run(GanAnalysisConfig(), tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        analyze.run(analyze.AnalyzeConfig(), tmp_path / "g" / "config.json")


def test_a_batch_larger_than_the_subset_is_refused_at_config_time():
    with pytest.raises(ValueError, match=r"batch_size \(256\) must be <= train_subset \(200\)"):
        classify_preset("tiny", train_subset=200, batch_size=256)
