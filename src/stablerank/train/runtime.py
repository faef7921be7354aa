"""Devices, seeds, Ctrl-C and distributed (DDP) set-up shared by the trainers.

Distributed mode is detected from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); rank 0 alone logs and writes checkpoints. Seeds follow one rule in both trainers:
model initialisation uses ``seed`` on every rank (DDP also broadcasts rank 0's parameters and
buffers); every draw during training is a pure function of the seed, the rank and a counter (the
data order of the loader's (seed, epoch); the GAN's latents and both trainers' in-model draws
from :func:`stream_seed`), so nothing depends on a running RNG and a resumed run needs no RNG
state.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from stablerank.config import check_device


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for ``cuda`` or ``mps`` where there is
    none is an error (never a silent switch to the CPU)."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' requested but no MPS device is available")
    return torch.device(device)


def mixed_precision(device: torch.device, amp: bool) -> AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``amp``, else nothing: before torch 2.5,
    ``torch.autocast("mps", enabled=False)`` still refuses the device type."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, rank: int, counter: int, stream: int) -> int:
    """Seed of draw ``counter`` of ``stream`` on ``rank``: a well-mixed 63-bit hash (nearby
    tuples give unrelated streams)."""
    words = np.random.SeedSequence([seed, rank, counter, stream]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


# The stream of in-model draws; the trainers number their own streams from 0.
_STREAM_IN_MODEL = 1 << 16


def seed_model_draws(device: torch.device, seed: int, rank: int, step: int) -> None:
    """Seed the global generator that in-model draws (dropout) use on ``device`` for update
    ``step`` on ``rank`` (:func:`stream_seed`): the CPU's, or that CUDA or MPS device's. Cheap
    enough for every step, unlike ``torch.manual_seed``, which visits every backend."""
    seed = stream_seed(seed, rank, step, _STREAM_IN_MODEL)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# libc, loaded at import: die_with_parent also runs in a forked child before exec (preexec_fn),
# where loading a library (dlopen) is unsafe if another thread of the parent held its lock.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent (the torchrun agent, or the
    ``reproduce`` command of a pool worker) dies: a killed parent must not leave orphaned workers
    writing into a run folder, holding its lock, or waiting forever for work. No-op elsewhere."""
    if _LIBC is None:
        return
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the call: do it now
        os.kill(os.getpid(), signal.SIGTERM)


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started this one among (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by ``torchrun``; return (info, device).

    Uses NCCL on CUDA and gloo on CPU. Each rank takes the GPU ``LOCAL_RANK``.
    """
    if launched_world_size() == 1:
        return DistInfo(), resolve_device(device)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    die_with_parent()
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


def use_deterministic_kernels(enabled: bool) -> None:
    """Turn torch's deterministic algorithms on or off for this process.

    On the CPU the trainers are bitwise repeatable either way. On CUDA, cuDNN and cuBLAS may
    pick kernels that sum in a varying order (atomics, split reductions), so two runs of one
    config differ by rounding, which training then amplifies. With ``enabled``, cuDNN and torch
    use their deterministic kernels and cuBLAS a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``,
    which cuBLAS reads when it starts: set here unless set already, and a warning says when CUDA
    started before, as in a process whose earlier run was not deterministic); an op that has no
    deterministic kernel warns instead of failing (``warn_only``). Set on every call, so one
    run's choice never carries over to the next run in the same process; a call that changes
    nothing skips torch's setter (which imports torch's compiler stack, seconds) and so keeps a
    caller's own ``warn_only=False``.
    """
    if enabled and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        if torch.cuda.is_initialized():
            warnings.warn(
                "deterministic kernels asked for after CUDA started in this process: cuBLAS "
                "keeps its workspace and may not repeat bitwise; set "
                "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before starting",
                stacklevel=2,
            )
    if enabled != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled, warn_only=True)


def apply_runtime(cfg: Any) -> None:
    """What a run or an analysis sets for itself first: torch's CPU threads
    (``cfg.num_threads``; 0 leaves torch's) and deterministic kernels (``cfg.deterministic``)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_deterministic_kernels(cfg.deterministic)


def start_trainer(cfg: Any, stop_at: int | None, unit: str) -> tuple[DistInfo, torch.device]:
    """What both trainers do before their run folder: check ``stop_at`` (counted in ``unit``),
    set torch's CPU threads and deterministic kernels, join the process group and pick the
    device, and check that the global batch splits evenly over the ranks."""
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"stop_at must be >= 1 ({unit}), got {stop_at}")
    apply_runtime(cfg)
    info, device = init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be divisible by the world size {info.world_size}"
        )
    return info, device


def end_worker(info: DistInfo) -> None:
    """Leave a distributed run cleanly.

    gloo workers on CPU sometimes abort in interpreter teardown after all work is done; destroying
    the group, flushing and ``os._exit(0)`` avoids it (docs/reliability.md).
    """
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# A Ctrl-C this long after the first stops at once. A shorter gap is the same Ctrl-C arriving
# twice (the terminal's and an executor's relay of it, repro/executors.py), not a second one.
_FORCE_AFTER_S = 1.0


@contextmanager
def deferred_sigint(enabled: bool, run_dir: Any) -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag checked between steps, so the checkpoint written on interrupt is
    a consistent state (never half a D/G update). A second Ctrl-C (from :data:`_FORCE_AFTER_S`
    after the first) does not wait for the step or evaluation in progress: it raises
    :func:`interrupted` at once, and the newest checkpoint in ``run_dir`` is the resume point."""
    flag = {"stop": False}
    if not enabled:
        yield flag
        return
    first: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        if not first:
            first.append(time.monotonic())
            flag["stop"] = True
            with suppress(OSError):  # no stderr: the flag is what matters
                os.write(2, b"\nCtrl-C: stopping after this step, with a checkpoint (Ctrl-C "
                            b"again to stop now)\n")  # fmt: skip
        elif time.monotonic() - first[0] >= _FORCE_AFTER_S:
            raise interrupted(run_dir, "the newest checkpoint")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, _after(first[0], previous) if first else previous)


def _after(first: float, previous: Any) -> Any:
    """The Ctrl-C handler once the training loop has taken one at ``first``: the same Ctrl-C
    relayed by an executor a moment later must not cut short the recording of the stop (as the
    loop's own handler ignores it); a later one goes to ``previous``."""

    def handler(signum: int, frame: Any) -> None:
        if time.monotonic() - first < _FORCE_AFTER_S:
            return
        signal.signal(signal.SIGINT, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    return handler


def interrupted(run_dir: Any, kept: str) -> KeyboardInterrupt:
    """The one Ctrl-C message of both trainers: what was kept and how to continue."""
    return KeyboardInterrupt(
        f"interrupted; {kept} kept in {run_dir}: continue with resume=True (--resume)"
    )


def say_finished(run_dir: Any, result: Any) -> None:
    """The last line of both trainers on stderr: how the run ended, its numbers, its folder."""
    if result is not None:
        ended = "diverged" if result.diverged else "done"
        print(f"{ended}: {result.summary()}; results in {run_dir}", file=sys.stderr, flush=True)


class ProgressLine:
    """A plain progress line on stderr every ``every_s`` seconds, for logs, where a tqdm bar is
    off because stderr is not a terminal: ``label step/total, values | ETA``. Both trainers use
    it; ``due`` comes first so the values (a device sync) are read only when a line is shown."""

    def __init__(self, label: str, total: int, start: int = 0, every_s: float = 10.0) -> None:
        self.label, self.total, self.start, self.every_s = label, total, start, every_s
        self.t0 = self.last = time.perf_counter()

    def due(self, step: int) -> bool:
        return time.perf_counter() - self.last >= self.every_s or step >= self.total

    def show(self, step: int, **values: float) -> None:
        now = self.last = time.perf_counter()
        done = step - self.start
        eta = (now - self.t0) / done * (self.total - step) if done > 0 else float("nan")
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"{self.label} {step}/{self.total} {shown} | ETA {eta:.0f} s", file=sys.stderr,
              flush=True)  # fmt: skip
