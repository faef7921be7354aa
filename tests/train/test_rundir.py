"""The run-folder contract both trainers share (stablerank.train.rundir.RunDir): naming, the lock,
the status, the take-over rule and resume; and the behaviour of the trainers that follows it."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from stablerank.config import config_from_dict
from stablerank.config.classify import ClassifyConfig, classify_preset
from stablerank.config.gan import GanConfig
from stablerank.train import classify
from stablerank.train import gan as gan_train
from stablerank.train.results import ClassifierResult
from stablerank.train.rundir import HELD_LOCKS_ENV, RunDir, RunLockedError
from stablerank.train.runtime import resolve_device

# A process that takes a run folder's lock, says so, and holds it until its stdin closes.
_HOLDER = textwrap.dedent(
    """
    import sys
    from stablerank.train.rundir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock of tmp_path/run."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "run")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    yield tmp_path / "run"
    proc.stdin.close()
    proc.wait(timeout=30)


def _tiny(tmp_path, **kw) -> ClassifyConfig:
    return classify_preset("tiny", out_dir=str(tmp_path), run_name="run", progress=False, **kw)


def _gan(tmp_path, **kw) -> GanConfig:
    base = {"dataset": "digits", "arch": "cnn", "ngf": 8, "ndf": 8, "z_dim": 16, "batch_size": 16,
            "device": "cpu", "n_final_samples": 0, "progress": False, "log_every": 1,
            "sample_every": 0, "g_steps": 2, "checkpoint_every": 1, "out_dir": str(tmp_path),
            "run_name": "run"}  # fmt: skip
    return config_from_dict(GanConfig, {**base, **kw})


# ----------------------------------------------------------------------------- lock


def test_a_second_process_gets_a_clear_error_and_the_holder_may_reenter(tmp_path, held):
    with pytest.raises(RunLockedError, match="being run by another process"), RunDir(held).lock():
        pass
    other = RunDir(tmp_path / "other")
    with other.lock(), other.lock():  # re-entrant in the process that holds it
        pass
    with other.lock():  # and released on exit
        pass


@pytest.mark.parametrize("refusal", [errno.EACCES, errno.EROFS])
def test_another_users_lock_file_is_tested_and_taken_without_write_access(
    tmp_path, held, monkeypatch, refusal
):
    # On a shared out dir another user's lock file is read-only to us (root would not see it),
    # as is every file of a read-only mount: an open that asks to write fails, and a held run
    # would read as killed. Where writing is allowed the lock file is opened for it: an NFS
    # client's flock needs that.
    real_open, writable = os.open, []

    def read_only(path, flags, *args):
        if str(path).endswith(".lock") and flags & (os.O_WRONLY | os.O_RDWR):
            writable.append(path)
            if "free" not in str(path):
                raise OSError(refusal, os.strerror(refusal), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert RunDir(held).is_locked()
    with pytest.raises(RunLockedError), RunDir(held).lock():
        pass
    free = RunDir(tmp_path / "free")
    with free.lock():
        pass
    assert not free.is_locked()
    assert len(writable) == 4 and sum("free" in str(p) for p in writable) == 2  # tried first


def test_processes_started_by_the_holder_pass_through(tmp_path):
    # An orchestrator holds the lock and launches torchrun: its workers must not be refused.
    folder = RunDir(tmp_path / "run")
    with folder.lock():
        child = subprocess.run([sys.executable, "-c", _HOLDER, str(folder.path)], input="",
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert str(folder.path.resolve()) not in os.environ.get(HELD_LOCKS_ENV, "")  # released


def test_a_trainer_refuses_a_run_another_process_holds_and_leaves_it_alone(tmp_path, held):
    with pytest.raises(RunLockedError):
        classify.run(_tiny(tmp_path, epochs=1))
    with pytest.raises(RunLockedError):
        gan_train.run(_gan(tmp_path))
    assert sorted(p.name for p in held.iterdir()) == [".lock"]


# ----------------------------------------------------------------------------- naming


def test_both_trainers_name_their_folder_by_one_rule():
    c = ClassifyConfig(dataset="digits", model="mlp", norm="sn", seed=3)
    g = GanConfig(dataset="digits", d_norm="srn", rank_ratio=0.2, seed=3, n_final_samples=0)
    assert RunDir.for_config(c).path.name.startswith("digits-mlp-sn-s3-")
    assert RunDir.for_config(g).path.name.startswith("gan-digits-cnn-srn0.2-s3-")
    # The hash covers what the run computes, not where or how it runs.
    for cfg, runtime in ((c, {"device": "cpu", "resume": True, "out_dir": "runs"}),
                         (g, {"device": "cpu", "resume": True, "log_every": 7})):  # fmt: skip
        assert RunDir.for_config(dataclasses.replace(cfg, **runtime)) == RunDir.for_config(cfg)
        assert RunDir.for_config(dataclasses.replace(cfg, seed=4)) != RunDir.for_config(cfg)
    assert RunDir.for_config(dataclasses.replace(c, run_name="x")).path.as_posix() == "runs/x"
    # A run of N processes (torchrun) computes another run: its default name says so.
    ddp = RunDir.for_config(c, world_size=2)
    assert ddp.path.name == RunDir.for_config(c).path.name + "-ddp2" and ddp.world_size == 2
    assert RunDir.for_config(dataclasses.replace(c, run_name="x"), 2).path.name == "x"


def test_a_run_of_another_number_of_processes_is_not_taken_or_continued(tmp_path):
    cfg = _tiny(tmp_path, epochs=1)
    done = classify.run(cfg)
    path = RunDir.for_config(cfg).path
    as_ddp = RunDir(path, world_size=2)
    assert as_ddp.trained_world_size() == 1
    assert as_ddp.finished_result(cfg, ClassifierResult) is None
    resume = dataclasses.replace(cfg, resume=True)
    for take in (cfg, resume, dataclasses.replace(resume, overwrite=True)):
        with pytest.raises(FileExistsError, match=r"trained as one process, and this one runs by "
                           r"2 processes \(torchrun\).*continue it as one process"):  # fmt: skip
            as_ddp.begin(take)
    assert ClassifierResult.from_json(path) == done  # left as it was
    # A folder from before env.json said: its result's protocol does (a DDP classifier's).
    env = json.loads((path / "env.json").read_text())
    (path / "env.json").write_text(json.dumps({k: v for k, v in env.items() if k != "world_size"}))
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["protocol"]["world_size"] = 2
    (path / "metrics.json").write_text(json.dumps(metrics))
    assert RunDir(path).trained_world_size() == 2
    assert RunDir(path).finished_result(cfg, ClassifierResult) is None
    with pytest.raises(FileExistsError, match=r"torchrun --nproc_per_node 2, pass --overwrite"):
        RunDir(path).begin(resume)
    as_ddp.begin(dataclasses.replace(cfg, overwrite=True))  # replaces it
    assert not as_ddp.checkpoints()


@pytest.mark.parametrize("cls", [ClassifyConfig, GanConfig])
@pytest.mark.parametrize("name", ["../x", "../../x", "/abs", "a/b", "..", ".", ""])
def test_run_name_cannot_leave_out_dir(cls, name):
    with pytest.raises(ValueError, match="plain folder name inside out_dir"):
        cls(run_name=name)


@pytest.mark.parametrize("device", ["tpu:0", "cuda:x", "gpu"])
def test_both_configs_refuse_an_unknown_device_and_accept_the_known_ones(device):
    for cls in (ClassifyConfig, GanConfig):
        with pytest.raises(ValueError, match="device must be auto, cpu, mps, cuda or cuda:N"):
            cls(device=device)
        for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
            cls(device=ok)


def test_asking_for_a_missing_backend_is_an_error_not_the_cpu():
    if not torch.backends.mps.is_available():
        with pytest.raises(RuntimeError, match="no MPS device"):
            resolve_device("mps")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu:0")


# ----------------------------------------------------------------------------- status


def test_status_says_done_diverged_interrupted_and_failed(tmp_path, monkeypatch):
    done = RunDir(tmp_path / "run")
    classify.run(_tiny(tmp_path, epochs=1))
    assert done.read_status()["status"] == "done" and done.is_done()

    diverged = RunDir(tmp_path / "d" / "run")
    result = classify.run(_tiny(tmp_path / "d", epochs=2, lr=1e6, norm="srn"))
    assert result.diverged and diverged.read_status()["status"] == "diverged" and diverged.is_done()
    assert diverged.read_status()["divergence"] == result.divergence

    real_evaluate = classify.evaluate
    calls = []

    def evaluate_then(error):
        def fake(*args, **kw):
            calls.append(1)
            if len(calls) > 2:  # epoch 1 evaluated (test + train subsets), then the error
                raise error
            return real_evaluate(*args, **kw)

        return fake

    monkeypatch.setattr(classify, "evaluate", evaluate_then(KeyboardInterrupt()))
    stopped = RunDir(tmp_path / "i" / "run")
    with pytest.raises(KeyboardInterrupt, match=r"the newest checkpoint kept in .*--resume"):
        classify.run(_tiny(tmp_path / "i", epochs=3))
    assert stopped.read_status()["status"] == "interrupted"
    assert [p.name for p in stopped.checkpoints()] == ["step_0000021.pt"]  # epoch 1's

    calls.clear()
    monkeypatch.setattr(classify, "evaluate", evaluate_then(RuntimeError("disk on fire")))
    failed = RunDir(tmp_path / "f" / "run")
    with pytest.raises(RuntimeError):
        classify.run(_tiny(tmp_path / "f", epochs=3))
    status = failed.read_status()
    assert status["status"] == "failed" and status["error"] == "RuntimeError: disk on fire"
    assert "disk on fire" in failed.error_file.read_text()
    monkeypatch.setattr(classify, "evaluate", real_evaluate)
    # An orchestrator's own fields survive the trainer's writes (merged, not replaced).
    failed.write_status(attempts=2)
    classify.run(_tiny(tmp_path / "f", epochs=3, resume=True))
    assert failed.read_status() == {**status, "status": "done", "error": "", "divergence": "",
                                    "attempts": 2}  # fmt: skip


def test_gan_status_follows_the_same_rule(tmp_path):
    folder = RunDir(tmp_path / "run")
    assert gan_train.run(_gan(tmp_path), stop_at=1) is None
    assert folder.read_status()["status"] == "interrupted" and folder.checkpoints()
    with pytest.raises(FileExistsError, match="holds checkpoints; pass --resume to continue it"):
        gan_train.run(_gan(tmp_path))  # the same config, without --resume
    gan_train.run(_gan(tmp_path, resume=True))
    assert folder.is_done()


def test_a_cut_or_foreign_status_file_reads_as_none_and_is_rewritten(tmp_path):
    folder = RunDir(tmp_path)
    for text in ('{"status": "runn', '["done"]'):  # cut by a full disk; not ours
        (tmp_path / "status.json").write_text(text)
        assert folder.read_status() == {} and not folder.is_done()
        folder.write_status(attempts=1)
        assert folder.read_status() == {"attempts": 1}


def test_only_the_newest_checkpoints_are_kept_with_their_checksums(tmp_path):
    folder = RunDir(tmp_path)
    for step in (1, 2, 3):
        folder.save_checkpoint(step, {"step": step}, keep=2)
    assert [p.name for p in folder.checkpoints()] == ["step_0000002.pt", "step_0000003.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.sha256")) == [
        "step_0000002.pt.sha256", "step_0000003.pt.sha256"]  # fmt: skip


def test_run_files_get_the_permissions_of_a_plain_open(tmp_path):
    # A temporary file is 0600; results must stay readable by whoever the umask lets read them.
    from stablerank.train import checkpoint

    old = os.umask(0o022)
    checkpoint._umask.cache_clear()  # read once per process: read this test's
    try:
        RunDir(tmp_path).write_status(status="done")
    finally:
        os.umask(old)
        checkpoint._umask.cache_clear()
    assert (tmp_path / "status.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- take-over


def test_overwrite_replaces_the_old_run_entirely(tmp_path):
    cfg = _tiny(tmp_path, epochs=2)
    classify.run(cfg)
    folder = RunDir(tmp_path / "run")
    (folder.path / "analysis.json").write_text("{}")  # an analysis of the old weights
    (folder.path / "el_hist.png").write_bytes(b"old")
    # Another config: --resume, which would be refused as "config differs", is not offered.
    with pytest.raises(FileExistsError, match="holds checkpoints of another run") as err:
        classify.run(dataclasses.replace(cfg, epochs=1))
    assert "epochs: 2 -> 1" in str(err.value) and "--resume" not in str(err.value)
    new = classify.run(dataclasses.replace(cfg, epochs=1, overwrite=True))
    assert [p.name for p in folder.checkpoints()] == ["step_0000021.pt"]
    assert [r.step for r in new.curve] == [1]
    assert not (folder.path / "analysis.json").exists()
    assert not (folder.path / "el_hist.png").exists()
    assert ClassifierResult.from_json(folder.path) == new


def test_resume_without_a_checkpoint_does_not_take_over_another_run(tmp_path, capsys):
    cfg = _tiny(tmp_path, epochs=1)
    classify.run(cfg)
    folder = RunDir(tmp_path / "run")
    for path in folder.checkpoints():
        path.unlink()
    with pytest.raises(FileExistsError, match=r"another run(.|\n)*lr: 0.05 -> 0.1"):
        classify.run(dataclasses.replace(cfg, lr=0.1, resume=True))
    # The same run killed before its first checkpoint (so without results): a fresh start that
    # says so.
    folder.metrics_file.unlink()
    classify.run(dataclasses.replace(cfg, resume=True))
    assert "no checkpoint" in capsys.readouterr().err


def test_resume_with_overwrite_continues_its_checkpoints_and_refuses_another_runs(tmp_path, capsys):
    cfg = _tiny(tmp_path, epochs=2)
    classify.run(cfg, stop_at=1)
    capsys.readouterr()
    classify.run(dataclasses.replace(cfg, resume=True, overwrite=True))
    assert "resume: continuing from" in capsys.readouterr().err  # not deleted and retrained
    # The checkpoints of another run (another lr): refused with --resume, before any rank reads
    # them; --overwrite alone replaces them.
    other = _tiny(tmp_path / "b", epochs=2, lr=0.1)
    classify.run(other, stop_at=1)
    same = dataclasses.replace(other, lr=0.05, overwrite=True)
    with pytest.raises(ValueError, match=r"lr: 0.1 -> 0.05 \(--overwrite without --resume"):
        classify.run(dataclasses.replace(same, resume=True))
    assert RunDir.for_config(other).read_status()["status"] == "interrupted"
    assert classify.run(same) == classify.run(_tiny(tmp_path / "c", epochs=2))
    # An unreadable config.json: the checkpoint's own config decides, and it is the same run.
    cut = _tiny(tmp_path / "d", epochs=2)
    classify.run(cut, stop_at=1)
    RunDir.for_config(cut).config_file.write_text("{not json")
    capsys.readouterr()
    classify.run(dataclasses.replace(cut, resume=True))
    assert "resume: continuing from" in capsys.readouterr().err


def test_gan_resume_before_any_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    fresh = gan_train.run(_gan(tmp_path, resume=True))
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "starting from scratch" in err
    assert fresh.steps == 2


# ----------------------------------------------------------------------------- the classifier


def test_a_nan_loss_stops_the_classifier_before_its_update(tmp_path):
    # lr 1e6: the loss is non-finite within the first epoch; SRN's projection never sees NaN
    # weights (no LinAlgError) because the step that made the NaN loss is not applied.
    result = classify.run(_tiny(tmp_path, epochs=3, lr=1e6, norm="srn"))
    assert result.diverged and "non-finite" in result.divergence and "at step" in result.divergence
    assert ClassifierResult.from_json(tmp_path / "run").diverged


def test_the_trainers_print_a_plain_progress_line_without_a_terminal_unless_told_not_to(
    tmp_path, capsys
):
    classify.run(dataclasses.replace(_tiny(tmp_path, epochs=1), progress=True))
    err = capsys.readouterr().err
    assert "train step 21/21 epoch 1 loss" in err and "ETA" in err  # 1347 digits / 64 = 21
    gan_train.run(_gan(tmp_path, progress=True, run_name="gan"))
    assert "gan step 2/2" in capsys.readouterr().err
    classify.run(dataclasses.replace(_tiny(tmp_path, epochs=1), run_name="quiet"))  # no progress
    gan_train.run(_gan(tmp_path, run_name="quiet-gan"))
    err = capsys.readouterr().err
    assert "train step" not in err and "gan step" not in err


def test_the_data_folder_stays_out_of_a_standalone_runs_folder_name(tmp_path):
    # It was hashed into the name: `--resume --data-dir D` (D the default folder, given) found no
    # checkpoint in a new folder and trained from scratch, though resuming accepts another folder.
    cls = classify_preset("tiny", out_dir=str(tmp_path))
    gan = GanConfig(out_dir=str(tmp_path), dataset="digits", n_final_samples=0)
    for cfg in (cls, gan):
        moved = dataclasses.replace(cfg, data_dir=str(tmp_path / "elsewhere"))
        assert RunDir.for_config(moved).path == RunDir.for_config(cfg).path
        assert (
            RunDir.for_config(dataclasses.replace(cfg, seed=1)).path != RunDir.for_config(cfg).path
        )


def test_the_same_ctrl_c_relayed_after_the_loop_stopped_is_still_one(monkeypatch):
    """The terminal's Ctrl-C stops the training loop; the executor's relay of it may arrive once
    the loop has ended, while the stop is being recorded: it is ignored there too, and a later
    Ctrl-C goes to the handler that was there before."""
    import signal

    import stablerank.train.runtime as runtime

    monkeypatch.setattr(runtime, "_FORCE_AFTER_S", 3600.0)
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with runtime.deferred_sigint(True, "run") as flag:
            signal.raise_signal(signal.SIGINT)  # taken by the loop: a flag
        assert flag["stop"] and seen == []
        signal.raise_signal(signal.SIGINT)  # the relay, after the loop
        assert seen == []
        monkeypatch.setattr(runtime, "_FORCE_AFTER_S", 0.0)
        signal.raise_signal(signal.SIGINT)  # a second Ctrl-C
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_waiting_lock_says_it_waits_and_goes_on_where_the_filesystem_has_no_locks(
    tmp_path, monkeypatch, capsys
):
    import errno
    import fcntl

    from stablerank.train import rundir

    path = tmp_path / "out" / ".report.lock"
    with rundir.waiting_lock(path, "waiting"):
        assert path.is_file()  # created, with its folder
    assert "waiting" not in capsys.readouterr().err  # nobody else held it

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    entered = []
    with rundir.waiting_lock(path, "waiting"):
        entered.append(True)
    assert entered and "cannot lock" in capsys.readouterr().err
