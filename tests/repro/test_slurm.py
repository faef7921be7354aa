"""``--executor slurm`` end to end against a fake SLURM (``_fake_slurm.py``: ``sbatch``,
``sacct``, ``scancel``, ``scontrol`` and ``srun`` on PATH, running the jobs on this machine), so
that submitit's real ``SlurmExecutor`` writes the sbatch script, submits it, polls ``sacct`` and
reads each job's result pickle: the sweep's results equal the sequential path's, a rerun submits
nothing, a job whose node fails is a failed run while the others go on, and a preempted job is
requeued and resumes its run from its checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("submitit")

import stablerank
from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro import pipeline, sweeps
from stablerank.train.rundir import RunDir

pytestmark = pytest.mark.slow

_FAKE = Path(__file__).with_name("_fake_slurm.py")
_COMMANDS = ("sbatch", "sacct", "scancel", "scontrol", "srun")


@dataclass(frozen=True)
class FakeSlurm:
    """The fake cluster's state folder, read as the test needs it."""

    state: Path

    def submitted(self) -> list[int]:
        """The ids of the jobs submitted so far."""
        return sorted(int(p.stem) for p in self.state.glob("*.sh"))

    def sbatch_options(self, job_id: int) -> dict[str, str]:
        """The ``#SBATCH --key=value`` lines of the job's script."""
        lines = (self.state / f"{job_id}.sh").read_text().splitlines()
        pairs = (line.removeprefix("#SBATCH --").split("=", 1) for line in lines
                 if line.startswith("#SBATCH --"))  # fmt: skip
        return {pair[0]: pair[-1] for pair in pairs}

    def calls(self) -> list[str]:
        """The commands called (but ``srun``), in order."""
        return (self.state / "calls").read_text().splitlines()


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlurm]:
    """The fake SLURM's commands first on PATH, its state in ``tmp_path/slurm``; its jobs are
    ended at teardown."""
    from submitit.slurm import slurm

    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for command in _COMMANDS:
        wrapper = bin_dir / command
        fake = f"{shlex.quote(sys.executable)} {shlex.quote(str(_FAKE))}"
        wrapper.write_text(f'#!/bin/sh\nexec {fake} {command} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    # The jobs import the stablerank under test, wherever they start (the venv may hold another).
    source = str(Path(stablerank.__file__).parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    )
    # submitit's sacct poller is one per process, caches finished jobs by id (the fake's ids
    # repeat from test to test) and polls every 2 s at best: a fresh one here, polling every 1 s.
    monkeypatch.setattr(slurm.SlurmJob, "watcher", slurm.SlurmInfoWatcher(delay_s=1))
    # A job that ended without a result pickle: submitit waits 15 s for it to show up on a slow
    # shared filesystem; here it is written before the job ends, if at all.
    monkeypatch.setattr(slurm.SlurmJob, "_results_timeout_s", 1)
    yield FakeSlurm(state)
    # Each job's scheduler leads a session of its own, its tasks' processes in it.
    schedulers = state / "schedulers"
    for pid in schedulers.read_text().split() if schedulers.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)


@pytest.fixture
def one_run_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny sweep cut to its first classifier, shatter and GAN runs: each kind's trainer, at a
    third of the time (each run is a job that starts python and torch)."""
    tiny = sweeps.SWEEPS["tiny"]

    def first_of_each_kind(**seeds: int) -> list[sweeps.Run]:
        runs = tiny(**seeds)
        return [
            next(r for r in runs if r.kind == kind) for kind in dict.fromkeys(r.kind for r in runs)
        ]

    monkeypatch.setitem(sweeps.SWEEPS, "tiny", first_of_each_kind)


def _tiny(out: Path, **kw) -> ReproduceConfig:
    return ReproduceConfig(sweep="tiny", out_dir=str(out), seeds=1, progress=False, device="cpu",
                           **kw)  # fmt: skip


def _slurm(out: Path, gpus: int = 2) -> ReproduceConfig:
    """The tiny sweep as SLURM jobs of 1 CPU and ``gpus`` GPUs (the fake has none: the runs use
    the CPU) for 5 minutes, two at once."""
    return _tiny(out, executor="slurm", slurm_partition="p", slurm_gpus_per_run=gpus,
                 slurm_cpus_per_run=1, slurm_time=5, slurm_array_parallelism=2)  # fmt: skip


def test_a_sweep_is_one_job_array_with_the_sequential_results_and_a_rerun_submits_nothing(
    tmp_path, fake_slurm, one_run_per_kind, sweep_results
):
    from submitit import JobEnvironment

    out = tmp_path / "slurm"
    done = pipeline.run(_slurm(out))
    assert set(done.runs.values()) == {"done"}
    n = len(done.runs)
    assert fake_slurm.submitted() == [1000]  # the whole sweep in one array
    expected = {
        "array": f"0-{n - 1}%2",
        "partition": "p",
        "cpus-per-task": "1",
        "gpus-per-node": "2",
        "time": "5",
        # SLURM's notice ahead of a preemption or time-out, which requeues the job.
        "signal": f"{JobEnvironment.USR_SIG}@90",
        "job-name": "stablerank",
    }
    options = fake_slurm.sbatch_options(1000)
    assert {key: options.get(key) for key in expected} == expected
    assert any(call.startswith("sacct ") for call in fake_slurm.calls())

    pipeline.run(_tiny(tmp_path / "sequential", executor="sequential"))
    assert sweep_results(out) == sweep_results(tmp_path / "sequential")

    # Finished runs are not submitted again: on a cluster each job would wait for its GPUs only
    # to find its run done.
    again = pipeline.run(_slurm(out))
    assert set(again.runs.values()) == {"done"}
    assert fake_slurm.submitted() == [1000]


def test_a_job_whose_node_fails_fails_its_run_alone_and_a_rerun_submits_that_run_alone(
    tmp_path, fake_slurm, one_run_per_kind, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_SLURM_FAIL", "1000_1")  # the array's second task: no result
    first = pipeline.run(_slurm(tmp_path, gpus=0))
    # No GPUs: no --gpus-per-node line at all, which clusters without GPU GRES may refuse.
    assert "gpus-per-node" not in fake_slurm.sbatch_options(1000)
    assert list(first.runs.values()).count("done") == len(first.runs) - 1
    err = capsys.readouterr().err
    # Its line says which job failed, in which state, and what the job's error stream holds.
    assert len([line for line in err.splitlines() if " failed " in line]) == 1
    assert "job 1000_1 failed" in err and "(state: FAILED)" in err, err
    assert "the node failed" in err
    # ... and where its log is; the report names the job too (the run had no folder: `new`).
    log = tmp_path / "submitit" / "1000_1" / "1000_1_0_log.err"
    assert f"job 1000_1 failed (FAILED; log: {log})" in err
    report = (tmp_path / "report.md").read_text()
    assert f"job 1000_1 failed (state FAILED); its log: {log}" in report

    monkeypatch.delenv("FAKE_SLURM_FAIL")
    again = pipeline.run(_slurm(tmp_path, gpus=0))
    assert set(again.runs.values()) == {"done"}
    assert fake_slurm.submitted() == [1000, 1001]
    assert "array" not in fake_slurm.sbatch_options(1001)  # the failed run alone: a lone job


def test_a_preempted_job_is_requeued_and_its_run_resumes_from_its_checkpoint(tmp_path, fake_slurm):
    """SLURM's notice ahead of a preemption (``scancel --signal``, as submitit's own
    ``job._interrupt()`` sends it) stops the run at a checkpoint; submitit requeues the job with
    ``scontrol requeue``, and the job's second start resumes the run from that checkpoint."""
    from submitit import JobEnvironment

    from stablerank.config.classify import classify_preset
    from stablerank.repro.executors import make_executor

    cfg = _slurm(tmp_path)
    config = classify_preset("tiny", epochs=40)  # 21 steps per epoch on digits: seconds of work
    run = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", config).placed(cfg)
    outcomes = []
    mapping = threading.Thread(
        target=lambda: outcomes.extend(make_executor(cfg, tmp_path).map([run], print)),
        daemon=True,  # should the job never end, the test fails rather than hangs
    )
    mapping.start()
    log, deadline = run.run_dir / "log.jsonl", time.monotonic() + 120
    while (not log.is_file() or log.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)  # three epochs trained: the job is inside its training loop
    subprocess.run(["scancel", "--signal", JobEnvironment.USR_SIG, "1000"], check=True)
    mapping.join(timeout=120)
    assert [o.state for o in outcomes] == ["done"]
    assert RunDir(run.run_dir).read_status()["attempts"] == 2
    assert "scontrol requeue 1000" in fake_slurm.calls()

    # The first start stopped with a checkpoint at the step it reached, the second resumed there.
    errors = (tmp_path / "submitit" / "1000" / "1000_0_log.err").read_text()
    step = int(re.search(r"preempted \(interrupted; the checkpoint of step (\d+) kept", errors)[1])
    checkpoint = run.run_dir / "checkpoints" / f"step_{step:07d}.pt"
    assert f"resume: continuing from {checkpoint}" in (run.run_dir / "output.log").read_text()


def test_a_rerun_while_the_jobs_have_not_ended_follows_them_and_submits_nothing(
    tmp_path, fake_slurm, capsys
):
    """The same command run again while its SLURM jobs wait or run (after a Ctrl-C, or from
    another shell) follows those jobs: submitting their runs again would queue a second job for
    each, to find its run locked or done."""
    from stablerank.config.classify import classify_preset
    from stablerank.repro.executors import make_executor

    cfg = dataclasses.replace(_slurm(tmp_path), slurm_array_parallelism=1)  # one job at a time
    config = classify_preset("tiny", epochs=40)  # seconds of work each
    runs = [sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", dataclasses.replace(config, seed=seed))
            .placed(cfg) for seed in (0, 1)]  # fmt: skip
    first: list = []
    command = threading.Thread(
        target=lambda: first.extend(make_executor(cfg, tmp_path).map(runs, print)), daemon=True
    )
    command.start()
    recorded = [tmp_path / "submitit" / "jobs" / run.name for run in runs]
    deadline = time.monotonic() + 60
    while not all(path.is_file() for path in recorded) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = make_executor(cfg, tmp_path).map(runs, print)
    command.join(timeout=120)
    assert [o.state for o in again] == ["done", "done"] == [o.state for o in first]
    assert fake_slurm.submitted() == [1000]  # one array, followed by both commands
    assert ("following 2 runs already in SLURM job 1000, not ended: not submitted again, with "
            "the options of the command that submitted them (scancel them to submit with this "
            "one's) (squeue -j 1000 shows them)") in capsys.readouterr().err  # fmt: skip
    # Once the jobs have ended, their runs are finished: a rerun skips them without a job.
    assert [o.state for o in make_executor(cfg, tmp_path).map(runs, print)] == ["skipped"] * 2


def test_a_rerun_does_not_guess_when_sacct_fails_and_follows_a_suspended_job_until_it_ends(
    tmp_path, fake_slurm, monkeypatch
):
    from stablerank.config.classify import classify_preset
    from stablerank.repro import executors
    from stablerank.repro.executors import make_executor

    monkeypatch.setattr(executors, "_SACCT_EVERY_S", 0.5)

    cfg = _slurm(tmp_path)
    run = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", classify_preset("tiny", epochs=1))
    run = run.placed(cfg)
    # A job this out dir submitted before (its id kept, its pickle in its folder), in sacct.
    (tmp_path / "submitit" / "jobs").mkdir(parents=True)
    (tmp_path / "submitit" / "jobs" / run.name).write_text("999_0")
    (tmp_path / "submitit" / "999_0").mkdir()
    (tmp_path / "submitit" / "999_0" / "999_0_submitted.pkl").touch()
    (fake_slurm.state / "next_job_id").write_text("1000")
    (fake_slurm.state / "999_0.state").write_text("SUSPENDED")
    sacct = Path(shutil.which("sacct"))
    working = sacct.read_text()
    sacct.write_text("#!/bin/sh\necho 'sacct: error: slurmdbd: connection refused' >&2\nexit 1\n")
    with pytest.raises(RuntimeError, match=r"sacct failed .* submitting them again would queue"):
        make_executor(cfg, tmp_path).map([run], print)
    sacct.write_text(working)
    assert fake_slurm.submitted() == []  # nothing submitted on a guess

    # Suspended (preemption by suspension): followed, and not taken for ended.
    outcomes: list = []
    command = threading.Thread(
        target=lambda: outcomes.extend(make_executor(cfg, tmp_path).map([run], print)), daemon=True
    )
    command.start()
    command.join(timeout=4)
    assert command.is_alive() and not outcomes  # still following
    (fake_slurm.state / "999_0.state").write_text("CANCELLED")
    command.join(timeout=60)
    assert [o.state for o in outcomes] == ["failed"] and "job 999_0 failed" in outcomes[0].error
    # The report names the state it ended in, not the SUSPENDED that submitit last saw.
    assert "(state CANCELLED)" in RunDir(run.run_dir).read_status()["error"]
    assert fake_slurm.submitted() == []


def test_the_fakes_scancel_cancels_the_tasks_not_started_too(tmp_path, fake_slurm):
    """``scancel ID`` (the line a Ctrl-C'd SLURM sweep prints) ends the running task and cancels
    the pending ones, which never start, as SLURM does; the fake's scheduler started them."""
    out = tmp_path / "out"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --array=0-2%1\n"
                      f"srun --output {out}_%a.out --error {out}_%a.err sleep 60\n")  # fmt: skip
    subprocess.run(["sbatch", str(script)], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while not (fake_slurm.state / "1000_0.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", "1000"], check=True)
    scheduler = int((fake_slurm.state / "schedulers").read_text())
    while time.monotonic() < deadline:  # the scheduler ends once no task is left
        try:
            os.kill(scheduler, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    states = [(fake_slurm.state / f"1000_{i}.state").read_text() for i in range(3)]
    assert states == ["CANCELLED"] * 3
    assert not (fake_slurm.state / "1000_1.pid").exists()


def test_a_refused_submission_says_so_once_and_leaves_no_files_to_pile_up(
    tmp_path, fake_slurm, monkeypatch, capfd
):
    """sbatch refusing the array (an unknown partition): one error that names what to check,
    sbatch's own message printed once, and none of the pickles and scripts submitit wrote for
    it left behind; a fixed rerun submits every run."""
    from stablerank.config.classify import classify_preset
    from stablerank.repro.executors import make_executor

    cfg = _slurm(tmp_path)
    runs = [sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", classify_preset("tiny", epochs=1,
                                                                            seed=s)).placed(cfg)
            for s in (0, 1)]  # fmt: skip
    monkeypatch.setenv("FAKE_SLURM_REFUSE", "invalid partition specified: p")
    with pytest.raises(
        RuntimeError, match=r"sbatch refused the job array of 2 runs \(its messa"
    ) as e:
        make_executor(cfg, tmp_path).map(runs, print)
    assert "invalid partition" not in str(e.value)  # the CLI prints it: not again
    assert capfd.readouterr().err.count("invalid partition specified") == 1
    left = [p.name for p in (tmp_path / "submitit").rglob("*") if p.is_file()]
    assert left == [".lock"]
    monkeypatch.delenv("FAKE_SLURM_REFUSE")
    outcomes = make_executor(cfg, tmp_path).map(runs, print)
    assert [o.state for o in outcomes] == ["done", "done"] and len(fake_slurm.submitted()) == 1
