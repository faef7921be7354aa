"""What a finished sweep left on disk, read back as typed records (never a model or a dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stablerank.repro.execute import DIVERGED, DONE, read_finished, state_and_files
from stablerank.repro.sweeps import Run
from stablerank.train.results import ClassifierAnalysis, ClassifierResult, GanAnalysis, GanResult
from stablerank.train.rundir import RunDir

__all__ = ["RunRecord", "by_setting", "collect"]


@dataclass(frozen=True)
class RunRecord:
    """One run of the sweep with its state and whatever results it has."""

    run: Run
    state: str  # done | diverged | failed | partial | new
    result: ClassifierResult | GanResult | None = None
    analysis: ClassifierAnalysis | GanAnalysis | None = None
    problem: str = ""  # why a result could not be read

    @property
    def usable(self) -> bool:
        """Finished, not diverged, and its results read: counted in the claims."""
        return self.state == DONE and self.result is not None and not self.result.diverged


def _problem(run: Run) -> str:
    """Why a run is not counted, from the status ``execute`` keeps: the error and the stage it
    happened in, or the state and stage where the run stopped."""
    run_dir = RunDir(run.run_dir)
    status = run_dir.read_status()
    where = f"in {status['stage']}: " if status.get("stage") else ""
    if status.get("error"):
        return f"{where}{status['error']}"
    if status.get("status") in (DONE, DIVERGED):  # trained; files to make again, or settings
        if why := read_finished(run, status["status"])[2]:
            return why
        trained_by = run_dir.trained_world_size()
        if trained_by != run.nproc_per_node:  # a folder from before its name said so
            return (f"trained by {trained_by} processes, the sweep runs it by "
                    f"{run.nproc_per_node}: another run; remove its folder")  # fmt: skip
        return "the analysis settings changed: its analysis runs again"
    if run_dir.was_killed():
        return f"{where}stopped while running (no process holds its lock); a rerun resumes it"
    if status.get("status"):
        return f"{where}{status['status']}"
    return "starting in another process" if run_dir.is_locked() else "not trained yet"


def collect(runs: Sequence[Run]) -> list[RunRecord]:
    """The record of every run of the sweep, in sweep order."""
    records = []
    for run in runs:
        state, result, analysis = state_and_files(run)
        problem = "" if state in (DONE, DIVERGED) else _problem(run)
        records.append(RunRecord(run, state, result, analysis, problem))
    return records


def by_setting(records: Sequence[RunRecord], kind: str) -> dict[str, dict[str, list[RunRecord]]]:
    """``{setting: {arm: records}}`` of one kind, the arms ordered none, sn, then srn by c."""
    out: dict[str, dict[str, list[RunRecord]]] = {}
    for rec in records:
        if rec.run.kind == kind:
            out.setdefault(rec.run.setting, {}).setdefault(rec.run.arm, []).append(rec)

    def order(arm: str) -> tuple[int, str]:
        return {"none": 0, "sn": 1}.get(arm, 2), arm

    return {s: {a: arms[a] for a in sorted(arms, key=order)} for s, arms in out.items()}
