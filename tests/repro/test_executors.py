"""The signal logic of a submitit job, in this process: SLURM's notice of a preemption or
time-out (submitit's USR2 handler, faked here) becomes a Ctrl-C for the run in progress, and
submitit's handler still runs: after the run stopped, at once when no run takes Ctrl-C, and after
the grace period when the run does not stop in time. Then the executor chosen for this machine,
the submitit arrays and waves (with a fake submitter) and the terminal's line per run."""

from __future__ import annotations

import os
import signal
import time
import warnings

import pytest

pytest.importorskip("submitit")

from stablerank.repro.executors import _preemption_as_ctrl_c


class _Requeued(SystemExit):
    pass


@pytest.fixture
def submitit_handler():
    """A stand-in for submitit's USR2 handler (checkpoint, requeue, exit), recording its calls."""
    import submitit

    sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    calls = []

    def handler(signum, frame):
        calls.append(time.monotonic())
        raise _Requeued

    previous = (signal.signal(sig, handler), signal.getsignal(signal.SIGINT))
    yield sig, calls
    signal.signal(sig, previous[0])
    signal.signal(signal.SIGINT, previous[1])


def test_the_notice_is_a_ctrl_c_for_the_run_then_submitit_requeues(submitit_handler, capfd):
    sig, calls = submitit_handler
    taken = []
    signal.signal(signal.SIGINT, lambda *_: taken.append(1))  # a trainer's deferred Ctrl-C
    with pytest.raises(_Requeued), _preemption_as_ctrl_c(grace_s=5) as requeue:
        os.kill(os.getpid(), sig)
        assert taken == [1] and calls == []  # the run stops first ...
        requeue(KeyboardInterrupt("interrupted; the checkpoint of step 7 kept"))
    assert len(calls) == 1  # ... then submitit requeues
    # The job log says why the trainer's next line speaks of a Ctrl-C.
    assert "preemption or time-out notice: the run stops as on Ctrl-C" in capfd.readouterr().err


def test_without_a_run_taking_ctrl_c_submitit_requeues_at_once(submitit_handler):
    sig, calls = submitit_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job before or after its run
    with pytest.raises(_Requeued), _preemption_as_ctrl_c(grace_s=5):
        os.kill(os.getpid(), sig)
    assert len(calls) == 1


def test_a_run_that_does_not_stop_in_time_is_requeued_after_the_grace_period(submitit_handler):
    sig, calls = submitit_handler
    signal.signal(signal.SIGINT, lambda *_: None)  # takes Ctrl-C, then keeps going
    t0 = time.monotonic()
    with pytest.raises(_Requeued), _preemption_as_ctrl_c(grace_s=1):
        os.kill(os.getpid(), sig)
        time.sleep(10)  # a long evaluation
    assert len(calls) == 1 and 0.9 < calls[0] - t0 < 5
    assert signal.alarm(0) == 0  # no alarm left behind


def test_a_ctrl_c_while_submitit_starts_its_jobs_is_not_lost_and_they_start_blocked():
    import subprocess
    import sys

    from stablerank.repro.executors import _sigint_blocked

    probe = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    # A command takes Ctrl-C, even where this test runs with it ignored (a background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), _sigint_blocked():
            # A job started now takes no Ctrl-C until it runs its run ...
            child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
            assert child.stdout.strip() == "True"
            os.kill(os.getpid(), signal.SIGINT)  # ... and this command still gets one
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- choice and output


def test_the_executor_is_sized_for_this_machine(monkeypatch, tmp_path):
    from stablerank.config.reproduce import ReproduceConfig
    from stablerank.repro import executors

    def make(**kw):
        return executors.make_executor(ReproduceConfig(device="cpu", **kw), tmp_path)

    monkeypatch.setattr(executors.os, "cpu_count", lambda: 8)
    assert make(threads=2).workers == 4  # cores / threads per run
    assert make(threads=2, nproc_per_node=2).workers == 2  # ... and per process of a DDP run
    assert make(threads=16).__class__ is executors.SequentialExecutor  # at least one: a pool of 1
    # A pool of one would only hide the run's output in output.log: this process runs it.
    assert make(workers=1).__class__ is executors.SequentialExecutor

    def on_gpus(gpus, **kw):
        monkeypatch.setattr(executors, "visible_gpus", lambda: gpus)
        return executors.make_executor(ReproduceConfig(device="cuda", **kw), tmp_path)

    pool = on_gpus(["0", "1", "2", "3"], nproc_per_node=2)
    assert (pool.workers, pool.gpus) == (2, ["0,1", "2,3"])  # each torchrun run on two GPUs
    assert on_gpus(["0", "1", "2", "3"]).gpus == ["0", "1", "2", "3"]
    with pytest.raises(RuntimeError, match="--nproc-per-node 2 trains each run on 2 GPUs"):
        on_gpus(["0"], nproc_per_node=2)
    # What a dry run says of each (a cluster's allocation is checked before it is spent).
    assert pool.describe() == (
        "2 worker processes at once, each run 2 torchrun processes of 1 torch thread(s) on its own "
        "GPUs (CUDA_VISIBLE_DEVICES 0,1 | 2,3)"
    )
    # More workers than GPUs share them (as _gpu_queue hands them out); fewer leave some idle.
    shared = on_gpus(["0", "1"], workers=4).describe()
    assert shared.endswith("(CUDA_VISIBLE_DEVICES 0 | 1, runs sharing them round-robin)")
    assert on_gpus(["0", "1", "2"], workers=2).describe().endswith("(CUDA_VISIBLE_DEVICES 0 | 1)")
    assert make(threads=2).describe() == "4 worker processes at once, each run 2 torch thread(s)"
    assert make(threads=2, nproc_per_node=2).describe() == (
        "2 worker processes at once, each run 2 torchrun processes of 2 torch thread(s)"
    )
    assert make(workers=1).describe() == "one run after another in this process"
    assert make(workers=1, nproc_per_node=2).describe() == (
        "one run after another, each as 2 torchrun processes"
    )
    with pytest.raises(RuntimeError, match=r"SLURM's commands .* none on PATH"):
        make(executor="slurm")  # this machine is no SLURM login node
    srun = tmp_path / "bin" / "srun"  # submitit's test that it runs on a SLURM cluster
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    slurm = make(executor="slurm", slurm_partition="gpu", slurm_gpus_per_run=2, slurm_time=90,
                 slurm_array_parallelism=8, nproc_per_node=2).describe()  # fmt: skip
    assert slurm.startswith(
        "one SLURM job array through submitit on partition gpu: per run 2 GPU(s), 4 CPU core(s) "
        "and 90 min, each run 2 torchrun processes of 1 torch thread(s); requeued when "
        "preempted, and up to 3 times when out of time; at most 8 at once"
    )
    local = make(executor="submitit-local", threads=4).describe()
    assert local.startswith("submitit's local cluster, 2 jobs at a time, each run 4 torch thread")
    assert not (tmp_path / "submitit").exists()  # describing makes no folder: a dry run's


def test_a_cpu_slurm_job_whose_threads_do_not_fill_its_cores_is_warned_about(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from stablerank.config.reproduce import ReproduceConfig
    from stablerank.repro import executors

    monkeypatch.setattr(executors.shutil, "which", lambda command: f"/bin/{command}")  # SLURM's

    def make(**kw):
        kw = {"slurm_gpus_per_run": 0, **kw}
        return executors.make_executor(ReproduceConfig(executor="slurm", device="cpu", **kw),
                                       tmp_path)  # fmt: skip

    with pytest.warns(UserWarning, match=r"reserves 4 CPU cores .* 1 thread.*--threads 4 fits"):
        make()  # the defaults: 4 cores reserved, 1 thread used
    with pytest.warns(UserWarning, match="more threads than cores; --threads 1 fits"):
        make(threads=2, nproc_per_node=2, slurm_cpus_per_run=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(threads=4)
        make(threads=0)  # torch's default: the cores SLURM binds the job to
        make(slurm_gpus_per_run=1)  # a GPU job's cores serve its GPU


def test_a_ctrl_c_while_slurm_jobs_are_submitted_keeps_their_ids_and_names_every_job(
    tmp_path, capsys
):
    """Cut between sbatch and the job files, a rerun would submit the runs a second time."""
    from types import SimpleNamespace

    from stablerank.repro import executors

    class Job:
        state = "PENDING"

        def __init__(self, job_id):
            self.job_id = job_id

        def done(self):
            return False

    class Cluster:
        def map_array(self, fn, chunk, devices):
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C while sbatch runs
            return [Job(f"1002_{i}") for i in range(len(chunk))]

    runs = [SimpleNamespace(name=f"r{i}", run_dir=tmp_path / f"r{i}") for i in range(3)]
    ex = object.__new__(executors.SubmititExecutor)  # no cluster here to submit to
    ex.cluster, ex.wave, ex.folder, ex.executor, ex.gpus = "slurm", 2, tmp_path, Cluster(), []
    ex._queued_jobs = lambda runs: {"r0": Job("998_4")}  # r0's job, submitted before, pending
    with pytest.raises(KeyboardInterrupt):
        ex.map(runs, lambda *a: None)
    assert {p.name: p.read_text() for p in (tmp_path / "jobs").glob("r*")} == {
        "r1": "1002_0",
        "r2": "1002_1",
    }
    assert "squeue -j 998,1002 shows those not ended" in capsys.readouterr().err


def test_slurm_submits_one_array_and_the_local_cluster_waves_of_workers(tmp_path):
    from types import SimpleNamespace

    from stablerank.repro import executors
    from stablerank.repro.execute import Outcome

    class Job:
        state = "COMPLETED"

        def __init__(self, run):
            self.run, self.job_id = run, "1_0"

        def done(self):
            return True

        def result(self):
            return Outcome(self.run.name, "done")

    arrays = []

    class Fake:
        def map_array(self, fn, chunk, devices):
            arrays.append(list(zip(chunk, devices, strict=True)))
            return [Job(run) for run in chunk]

    # Runs never started (no folder): each one is submitted.
    runs = [SimpleNamespace(name=f"r{i}", run_dir=tmp_path / f"r{i}") for i in range(5)]
    # SLURM gives each job its GPUs; a local wave's jobs take the GPU groups in turn.
    for cluster, gpus, devices in (
        ("slurm", [], [[None] * 5]),
        ("local", [], [[None, None], [None, None], [None]]),
        ("local", ["0,1", "2,3"], [["0,1", "2,3"], ["0,1", "2,3"], ["0,1"]]),
    ):
        arrays.clear()
        ex = object.__new__(executors.SubmititExecutor)  # no cluster here to submit to
        ex.cluster, ex.wave, ex.folder, ex.executor = cluster, 2, tmp_path, Fake()
        ex.gpus = gpus
        assert [o.name for o in ex.map(runs, lambda *a: None)] == [r.name for r in runs]
        assert [[d for _, d in chunk] for chunk in arrays] == devices, cluster


def test_a_submitit_job_sees_the_gpus_it_was_given(monkeypatch):
    # submitit's local jobs start with CUDA_VISIBLE_DEVICES="" (its gpus_per_node defaults to
    # 0): without their own devices they trained on the CPU, on a machine full of GPUs.
    from stablerank.repro import executors

    seen = []

    def execute(run, stopped):
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])

    monkeypatch.setattr(executors, "_execute_unless_stopped", execute)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    job = executors._requeueable_job(None, 1)
    job("run", "2,3")
    job("run", None)  # SLURM's jobs: as SLURM set it
    assert seen == ["2,3", "2,3"]


def test_gpus_are_named_as_a_child_process_reads_them(monkeypatch):
    # A child reads CUDA_VISIBLE_DEVICES against the whole machine: the first GPU of a command
    # that sees "3,7" is "3" to its workers, not "0" (another user's GPU on a shared node).
    import torch

    from stablerank.repro import executors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")
    assert executors.visible_gpus() == ["3", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert executors.visible_gpus() == ["0", "1"]
    assert executors.gpu_groups(["0", "1", "2", "3", "4"], 2) == ["0,1", "2,3"]  # 4 idles
    assert executors.gpu_groups(["0"], 2) == []


def test_the_line_of_each_run_lines_up_and_gives_its_time_only_when_it_ran(capsys):
    from types import SimpleNamespace

    from stablerank.repro.execute import Outcome
    from stablerank.repro.executors import print_outcome

    run = SimpleNamespace(name="c1")
    print_outcome(3, 12, run, Outcome("c1", "failed", 61.2, "in train: boom"))
    print_outcome(12, 12, run, Outcome("c1", "skipped"))
    assert capsys.readouterr().err.splitlines() == [
        "[ 3/12] failed   c1 (61 s): in train: boom", "[12/12] skipped  c1"]  # fmt: skip


def test_each_worker_takes_its_own_gpu_round_robin(monkeypatch):
    # Five workers over GPUs 3 and 7: 3, 7, 3, 7, 3; each worker's CUDA_VISIBLE_DEVICES is the one
    # it takes from the queue at start.
    import multiprocessing as mp

    from stablerank.repro import executors

    ctx = mp.get_context("spawn")
    assert executors._gpu_queue(ctx, 5, []) is None
    queue = executors._gpu_queue(ctx, 5, ["3", "7"])
    monkeypatch.setattr(executors, "die_with_parent", lambda: None)  # not this test process
    monkeypatch.setattr(executors, "_stop", executors._stop)  # _init_worker sets it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    seen = []
    for _ in range(5):
        executors._init_worker(queue, 0, None)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["3", "7", "3", "7", "3"]


def test_a_job_that_ends_without_its_run_fails_the_run_in_its_folder_for_the_report(tmp_path):
    import fcntl

    # A job that never began its run (a node failure) left no trace in the run's folder: the
    # report listed the run as `new`, with no reason, and the job's id and log were only on the
    # terminal. A run that another process holds, or that is finished, is left alone.
    from types import SimpleNamespace

    from stablerank.repro import executors
    from stablerank.repro.execute import run_state
    from stablerank.repro.records import collect
    from stablerank.train.rundir import LOCK_FILE, RunDir

    class Job:
        def __init__(self, i):
            self.job_id, self.state = f"7_{i}", "FAILED"
            self.paths = SimpleNamespace(stderr=tmp_path / f"7_{i}" / f"7_{i}_0_log.err")

        def done(self):
            return True

        def result(self):
            raise RuntimeError("has not produced any output (state: FAILED)\nthe node failed")

    class Fake:
        def map_array(self, fn, chunk, devices):
            return [Job(i) for i in range(len(chunk))]

    runs = [SimpleNamespace(name=f"r{i}", run_dir=tmp_path / f"r{i}", analysis=None, kind="k")
            for i in range(3)]  # fmt: skip
    RunDir(runs[1].run_dir).write_status(status="running", stage="train")  # killed mid-run
    ex = object.__new__(executors.SubmititExecutor)
    ex.cluster, ex.wave, ex.folder, ex.executor, ex.gpus = "slurm", 2, tmp_path, Fake(), []
    # Another process runs r2 (its lock taken as another process takes it): not this job's run.
    runs[2].run_dir.mkdir()
    held = os.open(runs[2].run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        outcomes = ex.map(runs, lambda *a: None)
        assert collect(runs)[2].problem == "starting in another process"
    finally:
        os.close(held)
    assert [o.state for o in outcomes] == ["failed"] * 3
    assert f"job 7_0 failed (FAILED; log: {tmp_path}/7_0/7_0_0_log.err)" in outcomes[0].error
    assert [run_state(r) for r in runs] == ["failed", "failed", "new"]
    problems = [rec.problem for rec in collect(runs)]
    assert problems == [
        f"job 7_0 failed (state FAILED); its log: {Job(0).paths.stderr}",
        f"in train: job 7_1 failed (state FAILED); its log: {Job(1).paths.stderr}",
        "not trained yet",  # the report's "why" of a run never started
    ]
    assert "the node failed" in (runs[0].run_dir / "error.txt").read_text()


def test_each_job_is_reported_as_it_ends_after_a_line_that_says_where_the_jobs_are(
    tmp_path, monkeypatch, capsys
):
    # The lines came in the array's order: the GANs, submitted first as the longest runs, held
    # back the line of every job that ended before them. And nothing said which SLURM job the
    # runs were, or where its logs went, while the queue held them.
    from types import SimpleNamespace

    from stablerank.repro import executors
    from stablerank.repro.execute import Outcome

    polls = []

    class Job:
        state = "COMPLETED"

        def __init__(self, i, ends_at):
            self.job_id, self.name, self.ends_at = f"7_{i}", f"r{i}", ends_at

        def done(self):
            polls.append(self.job_id)
            return polls.count(self.job_id) > self.ends_at

        def result(self):
            return Outcome(self.name, "done")

    class Fake:
        def map_array(self, fn, chunk, devices):
            return [Job(i, ends_at) for i, ends_at in enumerate([2, 0, 1])]

    monkeypatch.setattr(executors, "_POLL_S", 0, raising=False)
    runs = [SimpleNamespace(name=f"r{i}", run_dir=tmp_path / f"r{i}") for i in range(3)]
    ex = object.__new__(executors.SubmititExecutor)
    ex.cluster, ex.wave, ex.folder, ex.executor, ex.gpus = "slurm", 2, tmp_path, Fake(), []
    reported = []
    outcomes = ex.map(runs, lambda i, n, run, outcome: reported.append((i, run.name)))
    assert reported == [(1, "r1"), (2, "r2"), (3, "r0")]
    assert [o.name for o in outcomes] == ["r0", "r1", "r2"]  # in the runs' order all the same
    assert capsys.readouterr().err.splitlines() == [
        f"submitted 3 runs as SLURM job 7 (squeue -j 7 shows them); job logs in {tmp_path}/7_*/, "
        "each run's output in its folder's output.log"
    ]


def test_after_ctrl_c_the_slurm_jobs_run_on_and_the_command_says_how_to_follow_them(capsys):
    # It said to run the same command once the jobs had ended, but not how to see when they
    # had; a rerun before then follows the jobs (test_slurm.py).
    from types import SimpleNamespace

    from stablerank.repro.executors import _stop_jobs

    jobs = [SimpleNamespace(job_id=job) for job in ("1002_0", "1002_1", "998_4")]
    _stop_jobs(jobs, None)  # 998_4: a job of an earlier command that this one followed
    assert capsys.readouterr().err.strip() == (
        "the SLURM jobs run on: squeue -j 1002,998 shows those not ended, scancel 1002 998 stops "
        "them; the same command follows them again and collects their results"
    )


def test_a_held_job_is_reported_in_the_state_it_ended_in(tmp_path, monkeypatch):
    """A job submitit took for ended while suspended is followed through sacct: when sacct says
    it ended, that state is its state; when it resumed and ended with its result pickle, sacct's
    last word (RUNNING) is not, and submitit's own state is."""
    from types import SimpleNamespace

    from stablerank.repro import executors

    monkeypatch.setattr(executors, "_POLL_S", 0)
    monkeypatch.setattr(executors, "_SACCT_EVERY_S", 0)

    class Job:  # submitit's cached SUSPENDED: done() says ended
        def __init__(self, job_id):
            self.job_id, self.state = job_id, "SUSPENDED"
            self.paths = SimpleNamespace(result_pickle=tmp_path / f"{job_id}.pkl")

        def done(self):
            return True

    cancelled, resumed = Job("5_0"), Job("5_1")
    said = iter([{"5_0": "SUSPENDED", "5_1": "SUSPENDED"}, {"5_0": "CANCELLED", "5_1": "RUNNING"}])

    def sacct(job_ids):
        states = next(said)
        if states["5_1"] == "RUNNING":
            resumed.paths.result_pickle.touch()  # it ran on and wrote its result
            resumed.state = "FAILED"  # as submitit reads it once asked again
        return {job: states[job] for job in job_ids}

    monkeypatch.setattr(executors, "_sacct_states", sacct)
    ended = {job.job_id: state for job, state in executors._as_completed([cancelled, resumed])}
    assert ended == {"5_0": "CANCELLED", "5_1": "FAILED"}


def test_a_preempted_job_ends_only_when_sacct_says_preempted_twice_in_a_row(tmp_path, monkeypatch):
    """submitit takes a PREEMPTED job for live forever (job.done() stays False, job.result()
    waits): a job the cluster requeues (PREEMPTED, then PENDING) is followed on, one it does not
    requeue (PREEMPTED at two sacct calls in a row) ends as PREEMPTED, and its run is failed with
    the reason, not waited for."""
    from types import SimpleNamespace

    from stablerank.config.classify import classify_preset
    from stablerank.config.reproduce import ReproduceConfig
    from stablerank.repro import executors, sweeps
    from stablerank.train.rundir import RunDir

    monkeypatch.setattr(executors, "_POLL_S", 0)
    monkeypatch.setattr(executors, "_SACCT_EVERY_S", 0)

    class Job:  # submitit's view: preempted, never done
        def __init__(self, job_id):
            self.job_id, self.state = job_id, "PREEMPTED"
            self.paths = SimpleNamespace(
                result_pickle=tmp_path / f"{job_id}.pkl", stderr=tmp_path / f"{job_id}.err"
            )

        def done(self):
            return False

        def result(self):
            raise AssertionError("job.result() of a preempted job waits forever")

    requeued, cancelled = Job("7_0"), Job("7_1")
    said = iter(
        [
            {"7_0": "PREEMPTED", "7_1": "PREEMPTED"},
            {"7_0": "PENDING", "7_1": "PREEMPTED"},  # 7_1: not requeued
            {"7_0": "PREEMPTED"},  # preempted again, once: still live
            {"7_0": "RUNNING"},
            {"7_0": "PREEMPTED"},
            {"7_0": "PREEMPTED"},
        ]
    )
    asked: list[list[str]] = []

    def sacct(job_ids):
        asked.append(sorted(job_ids))
        return next(said)

    monkeypatch.setattr(executors, "_sacct_states", sacct)
    ended = list(executors._as_completed([requeued, cancelled]))
    assert [(job.job_id, state) for job, state in ended] == [
        ("7_1", "PREEMPTED"),
        ("7_0", "PREEMPTED"),
    ]
    assert len(asked) == 6

    class RequeuedThenPreemptedAgain(Job):  # submitit's view changes between the polls
        polls = 0

        def done(self):
            self.polls += 1
            self.state = "PENDING" if self.polls == 2 else "PREEMPTED"  # requeued, then again
            return False

    said = iter([{"9_0": "PREEMPTED"}] * 3)
    asked.clear()
    ended = list(executors._as_completed([RequeuedThenPreemptedAgain("9_0")]))
    # The reading of the first preemption does not count towards the second's two in a row.
    assert [state for _, state in ended] == ["PREEMPTED"] and len(asked) == 3

    # The map: the preempted job's run fails with the reason, and result() is not waited on.
    cfg = ReproduceConfig(sweep="tiny", out_dir=str(tmp_path), executor="slurm")
    run = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", classify_preset("tiny", epochs=1))
    run = run.placed(cfg)
    executor = executors.SubmititExecutor(tmp_path / "submitit", "slurm", cfg, wave=1)
    monkeypatch.setattr(executor, "_submit_or_follow", lambda job_fn, runs: [Job("8_0")])
    monkeypatch.setattr(executors, "_requeueable_job", lambda stop_file, grace_s: None)
    said = iter([{"8_0": "PREEMPTED"}] * 2)
    (outcome,) = executor.map([run], lambda *_: None)
    assert outcome.state == "failed" and "the cluster did not requeue it" in outcome.error
    assert "(state PREEMPTED)" in RunDir(run.run_dir).read_status()["error"]
