"""The signal logic of a submitit job, in this process: SLURM's notice of a preemption or
time-out (submitit's USR2 handler, faked here) becomes a Ctrl-C for the run in progress, and
submitit's handler still runs: after the run stopped, at once when no run takes Ctrl-C, and after
the grace period when the run does not stop in time."""

from __future__ import annotations

import os
import signal
import time

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
