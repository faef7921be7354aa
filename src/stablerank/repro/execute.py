"""Run one :class:`stablerank.repro.sweeps.Run`: its training, then its analysis.

:func:`execute` is what every executor runs (in this process, in a worker process, in a SLURM
job): it takes the run's lock, skips what is finished, resumes what was interrupted, records a
failure instead of raising it, and keeps ``status.json`` (through
:class:`stablerank.train.rundir.RunDir`). Its output (the trainers' logs) goes to the run's
``output.log`` when ``capture`` is set, so concurrent runs do not interleave on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stablerank.config import RUNTIME_KEYS, config_to_dict, diff_configs
from stablerank.repro.sweeps import Run
from stablerank.train.checkpoint import atomic_write_json
from stablerank.train.rundir import DIVERGED, DONE, FAILED, RUNNING, RunDir, RunLockedError
from stablerank.train.runtime import die_with_parent

__all__ = ["OUTPUT_LOG", "Outcome", "execute", "read_finished", "run_state", "state_and_files"]

OUTPUT_LOG = "output.log"
LAUNCH_FILE = "launch.json"  # the config a torchrun-launched training reads
SKIPPED, BUSY = "skipped", "busy"


@dataclass(frozen=True)
class Outcome:
    """What happened to one run in this invocation: ``done``, ``diverged``, ``failed`` (the error
    is in its status and ``error.txt``), ``skipped`` (finished before) or ``busy`` (another
    process holds its lock)."""

    name: str
    state: str
    seconds: float = 0.0
    error: str = ""


def _analysis_key(run: Run) -> str | None:
    return None if run.analysis is None else run.digest


def read_finished(run: Run, state: str, *, with_analysis: bool = True) -> tuple[Any, Any, str]:
    """``(result, analysis, "")`` of a run whose status says it finished (``state``: ``done`` or
    ``diverged``), or ``(None, None, why)`` when its files are to be made again: its result file
    is missing or does not read, or (``done``: a diverged run is not analysed) its analysis file
    is, or holds the numbers of other settings than the run's (an ``analyze`` or ``gan-analyze``
    run by hand in its folder). Such a run is run again, not counted as it is. The analysis is
    None for a run without one, or when not ``with_analysis`` (then not read)."""
    try:
        result = run.trainer.result.from_json(run.run_dir)
    except (OSError, ValueError, TypeError) as err:
        # A diverged run has no checkpoint at the step it diverged: it trains again from the
        # last one before (and may not diverge where kernels are not deterministic).
        again = ("trains it again from its last checkpoint" if state == DIVERGED
                 else "scores its final checkpoint again")  # fmt: skip
        return None, None, f"{err}: a rerun {again}"
    if run.analysis is None or state != DONE or not with_analysis:
        return result, None, ""
    try:
        analysis = run.trainer.analysis.from_json(run.run_dir)
    except (OSError, ValueError, TypeError) as err:
        return None, None, f"{err}: a rerun analyses it again"
    if analysis.settings and diff_configs(
        analysis.settings, config_to_dict(run.analysis), ignore=RUNTIME_KEYS
    ):
        why = "analysed under other settings than the sweep's: a rerun analyses it again"
        return None, None, why
    return result, analysis, ""


def run_state(run: Run) -> str:
    """``done``, ``diverged``, ``failed``, ``partial`` (started, or analysed under other settings,
    or with a result or analysis file missing or damaged, or trained by another number of
    processes: a folder from before classifier folders said so) or ``new``, from its folder."""
    return state_and_files(run)[0]


def state_and_files(run: Run) -> tuple[str, Any, Any]:
    """:func:`run_state`, with the result and analysis it read to decide it (both None unless
    the state is ``done`` or ``diverged``; the analysis None for a run without one)."""
    folder = RunDir(run.run_dir)
    status = folder.read_status()
    if not status:
        return "new", None, None
    state = status.get("status")
    if (
        status.get("analysis_key") == _analysis_key(run)
        and state in (DONE, DIVERGED)
        and folder.trained_world_size() == run.nproc_per_node
    ):
        result, analysis, why = read_finished(run, state)
        if not why:
            return state, result, analysis
    return (FAILED if state == FAILED else "partial"), None, None


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(path, "a") as log:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for the duration of one run."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(run: Run) -> bool:
    """Train (resuming from the newest checkpoint); True when the run diverged."""
    if run.nproc_per_node == 1:
        return run.trainer.train(run.config).diverged
    # DDP on this node or in this SLURM job: torchrun starts the CLI on the run's saved config.
    launch = run.run_dir / LAUNCH_FILE
    atomic_write_json(launch, config_to_dict(run.config))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={run.nproc_per_node}", "-m", "stablerank", run.trainer.command,
            "--config", str(launch)]  # fmt: skip
    # The agent and its workers pass through the run's lock: a killed launcher must end them, or
    # they would train on unlocked beside a rerun of the same run (their workers die with it).
    subprocess.run(argv, check=True, preexec_fn=die_with_parent)
    return run.trainer.result.from_json(run.run_dir).diverged


def execute(run: Run, *, capture: bool = False) -> Outcome:
    """Run what is missing of ``run`` (training, then its analysis); never raises for a failed
    run (the error is recorded and returned), only on Ctrl-C (after recording ``interrupted``).
    """
    t0 = time.perf_counter()
    run_dir = RunDir(run.run_dir)
    if run_state(run) in (DONE, DIVERGED):
        return Outcome(run.name, SKIPPED)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_dir.lock())
        except RunLockedError:
            return Outcome(run.name, BUSY, error="another process is running it")
        if run_state(run) in (DONE, DIVERGED):  # another process finished it meanwhile
            return Outcome(run.name, SKIPPED)
        return _execute_locked(run, run_dir, capture, t0)


def _execute_locked(run: Run, run_dir: RunDir, capture: bool, t0: float) -> Outcome:
    """:func:`execute` once the run's lock is held."""
    stage = "train"
    before = run_dir.read_status()
    prior = float(before.get("wall_time_s") or 0.0)
    attempts = int(before.get("attempts") or 0) + 1

    def fields() -> dict[str, object]:
        return {"stage": stage, "attempts": attempts, "kind": run.kind, "setting": run.setting,
                "arm": run.arm, "wall_time_s": prior + time.perf_counter() - t0}  # fmt: skip

    try:
        with (
            run_dir.recording(fields),
            _output_to(run_dir.path / OUTPUT_LOG) if capture else contextlib.nullcontext(),
            _threads(run.threads) if run.threads else contextlib.nullcontext(),
        ):
            diverged = _train(run)
            if not diverged and run.analysis is not None:
                stage = "analysis"
                run_dir.write_status(status=RUNNING, **fields())  # the trainer wrote `done`
                run.trainer.analyse(run.analysis, run.run_dir)
            # Read back as the report and every rerun will: a file that does not read would be
            # made again by each rerun, and reported finished each time.
            if unreadable := read_finished(run, DIVERGED if diverged else DONE)[2]:
                raise RuntimeError(f"its files do not read back: {unreadable}")
    except Exception as err:  # recorded by recording(), and the sweep goes on
        message = f"in {stage}: {type(err).__name__}: {err}"
        return Outcome(run.name, FAILED, time.perf_counter() - t0, message)
    state = DIVERGED if diverged else DONE
    stage = "finished"
    run_dir.write_status(status=state, analysis_key=_analysis_key(run), **fields())
    return Outcome(run.name, state, time.perf_counter() - t0)
