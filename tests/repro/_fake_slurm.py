"""A fake SLURM on this machine for ``tests/repro/test_slurm.py``: the commands submitit's
``SlurmExecutor`` calls (``sbatch``, ``sacct``, ``scancel``, ``scontrol requeue``, and ``srun``
in the script it submits), each doing what the real one does as far as submitit can tell.

``python _fake_slurm.py COMMAND ARGS...`` plays ``COMMAND``; the test puts one wrapper per command
on ``PATH``. The cluster's state is files in ``$FAKE_SLURM_DIR``:

* ``next_job_id``: the id the next ``sbatch`` hands out;
* ``<id>.sh``: each submitted script, as ``sbatch`` received it (the test reads its ``#SBATCH``
  lines), run by the job's scheduler;
* ``<task>.state``: the state ``sacct`` reports for each task (``<id>_<i>`` for an array's task,
  ``<id>`` for a lone job);
* ``<task>.pid``: the process of the task's step (``srun`` execs its command), which
  ``scancel --signal`` signals;
* ``<task>.requeue``: ``scontrol requeue``'s mark: the task runs again once its process exits;
* ``schedulers``: each job's scheduler pid (a session of its own), ended by the test at teardown;
* ``calls``: every command called (but ``srun``), one a line, for the test to read.

``$FAKE_SLURM_FAIL`` lists tasks (``1000_1,1001``) whose step fails before its command starts, as
on a node failure: the job ends ``FAILED`` with no result. ``$FAKE_SLURM_REFUSE`` set: ``sbatch``
refuses every submission with that message, as for an unknown partition.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "."))
FIRST_JOB_ID = 1000
NODE = "fakenode"
_POLL_S = 0.05


def _write(path: Path, text: str) -> None:
    # sacct may read a state while the scheduler writes it: never a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tasks(job: str) -> list[str]:
    """The tasks ``job`` names: ``<id>`` (a lone job or every task of an array) or ``<id>_<i>``."""
    return sorted(
        p.name.removesuffix(".state")
        for p in STATE.glob("*.state")
        if p.name.removesuffix(".state") == job or p.name.startswith(f"{job}_")
    )


def sbatch(args: list[str]) -> None:
    if "FAKE_SLURM_REFUSE" in os.environ:
        sys.exit(f"sbatch: error: {os.environ['FAKE_SLURM_REFUSE']}")
    script = Path(args[-1]).read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S*)$", script, re.MULTILINE))
    id_file = STATE / "next_job_id"
    job_id = int(id_file.read_text()) if id_file.exists() else FIRST_JOB_ID
    _write(id_file, str(job_id + 1))  # one submitter at a time: the test's process
    (STATE / f"{job_id}.sh").write_text(script)
    tasks, parallelism = [str(job_id)], 1
    if "array" in options:
        last, parallelism = map(int, re.fullmatch(r"0-(\d+)%(\d+)", options["array"]).groups())
        tasks = [f"{job_id}_{i}" for i in range(last + 1)]
    for task in tasks:
        _write(STATE / f"{task}.state", "PENDING")
    # Detached from sbatch's pipes, which submitit reads to their end.
    with open(STATE / f"{job_id}.scheduler.log", "w") as log:
        scheduler = subprocess.Popen(
            [sys.executable, __file__, "schedule", str(job_id), str(parallelism), *tasks],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    with open(STATE / "schedulers", "a") as pids:
        pids.write(f"{scheduler.pid}\n")
    print(f"Submitted batch job {job_id}")


def _task_env(job_id: str, task: str) -> dict[str, str]:
    """The environment SLURM gives a job's batch script (none of the caller's own SLURM_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        SLURM_JOB_ID=job_id,  # SLURM gives each array task an id of its own; submitit reads none
        SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_PROCID="0",
        SLURM_LOCALID="0", SLURM_JOB_NODELIST=NODE, FAKE_SLURM_TASK=task,
    )  # fmt: skip
    if "_" in task:
        env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=task.split("_")[1])
    return env


def schedule(job_id: str, parallelism: int, tasks: list[str]) -> None:
    """Run the job's tasks, ``parallelism`` at a time, each its script under bash (a requeued one
    again, at the end of the queue; a cancelled one not at all), and record their states."""
    script = STATE / f"{job_id}.sh"
    waiting, running = list(tasks), {}
    while waiting or running:
        while waiting and len(running) < parallelism:
            task = waiting.pop(0)
            if (STATE / f"{task}.state").read_text() == "CANCELLED":
                continue
            _write(STATE / f"{task}.state", "RUNNING")
            running[task] = subprocess.Popen(["bash", str(script)], env=_task_env(job_id, task))
        time.sleep(_POLL_S)
        for task, process in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[task]
            requeue = STATE / f"{task}.requeue"
            if requeue.exists():
                requeue.unlink()
                _write(STATE / f"{task}.state", "PENDING")
                waiting.append(task)
            elif (STATE / f"{task}.state").read_text() != "CANCELLED":
                _write(STATE / f"{task}.state", "COMPLETED" if code == 0 else "FAILED")


def srun(args: list[str]) -> None:
    """``srun --unbuffered --output OUT --error ERR COMMAND...``: the step in this process."""
    task = os.environ["FAKE_SLURM_TASK"]
    files = {"--output": None, "--error": None}
    while args[0].startswith("--"):
        option = args.pop(0)
        if option in files:
            files[option] = args.pop(0)
    patterns = {"%A": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
                "%a": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
                "%j": os.environ["SLURM_JOB_ID"], "%t": "0"}  # fmt: skip
    for option, pattern in files.items():
        for key, value in patterns.items():
            pattern = pattern.replace(key, value)
        fd = 1 if option == "--output" else 2
        os.dup2(os.open(pattern, os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
    if task in os.environ.get("FAKE_SLURM_FAIL", "").split(","):
        print(f"srun: error: {NODE}: task 0: the node failed", file=sys.stderr)
        sys.exit(1)
    _write(STATE / f"{task}.pid", str(os.getpid()))
    os.execvp(args[0], args)


def sacct(args: list[str]) -> None:
    """``sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID...]``: one line per task."""
    jobs = [args[i + 1] for i, arg in enumerate(args) if arg == "-j"]
    print("JobID|State|NodeList")
    for job in jobs:
        for task in _tasks(job):
            print(f"{task}|{(STATE / f'{task}.state').read_text()}|{NODE}")


def scancel(args: list[str]) -> None:
    """``scancel [--signal SIG] JOB``: signal the steps of ``JOB``, or cancel them."""
    sig = None
    if "--signal" in args:
        sig = args.pop(args.index("--signal") + 1)
        args.remove("--signal")
    for task in _tasks(args[0]):
        if sig is None:
            _write(STATE / f"{task}.state", "CANCELLED")
        pid = STATE / f"{task}.pid"
        if pid.exists():
            name = "SIG" + sig.removeprefix("SIG") if sig else "SIGKILL"
            with contextlib.suppress(ProcessLookupError):  # the step has ended
                os.kill(int(pid.read_text()), getattr(signal, name))


def scontrol(args: list[str]) -> None:
    """``scontrol requeue JOB``: the job runs again once its process has exited."""
    assert args[0] == "requeue", args
    for task in _tasks(args[1]):
        (STATE / f"{task}.requeue").touch()


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command not in ("schedule", "srun"):
        with open(STATE / "calls", "a") as calls:
            calls.write(" ".join([command, *rest]) + "\n")
    if command == "schedule":
        schedule(rest[0], int(rest[1]), rest[2:])
    else:
        {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel,
         "scontrol": scontrol}[command](rest)  # fmt: skip
