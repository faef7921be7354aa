"""The run folder: its checkpoints, its status and its lock.

A run folder holds what one trainer run wrote (``config.json``, ``env.json``, the logs,
``metrics.json``), its checkpoints, and, when an orchestrator drives it, ``status.json``
(``running``, ``done``, ``failed``, ``diverged``, ``interrupted``; stage, attempts, wall time,
error) and ``.lock``. :class:`RunDir` owns:

* the one checkpoint layout of both trainers: ``checkpoints/step_<N>.pt`` (N = the epoch of a
  classifier, the G step of a GAN), each with its SHA-256 beside it, the newest ``keep`` kept; the
  one resume rule: continue from the newest *intact* checkpoint, falling back to an older one when
  the newest was cut or altered;
* the status, written atomically and merged field by field;
* the lock: an exclusive ``flock`` held while one process works on the run, so two processes never
  train the same run (the second gets :class:`RunLockedError` at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stablerank.train.checkpoint import (
    CorruptCheckpointError,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["RunDir", "RunLockedError"]

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunDir:
    """A run folder (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_path(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"step_{step:07d}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, oldest first."""
        return sorted((self.path / CHECKPOINTS_DIR).glob("step_*.pt"))

    def save_checkpoint(self, step: int, state: Mapping[str, Any], keep: int) -> Path:
        """Write the checkpoint of ``step`` (atomic, checksummed); delete all but the newest
        ``keep``."""
        path = self.checkpoint_path(step)
        save_checkpoint(path, state)
        for old in self.checkpoints()[:-keep]:
            old.unlink()
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        return path

    def load_latest(
        self, map_location: str | Any = "cpu", *, log: Callable[[str], None] | None = None
    ) -> tuple[Path, dict[str, Any]] | None:
        """The newest intact checkpoint and its path, or None when there is none.

        Raises:
            CorruptCheckpointError: checkpoints exist but none of them is intact.
        """
        found = self.checkpoints()
        for path in reversed(found):
            try:
                return path, load_checkpoint(path, map_location=map_location)
            except CorruptCheckpointError as err:
                (log or _stderr)(f"{err}; trying the previous checkpoint")
        if found:
            raise CorruptCheckpointError(f"no intact checkpoint in {self.path / CHECKPOINTS_DIR}")
        return None

    # ------------------------------------------------------------------ status and lock

    def read_status(self) -> dict[str, Any]:
        """The status fields, or ``{}`` when there is none (or it was cut by a kill)."""
        try:
            data = json.loads((self.path / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the status and write it atomically; return the new status."""
        status = {**self.read_status(), **fields}
        atomic_write_json(self.path / STATUS_FILE, status)
        return status

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's exclusive lock (released on exit, and by the OS if the process dies).

        Raises:
            RunLockedError: another process holds it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(f"{self.path} is being run by another process") from None
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
