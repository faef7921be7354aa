"""The run folder of both trainers: its file names, checkpoints, take-over rule, status and lock.

A run folder is ``out_dir/<run name>`` (:meth:`RunDir.for_config`: the config's ``run_name``, or
a name that spells out the protocol followed by the hash of everything the run computes). It
holds::

    config.json env.json          the resolved config; versions, device, commit, seed
    log.jsonl log.csv             one record per epoch (classifier) / logged step (GAN)
    metrics.json                  the trainer's typed result (stablerank.train.results)
    analysis.json                 ClassifierAnalysis (stablerank analyze)
    gan_analysis.json             GanAnalysis (stablerank.train.gan_analysis)
    status.json error.txt .lock   running/done/diverged/failed/interrupted; the last traceback
    checkpoints/step_<N>.pt       N = optimizer steps (classifier) or G steps (GAN); SHA-256 beside
    d_layers.json samples/ tb/    the GAN's D spectra and sample grids; TensorBoard scalars

:class:`RunDir` owns these names (nobody else spells them) and the rules both trainers follow:

* **take-over** (:meth:`RunDir.begin`): a folder holding another run's checkpoints or results is
  refused unless ``resume`` (continue it) or ``overwrite`` (delete them and start afresh);
* **resume** (:meth:`RunDir.resume_point`): the newest *intact* checkpoint, falling back to an
  older one when the newest was cut or altered; before any checkpoint, a fresh start that says so;
* **status**: written atomically and merged field by field; the trainers set ``status``
  (:data:`RUNNING`, :data:`DONE`, :data:`DIVERGED`, :data:`FAILED`, :data:`INTERRUPTED`), an
  orchestrator may add its own fields (attempts, wall time, stage);
* **lock** (:meth:`RunDir.lock`): an exclusive ``flock`` on ``.lock`` while one process works on
  the run, so two processes never train the same run (the second gets :class:`RunLockedError` at
  once). It is re-entrant: a process holding it, and the processes it starts (a ``torchrun`` it
  launches), pass through (:data:`HELD_LOCKS_ENV`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from stablerank.config import config_hash, config_to_dict, diff_configs
from stablerank.train.checkpoint import (
    CorruptCheckpointError,
    atomic_write_json,
    atomic_write_text,
    delete_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "DIVERGED",
    "DONE",
    "FAILED",
    "HELD_LOCKS_ENV",
    "INTERRUPTED",
    "RUNNING",
    "RunDir",
    "RunLockedError",
    "ddp_suffix",
    "waiting_lock",
]

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.json"
ANALYSIS_FILE = "analysis.json"
GAN_ANALYSIS_FILE = "gan_analysis.json"
LOG_JSONL = "log.jsonl"
LOG_CSV = "log.csv"
STATUS_FILE = "status.json"
ERROR_FILE = "error.txt"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
D_LAYERS_FILE = "d_layers.json"
TENSORBOARD_DIR = "tb"
# Files that only a run's progress writes: a folder holding one holds another run's results.
_RESULT_FILES = (METRICS_FILE, LOG_JSONL, ANALYSIS_FILE, GAN_ANALYSIS_FILE)
# Deleted by overwrite=True (plus the analyses' *.png plots); config/env are rewritten anyway,
# status.json is the orchestrator's record too and .lock is held.
_RUN_OUTPUTS = (*_RESULT_FILES, LOG_CSV, ERROR_FILE, D_LAYERS_FILE, CHECKPOINTS_DIR,
                SAMPLES_DIR, TENSORBOARD_DIR)  # fmt: skip

# The trainers' values of status.json's "status".
RUNNING, DONE, DIVERGED = "running", "done", "diverged"
FAILED, INTERRUPTED = "failed", "interrupted"
# os.pathsep-separated resolved run folders whose lock this process or an ancestor holds.
HELD_LOCKS_ENV = "STABLERANK_HELD_RUN_LOCKS"


def ddp_suffix(world_size: int) -> str:
    """What ends the name of a run trained by ``world_size`` processes: ``-ddpN``, or nothing
    for one process."""
    return f"-ddp{world_size}" if world_size > 1 else ""


def _by_processes(n: int) -> str:
    return "as one process" if n == 1 else f"by {n} processes (torchrun)"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open_lock_file(path: Path, *, create: bool) -> int:
    """A descriptor to flock ``path`` with: read-write, as an NFS client's flock needs (it
    emulates it with fcntl locks, which need a descriptor open for writing); read-only where
    writing is refused, as for another user's lock file on a shared out dir or a read-only
    mount (a local flock works on it)."""
    flags = os.O_CREAT if create else 0
    try:
        return os.open(path, os.O_RDWR | flags, 0o666)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        return os.open(path, os.O_RDONLY | flags, 0o666)


@contextlib.contextmanager
def waiting_lock(path: Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created), waiting for it, and saying
    ``waiting`` on stderr first when another process holds it. Released on exit, and by the OS
    if the process dies. Where the filesystem has no locks, says so and goes on without."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path, create=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _stderr(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # ENOLCK, EOPNOTSUPP: a filesystem without flock
            _stderr(f"warning: cannot lock {path} ({err}); going on without the lock")
        yield
    finally:
        os.close(fd)


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class _File:
    """A file of a run folder: ``RunDir(...).<attribute>`` is ``path / name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, run_dir: None, owner: type | None = None) -> _File: ...
    @overload
    def __get__(self, run_dir: RunDir, owner: type | None = None) -> Path: ...
    def __get__(self, run_dir: RunDir | None, owner: type | None = None) -> Path | _File:
        return self if run_dir is None else run_dir.path / self.name


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run folder (it need not exist yet); ``path`` may be given as a string."""

    path: Path
    # The processes that train the run (torchrun's world size): part of what the run computes,
    # as each rank's BatchNorm normalizes its own share of the batch and DDP sums the gradients
    # of the shares in another order than one batch's.
    world_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def for_config(cls, cfg: Any, world_size: int = 1) -> RunDir:
        """The run folder of a trainer config trained by ``world_size`` processes:
        ``cfg.out_dir / cfg.run_name``, or, without a run name,
        ``cfg.out_dir / <cfg.run_label>-s<seed>-<hash>[-ddp<world_size>]`` where the hash covers
        every field except ``cfg.RUNTIME_KEYS`` (where and how it runs), so a resumed run finds
        its folder on any device, and the suffix names a run of more than one process. Works for
        :class:`stablerank.config.classify.ClassifyConfig` and
        :class:`stablerank.config.gan.GanConfig` alike."""
        name = cfg.run_name or (
            f"{cfg.run_label}-s{cfg.seed}-{config_hash(cfg, exclude=cfg.RUNTIME_KEYS)}"
            f"{ddp_suffix(world_size)}"
        )
        return cls(Path(cfg.out_dir) / name, world_size)

    # ------------------------------------------------------------------ file names

    config_file = _File(CONFIG_FILE)
    env_file = _File(ENV_FILE)
    metrics_file = _File(METRICS_FILE)
    log_jsonl = _File(LOG_JSONL)
    samples_dir = _File(SAMPLES_DIR)
    d_layers_file = _File(D_LAYERS_FILE)
    error_file = _File(ERROR_FILE)

    def write_run_files(self, config: Mapping[str, Any], env: Mapping[str, Any]) -> None:
        """Write ``config.json`` and ``env.json``."""
        atomic_write_json(self.config_file, dict(config))
        atomic_write_json(self.env_file, dict(env))

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_path(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"step_{step:07d}.pt"

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, oldest first."""
        return sorted((self.path / CHECKPOINTS_DIR).glob("step_*.pt"))

    def save_checkpoint(self, step: int, state: Mapping[str, Any], keep: int) -> None:
        """Write the checkpoint of ``step`` (atomic, checksummed); delete all but the newest
        ``keep``."""
        save_checkpoint(self.checkpoint_path(step), state)
        for old in self.checkpoints()[:-keep]:
            delete_checkpoint(old)

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
            raise CorruptCheckpointError(
                f"no intact checkpoint in {self.path / CHECKPOINTS_DIR}: nothing to continue "
                "or read; remove the run folder (or train it with --overwrite) to start afresh"
            )
        return None

    # ------------------------------------------------------------------ starting and resuming

    def begin(self, cfg: Any, *, is_main: bool = True) -> None:
        """The take-over rule for the trainer config ``cfg``, before a trainer touches the folder.

        * without ``cfg.resume``, a folder with checkpoints or results (a log, metrics, an
          analysis) is refused unless ``cfg.overwrite``, which deletes them;
        * with ``cfg.resume``, a folder whose ``config.json`` differs from ``cfg`` (outside
          ``cfg.RUNTIME_KEYS``) holds another run: refused, unless it has no checkpoint and
          ``cfg.overwrite`` deletes it (checkpoints are replaced only without ``cfg.resume``,
          which every DDP rank then leaves unread). A refused run is left as it was (not marked
          ``failed``): it still resumes under its own config;
        * a folder whose run was trained by another number of processes (:attr:`world_size`,
          :meth:`trained_world_size`) is another run: refused unless ``cfg.overwrite`` without
          a checkpoint to resume deletes it.

        The main process then removes stale temporary files of killed atomic writes. Every rank
        of a DDP run may call it (the checks only read); only ``is_main`` changes the folder.

        Raises:
            FileExistsError: the folder holds another run (the message names the flags).
            ValueError: ``cfg.resume`` with checkpoints made under another config (the
                differences are listed).
        """
        resume, overwrite = cfg.resume, cfg.overwrite
        has_checkpoints = bool(self.checkpoints())
        found = [name for name in _RESULT_FILES if (self.path / name).exists()]
        diffs, unreadable = self._compare_config(cfg, cfg.RUNTIME_KEYS)
        other = None if overwrite else "; ".join(diffs) or unreadable or None
        # The same config trained by another number of processes: another run all the same.
        trained_by = self.trained_world_size()
        kept = not overwrite or (resume and has_checkpoints)
        if not diffs and trained_by != self.world_size and (has_checkpoints or found) and kept:
            raise FileExistsError(
                f"{self.path} holds a run trained {_by_processes(trained_by)}, and this one runs "
                f"{_by_processes(self.world_size)}: another number of processes computes another "
                "run (each rank's BatchNorm normalizes its share of the batch, and the gradients "
                "sum in another order); continue it "
                + ("as one process" if trained_by == 1 else f"under torchrun --nproc_per_node "
                   f"{trained_by}") + ", pass --overwrite without --resume to replace it, or "
                "choose another folder"
            )  # fmt: skip
        if not resume and not overwrite and (has_checkpoints or found):
            held = "checkpoints" if has_checkpoints else f"a run's results ({', '.join(found)})"
            # --resume continues the same config only: offered when config.json matches
            offer = (
                f" of another run ({other}); pass" if other else "; pass --resume to continue it,"
            )
            raise FileExistsError(
                f"{self.path} already holds {held}{offer} --overwrite to replace it "
                "(resume=True / overwrite=True in Python), or choose another folder"
            )
        if resume and not has_checkpoints and other:
            raise FileExistsError(
                f"{self.path} holds another run without a checkpoint to resume ({other}); pass "
                "overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        if resume and diffs and (has_checkpoints or not overwrite):  # before the status records
            raise ValueError(  # work, so the run stays as it was
                f"refusing to resume: the config differs from the run's {self.config_file.name}: "
                f"{'; '.join(diffs)} (--overwrite without --resume replaces the run)"
            )  # an unreadable config.json: the checkpoint's own config decides (resume_point)
        if not is_main:
            return
        if overwrite and not (resume and has_checkpoints):
            self.clear()
        for stale in [*self.path.glob(".*.tmp"), *self.path.glob(f"{CHECKPOINTS_DIR}/.*.tmp")]:
            stale.unlink(missing_ok=True)

    def trained_world_size(self) -> int:
        """The processes that trained the run so far: its ``env.json``'s ``world_size``, else
        (a classifier's folder from before env.json recorded it) its result's protocol's, else 1
        (none says, or neither is readable)."""
        for file, keys in ((self.env_file, ()), (self.metrics_file, ("protocol",))):
            try:
                record = json.loads(file.read_text())
                for key in keys:
                    record = record[key]
                return int(record["world_size"])
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return 1

    def _compare_config(self, cfg: Any, ignore: Sequence[str]) -> tuple[list[str], str]:
        """How ``config.json`` differs from ``cfg`` outside ``ignore`` (``key: saved -> current``),
        and why it cannot be read; both empty when it matches or is absent."""
        if not self.config_file.is_file():
            return [], ""
        try:
            saved = json.loads(self.config_file.read_text())
        except ValueError as err:
            return [], f"unreadable {self.config_file.name}: {err}"
        return diff_configs(saved, config_to_dict(cfg), ignore=ignore, cls=type(cfg)), ""

    def finished_result(self, cfg: Any, result_cls: Any, *, is_main: bool = True) -> Any | None:
        """The stored result when this folder holds the finished training of ``cfg``, else None.

        Finished: its trainer wrote ``metrics.json`` (done or diverged) under a ``config.json``
        equal to ``cfg`` outside the runtime keys that do not change the result
        (``cfg.RUNTIME_KEYS`` but ``cfg.SCORING_KEYS``), by this folder's number of processes.
        Running such a run again, with or without ``cfg.resume``, has nothing to do: the
        folder's name is the config's hash, as in ``reproduce``'s cache. ``cfg.overwrite``
        trains it again (None here); another final scoring protocol with ``cfg.resume`` scores
        it again (None), as does a ``metrics.json`` that does not read (None: with
        ``cfg.resume`` the trainer scores its final checkpoint again). Says so on stderr.
        ``result_cls`` is the trainer's result class (its ``from_json`` reads the folder).
        """
        if cfg.overwrite or not self.metrics_file.is_file() or not self.config_file.is_file():
            return None
        if self.trained_world_size() != self.world_size:
            return None  # another run (begin() refuses it)
        same = [k for k in cfg.RUNTIME_KEYS if k not in cfg.SCORING_KEYS]
        diffs, unreadable = self._compare_config(cfg, same)
        if diffs or unreadable:
            return None  # another run (begin() refuses it), or another final scoring
        try:
            result = result_cls.from_json(self.path)
        except (ValueError, TypeError) as err:  # damaged: scored again from the final checkpoint
            if is_main:
                _stderr(f"{self.metrics_file} does not read ({err}); scoring the run again")
            return None
        if is_main:
            _stderr(f"{self.path} holds this run, finished: nothing to train (the trainers' "
                    "--overwrite trains it again)")  # fmt: skip
        return result

    def resume_point(
        self, cfg: Any, map_location: str | Any = "cpu", *, is_main: bool = True
    ) -> dict[str, Any] | None:
        """The checkpoint the trainer config ``cfg`` continues from: None without ``cfg.resume``,
        or (saying so on stderr) when there is no checkpoint yet; else the newest intact one.

        Raises:
            ValueError: the checkpoint's config differs from ``cfg`` outside
                ``cfg.RUNTIME_KEYS`` (the differences are listed).
        """
        if not cfg.resume:
            return None
        log = _stderr if is_main else (lambda message: None)
        loaded = self.load_latest(map_location, log=lambda m: log(f"resume: {m}"))
        if loaded is None:
            log(f"resume: no checkpoint in {self.path} yet; starting from scratch")
            return None
        saved = loaded[1]["config"]
        diffs = diff_configs(saved, config_to_dict(cfg), ignore=cfg.RUNTIME_KEYS, cls=type(cfg))
        if diffs:
            raise ValueError("refusing to resume: the config differs from the checkpoint's:\n  "
                             + "\n  ".join(diffs))  # fmt: skip
        log(f"resume: continuing from {loaded[0]}")
        return loaded[1]

    def clear(self) -> None:
        """Delete what a run wrote (checkpoints, logs, results, analyses and their plots)."""
        for name in _RUN_OUTPUTS:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for png in self.path.glob("*.png"):
            png.unlink()

    # ------------------------------------------------------------------ status and lock

    def warn_not_final(self, checkpoint: Path, holds: str, *, stacklevel: int = 1) -> None:
        """Warn that ``checkpoint``, the newest intact one that a loader read, holds ``holds``
        (e.g. "2 of 4 steps"): the last weights of a run that diverged, else not its final ones
        (unfinished, or its last checkpoint damaged). ``stacklevel`` counts from the caller."""
        diverged = self.read_status().get("status") == DIVERGED
        why = "the run diverged before its end" if diverged else "not the run's final weights"
        warnings.warn(f"{self.path}'s newest intact checkpoint ({checkpoint.name}) holds {holds}: "
                      f"{why}", stacklevel=stacklevel + 1)  # fmt: skip

    def read_status(self) -> dict[str, Any]:
        """The status fields, or ``{}`` when there is none (or it was cut by a kill)."""
        try:
            data = json.loads((self.path / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_status(self, **fields: Any) -> None:
        """Merge ``fields`` into the status and write it atomically."""
        atomic_write_json(self.path / STATUS_FILE, {**self.read_status(), **fields})

    def is_done(self) -> bool:
        """True when training ended (``done`` or ``diverged``): nothing left to resume."""
        return self.read_status().get("status") in (DONE, DIVERGED)

    def trained_result(self, result_cls: Any) -> Any:
        """The result of a run to analyse (``result_cls.from_json``), once its training finished
        and did not diverge. Finished: its trainer wrote ``metrics.json`` (the status alone does
        not say it, as an orchestrator marks the analysis stage ``running``). The newest
        checkpoint of an unfinished run is a partial model, whose numbers would not match the
        run's results and would outlive its resumed training.

        Raises:
            FileNotFoundError: the folder, or its ``config.json``, does not exist.
            ValueError: training has not finished (the message names the status, and a
                ``running`` one whose lock no process holds as stopped), or diverged.
        """
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            raise FileNotFoundError(f"{self.path} {what}: give a run folder")
        if not self.config_file.is_file():
            raise FileNotFoundError(
                f"{self.config_file} does not exist: is {self.path} a run folder?"
            )
        if not self.metrics_file.is_file():
            status = self.read_status().get("status")
            if self.was_killed():
                status = "running when it was stopped, no process holds it now"
            raise ValueError(
                f"{self.path} has not finished training (no {self.metrics_file.name}; status: "
                f"{status or 'none'}): finish it with its trainer's --resume first, then analyse it"
            )
        result = result_cls.from_json(self.path)
        if result.diverged:
            raise ValueError(
                f"{self.path} diverged ({result.divergence}): there is nothing to analyse"
            )
        return result

    @contextlib.contextmanager
    def session(self, cfg: Any, *, is_main: bool = True) -> Iterator[None]:
        """A trainer's time on the run of config ``cfg``: take the lock, apply the take-over rule
        (:meth:`begin`), then record the status (:meth:`recording`): ``running``; ``interrupted``
        on Ctrl-C; ``failed`` with ``error.txt`` on an error (re-raised). The trainer writes
        ``done`` / ``diverged`` itself. Other DDP ranks only check the take-over rule.

        Raises:
            RunLockedError: another process holds the run.
            FileExistsError: the folder holds another run (:meth:`begin`); nothing is written.
            ValueError: resuming checkpoints made under another config (:meth:`begin`); nothing
                is written.
        """
        if not is_main:
            self.begin(cfg, is_main=False)
            yield
            return
        with self.lock():
            self.begin(cfg)
            print(f"run folder: {self.path}", file=sys.stderr, flush=True)
            with self.recording():
                yield

    @contextlib.contextmanager
    def recording(self, fields: Callable[[], dict[str, Any]] = dict) -> Iterator[None]:
        """Record work on the run in its status: ``running`` now, ``interrupted`` on Ctrl-C,
        ``failed`` with the error and ``error.txt`` on an exception (re-raised); each write adds
        the ``fields()`` of that moment (an orchestrator's stage, attempts, wall time)."""
        self.write_status(status=RUNNING, error="", **fields())
        try:
            yield
        except KeyboardInterrupt:
            self.write_status(status=INTERRUPTED, **fields())
            raise
        except Exception as err:
            atomic_write_text(self.error_file, traceback.format_exc())
            self.write_status(status=FAILED, error=f"{type(err).__name__}: {err}", **fields())
            raise

    def was_killed(self) -> bool:
        """True when the status says ``running`` but no process holds the run's lock: the process
        that ran it was killed (``kill -9``, a power cut) before it could record how it ended."""
        return self.read_status().get("status") == RUNNING and not self.is_locked()

    def is_locked(self) -> bool:
        """True when a process holds the run's lock (this one included): it is being worked on."""
        try:
            fd = _open_lock_file(self.path / LOCK_FILE, create=False)
        except (FileNotFoundError, NotADirectoryError):  # never locked
            return False
        except OSError:  # unreadable: never claim it is free
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError), or no flock here: never claim it is free
            return True
        finally:
            os.close(fd)  # closing releases a lock taken here
        return False

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's exclusive lock (released on exit, and by the OS if the process dies).

        Re-entrant: when this process or one that started it holds the lock already
        (:data:`HELD_LOCKS_ENV`), this passes through.

        Raises:
            RunLockedError: another process holds it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        held = [p for p in os.environ.get(HELD_LOCKS_ENV, "").split(os.pathsep) if p]
        if key in held:
            yield
            return
        fd = _open_lock_file(self.path / LOCK_FILE, create=True)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(f"{self.path} is being run by another process") from None
            os.environ[HELD_LOCKS_ENV] = os.pathsep.join([*held, key])
            try:
                yield
            finally:
                now = os.environ.get(HELD_LOCKS_ENV, "").split(os.pathsep)
                os.environ[HELD_LOCKS_ENV] = os.pathsep.join(p for p in now if p and p != key)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
