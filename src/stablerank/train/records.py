"""What a run records as it goes: the environment (``env.json``) and the per-epoch / per-step log
(``log.jsonl``, strict JSON with null for a non-finite number, and the same records as
``log.csv``, whose columns grow as new keys appear; TensorBoard scalars when installed). The file
names belong to :class:`stablerank.train.rundir.RunDir`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stablerank.train.checkpoint import atomic_write_text
from stablerank.train.results import to_dict
from stablerank.train.rundir import LOG_CSV, LOG_JSONL, TENSORBOARD_DIR

DIRTY = "+dirty"


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git tree this package's source is tracked in (``where``: another
    folder), with :data:`DIRTY` appended when tracked files of the package (of ``where``) differ
    from it, so a result made by edited code does not pass for the commit's. None outside git,
    and for a copy that git does not track (an install inside some repository's ignored
    folder, whose HEAD says nothing of it)."""
    cwd = where or Path(__file__).resolve().parents[1]  # src/stablerank

    def git(*args: str) -> str:
        # --no-optional-locks: a status here must not hold the index lock a user's commit needs
        run = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True,
                             text=True, timeout=5, check=True)  # fmt: skip
        return run.stdout.strip()

    try:
        if not git("ls-files", "--", "."):
            return None
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + DIRTY if head and changed else head or None


def environment_info(device: torch.device, seed: int, world_size: int) -> dict[str, Any]:
    """What produced a result: versions, hardware, commit, seed, processes (``world_size``)."""
    from stablerank import __version__

    info: dict[str, Any] = {
        "stablerank": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "seed": seed,
        "world_size": world_size,
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


class MetricLog:
    """Append-only JSONL + CSV log (and TensorBoard scalars when ``tensorboard`` is installed).

    On resume, records past ``truncate_after`` (a step or epoch number) are dropped from the JSONL
    and CSV files, so they match the checkpoint exactly and nothing is duplicated there; the
    TensorBoard writer is reopened with ``purge_step`` (its event files are append-only), so
    TensorBoard hides the old events of the steps the resumed run repeats.
    """

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool = True, key: str = "epoch"
    ) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / LOG_JSONL
        self.csv = self.run_dir / LOG_CSV
        self.key = key
        # The CSV's header, once this object has written it; None until then (a resumed run's
        # CSV is rebuilt from the JSONL on the first append).
        self._csv_columns: list[str] | None = None
        self._writer = self._tensorboard() if tensorboard else None

    def _tensorboard(self, purge_step: int | None = None) -> Any:
        """A TensorBoard writer, or None when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.jsonl) if self.jsonl.exists() else []

    def truncate_after(self, value: int) -> None:
        """Drop records whose ``key`` is greater than ``value`` (resume after a crash)."""
        records = self.records()
        kept = [r for r in records if r.get(self.key, -1) <= value]
        atomic_write_text(self.jsonl, "".join(_json_line(r) for r in kept))
        self._write_csv(kept)
        if self._writer is not None and len(kept) < len(records):
            self._writer.close()
            self._writer = self._tensorboard(purge_step=value + 1)

    def _write_csv(self, records: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for r in records for k in r))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for r in records:
            writer.writerow({k: _cell(v) for k, v in r.items()})
        atomic_write_text(self.csv, text.getvalue())
        self._csv_columns = columns

    def append(self, record: Mapping[str, Any]) -> None:
        line = _json_line(record)
        with self.jsonl.open("a") as fh:
            fh.write(line)
        columns = self._csv_columns
        if columns is None or any(k not in columns for k in record) or not self.csv.exists():
            # A new column: rewrite the CSV so its header covers every column (atomic).
            self._write_csv(self.records())
        else:  # the usual case: one more row, O(1) instead of rewriting the whole log
            with self.csv.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                # The row as the JSONL holds it, as a rewrite reads it back (NaN: an empty cell).
                writer.writerow({k: _cell(v) for k, v in json.loads(line).items()})
        if self._writer is not None:
            step = int(record.get(self.key, 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != self.key:
                    self._writer.add_scalar(k, v, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log. A cut last line (a kill or a full disk mid-write) is dropped:
    the run resumes from its checkpoint, which never runs ahead of a complete record. A bad line
    elsewhere is a corrupt file and raises.

    Raises:
        ValueError: a line other than the last is not JSON (names the file and the line).
    """
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not JSON: {err}") from None
    return out


def _json_line(record: Mapping[str, Any]) -> str:
    """One strict-JSON line: tensors (at any depth) as numbers or lists, NaN and infinities as
    null (a diverged run's losses), which :func:`json.loads` reads back as None."""
    return json.dumps(to_dict(record), allow_nan=False) + "\n"


def _cell(v: Any) -> Any:
    """A CSV cell of a value read from JSON: lists and dicts as JSON text."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v
