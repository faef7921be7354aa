"""``stablerank reproduce``: run the plan, cache by config hash, then write the report.

:func:`run` expands the config (:func:`~stablerank.repro.plan.build_plan`), runs every run that is
not finished, and ends with :func:`~stablerank.repro.report.write_report` and a short claims
summary on stderr. Each run folder (``out_dir/runs/<slug>-<hash>``) gets, beside the trainer's
files:

* ``spec.json``: what the run is (kind, setting, normalization, seed, resolved config);
* ``status.json``: ``running`` / ``done`` / ``failed`` / ``interrupted``, the stage, wall time
  per stage and in total (summed over attempts), the number of attempts;
* ``error.txt``: the traceback of the last failure.

Caching: a run whose ``status.json`` says ``done`` (and whose results exist) is skipped; one with
a checkpoint is resumed (``resume=True``; both trainers continue exactly); a finished training
whose analysis is missing or was made with other settings only re-analyses. A failure is
recorded and, with ``continue_on_error`` (the default), the other runs go on. Interrupting
(Ctrl-C, a kill) and rerunning the same command therefore finishes only what remains.

With ``nproc_per_node > 1`` each training run is launched as ``torchrun --standalone
--nproc_per_node=N -m stablerank train|gan --config <run_dir>/launch.json`` (the trainers are
DDP-ready); the pipeline itself stays one process. Launching the pipeline itself under
``torchrun`` is refused: each trainer ends its DDP workers when its run is done.

Measured (``python -m stablerank reproduce --preset quick``, this project's 2-core AMD EPYC
machine, torch 2.13 CPU, the preset's one torch thread, the machine shared with other jobs at a
load of ~4): 14 runs and the report in 13.2 min wall, 8.7 CPU-minutes (6 clean-label runs 46-67 s
each including analysis, 6 shattering runs 15-21 s, 2 GAN runs ~170 s each including FID/KID/IS,
neural divergence and eL). On an idle machine the wall time is about the CPU time. Killing a
run during its first GAN run (SIGKILL) and rerunning skipped the 12 finished runs, resumed the
GAN from its step-150 checkpoint and ran the last one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablerank.config import config_to_dict
from stablerank.config.classify import AnalyzeConfig, ClassifyConfig
from stablerank.config.gan import GanConfig
from stablerank.config.reproduce import REPRODUCE_PRESETS, ReproduceConfig
from stablerank.repro.estimate import detect_hardware, format_plan
from stablerank.repro.plan import (
    KIND_GAN,
    GanEvalSettings,
    RunSpec,
    build_plan,
    run_dir_of,
    run_dir_of_config,
)
from stablerank.repro.results import PLAN_FILE, SPEC_FILE, STATUS_FILE, read_json
from stablerank.train.checkpoint import atomic_write_json

__all__ = [
    "ERROR_FILE",
    "LAUNCH_FILE",
    "RunOutcome",
    "Runners",
    "default_runners",
    "execute_plan",
    "execute_run",
    "run",
]

ERROR_FILE = "error.txt"
LAUNCH_FILE = "launch.json"
ANALYSIS_FILE = "analysis.json"
GAN_ANALYSIS_FILE = "gan_analysis.json"
METRICS_FILE = "metrics.json"
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED = (
    "running",
    "done",
    "failed",
    "interrupted",
)
OUTCOME_SKIPPED = "skipped"
_HEARTBEAT_S = 30.0  # status.json wall-time refresh while a run works
# Reproduce-config keys that say where and how to run, not what: ignored when naming the preset.
_NOT_SIZES = ("out_dir", "device", "num_threads", "progress", "data_dir", "nproc_per_node")


@dataclass(frozen=True)
class Runners:
    """The functions that do the work (the real trainers by default; tests inject fakes).

    Attributes:
        train_classifier: ``f(ClassifyConfig) -> run folder``.
        analyze: ``f(AnalyzeConfig, run_dir) -> dict`` (writes ``analysis.json``).
        train_gan: ``f(GanConfig) -> run folder``.
        evaluate_gan: ``f(run_dir, GanEvalSettings) -> dict`` (writes ``gan_analysis.json``).
    """

    train_classifier: Callable[[ClassifyConfig], Any]
    analyze: Callable[[AnalyzeConfig, Path], Any]
    train_gan: Callable[[GanConfig], Any]
    evaluate_gan: Callable[[Path, GanEvalSettings], Any]


def _torchrun(command: str, nproc: int) -> Callable[[Any], Path]:
    """A runner that launches ``stablerank <command>`` with torchrun on this machine."""

    def launch(cfg: Any) -> Path:
        run_dir = run_dir_of_config(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / LAUNCH_FILE, config_to_dict(cfg))
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "stablerank",
            command,
            "--config",
            str(run_dir / LAUNCH_FILE),
        ]
        subprocess.run(argv, check=True)
        return run_dir

    return launch


def default_runners(cfg: ReproduceConfig) -> Runners:
    """The real trainers, analysis and GAN evaluation (imported here: nothing at import time)."""
    from stablerank.repro.gan_eval import evaluate_gan_run
    from stablerank.train import analyze, classify, gan

    def evaluate(run_dir: Path, settings: GanEvalSettings) -> Any:
        return evaluate_gan_run(run_dir, settings, device=cfg.device, progress=cfg.progress)

    if cfg.nproc_per_node > 1:
        return Runners(
            _torchrun("train", cfg.nproc_per_node),
            analyze.run,
            _torchrun("gan", cfg.nproc_per_node),
            evaluate,
        )
    return Runners(classify.run, analyze.run, gan.run, evaluate)


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run in this invocation."""

    name: str
    outcome: str  # skipped | done | failed
    seconds: float
    error: str = ""


def _settings_hash(settings: Any) -> str | None:
    if settings is None:
        return None
    data = settings.to_dict() if hasattr(settings, "to_dict") else dataclasses.asdict(settings)
    # Runtime keys do not change what is measured.
    data = {k: v for k, v in data.items() if k not in ("device", "num_threads", "progress")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _post_stage(spec: RunSpec) -> tuple[Any, str] | None:
    """(settings, result file) of the run's analysis / evaluation stage, or None."""
    if spec.analyze is not None:
        return spec.analyze, ANALYSIS_FILE
    if spec.gan_eval is not None:
        return spec.gan_eval, GAN_ANALYSIS_FILE
    return None


def _has_checkpoint(spec: RunSpec, run_dir: Path) -> bool:
    if spec.kind == KIND_GAN:
        return any((run_dir / "checkpoints").glob("step_*.pt"))
    return (run_dir / "checkpoint.pt").is_file()


def _heartbeat(stop: threading.Event, save: Callable[[], None]) -> None:
    while not stop.wait(_HEARTBEAT_S):
        save()


def execute_run(spec: RunSpec, runners: Runners, *, continue_on_error: bool = True) -> RunOutcome:
    """Run one spec's missing stages (train, then analysis/evaluation), keeping ``status.json``.

    Raises:
        KeyboardInterrupt: passed on after recording ``interrupted``.
        Exception: the run's error, after recording it, when ``continue_on_error`` is False.
    """
    run_dir = run_dir_of(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / SPEC_FILE, spec.to_dict())
    status = read_json(run_dir / STATUS_FILE) or {}
    post = _post_stage(spec)
    post_hash = _settings_hash(post[0]) if post else None
    trained = (run_dir / METRICS_FILE).is_file()
    post_done = post is None or (
        (run_dir / post[1]).is_file() and status.get("post_hash") == post_hash
    )
    if trained and post_done and status.get("status") == STATUS_DONE:
        return RunOutcome(spec.name, OUTCOME_SKIPPED, 0.0)

    t0 = time.perf_counter()
    prior = float(status.get("wall_time_s") or 0.0)
    stages = dict(status.get("stages") or {})
    status = {
        **status,
        "status": STATUS_RUNNING,
        "attempts": int(status.get("attempts", 0)) + 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "error": "",
    }

    lock = threading.Lock()

    def save(**changes: Any) -> None:
        with lock:
            status.update(changes, stages=stages, wall_time_s=prior + time.perf_counter() - t0)
            atomic_write_json(run_dir / STATUS_FILE, status)

    # A heartbeat keeps wall_time_s current, so a killed attempt still counts in the total.
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(stop, save), daemon=True).start()
    stage = "train"
    try:
        try:
            if not trained:
                resume = _has_checkpoint(spec, run_dir)
                save(stage=stage, resumed=resume)
                t = time.perf_counter()
                train = runners.train_gan if spec.kind == KIND_GAN else runners.train_classifier
                train(dataclasses.replace(spec.config, resume=resume))
                stages["train_s"] = stages.get("train_s", 0.0) + time.perf_counter() - t
                if not (run_dir / METRICS_FILE).is_file():
                    raise RuntimeError(
                        f"the trainer returned without writing {run_dir / METRICS_FILE}"
                    )
            if not post_done:
                stage = "analyze" if spec.analyze is not None else "evaluate"
                save(stage=stage)
                t = time.perf_counter()
                if spec.analyze is not None:
                    runners.analyze(spec.analyze, run_dir)
                else:
                    runners.evaluate_gan(run_dir, spec.gan_eval)
                stages[f"{stage}_s"] = time.perf_counter() - t
            save(
                status=STATUS_DONE,
                stage="done",
                post_hash=post_hash,
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            )
            return RunOutcome(spec.name, STATUS_DONE, time.perf_counter() - t0)
        except KeyboardInterrupt:
            save(status=STATUS_INTERRUPTED, stage=stage)
            raise
        except Exception as err:
            (run_dir / ERROR_FILE).write_text(traceback.format_exc())
            message = f"{type(err).__name__} in {stage}: {err}"
            save(status=STATUS_FAILED, stage=stage, error=message)
            if not continue_on_error:
                raise
            return RunOutcome(spec.name, STATUS_FAILED, time.perf_counter() - t0, message)
    finally:
        stop.set()


def execute_plan(
    specs: Sequence[RunSpec],
    runners: Runners,
    *,
    continue_on_error: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[RunOutcome]:
    """Run every spec in order (see :func:`execute_run`); progress lines go to ``log``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    outcomes = []
    for i, spec in enumerate(specs, 1):
        log(f"[{i}/{len(specs)}] {spec.kind} {spec.name}")
        outcome = execute_run(spec, runners, continue_on_error=continue_on_error)
        detail = f": {outcome.error}" if outcome.error else ""
        log(f"[{i}/{len(specs)}] {outcome.outcome} ({outcome.seconds:.0f} s){detail}")
        outcomes.append(outcome)
    return outcomes


def _preset_name(cfg: ReproduceConfig) -> str:
    """The preset whose sizes ``cfg`` carries (for the report's header), or ``custom``; where and
    how it runs (output folder, device, threads) does not count."""
    data = cfg.to_dict()
    for name, preset in REPRODUCE_PRESETS.items():
        if all(
            json.dumps(data.get(k)) == json.dumps(list(v) if isinstance(v, tuple) else v)
            for k, v in preset.items()
            if k not in _NOT_SIZES
        ):
            return name
    return "custom"


def run(cfg: ReproduceConfig, *, runners: Runners | None = None) -> Path:
    """Run (or resume) the reproduction of ``cfg`` and write its report.

    Args:
        cfg: the resolved config (``--preset`` and flags applied).
        runners: the functions doing the work (default: :func:`default_runners`).

    Returns:
        The path of ``report.md`` (or of ``out_dir`` for a dry run).

    Raises:
        RuntimeError: launched under ``torchrun`` (use ``nproc_per_node`` instead).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "run `stablerank reproduce` as one process; to train each run with DDP pass "
            "--nproc-per-node N (it launches torchrun per run)"
        )
    from stablerank.repro.report import claims_summary, write_report

    out_dir = Path(cfg.out_dir)
    specs = build_plan(cfg)
    hw = detect_hardware(cfg)
    if cfg.dry_run:
        print(format_plan(specs, hw))
        return out_dir
    if not cfg.report_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out_dir / PLAN_FILE,
            {
                "preset": _preset_name(cfg),
                "config": cfg.to_dict(),
                "hardware": f"{hw.name} ({hw.device})",
                "runs": [s.to_dict() for s in specs],
            },
        )
        print(format_plan(specs, hw), file=sys.stderr, flush=True)
        if cfg.num_threads:
            import torch

            torch.set_num_threads(cfg.num_threads)  # GanConfig has no thread setting of its own
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # torchmetrics' KID warns on every evaluation that it keeps the features (by design).
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            outcomes = execute_plan(
                specs, runners or default_runners(cfg), continue_on_error=cfg.continue_on_error
            )
        ran = [o for o in outcomes if o.outcome != OUTCOME_SKIPPED]
        print(
            f"ran {len(ran)} runs ({len(outcomes) - len(ran)} already finished) in "
            f"{(time.perf_counter() - t0) / 60:.1f} min",
            file=sys.stderr,
        )
    report = write_report(out_dir, decision_z=cfg.decision_z)
    print(claims_summary(report), file=sys.stderr, flush=True)
    return report.path
