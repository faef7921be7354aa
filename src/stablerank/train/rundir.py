"""The run folder: its status and its lock.

A run folder holds what one trainer run wrote (``config.json``, ``env.json``, the logs, the
checkpoints, ``metrics.json``) and, when an orchestrator drives it, ``status.json`` (``running``,
``done``, ``failed``, ``diverged``, ``interrupted``; stage, attempts, wall time, error) and
``.lock``. :class:`RunDir` owns those two files: status is written atomically and merged field by
field; the lock is an exclusive ``flock`` held for as long as one process works on the run, so two
processes never train the same run (the second gets :class:`RunLockedError` at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stablerank.train.checkpoint import atomic_write_json

__all__ = ["RunDir", "RunLockedError"]

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunDir:
    """A run folder (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

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
