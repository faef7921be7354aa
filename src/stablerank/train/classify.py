"""Classification trainer: vanilla vs SN vs SRN (SPEC sections 2-3, claims 1-2).

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
global permutation per epoch, each rank takes its shard of every global batch); the global RNGs
(dropout) are reseeded at the start of every epoch from (seed, epoch, rank) (:func:`epoch_seed`).

Resume: the checkpoint holds model, optimizer, the finished epoch, the RNG states and the config;
the lr is a pure function of the step (nothing to save) and every random draw a pure function of
(seed, epoch, rank). On the CPU a resumed run therefore ends with bitwise the same weights as one
that was never stopped (tested).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import stablerank as sr
from stablerank.config import config_hash
from stablerank.config.classify import RESUME_MAY_DIFFER, ClassifyConfig
from stablerank.data import DatasetSplits, load_dataset
from stablerank.data.labels import corrupt_labels, train_subset
from stablerank.data.loader import DeviceLoader
from stablerank.metrics import complexity
from stablerank.models.classifiers import build_classifier
from stablerank.train.checkpoint import (
    capture_rng_state,
    check_resume_config,
    restore_rng_state,
)
from stablerank.train.records import (
    MetricLog,
    environment_info,
    refuse_to_overwrite,
    remove_stale_temp_files,
    write_run_files,
)
from stablerank.train.results import (
    ClassifierResult,
    EpochRecord,
    active_fraction,
    layer_stats,
    mean_active_fraction,
)
from stablerank.train.rundir import RunDir
from stablerank.train.runtime import DistInfo, end_worker, init_distributed, seed_everything

__all__ = [
    "HEAD_NAME",
    "KEY_EPOCHS",
    "KEY_GAP_ACC",
    "KEY_GAP_LOSS",
    "KEY_LAYERS",
    "KEY_PROTOCOL",
    "KEY_TEST_ACC",
    "KEY_TEST_LOSS",
    "KEY_TRAIN_ACC",
    "KEY_TRAIN_LOSS",
    "METRICS_FILE",
    "RunData",
    "build_model",
    "epoch_seed",
    "evaluate",
    "lr_at",
    "prepare_data",
    "resolve_run_dir",
    "run",
]

_KEEP_CHECKPOINTS = 2  # the newest and one to fall back to (RunDir.load_latest)
METRICS_FILE = "metrics.json"
HEAD_NAME = "classifier"  # every classifier's final Linear (stablerank.models.classifiers)

KEY_TRAIN_ACC = "train_acc"
KEY_TRAIN_LOSS = "train_loss"
KEY_TEST_ACC = "test_acc"
KEY_TEST_LOSS = "test_loss"
KEY_GAP_ACC = complexity.KEY_GAP_ACC  # train_acc - test_acc
KEY_GAP_LOSS = complexity.KEY_GAP_LOSS  # test_loss - train_loss
KEY_TRAIN_ACC_RUNNING = "train_acc_running"
KEY_TRAIN_LOSS_RUNNING = "train_loss_running"
KEY_EPOCHS = "epochs"
KEY_LAYERS = "layers"
KEY_PROTOCOL = "protocol"
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
    """Load the dataset, take the seeded train subset, then corrupt ``label_noise`` of its labels.

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
        eval_x, eval_y = train_subset(x, y, cfg.train_eval_size, cfg.seed)
    test_x, test_y = splits.test_x, splits.test_y
    if cfg.test_eval_size and cfg.test_eval_size < len(test_y):
        test_x, test_y = train_subset(test_x, test_y, cfg.test_eval_size, cfg.seed)
    return RunData(splits.replace(train_x=x, train_y=y), clean_y, eval_x, eval_y, test_x, test_y)


def build_model(cfg: ClassifyConfig, splits: DatasetSplits) -> nn.Module:
    """The classifier of ``cfg`` with its normalization applied (head excluded unless asked)."""
    kwargs: dict[str, Any] = {"width": cfg.width}
    if cfg.depth:
        kwargs["depth"] = cfg.depth
    if splits.image_size is None:  # 1-D signals (MNIST-1D): the MLP takes their length
        kwargs["input_length"] = splits.length
    model = build_classifier(
        cfg.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
        image_size=splits.image_size, **kwargs,
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


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the global RNGs during ``epoch`` on ``rank`` (dropout and any other draw).

    Reseeding every epoch makes the randomness a pure function of (seed, epoch, rank): resuming
    needs no RNG state, and resumed DDP ranks keep distinct streams.
    """
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint32)[0])


def resolve_run_dir(cfg: ClassifyConfig) -> Path:
    """``cfg.run_dir``, or a name that spells out the protocol plus the config hash."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    norm = f"srn{cfg.rank_ratio:g}" if cfg.norm == "srn" else cfg.norm
    digest = config_hash(cfg, exclude=RESUME_MAY_DIFFER)
    return Path(cfg.out_dir) / f"{cfg.dataset}_{cfg.model}_{norm}_s{cfg.seed}_{digest}"


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device, info: DistInfo, *, amp: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader`` (this rank's shard), summed over ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += y.numel()
    if info.distributed:
        dist.all_reduce(sums)
    loss, correct, count = sums.tolist()  # one device sync per evaluation
    return loss / count, correct / count


KEY_SRN_ACTIVE = "srn_active_fraction"


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


def _result_of(records: list[dict[str, Any]], final: dict[str, Any], model: nn.Module,
               **extra: Any) -> ClassifierResult:  # fmt: skip
    """The typed end of a run: the final metrics, the curve and the layers at the end."""
    curve = tuple(
        EpochRecord(
            step=r["epoch"], train_acc=r.get(KEY_TRAIN_ACC), test_acc=r.get(KEY_TEST_ACC),
            train_loss=r.get(KEY_TRAIN_LOSS), test_loss=r.get(KEY_TEST_LOSS),
            srn_active_fraction=r.get(KEY_SRN_ACTIVE),
        )
        for r in records
    )  # fmt: skip
    layers = layer_stats(sr.layer_report(model)) if final.get("finite", True) else ()
    return ClassifierResult(
        train_acc=final[KEY_TRAIN_ACC], test_acc=final[KEY_TEST_ACC],
        train_loss=final[KEY_TRAIN_LOSS], test_loss=final[KEY_TEST_LOSS],
        gap_acc=final[KEY_GAP_ACC], gap_loss=final[KEY_GAP_LOSS], epochs=final[KEY_EPOCHS],
        curve=curve, layers=layers, srn_active_fraction=active_fraction(layers),
        srn_active_fraction_mean=mean_active_fraction(curve), **extra,
    )  # fmt: skip


# ----------------------------------------------------------------------------- training


def run(cfg: ClassifyConfig) -> ClassifierResult:
    """Train one classifier as ``cfg`` says; return its result (also written to metrics.json).

    A loss that becomes non-finite ends the run as diverged (``diverged=True`` and the reason in
    the result; the numbers are those of the last finite epoch), never training on NaN.

    Raises:
        FileExistsError: the run folder already holds a checkpoint and ``resume`` is False.
        FileNotFoundError: ``resume`` is True and there is no checkpoint.
        ValueError: the checkpoint's config differs (the differences are listed), or the global
            batch does not split evenly across ranks.
    """
    # ---- runtime: threads, distributed, device, seeds
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info, device = init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be divisible by the world size {info.world_size}"
        )
    on_cuda = device.type == "cuda"
    amp = cfg.amp and on_cuda
    channels_last = cfg.channels_last  # 4-D tensors only; no-op for 1-D data
    run_dir = resolve_run_dir(cfg)
    folder = RunDir(run_dir)
    if folder.checkpoints() and not cfg.resume:
        raise FileExistsError(
            f"{run_dir} holds checkpoints; pass resume=True (--resume) or choose another run_dir"
        )
    if info.is_main:
        refuse_to_overwrite(run_dir, cfg.resume or cfg.overwrite)
        remove_stale_temp_files(run_dir)
    seed_everything(cfg.seed)  # same on every rank: identical init, subset and random labels

    # ---- data: whole splits on the device, one global shuffle per epoch, sharded by rank
    data = prepare_data(cfg)
    splits = data.splits
    per_rank_batch = cfg.batch_size // info.world_size
    if cfg.batch_size > splits.num_train:
        raise ValueError(f"batch_size must be <= {splits.num_train} (train images), got "
                         f"{cfg.batch_size}")  # fmt: skip
    loader_kw: dict[str, Any] = dict(
        mean=splits.mean, std=splits.std, pixel_scale=splits.pixel_scale, device=device,
        seed=cfg.seed, rank=info.rank, world_size=info.world_size,
        channels_last=channels_last,
    )  # fmt: skip
    # drop_last keeps every rank's batch the same size, so DDP's gradient mean is the global
    # mean; the union of the ranks' t-th batches is the t-th batch of a one-process run.
    train_loader = DeviceLoader(
        splits.train_x, splits.train_y, batch_size=per_rank_batch, shuffle=True, drop_last=True,
        augment=cfg.resolved_augment, **loader_kw,
    )  # fmt: skip
    # Evaluation: every example exactly once across ranks; sums are reduced, not means.
    eval_kw = dict(batch_size=cfg.eval_batch_size, shuffle=False, drop_last=False, **loader_kw)
    test_loader = DeviceLoader(data.test_eval_x, data.test_eval_y, **eval_kw)
    train_eval_loader = DeviceLoader(data.eval_x, data.eval_y, **eval_kw)
    steps_per_epoch = len(train_loader)

    # ---- model and normalization (none | sn | srn on every conv/linear; head unless asked)
    model = build_model(cfg, splits).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # ---- optimizer (the lr is set every step from lr_at; no scheduler state to save)
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
        )  # fmt: skip
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- resume: refuse on any config difference that changes what is computed
    start_epoch = 0
    loaded = folder.load_latest(map_location=device) if cfg.resume else None
    if cfg.resume and loaded is None:
        # Killed before its first checkpoint (or never started): nothing to continue from.
        if info.is_main:
            print(f"resume: no checkpoint in {run_dir} yet; starting from scratch", file=sys.stderr)
    elif loaded is not None:
        ckpt = loaded[1]
        check_resume_config(ckpt["config"], cfg.to_dict(), allowed=RESUME_MAY_DIFFER)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
        restore_rng_state(ckpt["rng"])
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
            model, device_ids=[device.index] if on_cuda else None
        )

    # ---- logging (rank 0 only)
    log = None
    if info.is_main:
        write_run_files(run_dir, cfg.to_dict(), environment_info(device, cfg.seed))
        log = MetricLog(run_dir)
        log.truncate_after(start_epoch)  # a killed run may have logged past its checkpoint
    show_progress = cfg.progress and info.is_main and sys.stderr.isatty()

    # ---- the loop
    record: dict[str, Any] = {}
    divergence = ""
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        train_loader.set_epoch(epoch)  # order and augmentation: a function of (seed, epoch)
        seed_everything(epoch_seed(cfg.seed, epoch, info.rank))  # dropout: (seed, epoch, rank)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show_progress,
                   leave=False, file=sys.stderr)  # fmt: skip
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = lr_at(cfg, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: no host sync per step.
            sums[0] += loss.detach() * y.numel()
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += y.numel()
            if show_progress and i % _PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(sums[1] / sums[2]).item():.3f}")
        if info.distributed:
            dist.all_reduce(sums)
        run_loss, run_correct, run_count = sums.tolist()
        train_time = time.perf_counter() - t0
        if not math.isfinite(run_loss):
            divergence = f"training loss became non-finite ({run_loss}) in epoch {epoch + 1}"
            print(f"diverged: {divergence}; the run stops here", file=sys.stderr)
            break

        # ---- per-epoch evaluation (eval mode; the test split and the train-eval subset)
        if info.distributed:
            # Each rank's last forward updated the BatchNorm running statistics with its own
            # shard; evaluate (and save) rank 0's everywhere, as the next forward would.
            for buffer in raw_model.buffers():
                dist.broadcast(buffer, src=0)
        test_loss, test_acc = evaluate(eval_model, test_loader, device, info, amp=amp)
        train_loss, train_acc = evaluate(eval_model, train_eval_loader, device, info, amp=amp)
        record = {
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
        if info.is_main:
            record.update(_layer_columns(raw_model, cfg.log_layers))
            log.append(record)
            folder.save_checkpoint(epoch + 1, keep=_KEEP_CHECKPOINTS, state={
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "rng": capture_rng_state(), "config": cfg.to_dict(),
                "schedule": "lr is a pure function of the step (lr_at); nothing to restore",
            })  # fmt: skip
            print(
                f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4g} train loss {train_loss:.4f} "
                f"acc {train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} "
                f"| {record['epoch_time_s']:.1f}s", file=sys.stderr,
            )  # fmt: skip
        if info.distributed:
            dist.barrier()  # no rank runs ahead of rank 0's checkpoint

    # ---- final metrics: the whole test split even when the curves used a subset
    result = None
    if len(data.test_eval_y) < splits.num_test and not divergence:
        full_test = DeviceLoader(splits.test_x, splits.test_y, **eval_kw)
        full_test_metrics = evaluate(eval_model, full_test, device, info, amp=amp)
    if info.is_main:
        records = log.records()
        if not record and records:  # resumed a finished run (or diverged): its last epoch
            record = records[-1]
        keys = (KEY_TRAIN_LOSS, KEY_TRAIN_ACC, KEY_TEST_LOSS, KEY_TEST_ACC)
        final = {k: record.get(k, math.nan) for k in keys}
        if len(data.test_eval_y) < splits.num_test and not divergence:
            final[KEY_TEST_LOSS], final[KEY_TEST_ACC] = full_test_metrics
        final.update(complexity.generalization_gap(
            final[KEY_TRAIN_ACC], final[KEY_TEST_ACC], final[KEY_TRAIN_LOSS], final[KEY_TEST_LOSS]
        ))  # fmt: skip
        final[KEY_EPOCHS] = cfg.epochs
        raw_model.eval()
        final["finite"] = all(bool(torch.isfinite(p).all()) for p in raw_model.parameters())
        protocol = {
            "dataset": cfg.dataset, "model": cfg.model, "width": cfg.width, "norm": cfg.norm,
            "rank_ratio": cfg.rank_ratio if cfg.norm == "srn" else None,
            "n_power_iterations": cfg.n_power_iterations if cfg.norm != "none" else None,
            "head": cfg.head if cfg.norm != "none" else "none", "seed": cfg.seed,
            "label_noise": cfg.label_noise, "train_size": splits.num_train,
            "augment": cfg.resolved_augment, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "world_size": info.world_size, "train_acc": TRAIN_ACC_DEFINITION,
            "train_eval_size": len(data.eval_y), "test_size": splits.num_test,
            "test_eval_size_per_epoch": len(data.test_eval_y),
            "gap": "gap_acc = train_acc - test_acc; gap_loss = test_loss - train_loss",
            "data_dir_read": getattr(splits, "source", None),
        }  # fmt: skip
        result = _result_of(
            records, final, raw_model, diverged=bool(divergence), divergence=divergence,
            data_dir=getattr(splits, "source", None), protocol=protocol,
        )  # fmt: skip
        result.to_json(run_dir)
        log.close()
    end_worker(info)
    return result
