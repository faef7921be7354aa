"""Small helpers shared by the metric modules: argument checks and a seeded RNG scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def check_positive_int(name: str, value: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state (CPU and CUDA) after it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
