"""What the sweep tests compare: a sweep's results without the timings (test_pipeline.py's
executors against each other, test_slurm.py's SLURM path against the sequential one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stablerank.repro import sweeps

# Written by the trainers but not part of what a run computes.
_TIMING_KEYS = {"train_seconds", "epoch_time_s", "train_time_s", "seconds", "wall_time_s"}


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in _TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _sweep_results(out: Path) -> dict[str, dict]:
    """Every run's metrics and analysis files (timings removed), by run name."""
    found = {}
    for run_dir in sorted((out / sweeps.RUNS_DIR).iterdir()):
        files = {}
        for name in ("metrics.json", "analysis.json", "gan_analysis.json"):
            if (run_dir / name).is_file():
                data = json.loads((run_dir / name).read_text())
                data.pop("protocol", None)  # holds the run folder's path
                files[name] = _without_timings(data)
        found[run_dir.name] = files
    return found


@pytest.fixture
def without_timings() -> Callable[[Any], Any]:
    """A run's result (a JSON value) without the keys that time it."""
    return _without_timings


@pytest.fixture
def sweep_results() -> Callable[[Path], dict[str, dict]]:
    """The results of the sweep in an out dir, by run name, without their timings."""
    return _sweep_results
