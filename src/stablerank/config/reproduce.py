"""Config of ``stablerank reproduce``: which sweep, where it writes and how it runs.

*What* is trained lives in the sweeps (:mod:`stablerank.repro.sweeps`: Python functions that
return trainer configs); this config only names one and says where and how to run it (output
folder, device, threads, executor, workers, SLURM settings) and how claims are decided.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stablerank.config._base import DETERMINISTIC_HELP, check_config, option

__all__ = ["EXECUTORS", "REPRODUCE_PRESETS", "SWEEP_NAMES", "ReproduceConfig"]

# Kept equal to stablerank.repro.sweeps.SWEEPS by a test (config modules import only _base).
SWEEP_NAMES = ("quick", "standard", "paper", "tiny")
_CUSTOM_SWEEP = re.compile(r".+:[A-Za-z_]\w*")  # MODULE:FUNCTION or FILE.py:FUNCTION
EXECUTORS = ("local", "sequential", "submitit-local", "slurm")


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Where and how ``stablerank reproduce`` runs a sweep (see the module docstring)."""

    sweep: str = option(
        "quick",
        f"the sweep to run: {', '.join(SWEEP_NAMES)} (stablerank.repro.sweeps), or your own as "
        "MODULE:FUNCTION or FILE.py:FUNCTION, a function (seeds, gan_seeds) returning a list of "
        "stablerank.repro.sweeps.Run (docs/reproduction.md, 'Your own sweep')",
    )
    out_dir: str = option(
        "",
        "folder of the report; run folders go to out_dir/runs/ ('' = runs/reproduce-<sweep>; "
        "for FILE.py:FUNCTION, runs/reproduce-FILE-FUNCTION)",
    )
    data_dir: str | None = option(
        None, "folder holding the datasets (None = each dataset's standard location)"
    )
    seeds: int = option(
        0,
        "seeds of every arm, GANs too unless --gan-seeds is given (0 = the sweep's own numbers: "
        "quick and standard 5 per classifier arm and 10 per GAN arm)",
        min=0,
    )
    gan_seeds: int = option(
        0,
        "seeds of every GAN arm, e.g. the number a report says would decide claim 4 (0 = "
        "--seeds when given, else the sweep's own)",
        min=0,
    )
    dry_run: bool = option(
        False, "print the runs of the sweep and what is already done; run nothing"
    )
    report_only: bool = option(
        False, "rebuild report.md and claims.json from the run folders there; train nothing"
    )
    # --- how to run ---
    executor: str = option(
        "local",
        "local: a pool of worker processes on this machine; sequential: one after another in "
        "this process; submitit-local: submitit's local cluster (the SLURM code path, here); "
        "slurm: one SLURM job per run through submitit",
        choices=EXECUTORS,
    )
    workers: int = option(
        0,
        "local: concurrent runs; submitit-local: jobs per wave (0 = one per nproc-per-node GPUs, "
        "else cores / (threads x nproc-per-node))",
        min=0,
    )
    threads: int = option(1, "torch CPU threads of each run (0 = torch's default)", min=0)
    nproc_per_node: int = option(
        1,
        "processes per training run: > 1 launches each training with torchrun --standalone "
        "(DDP, e.g. one process per GPU of a node or of a SLURM job); analyses stay one process",
        min=1,
    )
    device: str = option(
        "auto", "device of every run ('auto' = cuda when present)", choices=("auto", "cpu", "cuda")
    )
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    progress: bool = option(True, "progress bars / lines on stderr")
    check_inputs: bool = option(
        True,
        "read each dataset and feature network the runs still need here, before any run (false: "
        "when only the SLURM jobs' nodes see them)",
    )
    slurm_partition: str = option("", "slurm: partition ('' = the cluster's default)")
    slurm_gpus_per_run: int = option(1, "slurm: GPUs of each run's job", min=0)
    slurm_cpus_per_run: int = option(4, "slurm: CPU cores of each run's job", min=1)
    slurm_time: int = option(
        240, "slurm and submitit-local: time limit of each job in minutes", min=1
    )
    slurm_array_parallelism: int = option(64, "slurm: jobs of the array running at once", min=1)
    # --- deciding claims ---
    alpha: float = option(
        0.05,
        "family-wise error rate of the claims' Welch t-tests (Holm correction over every "
        "comparison of the report)",
        min=0.0,
        max=0.5,
        min_exclusive=True,
    )

    def __post_init__(self) -> None:
        check_config(self)
        if self.sweep not in SWEEP_NAMES and not _CUSTOM_SWEEP.fullmatch(self.sweep):
            raise ValueError(
                f"sweep must be one of {SWEEP_NAMES}, or MODULE:FUNCTION or FILE.py:FUNCTION for "
                f"a sweep of your own, got {self.sweep!r}"
            )
        if self.dry_run and self.report_only:
            raise ValueError("dry_run and report_only exclude each other; pick one")
        n, gpus = self.nproc_per_node, self.slurm_gpus_per_run
        if self.executor == "slurm" and 0 < gpus < n:
            raise ValueError(
                f"nproc_per_node={n} trains each run as {n} processes, one GPU each: "
                f"slurm_gpus_per_run must be 0 (DDP over gloo on CPUs) or >= {n}, got {gpus}"
            )
        if self.executor == "slurm" and self.slurm_time < 3:
            # SLURM's stop signal comes 90 s before the limit (stablerank.repro.executors): a
            # shorter job would be told to stop as it starts, and requeued as timed out.
            raise ValueError(f"slurm_time must be >= 3 (minutes) under executor slurm, got "
                             f"{self.slurm_time}")  # fmt: skip
        if self.executor == "slurm" and self.device == "cuda" and gpus == 0:
            # every job would wait in the queue only to fail at its first CUDA call
            raise ValueError(
                "device='cuda' under executor slurm needs a GPU in each job: slurm_gpus_per_run "
                "must be >= 1, got 0 (device 'auto' or 'cpu' trains on the job's CPUs)"
            )
        # An option the executor never reads would be dropped without a word: refuse it. The
        # executors read workers (local: pool size; submitit-local: wave size), slurm_time
        # (submitit's timeout, local cluster too) and the other slurm_* options (slurm only).
        users = {"workers": ("local", "submitit-local"), "slurm_time": ("slurm", "submitit-local")}
        for f in dataclasses.fields(self):
            readers = users.get(f.name, ("slurm",) if f.name.startswith("slurm_") else None)
            if readers and self.executor not in readers and getattr(self, f.name) != f.default:
                raise ValueError(
                    f"{f.name} applies to executor {' or '.join(readers)} only, got "
                    f"executor={self.executor!r}; leave {f.name} at {f.default!r} here"
                )

    @property
    def resolved_out_dir(self) -> str:
        if self.out_dir:
            return self.out_dir
        if self.sweep in SWEEP_NAMES:
            return f"runs/reproduce-{self.sweep}"
        where, function = self.sweep.rsplit(":", 1)  # a sweep of your own: its file and function
        return f"runs/reproduce-{os.path.basename(where).removesuffix('.py')}-{function}"


# ``--preset NAME`` picks the sweep of that name (kept for the README's commands).
REPRODUCE_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType({"sweep": name}) for name in SWEEP_NAMES}
)
