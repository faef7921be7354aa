"""Atomic checkpoints and exact resume.

A checkpoint is one ``torch.save`` dict written to a temporary file in the same folder and moved
into place with ``os.replace`` (atomic on POSIX), so a run killed mid-write leaves the previous
checkpoint intact. It carries the resolved config (a resume with a different config is refused and
the differences are listed) and every RNG state, so a resumed run continues to the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stablerank.config import diff_configs

__all__ = [
    "atomic_write_json",
    "atomic_write_text",
    "capture_rng_state",
    "check_resume_config",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def _atomic_replace(path: Path, write: Any) -> None:
    """Write through a unique temporary file in the same folder, then ``os.replace`` (atomic on
    POSIX): readers and a kill never see half a file, and concurrent writers never share a
    temporary name. The file gets the permissions a plain ``open`` would (0666 less the umask;
    ``mkstemp`` alone makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    _atomic_replace(Path(path), lambda fh: torch.save(dict(state), fh))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically (see :func:`_atomic_replace`)."""
    data = text.encode()
    _atomic_replace(Path(path), lambda fh: fh.write(data))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, so readers never see a half-written file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    _atomic_replace(Path(path), lambda fh: fh.write(text))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (never retried silently)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    # weights_only=False: our checkpoints hold RNG states (numpy arrays, tuples), written by us.
    return torch.load(path, map_location=map_location, weights_only=False)


def check_resume_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, allowed: Sequence[str] = ()
) -> None:
    """Refuse to resume when the config differs, listing every difference.

    Args:
        saved: the config dict stored in the checkpoint.
        current: the config dict of the run being resumed.
        allowed: keys that may differ (e.g. a device or a log interval).
    """
    diffs = diff_configs(
        {k: v for k, v in saved.items() if k not in allowed},
        {k: v for k, v in current.items() if k not in allowed},
    )
    if diffs:
        raise ValueError(
            "refusing to resume: the config differs from the checkpoint's:\n  " + "\n  ".join(diffs)
        )


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training loop touches: Python, NumPy, torch CPU and all CUDA devices."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
