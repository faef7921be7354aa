"""``stablerank reproduce``: build the sweep, run what is missing, write the report.

:func:`run` is the whole command (the modules it drives: :mod:`stablerank.repro`). Ctrl-C stops
the workers; the same command finishes what remains.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stablerank._optional import import_optional
from stablerank.config import config_to_dict
from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro.execute import BUSY, DIVERGED, DONE, SKIPPED, read_finished, run_state
from stablerank.repro.executors import make_executor, print_outcome
from stablerank.repro.records import collect
from stablerank.repro.report import CLAIMS_FILE, claims_summary, write_report
from stablerank.repro.sweeps import KIND_GAN, Run, build_sweep
from stablerank.train.records import git_commit
from stablerank.train.rundir import RunDir, waiting_lock

__all__ = ["SweepOutcome", "check_inputs", "run"]

REPORT_LOCK = ".report.lock"


@dataclass(frozen=True)
class SweepOutcome:
    """What ``stablerank reproduce`` did (its ``--json``): each run's state by name, and, unless
    it was a dry run, the report, ``claims.json`` and each claim's verdict."""

    out_dir: Path
    runs: dict[str, str]  # run name -> its state at the end (a dry run: now)
    report: Path | None = None
    claims: Path | None = None
    verdicts: dict[int, str] = field(default_factory=dict)


def _header(runs: list[Run], states: list[str]) -> str:
    """One line: the runs by kind and by state."""
    kinds = ", ".join(f"{n} {k}" for k, n in Counter(r.kind for r in runs).items())
    counts = ", ".join(f"{n} {s}" for s, n in Counter(states).items())
    return f"{len(runs)} runs ({kinds}); state: {counts}"


def _describe(runs: list[Run], states: list[str], only: str | None = None) -> str:
    """The header line, then each run's state and name (those in state ``only``, if given)."""
    lines = [f"  {state:<8} {r.name}" for state, r in zip(states, runs, strict=True)
             if only in (None, state)]  # fmt: skip
    return "\n".join([_header(runs, states), *lines])


def _finished_elsewhere(runs: list[Run]) -> str:
    """A warning when the folders that hold ``runs`` also hold finished runs the sweep does not
    list (other seeds or settings), which the report then leaves out; '' when none."""
    names = {Path(r.run_dir).name for r in runs}
    left_out = [
        folder
        for parent in {Path(r.run_dir).parent for r in runs if Path(r.run_dir).parent.is_dir()}
        for folder in parent.iterdir()
        if folder.name not in names and RunDir(folder).is_done()
    ]
    if not left_out:
        return ""
    return (
        f"warning: {len(left_out)} finished run folder(s) in {left_out[0].parent} are not in this "
        "sweep, and its report leaves them out (e.g. trained with other --seeds or --gan-seeds: "
        "give the same ones to count them)"
    )


def check_inputs(runs: list[Run]) -> None:
    """Read each dataset, and build each feature network, that ``runs`` train and score with,
    once: a missing or corrupt file would otherwise fail every run alike, under SLURM each only
    after its wait in the queue. (SLURM jobs read the same paths: a shared file system.) Every
    input is tried, so that one command names all that is missing.

    Raises:
        DatasetNotFoundError, CorruptDatasetError: from :func:`stablerank.data.load_dataset`.
        FileNotFoundError, ModuleNotFoundError: a feature network's weights or package missing.
        RuntimeError: several of these (each named).
    """
    from stablerank.data import load_dataset
    from stablerank.train.gan_scores import scoring_network

    errors: list[Exception] = []

    def attempt(read: Callable[..., object], *args: object) -> None:
        try:
            read(*args)
        except Exception as err:  # each named, whatever it is (a corrupt weights file too)
            errors.append(err)

    for dataset, data_dir in dict.fromkeys((r.config.dataset, r.config.data_dir) for r in runs):
        attempt(load_dataset, dataset, data_dir)

    # A run whose metrics.json reads is trained and scored: what is left of it (its analysis at
    # most, whatever its status) scores no more.
    scoring = [r.config for r in runs if r.kind == KIND_GAN
               and (r.config.eval_every or r.config.n_final_samples)
               and read_finished(r, DONE, with_analysis=False)[0] is None]  # fmt: skip
    for cfg in {(c.scoring_net, c.feature_weights): c for c in scoring}.values():
        attempt(scoring_network, cfg)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        listed = "; ".join(f"({i}) {err}" for i, err in enumerate(errors, 1))
        raise RuntimeError(f"{len(errors)} inputs of the runs cannot be read: {listed}")


def run(cfg: ReproduceConfig) -> SweepOutcome:
    """Run (or resume) the sweep of ``cfg`` and write its report (a dry run lists the runs on
    stderr and runs nothing).

    Raises:
        RuntimeError: launched under ``torchrun`` (each run is one process; use the executors),
            or ``device="cuda"`` where no CUDA device is visible (outside SLURM;
            :func:`stablerank.repro.executors.make_executor`).
        FileNotFoundError: ``report_only`` on a folder with no finished run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("run `stablerank reproduce` as one process, not under torchrun")
    out_dir = Path(cfg.resolved_out_dir)
    # Longest first (GANs), so the pool's last minutes are not one long run alone; a dry run
    # lists them in that order too.
    runs = sorted(build_sweep(cfg), key=lambda r: r.kind != KIND_GAN)
    states = [run_state(r) for r in runs]
    to_train = [r for r, state in zip(runs, states, strict=True) if state not in (DONE, DIVERGED)]
    left_out = _finished_elsewhere(runs)  # said first, or after a dry run's list
    if left_out and not cfg.dry_run:
        print(left_out, file=sys.stderr)
    if cfg.dry_run:
        print("\n".join(filter(None, [_describe(runs, states), left_out])), file=sys.stderr)
        # A dry run lists the runs regardless, and says each reason they could not start here.
        try:
            executor = make_executor(cfg, out_dir)
            print(f"executor {cfg.executor}: {executor.describe()}", file=sys.stderr)
        except Exception as err:
            print(f"warning: the runs cannot start here: {err}", file=sys.stderr)
        try:
            if cfg.check_inputs:
                check_inputs(to_train)
        except Exception as err:  # a corrupt file too
            print(f"warning: the runs to train cannot start here: {err}", file=sys.stderr)
        return SweepOutcome(out_dir, {r.name: s for r, s in zip(runs, states, strict=True)})
    # The report's packages (and the GAN runs' scores) are checked before any work: a minimal
    # install would otherwise learn it only after the whole sweep.
    import_optional("scipy.stats", "the reproduction report")
    import_optional("matplotlib.figure", "the reproduction report")
    if not cfg.report_only:
        if any(r.kind == KIND_GAN for r in runs):
            import_optional("torchmetrics", "the GAN runs' FID/KID")
        executor = make_executor(cfg, out_dir)  # before any work: it checks the device
        if cfg.check_inputs:
            check_inputs(to_train)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(_header(runs, states), file=sys.stderr)
        print(f"executor {cfg.executor}: {executor.describe()}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # torchmetrics' KID warns on every evaluation that it keeps the features (by design).
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            try:
                outcomes = executor.map(runs, print_outcome)
            except KeyboardInterrupt:  # the runs stopped partway get no line of their own
                states = [run_state(r) for r in runs]
                print(f"now: {_describe(runs, states, only='partial')}", file=sys.stderr)
                raise
        ran = [o for o in outcomes if o.state not in (SKIPPED, BUSY)]
        # How they ended: a failure's own line may have scrolled away among the others'.
        ended = "".join(f"{n} {s}, " for s, n in Counter(o.state for o in ran).items())
        runs_ran = f"{len(ran)} run{'' if len(ran) == 1 else 's'}"
        took = time.perf_counter() - t0
        print(
            f"ran {runs_ran} ({ended}{len(outcomes) - len(ran)} finished before or running "
            f"elsewhere) in " + (f"{took:.0f} s" if took < 60 else f"{took / 60:.1f} min"),
            file=sys.stderr,
        )
    nothing = (f"{out_dir} holds no finished run of the {cfg.sweep!r} sweep: nothing to report "
               "(run without --report-only first)")  # fmt: skip
    if cfg.report_only and not out_dir.is_dir():  # not created by the lock below
        raise FileNotFoundError(nothing)
    # Two reproduce processes on one out dir write their reports one after the other, each read
    # from the folders as they are then: the last written is never the older (a report read
    # before the other process's last run finished could otherwise land last).
    with waiting_lock(out_dir / REPORT_LOCK, "waiting for another reproduce writing its report"):
        records = collect(runs)
        if cfg.report_only and not any(r.usable for r in records):
            raise FileNotFoundError(nothing)
        path, results = write_report(
            out_dir,
            records,
            sweep=cfg.sweep,
            alpha=cfg.alpha,
            config=config_to_dict(cfg),
            commit=git_commit(),
        )
    print(claims_summary(results, cfg.alpha), file=sys.stderr)
    print(f"report: {path}", file=sys.stderr, flush=True)
    verdicts = {r.claim.number: r.verdict for r in results}
    states = {rec.run.name: rec.state for rec in records}
    return SweepOutcome(out_dir, states, path, path.with_name(CLAIMS_FILE), verdicts)
