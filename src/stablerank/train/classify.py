"""Classification trainer: vanilla vs SN vs SRN (docs/math.md §2-3, claims 1-2).

Reads top to bottom like nanoGPT's ``train.py``: runtime set-up, data, model, normalization,
optimizer and schedule, resume, DDP wrap, then the loop with per-epoch evaluation, logging and an
atomic checkpoint. One process or many (``torchrun --nproc_per_node=N -m stablerank train ...``).

Definitions used in the logs and in ``metrics.json``:

* ``train_acc`` / ``train_loss``: the model **in eval mode** on the unaugmented training set the
  run trains on, with the labels it trains on (random ones where ``label_noise`` replaced them),
  restricted to a fixed seeded subset of ``train_eval_size`` images (0 = all). This is the
  training accuracy of the generalization gap and of the shattering curve (Zhang et al. 2017 plot
  training accuracy on the random labels).
* ``train_acc_running`` / ``train_loss_running``: the train-mode running average over the epoch's
  (augmented) batches, free to compute but taken while the weights move.
* ``gap_acc = train_acc - test_acc``; ``gap_loss = test_loss - train_loss`` (both positive when
  the model overfits; ``stablerank.metrics.complexity.generalization_gap``).

Seed rule: model initialisation, the train subset and the random labels use ``seed`` on every
rank; the data order and the augmentation are drawn by the loader from (seed, epoch) only (one
global permutation per epoch, each rank takes its shard of every global batch); in-model draws
(dropout) are reseeded at every step from (seed, rank, step)
(:func:`stablerank.train.runtime.seed_model_draws`), as in the GAN trainer.

Checkpoints and resume: a checkpoint after every epoch, and on Ctrl-C one at the step reached
(single process, as the GAN trainer; under ``torchrun`` the last epoch's is the resume point). It
holds model, optimizer, the finished epochs, the batches trained of the epoch in progress with
their running sums, and the config; the lr is a pure function of the step and every random draw
a pure function of (seed, epoch or step, rank), so there is no schedule or RNG state to save. A
resumed run replays the interrupted epoch's order from its first untrained batch and, on the
CPU, ends with bitwise the same weights as one that was never stopped (tested).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import stablerank as sr
from stablerank.config import config_to_dict
from stablerank.config.classify import ClassifyConfig
from stablerank.data import DatasetShape, DatasetSplits, load_dataset
from stablerank.data.labels import corrupt_labels, train_subset
from stablerank.data.loader import DeviceLoader
from stablerank.metrics import complexity
from stablerank.models.classifiers import build_classifier
from stablerank.train.records import MetricLog, environment_info
from stablerank.train.results import (
    ClassifierProtocol,
    ClassifierResult,
    EpochRecord,
    active_fraction,
    layer_stats,
    mean_active_fraction,
)
from stablerank.train.rundir import DIVERGED, DONE, INTERRUPTED, RunDir
from stablerank.train.runtime import (
    DistInfo,
    ProgressLine,
    deferred_sigint,
    end_worker,
    interrupted,
    mixed_precision,
    say_finished,
    seed_everything,
    seed_model_draws,
    start_trainer,
    stream_seed,
)

__all__ = [
    "HEAD_NAME",
    "KEY_TEST_ACC",
    "KEY_TEST_LOSS",
    "KEY_TRAIN_ACC",
    "KEY_TRAIN_LOSS",
    "RunData",
    "build_model",
    "evaluate",
    "lr_at",
    "prepare_data",
    "run",
]

_KEEP_CHECKPOINTS = 2  # the newest and one to fall back to (RunDir.load_latest)
_STREAM_EVAL_SUBSET = 0  # the classifier's one numbered stream (runtime.stream_seed)
HEAD_NAME = "classifier"  # every classifier's final Linear (stablerank.models.classifiers)

KEY_TRAIN_ACC = "train_acc"
KEY_TRAIN_LOSS = "train_loss"
KEY_TEST_ACC = "test_acc"
KEY_TEST_LOSS = "test_loss"
KEY_TRAIN_ACC_RUNNING = "train_acc_running"
KEY_TRAIN_LOSS_RUNNING = "train_loss_running"
KEY_SRN_ACTIVE = "srn_active_fraction"
TRAIN_ACC_DEFINITION = (
    "eval-mode accuracy on the unaugmented training set with the labels trained on (random ones "
    "where label_noise replaced them), on a fixed seeded subset of train_eval_size images"
)
_PROGRESS_EVERY = 20  # steps between progress-bar updates (each update syncs the device)


# ----------------------------------------------------------------------------- data and model


@dataclass(frozen=True)
class RunData:
    """What a run trains and evaluates on.

    Attributes:
        splits: the dataset with ``train_x``/``train_y`` replaced by the (sub)set trained on and
            its labels (partly random when ``label_noise`` > 0); ``mean``/``std`` stay those of
            the full training split.
        clean_y: the original labels of ``splits.train_x``.
        eval_x: the fixed seeded subset of the training set scored in eval mode (``train_acc``).
        eval_y: its labels (as trained on).
        test_eval_x: the fixed seeded subset of the test split scored every epoch.
        test_eval_y: its labels.
    """

    splits: DatasetSplits
    clean_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    test_eval_x: torch.Tensor
    test_eval_y: torch.Tensor


def prepare_data(cfg: ClassifyConfig) -> RunData:
    """Load the dataset, take the seeded train subset, then corrupt ``label_noise`` of its labels;
    then the seeded subsets that score train accuracy (``train_eval_size``; under partial label
    noise drawn from a stream of its own, not the permutation that chose the corrupted positions)
    and test accuracy per epoch (``test_eval_size``).

    Identical on every rank and in ``stablerank analyze`` (everything is seeded by ``cfg.seed``).
    """
    splits = load_dataset(cfg.dataset, cfg.data_dir)
    x, y = splits.train_x, splits.train_y
    if cfg.train_subset:
        if cfg.train_subset > len(y):
            raise ValueError(
                f"train_subset must be <= {len(y)} (size of {cfg.dataset}), got {cfg.train_subset}"
            )
        x, y = train_subset(x, y, cfg.train_subset, cfg.seed)
    clean_y = y
    if cfg.label_noise > 0:
        y = corrupt_labels(y, cfg.label_noise, splits.num_classes, cfg.seed)
    eval_x, eval_y = x, y
    if cfg.train_eval_size and cfg.train_eval_size < len(y):
        # corrupt_labels and the subset both start from randperm(seed), so under partial noise the
        # subset would take the corrupted positions first: it draws from a stream of its own then.
        # (With no or full noise all positions are alike, and the runs keep their subsets.)
        partial = 0 < cfg.label_noise < 1
        seed = stream_seed(cfg.seed, 0, 0, _STREAM_EVAL_SUBSET) if partial else cfg.seed
        eval_x, eval_y = train_subset(x, y, cfg.train_eval_size, seed)
    test_x, test_y = splits.test_x, splits.test_y
    if cfg.test_eval_size and cfg.test_eval_size < len(test_y):
        test_x, test_y = train_subset(test_x, test_y, cfg.test_eval_size, cfg.seed)
    return RunData(splits.replace(train_x=x, train_y=y), clean_y, eval_x, eval_y, test_x, test_y)


def build_model(cfg: ClassifyConfig, shape: DatasetShape) -> nn.Module:
    """The classifier of ``cfg`` for data of ``shape`` (a dataset's
    :attr:`stablerank.data.DatasetSplits.dataset_shape`, or
    :func:`stablerank.data.dataset_shape` without its files), with its normalization applied
    (head excluded unless asked)."""
    kwargs: dict[str, Any] = {"width": cfg.width}
    if cfg.depth:
        kwargs["depth"] = cfg.depth
    if shape.image_size is None:  # 1-D signals (MNIST-1D): the MLP takes their length
        kwargs["input_length"] = shape.length
    model = build_classifier(
        cfg.model, num_classes=shape.num_classes, in_channels=shape.in_channels,
        image_size=shape.image_size, **kwargs,
    )  # fmt: skip
    with warnings.catch_warnings():
        # Whether the cap binds is recorded every epoch (srn_active_fraction in the log and the
        # result), so the library's warning at registration adds nothing here.
        warnings.simplefilter("ignore", sr.SrnInactiveWarning)
        return sr.normalize_model(
            model, cfg.norm, rank_ratio=cfg.rank_ratio, n_power_iterations=cfg.n_power_iterations,
            head=cfg.head if cfg.norm != "none" else "none", head_names=[HEAD_NAME],
        )  # fmt: skip


def lr_at(cfg: ClassifyConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): warm-up, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        passed = sum(step >= m * total for m in cfg.milestones)
        return cfg.lr * cfg.lr_gamma**passed
    return cfg.lr


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device, info: DistInfo, *, amp: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader`` (this rank's shard), summed over ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in loader:
        with mixed_precision(device, amp):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.numel()
    if info.distributed:
        dist.all_reduce(sums)
    loss, correct, count = sums.tolist()  # one device sync per evaluation
    return loss / count, correct / count


def _layer_columns(model: nn.Module, log_layers: bool) -> dict[str, float | None]:
    """The log's per-epoch layer columns: SRN's active fraction (raw stable rank above the target,
    layers whose cap can act) and, with ``log_layers``, each layer's spectral norm, stable rank and
    raw stable rank (exact, eval mode: u, v are not advanced)."""
    report = sr.layer_report(model)
    stats: dict[str, float | None] = {KEY_SRN_ACTIVE: active_fraction(layer_stats(report))}
    if log_layers:
        for row in report:
            stats[f"sigma_max/{row.name}"] = float(row.sigma_max)
            stats[f"srank/{row.name}"] = float(row.srank)
            stats[f"raw_srank/{row.name}"] = float(row.raw_srank)
    return stats


# ----------------------------------------------------------------------------- training


def run(cfg: ClassifyConfig, *, stop_at: int | None = None) -> ClassifierResult | None:
    """Train one classifier as ``cfg`` says; return its result (also written to metrics.json).

    Args:
        cfg: the resolved config.
        stop_at: stop (with a checkpoint) once this many optimizer steps are done, as if
            interrupted; ``cfg.resume=True`` later continues exactly (default None: train all
            ``cfg.epochs``).

    The run folder is :meth:`RunDir.for_config(cfg, world_size)
    <stablerank.train.rundir.RunDir.for_config>` (``-ddpN`` ends its default name under torchrun
    with N processes); the process holds its lock and keeps its ``status.json`` while it
    trains. A loss that becomes non-finite ends the run as diverged (``diverged=True`` and the
    reason in the result; the numbers are those of the last finite epoch), never training on
    NaN. A folder that holds this run finished returns its stored result without training
    (``overwrite`` retrains it).

    Returns:
        The :class:`stablerank.train.results.ClassifierResult` (None on DDP ranks other than 0,
        and when ``stop_at`` ended it early).

    Raises:
        FileExistsError: the run folder holds another run and neither ``resume`` nor
            ``overwrite`` is set (:meth:`stablerank.train.rundir.RunDir.begin`).
        RunLockedError: another process trains this run.
        ValueError: resuming under a config that differs from the run's (its ``config.json``,
            else its checkpoint's; the differences are listed), or a global batch that does not
            split evenly across ranks.
        KeyboardInterrupt: on Ctrl-C, after saving a checkpoint at the step reached (single
            process; under DDP the newest checkpoint is the resume point); resume=True continues.
    """
    info, device = start_trainer(cfg, stop_at, "optimizer steps")
    folder = RunDir.for_config(cfg, info.world_size)
    finished = folder.finished_result(cfg, ClassifierResult, is_main=info.is_main)
    if finished is None:
        # The data and the model before the folder: a missing data folder, a batch larger than
        # the set or a size the architecture refuses (depth) is refused before a run folder is
        # made. The data draws from generators of its own, so the init is the same either way.
        seed_everything(cfg.seed)  # same on every rank: identical init, subset and random labels
        data = prepare_data(cfg)
        if cfg.batch_size > data.splits.num_train:
            raise ValueError(f"batch_size (--batch-size) must be <= {data.splits.num_train}, the "
                             f"training images of {cfg.dataset}; got {cfg.batch_size}")  # fmt: skip
        model = build_model(cfg, data.splits.dataset_shape)
        with folder.session(cfg, is_main=info.is_main):
            result = _train(cfg, data, model, folder, info, device, stop_at)
    else:  # the same run, finished before: nothing to train
        result = finished if info.is_main else None
    say_finished(folder.path, result)
    end_worker(info)
    return result


def _build_optimizer(cfg: ClassifyConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam; the lr is set every step from :func:`lr_at` (no scheduler state to save).

    Weight decay acts on every parameter, as torch's default: biases, BatchNorm's scales and
    shifts, and under SN/SRN the raw weight W (whose scale the normalized W / sigma ignores, so
    the decay only shrinks ||W|| and with it raises the step size relative to ||W||)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
        )  # fmt: skip
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train(cfg: ClassifyConfig, data: RunData, model: nn.Module, folder: RunDir, info: DistInfo,
           device: torch.device, stop_at: int | None) -> ClassifierResult | None:  # fmt: skip
    """The run inside its folder session: ``model`` (:func:`build_model`) to the device, resume,
    the loop, the result."""
    amp = cfg.amp and device.type == "cuda"
    channels_last = cfg.channels_last  # 4-D tensors only; no-op for 1-D data

    # ---- data: whole splits on the device, one global shuffle per epoch, sharded by rank
    splits = data.splits
    loader_kw: dict[str, Any] = dict(
        mean=splits.mean, std=splits.std, pixel_scale=splits.pixel_scale, device=device,
        seed=cfg.seed, rank=info.rank, world_size=info.world_size,
        channels_last=channels_last,
    )  # fmt: skip
    # drop_last keeps every rank's batch the same size, so DDP's gradient mean is the global
    # mean; the union of the ranks' t-th batches is the t-th batch of a one-process run.
    train_loader = DeviceLoader(
        splits.train_x, splits.train_y, batch_size=cfg.batch_size // info.world_size,
        shuffle=True, drop_last=True, augment=cfg.resolved_augment, **loader_kw,
    )  # fmt: skip
    # Evaluation: every example exactly once across ranks; sums are reduced, not means.
    eval_kw = dict(batch_size=cfg.eval_batch_size, shuffle=False, drop_last=False, **loader_kw)
    test_loader = DeviceLoader(data.test_eval_x, data.test_eval_y, **eval_kw)
    train_eval_loader = DeviceLoader(data.eval_x, data.eval_y, **eval_kw)

    # ---- model and normalization (none | sn | srn on every conv/linear; the head: none | sn)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(cfg, model)

    # ---- resume: refuse on any config difference that changes what is computed
    start_epoch, start_batch, start_sums, start_seconds = 0, 0, [0.0, 0.0, 0.0], 0.0
    ckpt = folder.resume_point(cfg, map_location=device, is_main=info.is_main)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
        # A Ctrl-C checkpoint inside an epoch: the batches of it already trained, their sums and
        # the seconds they took (so the epoch's time counts them).
        start_batch, start_sums = ckpt.get("batch", 0), ckpt.get("epoch_sums", start_sums)
        start_seconds = ckpt.get("epoch_seconds", 0.0)
    del ckpt

    # ---- compile and DDP wrap (raw_model is what we save and measure; eval_model evaluates)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    eval_model = model
    if info.distributed:
        # broadcast_buffers (the default) copies rank 0's buffers before every forward: BatchNorm
        # statistics and the SN/SRN power-iteration vectors u, v stay identical across ranks.
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # ---- logging (rank 0 only)
    log = None
    if info.is_main:
        env = environment_info(device, cfg.seed, info.world_size)
        folder.write_run_files(config_to_dict(cfg), env)
        log = MetricLog(folder.path)
        log.truncate_after(start_epoch)  # a killed run may have logged past its checkpoint
    bar = cfg.progress and info.is_main and sys.stderr.isatty()
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    end = total if stop_at is None else min(stop_at, total)
    done = start_epoch * steps_per_epoch + start_batch  # optimizer steps taken
    shown = cfg.progress and info.is_main and not bar  # progress=False: neither bar nor line
    plain = ProgressLine("train step", total, done) if shown else None

    # A non-finite loss is caught before its update: every step on the CPU (free), every few on
    # a GPU (a device sync). DDP ranks decide together at the end of the epoch (a rank stopping
    # alone would leave the others waiting in the all-reduce).
    check_every = 0 if info.distributed else 1 if device.type == "cpu" else _PROGRESS_EVERY

    def checkpoint(epoch: int, batch: int, sums: list[float], seconds: float = 0.0) -> None:
        """``epoch`` finished epochs and ``batch`` batches of the next, with their ``sums`` and
        the ``seconds`` they took."""
        folder.save_checkpoint(epoch * steps_per_epoch + batch, keep=_KEEP_CHECKPOINTS, state={
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "batch": batch, "epoch_sums": sums, "epoch_seconds": seconds,
            "config": config_to_dict(cfg),
            "schedule": "lr is a pure function of the step (lr_at); nothing to restore",
        })  # fmt: skip

    # ---- the loop; Ctrl-C (single process) ends the step in progress, then a checkpoint
    record: dict[str, Any] = {}
    divergence = ""
    try:
        with deferred_sigint(enabled=not info.distributed, run_dir=folder.path) as interrupt:
            for epoch in range(start_epoch, cfg.epochs):
                if done >= end or interrupt["stop"]:
                    break
                first = start_batch if epoch == start_epoch else 0
                t0 = time.perf_counter() - (start_seconds if first else 0.0)
                train_loader.set_epoch(epoch)  # order and augmentation: (seed, epoch)
                # A resumed epoch's sums were reduced over the ranks: rank 0 alone carries them.
                carried = start_sums if first and info.is_main else [0.0, 0.0, 0.0]
                sums, lr, divergence, done = _train_epoch(
                    cfg, model, optimizer, train_loader, epoch, device, amp, info.rank,
                    first=first, sums=torch.tensor(carried, dtype=torch.float64, device=device),
                    stop=lambda steps: steps >= end or interrupt["stop"], bar=bar, plain=plain,
                    check_every=check_every,
                )  # fmt: skip
                if info.distributed:
                    dist.all_reduce(sums)
                if not divergence and done < (epoch + 1) * steps_per_epoch:  # stopped inside
                    if info.is_main:
                        checkpoint(epoch, done - epoch * steps_per_epoch, sums.tolist(),
                                   time.perf_counter() - t0)  # fmt: skip
                    break
                run_loss = sums[0].item()
                if not divergence and not math.isfinite(run_loss):
                    divergence = (
                        f"training loss became non-finite ({run_loss}) in epoch {epoch + 1}"
                    )
                if divergence:
                    if info.is_main:
                        print(f"diverged: {divergence}; the run stops here", file=sys.stderr)
                    break
                if info.distributed:
                    # Each rank's last forward updated the BatchNorm running statistics with its
                    # own shard; evaluate (and save) rank 0's everywhere, as the next forward would.
                    for buffer in raw_model.buffers():
                        dist.broadcast(buffer, src=0)
                record = _epoch_record(
                    epoch, lr, sums, t0, test_loader, train_eval_loader,
                    lambda loader: evaluate(eval_model, loader, device, info, amp=amp),
                )  # fmt: skip
                if info.is_main:
                    record.update(_layer_columns(raw_model, cfg.log_layers))
                    log.append(record)
                    checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0])
                    print(
                        f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4g} train loss "
                        f"{record[KEY_TRAIN_LOSS]:.4f} acc {record[KEY_TRAIN_ACC]:.4f} | test loss "
                        f"{record[KEY_TEST_LOSS]:.4f} acc {record[KEY_TEST_ACC]:.4f} | "
                        f"{record['epoch_time_s']:.1f}s", file=sys.stderr,
                    )  # fmt: skip
                if info.distributed:
                    dist.barrier()  # no rank runs ahead of rank 0's checkpoint
    except KeyboardInterrupt:  # under torchrun (Ctrl-C not deferred)
        raise interrupted(folder.path, "the newest checkpoint") from None
    if interrupt["stop"] and not divergence:
        raise interrupted(folder.path, f"the checkpoint of step {done}")
    if done < total and not divergence:  # stop_at: stopped as if interrupted
        if info.is_main:
            log.close()
            folder.write_status(status=INTERRUPTED)
        return None

    # ---- final metrics: the whole test split even when the curves used a subset
    full_test = None
    if len(data.test_eval_y) < splits.num_test and not divergence:
        full_test = evaluate(eval_model, DeviceLoader(splits.test_x, splits.test_y, **eval_kw),
                             device, info, amp=amp)  # fmt: skip
    if not info.is_main:
        return None
    records = log.records()
    log.close()
    if not record and records:  # resumed a finished run (or diverged): its last epoch
        record = records[-1]
    result = _result_of(cfg, records, record, full_test, raw_model, divergence, splits,
                        len(data.eval_y), len(data.test_eval_y), info.world_size)  # fmt: skip
    result.to_json(folder.path)
    folder.write_status(status=DIVERGED if divergence else DONE, divergence=divergence)
    return result


def _epoch_record(
    epoch: int, lr: float, sums: torch.Tensor, t0: float, test_loader: DeviceLoader,
    train_eval_loader: DeviceLoader, evaluate_on: Callable[[DeviceLoader], tuple[float, float]],
) -> dict[str, Any]:  # fmt: skip
    """The log record of a finished epoch: eval-mode loss and accuracy on the test split and the
    train-eval subset, the running train numbers ``sums`` (reduced over ranks), timings since
    ``t0``."""
    run_loss, run_correct, run_count = sums.tolist()
    train_time = time.perf_counter() - t0
    test_loss, test_acc = evaluate_on(test_loader)
    train_loss, train_acc = evaluate_on(train_eval_loader)
    return {
        "epoch": epoch + 1,
        "lr": lr,
        KEY_TRAIN_LOSS: train_loss,
        KEY_TRAIN_ACC: train_acc,
        KEY_TEST_LOSS: test_loss,
        KEY_TEST_ACC: test_acc,
        **complexity.generalization_gap(train_acc, test_acc, train_loss, test_loss),
        KEY_TRAIN_LOSS_RUNNING: run_loss / run_count,
        KEY_TRAIN_ACC_RUNNING: run_correct / run_count,
        "train_time_s": train_time,
        "epoch_time_s": time.perf_counter() - t0,
    }


def _train_epoch(
    cfg: ClassifyConfig, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DeviceLoader,
    epoch: int, device: torch.device, amp: bool, rank: int, *, first: int, sums: torch.Tensor,
    stop: Callable[[int], bool], bar: bool, plain: ProgressLine | None, check_every: int,
) -> tuple[torch.Tensor, float, str, int]:  # fmt: skip
    """Train ``epoch`` from its batch ``first`` on, adding to ``sums`` (loss sum, correct, count,
    on the device). Returns the sums, the last lr, why it diverged ('' when it did not) and the
    optimizer steps taken in all. It ends early after a step where ``stop(steps taken)`` holds,
    and before the update of a non-finite loss seen by the check (every ``check_every`` steps;
    0 = never)."""
    model.train()
    steps_per_epoch = len(loader)
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not bar,
                    leave=False, file=sys.stderr)  # fmt: skip
    lr = math.nan
    for i, (x, y) in enumerate(progress):
        if i < first:
            continue  # trained before the checkpoint this run resumed from
        step = epoch * steps_per_epoch + i
        lr = lr_at(cfg, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed_model_draws(device, cfg.seed, rank, step)  # dropout: (seed, rank, step)
        with mixed_precision(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if check_every and i % check_every == 0 and not torch.isfinite(loss):
            why = f"training loss became non-finite ({loss.item()}) at step {step + 1}"
            return sums, lr, why, step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: no host sync per step.
        sums[0] += loss.detach() * y.numel()
        sums[1] += (logits.detach().argmax(1) == y).sum()
        sums[2] += y.numel()
        if bar and i % _PROGRESS_EVERY == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}",
                                 acc=f"{(sums[1] / sums[2]).item():.3f}")  # fmt: skip
        if plain is not None and plain.due(step + 1):
            plain.show(step + 1, epoch=epoch + 1, loss=loss.item())
        if stop(step + 1):
            progress.close()
            return sums, lr, "", step + 1
    return sums, lr, "", (epoch + 1) * steps_per_epoch


def _result_of(
    cfg: ClassifyConfig, records: list[dict[str, Any]], record: dict[str, Any],
    full_test: tuple[float, float] | None, model: nn.Module, divergence: str,
    splits: DatasetSplits, train_eval_size: int, test_eval_size: int, world_size: int,
) -> ClassifierResult:  # fmt: skip
    """The typed end of a run: the final metrics (the whole test split when the curves used a
    subset), the curve, the layers at the end and the protocol."""
    keys = (KEY_TRAIN_LOSS, KEY_TRAIN_ACC, KEY_TEST_LOSS, KEY_TEST_ACC)
    # A record read back from log.jsonl holds None where the value was not finite.
    final = {k: math.nan if record.get(k) is None else record[k] for k in keys}
    if full_test is not None:
        final[KEY_TEST_LOSS], final[KEY_TEST_ACC] = full_test
    gap = complexity.generalization_gap(
        final[KEY_TRAIN_ACC], final[KEY_TEST_ACC], final[KEY_TRAIN_LOSS], final[KEY_TEST_LOSS]
    )
    curve = tuple(
        EpochRecord(
            step=r["epoch"], train_acc=r.get(KEY_TRAIN_ACC), test_acc=r.get(KEY_TEST_ACC),
            train_loss=r.get(KEY_TRAIN_LOSS), test_loss=r.get(KEY_TEST_LOSS),
            srn_active_fraction=r.get(KEY_SRN_ACTIVE),
        )
        for r in records
    )  # fmt: skip
    model.eval()
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    layers = layer_stats(sr.layer_report(model)) if finite else ()
    protocol = ClassifierProtocol(
        dataset=cfg.dataset, model=cfg.model, width=cfg.width, norm=cfg.norm,
        rank_ratio=cfg.rank_ratio if cfg.norm == "srn" else None,
        n_power_iterations=cfg.n_power_iterations if cfg.norm != "none" else None,
        head=cfg.head if cfg.norm != "none" else "none", seed=cfg.seed,
        label_noise=cfg.label_noise, train_size=splits.num_train,
        augment=cfg.resolved_augment, epochs=cfg.epochs, batch_size=cfg.batch_size,
        world_size=world_size, train_acc=TRAIN_ACC_DEFINITION,
        train_eval_size=train_eval_size,
        test_size=splits.num_test if full_test is not None else test_eval_size,
        test_eval_size_per_epoch=test_eval_size,
        gap="gap_acc = train_acc - test_acc; gap_loss = test_loss - train_loss",
    )  # fmt: skip
    return ClassifierResult(
        train_acc=final[KEY_TRAIN_ACC], test_acc=final[KEY_TEST_ACC],
        train_loss=final[KEY_TRAIN_LOSS], test_loss=final[KEY_TEST_LOSS], epochs=cfg.epochs,
        gap_acc=gap[complexity.KEY_GAP_ACC], gap_loss=gap[complexity.KEY_GAP_LOSS],
        curve=curve, layers=layers, srn_active_fraction=active_fraction(layers),
        srn_active_fraction_mean=mean_active_fraction(curve), diverged=bool(divergence),
        divergence=divergence, data_dir=splits.source, protocol=protocol,
    )  # fmt: skip
