"""Executors: where the runs of a sweep execute. One small interface, four implementations.

Each calls :func:`stablerank.repro.execute.execute` once per run (the submitit ones leave out the
finished runs: a job would only find its run done) and returns the outcomes in the order of the
runs:

* ``sequential``: one after another in this process (the reference; debuggers work);
* ``local``: a pool of worker processes, one per GPU (each sees its own through
  ``CUDA_VISIBLE_DEVICES``; ``nproc_per_node`` of them for a torchrun run), else cores //
  (threads x processes) per run;
* ``submitit-local``: the code path of ``slurm`` on this machine, in waves of ``workers`` jobs,
  each on its own GPUs as the pool's workers;
* ``slurm``: a SLURM job array through submitit; a preempted or timed-out job is requeued and
  resumes from its checkpoint.

Under the parallel executors each run's output goes to its folder's ``output.log``; the terminal
gets one line per finished run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

from stablerank._optional import import_optional
from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro.execute import (
    DIVERGED,
    DONE,
    FAILED,
    SKIPPED,
    Outcome,
    execute,
    run_state,
)
from stablerank.repro.sweeps import Run
from stablerank.train.checkpoint import atomic_write_text
from stablerank.train.rundir import RunDir, RunLockedError, waiting_lock
from stablerank.train.runtime import die_with_parent

__all__ = ["Executor", "make_executor", "visible_gpus"]

Report = Callable[[int, int, Run, Outcome], None]
# submitit's notice before a time-out, in seconds: set for SLURM (its --signal), submitit's default
# on the local cluster. A trainer has half of it to reach a checkpoint before the job is requeued
# to resume from its last periodic one.
_SIGNAL_DELAY_S = {"slurm": 90, "local": 30}
_POLL_S = 1.0  # how often the submitit jobs are asked whether they have ended (as job.wait())
_SACCT_EVERY_S = 30.0  # how often sacct is asked about a job that submitit takes for ended
# sacct's states of a SLURM job that has not ended: its run is still to come, or under way.
_SLURM_LIVE_STATES = frozenset(
    ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
)


class Executor(Protocol):
    """Runs every run of a list; returns one outcome per run, in order."""

    def map(self, runs: Sequence[Run], report: Report) -> list[Outcome]: ...

    def describe(self) -> str:
        """Where and how the runs would execute, in a few words (the dry run's check)."""
        ...


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, named as a child's ``CUDA_VISIBLE_DEVICES`` must
    name them: the entries of this process's own ``CUDA_VISIBLE_DEVICES`` when it is set (a child
    reads its value against the whole machine, so GPU 0 of a process that sees "2,3" is "2"),
    else 0, 1, ...; none without CUDA."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install counts as none
        return []
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",")][:count]
    return [str(i) for i in range(count)]


def gpu_groups(gpus: Sequence[str], per_run: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of each concurrent run: ``per_run`` devices apiece (the
    processes of a torchrun run take one each, rank r the r-th); devices left over stay idle."""
    return [",".join(gpus[i : i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]


class SequentialExecutor:
    """One run after another, in this process."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes  # of each run (torchrun), for describe()

    def describe(self) -> str:
        if self.processes > 1:
            return f"one run after another, each as {self.processes} torchrun processes"
        return "one run after another in this process"

    def map(self, runs: Sequence[Run], report: Report) -> list[Outcome]:
        outcomes = []
        for i, run in enumerate(runs, 1):
            outcomes.append(execute(run))
            report(i, len(runs), run, outcomes[-1])
        return outcomes


_stop: Any = None  # in a pool worker: the pool's stop event (set by the parent on Ctrl-C)


def _resources(threads: int, gpus: Sequence[str], processes: int, concurrent: int) -> str:
    """What each of ``concurrent`` runs at once uses, as the executors' ``describe`` says it:
    its processes, threads and GPUs (handed out round-robin, as :func:`_gpu_queue` does)."""
    each = f"{threads or 'the default'} torch thread(s)"
    if processes > 1:
        each = f"{processes} torchrun processes of {each}"
    if not gpus:
        return f"each run {each}"
    used = " | ".join(gpus[:concurrent])
    shared = ", runs sharing them round-robin" if concurrent > len(gpus) else ""
    return f"each run {each} on its own GPUs (CUDA_VISIBLE_DEVICES {used}{shared})"


def _init_worker(gpu_queue: mp.Queue | None, threads: int, stop: Any) -> None:  # type: ignore[type-arg]
    global _stop
    _stop = stop
    # A killed command (kill -9) must not leave its workers training on, holding their runs'
    # locks, and then waiting forever for work (they hold their queue's pipe open themselves).
    die_with_parent()
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _gpu_queue(ctx: Any, workers: int, gpus: Sequence[str]) -> Any:
    """The GPUs (:func:`gpu_groups`) of ``workers`` workers, round-robin (several may share
    some), in a queue from which each worker takes its own as it starts (:func:`_init_worker`);
    None without GPUs."""
    if not gpus:
        return None
    queue = ctx.Queue()
    for worker in range(workers):
        queue.put(gpus[worker % len(gpus)])
    return queue


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Ctrl-C in this (main) thread held until the block ends, then raised: a SLURM submission
    and the job ids kept for it are never cut halfway. (:func:`_sigint_blocked` alone does not
    hold it: a process-directed signal goes to any thread that does not block it, e.g. torch's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Ctrl-C blocked in this (main) thread while the pool or submitit starts its workers: the
    processes started (pool workers, submitit controllers and jobs) inherit the blocked signal,
    so a worker takes Ctrl-C only once it runs a run (:func:`_execute_unless_stopped`), while
    this process still gets it (on exit: a blocked signal stays pending)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _interrupt_once(signum: int, frame: Any) -> None:
    # The terminal's Ctrl-C and the parent's relay of it both arrive: the second must not cut
    # short the recording of the first (status.json's `interrupted`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _execute_unless_stopped(run: Run, stopped: Callable[[], bool]) -> Outcome:
    """:func:`execute` in a worker process (a pool's or a submitit job's). The workers start with
    Ctrl-C blocked (:func:`_sigint_blocked`) and take it only while they run a run: the run in
    progress records ``interrupted`` and stops, a worker starting up or waiting for work exits
    without a traceback, and a run handed out before the Ctrl-C (``stopped()``, asked once Ctrl-C
    is taken) does not start."""
    previous = signal.signal(signal.SIGINT, _interrupt_once)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        # A Ctrl-C held back while this worker started or waited is taken here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if stopped():
            raise KeyboardInterrupt
        return execute(run, capture=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


def _execute_in_worker(run: Run) -> Outcome:
    return _execute_unless_stopped(run, lambda: _stop is not None and _stop.is_set())


class LocalExecutor:
    """A pool of ``workers`` processes (spawned: no state inherited from this one).

    The workers end when this process dies (``kill -9`` included). A worker killed mid-sweep
    (``kill -9``, out of memory) breaks the pool: the runs in progress fail (a rerun resumes
    them) and the runs not started go on in a new pool; when none had started, they all fail.
    """

    def __init__(self, workers: int, threads: int, gpus: Sequence[str], processes: int = 1) -> None:
        self.workers = workers
        self.threads = threads
        self.gpus = list(gpus)
        self.processes = processes  # of each run (torchrun), for describe()

    def describe(self) -> str:
        resources = _resources(self.threads, self.gpus, self.processes, self.workers)
        return f"{self.workers} worker processes at once, {resources}"

    def map(self, runs: Sequence[Run], report: Report) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        todo = list(range(len(runs)))
        while todo:
            before = {i: _attempts(runs[i]) for i in todo}
            lost = self._map_pool(runs, todo, report, outcomes)  # a broken pool: see the class
            started = [i for i in lost if _attempts(runs[i]) > before[i]]
            for i in started or lost:
                outcomes[i] = Outcome(runs[i].name, FAILED, error=f"worker died: {lost[i]}")
                report(len(outcomes), len(runs), runs[i], outcomes[i])
            todo = [i for i in lost if i not in outcomes]
        return [outcomes[i] for i in range(len(runs))]

    def _map_pool(
        self, runs: Sequence[Run], todo: Sequence[int], report: Report, outcomes: dict[int, Outcome]
    ) -> dict[int, BaseException]:
        """Run ``runs[i]`` for each ``i`` in ``todo`` in one pool, adding to ``outcomes``; return
        the runs whose outcome a broken pool lost, with its error, once its workers have ended."""
        ctx = mp.get_context("spawn")
        queue = _gpu_queue(ctx, self.workers, self.gpus)
        stop = ctx.Event()
        others = {p.pid for p in mp.active_children()}
        pool = cf.ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_init_worker,
            initargs=(queue, self.threads, stop),
        )  # fmt: skip
        workers: list[Any] = []
        lost: dict[int, BaseException] = {}
        try:
            with _sigint_blocked():  # the workers, spawned by submit(), inherit it
                futures = {pool.submit(_execute_in_worker, runs[i]): i for i in todo}
                workers = [p for p in mp.active_children() if p.pid not in others]
            for future in cf.as_completed(futures):
                i = futures[future]
                try:
                    outcomes[i] = future.result()
                except BrokenProcessPool as err:
                    lost[i] = err
                    continue
                except Exception as err:  # the outcome could not come back
                    outcomes[i] = Outcome(runs[i].name, FAILED, error=f"worker died: {err}")
                report(len(outcomes), len(runs), runs[i], outcomes[i])
        except KeyboardInterrupt:
            # The pool has already handed the workers more runs than they hold, which
            # cancel_futures cannot take back: the event stops those before they start, and the
            # relayed signal interrupts a run begun after the terminal's Ctrl-C went by (or one
            # whose worker never got it: the parent alone was signalled). Another SIGINT meanwhile
            # (`timeout` signals the command and then its group) is held: raised inside
            # shutdown(), it left the idle workers waiting for work and the command for them.
            with _ctrl_c_held():
                stop.set()
                for worker in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGINT)
                pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)  # a broken pool's workers have ended: their runs' status holds
        return lost


def _attempts(run: Run) -> int:
    """How many times :func:`stablerank.repro.execute.execute` has started ``run``."""
    return int(RunDir(run.run_dir).read_status().get("attempts") or 0)


class SubmititExecutor:
    """Runs as submitit jobs: ``cluster="slurm"`` or ``"local"`` (this machine, in waves); a run
    finished before is skipped here, not submitted.

    On Ctrl-C the local jobs stop as the pool's workers do (a file plays the stop event) and the
    command waits for them; SLURM jobs run on, and the command says how to cancel them.
    """

    def __init__(
        self, folder: Path, cluster: str, cfg: ReproduceConfig, wave: int, gpus: Sequence[str] = ()
    ) -> None:
        self.cluster = cluster
        self.wave = wave
        # The local jobs' GPUs (gpu_groups), round-robin; SLURM gives each job its own.
        self.gpus = list(gpus)
        self.folder = folder
        self.cfg = cfg

    @functools.cached_property
    def executor(self) -> Any:
        """submitit's executor, made when first used (it creates its folder: a dry run must not)."""
        import submitit

        cfg, cluster = self.cfg, self.cluster
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        params: dict[str, object] = {"timeout_min": cfg.slurm_time}
        if cluster == "slurm":
            params.update(
                slurm_signal_delay_s=_SIGNAL_DELAY_S["slurm"],
                slurm_partition=cfg.slurm_partition or None,
                # 0 GPUs: no --gpus-per-node line, which clusters without GPU GRES may refuse
                gpus_per_node=cfg.slurm_gpus_per_run or None,
                cpus_per_task=cfg.slurm_cpus_per_run,
                slurm_array_parallelism=cfg.slurm_array_parallelism,
                name="stablerank",
            )
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def describe(self) -> str:
        cfg = self.cfg
        if self.cluster == "local":
            resources = _resources(cfg.threads, self.gpus, cfg.nproc_per_node, self.wave)
            return (f"submitit's local cluster, {self.wave} jobs at a time, {resources}; job "
                    f"logs in {self.folder}")  # fmt: skip
        gpus = f"{cfg.slurm_gpus_per_run} GPU(s), " if cfg.slurm_gpus_per_run else ""
        return (
            f"one SLURM job array through submitit on partition "
            f"{cfg.slurm_partition or '(the default)'}: per run {gpus}{cfg.slurm_cpus_per_run} "
            f"CPU core(s) and {cfg.slurm_time} min, "
            f"{_resources(cfg.threads, [], cfg.nproc_per_node, 1)}; requeued when preempted, "
            "and up to 3 times when out of time; at most "
            f"{cfg.slurm_array_parallelism} at once; job logs in {self.folder}"
        )

    def map(self, runs: Sequence[Run], report: Report) -> list[Outcome]:
        # This command's own stop file: another command on the out dir keeps its jobs.
        stop_file, others = None, set[int]()
        if self.cluster == "local":
            stop_file = self.folder / f"STOP.{os.getpid()}.{time.time_ns()}"
            others = set(_descendants(os.getpid()))  # not this executor's: never signalled
        job_fn = _requeueable_job(stop_file, _SIGNAL_DELAY_S[self.cluster] // 2)
        outcomes: dict[int, Outcome] = {}
        # A finished run is not submitted: its job would only say so, after queueing for GPUs.
        for i, run in enumerate(runs):
            if run_state(run) in (DONE, DIVERGED):
                outcomes[i] = Outcome(run.name, SKIPPED)
                report(len(outcomes), len(runs), run, outcomes[i])
        todo = [i for i in range(len(runs)) if i not in outcomes]
        step = (len(todo) or 1) if self.cluster == "slurm" else self.wave
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            jobs: list[Any] = []
            try:
                # Another command's submission is waited for before Ctrl-C is held, so that
                # Ctrl-C still stops this one while it waits.
                submitting = (waiting_lock(self._jobs_dir / ".lock", "waiting for another "
                              "reproduce submitting") if self.cluster == "slurm"
                              else contextlib.nullcontext())  # fmt: skip
                with submitting, _sigint_blocked():  # local controllers and jobs inherit it
                    if self.cluster == "slurm":
                        with _ctrl_c_held():
                            jobs = self._submit_or_follow(job_fn, [runs[i] for i in chunk])
                    else:
                        devices = [self.gpus[k % len(self.gpus)] if self.gpus else None
                                   for k in range(len(chunk))]  # fmt: skip
                        jobs = self.executor.map_array(job_fn, [runs[i] for i in chunk], devices)
                index = {id(job): i for i, job in zip(chunk, jobs, strict=True)}
                # Each job's line as it ends: in the array's order, the GANs (first) held back
                # the lines of every job that ended before them.
                for job, state in _as_completed(jobs):
                    i = index[id(job)]
                    try:
                        if state == "PREEMPTED" and not job.paths.result_pickle.exists():
                            # job.result() would wait for it forever
                            raise RuntimeError(
                                "preempted, and the cluster did not requeue it; the same command "
                                "submits its run again, to resume from its last checkpoint"
                            )
                        outcome = job.result()
                    except Exception as err:  # the job failed (not the run: execute records that)
                        outcome = _job_failed(runs[i], job, state, err)
                    outcomes[i] = outcome
                    report(len(outcomes), len(runs), runs[i], outcome)
            except KeyboardInterrupt:
                with _ctrl_c_held():  # as the pool's: the jobs waited for, the STOP file removed
                    _stop_jobs(jobs, stop_file, others)
                raise
        return [outcomes[i] for i in range(len(runs))]

    @property
    def _jobs_dir(self) -> Path:
        """Where the id of the SLURM job last submitted for each run is kept (a file named after
        the run), with the lock of the submissions."""
        return self.folder / "jobs"

    def _submit_or_follow(self, job_fn: Callable[..., Any], runs: Sequence[Run]) -> list[Any]:
        """One SLURM job per run of ``runs``, in their order: the job an earlier or another
        command submitted for it when that job has not ended, else a new one (one array for
        them). Called under the lock on the job files (``jobs/.lock``), so that two commands on
        one out dir do not both submit a run."""
        following = self._queued_jobs(runs)
        new = [run for run in runs if run.name not in following]
        if following:
            self._say_submitted(list(following.values()), before=True)
        submitted = self._submit(job_fn, new) if new else []
        for run, job in zip(new, submitted, strict=True):
            atomic_write_text(self._jobs_dir / run.name, str(job.job_id))
        if submitted:
            self._say_submitted(submitted)
        by_name = {**following, **{run.name: job for run, job in zip(new, submitted, strict=True)}}
        return [by_name[run.name] for run in runs]

    def _submit(self, job_fn: Callable[..., Any], runs: Sequence[Run]) -> list[Any]:
        """One SLURM job array for ``runs``.

        Raises:
            RuntimeError: sbatch refused it (an unknown partition, a time over the partition's
                limit, ...): nothing was submitted, and the files submitit wrote for it (the
                runs' pickles and the sbatch script) are removed.
        """
        from submitit.core.utils import FailedJobError

        def temporary() -> set[Path]:  # submitit's names for a submission not yet accepted
            names = re.compile(r"(\.submission_file_)?[0-9a-f]{32}\.(pkl|sh)")
            return {path for path in self.folder.iterdir() if names.fullmatch(path.name)}

        before = temporary()
        try:
            return self.executor.map_array(job_fn, runs, [None] * len(runs))
        except FailedJobError as err:
            for path in temporary() - before:
                path.unlink(missing_ok=True)
            # submitit printed sbatch's error output already: not twice.
            cause = err.__cause__
            printed = isinstance(cause, subprocess.CalledProcessError) and cause.stderr
            message = "its message is above" if printed else str(err) or "with no message"
            raise RuntimeError(
                f"sbatch refused the job array of {len(runs)} runs ({message}); nothing was "
                "submitted: check --slurm-partition, --slurm-time, --slurm-gpus-per-run and "
                "--slurm-cpus-per-run against the cluster's limits (sinfo)"
            ) from err

    def _queued_jobs(self, runs: Sequence[Run]) -> dict[str, Any]:
        """The SLURM jobs, by run name, that this out dir submitted for ``runs`` and that have not
        ended, from one ``sacct`` call.

        Raises:
            RuntimeError: sacct fails: which jobs still wait or run cannot be told, and
                submitting their runs again would queue them twice.
        """
        from submitit.slurm.slurm import SlurmJob

        recorded = {run.name: path.read_text().strip() for run in runs
                    if (path := self._jobs_dir / run.name).is_file()}  # fmt: skip
        if not recorded:
            return {}
        try:
            states = _sacct_states(recorded.values())
        except RuntimeError as err:
            raise RuntimeError(
                f"{err}: this command cannot tell which of the SLURM jobs it submitted before "
                f"still wait or run (for {len(recorded)} of its runs), and submitting them again "
                f"would queue them twice; run it again once sacct answers, or remove "
                f"{self._jobs_dir} to submit them all again"
            ) from err
        jobs = {name: SlurmJob(self.folder / "%j", job) for name, job in recorded.items()
                if states.get(job) in _SLURM_LIVE_STATES}  # fmt: skip
        # A job of this out dir (SLURM reuses ids; an out dir may be copied) holds its pickle here.
        return {name: job for name, job in jobs.items() if job.paths.submitted_pickle.exists()}

    def _say_submitted(self, jobs: Sequence[Any], *, before: bool = False) -> None:
        """The line that says where the SLURM jobs of the runs are (submitted now, or ``before``
        by an earlier command and not ended): the queue may hold them for hours before the
        first run ends."""
        arrays = _arrays_of(jobs)
        logs = self.folder / (f"{arrays}_*" if len(jobs) > 1 else str(jobs[0].job_id))
        if "," in arrays:
            logs = self.folder / "<job>"
        runs, them = (f"{len(jobs)} runs", "them") if len(jobs) > 1 else ("1 run", "it")
        what = (f"following {runs} already in SLURM job {arrays}, not ended: not submitted "
                f"again, with the options of the command that submitted {them} (scancel {them} "
                "to submit with this one's)" if before else
                f"submitted {runs} as SLURM job {arrays}")  # fmt: skip
        print(
            f"{what} (squeue -j {arrays} shows {them}); job logs in {logs}/, each run's output in "
            "its folder's output.log",
            file=sys.stderr,
            flush=True,
        )


def _array_of(job_id: str) -> str:
    """The SLURM job (array) id of a job id: ``1000`` of ``1000_3``."""
    return str(job_id).split("_")[0]


def _arrays_of(jobs: Sequence[Any]) -> str:
    """The SLURM job (array) ids of submitit ``jobs``, once each, comma-separated (as squeue's
    ``-j`` takes them)."""
    return ",".join(dict.fromkeys(_array_of(job.job_id) for job in jobs))


def _sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """The state sacct gives each SLURM job (``1000`` or an array's ``1000_3``) of ``job_ids``;
    a job it does not list is missing.

    Raises:
        RuntimeError: sacct fails (its error in the message).
    """
    from submitit.slurm.slurm import SlurmInfoWatcher

    command = ["sacct", "-o", "JobID,State", "--parsable2"]
    for array in sorted({_array_of(job) for job in job_ids}):
        command += ["-j", array]
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(
            f"sacct failed ({(getattr(err, 'stderr', '') or str(err)).strip()})"
        ) from err
    # read_info expands a pending array's "1000_[4-9]"; "CANCELLED by 0" is CANCELLED.
    return {job: info.get("State", "").split(" ")[0]
            for job, info in SlurmInfoWatcher().read_info(output).items()}  # fmt: skip


def _as_completed(jobs: Sequence[Any]) -> Iterator[tuple[Any, str]]:
    """The submitit ``jobs`` in the order they end (finished, failed or cancelled), each with the
    state it ended in. A SLURM job ends when a rerun would not follow it
    (:data:`_SLURM_LIVE_STATES`): submitit takes a suspended job for ended and stops asking sacct
    about it (its ``state`` stays the cached SUSPENDED), so such a job is asked about here, every
    :data:`_SACCT_EVERY_S` (a failed sacct call: still live). submitit takes a PREEMPTED job for
    live forever (a requeue follows it where the cluster requeues preempted jobs); here it has
    ended when sacct says PREEMPTED at two calls in a row: not requeued, its result never comes."""
    pending = list(jobs)
    states: dict[str, str] = {}  # by job id, as the last sacct call here said
    preempted: Counter[str] = Counter()  # sacct calls in a row that said PREEMPTED, by job id
    asked = -math.inf
    live = _SLURM_LIVE_STATES | {"PREEMPTED"}  # to submitit
    while pending:
        done = [job for job in pending if job.done() or job.state == "PREEMPTED"]
        held = [job for job in done if job.state in live
                and not job.paths.result_pickle.exists()]  # fmt: skip
        # A job that submitit sees requeued (PENDING) is no longer held: its count starts again.
        ids = [str(job.job_id) for job in held]
        preempted = Counter({job: preempted[job] for job in ids})
        if held and time.monotonic() - asked >= _SACCT_EVERY_S:
            asked = time.monotonic()
            with contextlib.suppress(RuntimeError):
                said = _sacct_states(ids)
                states = {job: said.get(job, "") for job in ids}
                for job in ids:
                    preempted[job] = preempted[job] + 1 if states[job] == "PREEMPTED" else 0
        ended = [job for job in done if job not in held or preempted[str(job.job_id)] >= 2
                 or states.get(str(job.job_id), "PENDING") not in live]  # fmt: skip
        for job in ended:
            pending.remove(job)
            yield job, states[str(job.job_id)] if job in held else job.state
        if pending:
            time.sleep(_POLL_S)


def _job_failed(run: Run, job: Any, state: str, err: Exception) -> Outcome:
    """The outcome of a job that ended without its run's (a node failure, a kill, a job that died
    before its run began), also recorded in the run's status as ``failed``, with the job, its
    state and its log, so that the report names it: a run whose job never started it would be
    ``new`` there, with no reason given. A run that another process holds, or that is finished,
    is left as it is."""
    log = job.paths.stderr
    run_dir = RunDir(run.run_dir)
    with contextlib.suppress(RunLockedError), run_dir.lock():
        if run_state(run) not in (DONE, DIVERGED):
            atomic_write_text(run_dir.error_file, f"{err}\n")
            error = f"job {job.job_id} failed (state {state}); its log: {log}"
            run_dir.write_status(status=FAILED, error=error)
    return Outcome(run.name, FAILED, error=f"job {job.job_id} failed ({state}; log: {log}): {err}")


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its children, theirs, ...), read from /proc (none without)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # one that ended meanwhile
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _stop_jobs(jobs: Sequence[Any], stop_file: Path | None, others: Iterable[int] = ()) -> None:
    """After Ctrl-C: local jobs that have not begun their run skip it (``stop_file``) and the
    ones running are sent Ctrl-C, as the pool's workers are (a terminal's reached them already:
    twice the same is one Ctrl-C; a SIGTERM or ``kill -INT`` of this command alone did not), and
    waited for; SLURM jobs are left running. The processes below this one that are ``others``
    (there before the jobs) are left alone; submitit's controllers keep Ctrl-C blocked."""
    if stop_file is None:
        if jobs:
            arrays = _arrays_of(jobs)
            print(f"\nthe SLURM jobs run on: squeue -j {arrays} shows those not ended, scancel "
                  f"{arrays.replace(',', ' ')} stops them; the same command follows them again "
                  "and collects their results", file=sys.stderr)  # fmt: skip
        return
    stop_file.touch()
    for pid in set(_descendants(os.getpid())).difference(others):
        with contextlib.suppress(OSError):  # ended meanwhile, or not ours to signal
            os.kill(pid, signal.SIGINT)
    for job in jobs:
        job.wait()
    if jobs:  # every job has ended; else (a Ctrl-C while they were submitted) some may not have
        stop_file.unlink()


@contextlib.contextmanager
def _preemption_as_ctrl_c(grace_s: int) -> Iterator[Callable[[KeyboardInterrupt], None]]:
    """In a submitit job: the preemption or time-out signal (SLURM sends it ahead of the kill)
    becomes a Ctrl-C to this process while it runs a run, so the trainer ends its step and
    writes a checkpoint there and the run records ``interrupted``; the ``requeue(stop)`` yielded
    then logs what was kept (the trainer's ``stop``) and hands the signal to submitit's own
    handler, which requeues the job and exits. That handler runs at once when no run is taking
    Ctrl-C, and after ``grace_s`` when the trainer has not stopped by then (a long
    evaluation): the run then resumes from its last periodic checkpoint, as without this. Outside
    a submitit job (no handler for the signal) nothing changes."""
    import submitit

    sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    submitit_handler = signal.getsignal(sig)
    caught: list[tuple[int, Any]] = []
    if not callable(submitit_handler):
        yield lambda stop: None
        return

    def requeue_now(*_: Any) -> None:
        submitit_handler(*caught[0])  # checkpoint(): the same run again; then sys.exit

    def ctrl_c(signum: int, frame: Any) -> None:
        if caught:
            return
        caught.append((signum, frame))
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.default_int_handler):
            requeue_now()  # no run takes Ctrl-C: before or after it
            return
        signal.signal(signal.SIGALRM, requeue_now)
        signal.alarm(grace_s)
        with contextlib.suppress(OSError):  # the trainer's next line says "Ctrl-C": say why
            os.write(2, b"SLURM's preemption or time-out notice: the run stops as on Ctrl-C\n")
        os.kill(os.getpid(), signal.SIGINT)

    def requeue(stop: KeyboardInterrupt) -> None:
        if caught:
            signal.alarm(0)
            print(f"preempted ({stop}); submitit requeues the job", file=sys.stderr, flush=True)
            requeue_now()

    alarm_handler = signal.getsignal(signal.SIGALRM)
    signal.signal(sig, ctrl_c)
    try:
        yield requeue
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, alarm_handler)
        signal.signal(sig, submitit_handler)


def _requeueable_job(stop_file: Path | None, grace_s: int) -> Callable[[Run, str | None], Outcome]:
    """The job function: requeued on preemption or time-out (:func:`_preemption_as_ctrl_c`); it
    does not start its run once ``stop_file`` exists (a local Ctrl-C). ``devices`` (None: as the
    job was given them) become its ``CUDA_VISIBLE_DEVICES`` before anything touches CUDA:
    submitit's local jobs otherwise see no GPU (its ``gpus_per_node`` defaults to 0), or all of
    them the same ones."""
    import submitit

    def stopped() -> bool:
        return stop_file is not None and stop_file.exists()

    class _Job(submitit.helpers.Checkpointable):
        def __call__(self, run: Run, devices: str | None = None) -> Outcome:
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
            with _preemption_as_ctrl_c(grace_s) as requeue:
                try:
                    return _execute_unless_stopped(run, stopped)
                except KeyboardInterrupt as stop:
                    requeue(stop)  # after a preemption; a Ctrl-C goes on up
                    raise

    return _Job()


def make_executor(cfg: ReproduceConfig, out_dir: Path) -> Executor:
    """The executor ``cfg.executor`` names, sized for this machine.

    Raises:
        RuntimeError: outside SLURM (a login node's GPUs are not the jobs'), ``cfg.device`` is
            ``cuda`` and this machine shows no CUDA device, or it shows fewer than the
            ``nproc_per_node`` GPUs a run takes: one error, not every run failing alike.
    """
    per_run = cfg.nproc_per_node
    gpus = visible_gpus() if cfg.device != "cpu" and cfg.executor != "slurm" else []
    if cfg.device == "cuda" and cfg.executor != "slurm" and not gpus:
        raise RuntimeError(
            f"--device cuda, but no CUDA device is visible to this {cfg.executor!r} executor; "
            "use --device auto or cpu here, or --executor slurm for a cluster's GPUs"
        )
    if 0 < len(gpus) < per_run:
        raise RuntimeError(
            f"--nproc-per-node {per_run} trains each run on {per_run} GPUs (one per process), "
            f"but this machine shows {len(gpus)}; use --nproc-per-node {len(gpus)} or fewer, or "
            "--device cpu for DDP over gloo"
        )
    groups = gpu_groups(gpus, per_run)
    cpus = max(1, (os.cpu_count() or 1) // (max(cfg.threads, 1) * per_run))
    workers = cfg.workers or len(groups) or cpus
    if cfg.executor == "sequential" or (cfg.executor == "local" and workers == 1):
        return SequentialExecutor(per_run)
    if cfg.executor == "local":
        return LocalExecutor(workers, cfg.threads, groups, per_run)
    import_optional("submitit", f"--executor {cfg.executor}")
    cluster = "slurm" if cfg.executor == "slurm" else "local"
    if cluster == "slurm" and shutil.which("srun") is None:  # submitit's own test, said sooner
        raise RuntimeError(
            "--executor slurm submits with SLURM's commands (sbatch, sacct, srun), and this "
            "machine has none on PATH: run it on a login node of the cluster"
        )
    # A CPU job's torch threads (0: torch's default, the cores SLURM binds the job to) should
    # fill the cores it reserves, without more.
    threads, cores = cfg.threads * per_run, cfg.slurm_cpus_per_run
    if cluster == "slurm" and not cfg.slurm_gpus_per_run and threads and threads != cores:
        warnings.warn(
            f"each SLURM job reserves {cores} CPU cores (--slurm-cpus-per-run) and trains on "
            f"{threads} thread(s) (--threads x --nproc-per-node): "
            + ("cores left idle" if threads < cores else "more threads than cores")
            + f"; --threads {max(cores // per_run, 1)} fits them",
            stacklevel=2,
        )
    return SubmititExecutor(out_dir / "submitit", cluster, cfg, wave=workers, gpus=groups)


def print_outcome(i: int, n: int, run: Run, outcome: Outcome) -> None:
    """The terminal's one line per finished run."""
    detail = f": {outcome.error}" if outcome.error else ""
    count = f"[{i:>{len(str(n))}}/{n}]"  # one width for the whole sweep: the names line up
    # A failure the executor records (a worker died) has no time of its own: none is printed.
    took = f" ({outcome.seconds:.0f} s)" if outcome.seconds else ""
    print(f"{count} {outcome.state:<8} {run.name}{took}{detail}", file=sys.stderr, flush=True)
