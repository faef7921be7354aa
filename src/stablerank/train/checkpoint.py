"""Atomic checkpoints and exact resume.

A checkpoint is one ``torch.save`` dict written to a temporary file in the same folder and moved
into place with ``os.replace`` (atomic on POSIX), so a run killed mid-write leaves the previous
checkpoint intact, and a SHA-256 beside it catches a cut or altered file. It carries the resolved
config (a resume with a different config is refused and the differences are listed). No RNG state
is saved: both trainers draw every random number from (seed, counter) streams, so a resumed run
continues to the same weights as an uninterrupted one without one.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


@functools.cache
def _umask() -> int:
    """The process umask, read once: reading it means setting it (os.umask), which would race
    with other threads creating files if done on every write."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_replace(path: Path, data: bytes) -> None:
    """Write ``data`` through a unique temporary file in the same folder, then ``os.replace``
    (atomic on POSIX): readers and a kill never see half a file, and concurrent writers never
    share a temporary name. The file gets the permissions a plain ``open`` would (0666 less the
    umask; ``mkstemp`` alone makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be trusted: truncated, altered, or not a checkpoint at all."""


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, then its SHA-256 beside it (``<name>.sha256``),
    which :func:`load_checkpoint` checks: a flipped bit or a cut file is an error, never a
    silently different model."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    _atomic_replace(path, data)
    atomic_write_text(_digest_path(path), hashlib.sha256(data).hexdigest() + "\n")


def delete_checkpoint(path: Path) -> None:
    """Delete a checkpoint written by :func:`save_checkpoint` and its SHA-256 file."""
    path.unlink()
    _digest_path(path).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically (see :func:`_atomic_replace`)."""
    _atomic_replace(Path(path), text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, so readers never see a half-written file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (never retried silently).

    Loading never runs code from the file (``torch.load(weights_only=True)``: tensors, numbers,
    strings and containers only).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: its SHA-256 differs from the one saved beside it, or it cannot be
            read as a checkpoint (truncated, not ours, or holding objects other than data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    digest = _digest_path(path)
    if digest.is_file() and digest.read_text().strip() != hashlib.sha256(data).hexdigest():
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} does not match its saved SHA-256 ({digest.name}): the file "
            "was altered or cut"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a cut or foreign file
        raise CorruptCheckpointError(
            f"checkpoint {str(path)!r} cannot be read as a stablerank checkpoint: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {str(path)!r} does not hold a dict")
    return state
