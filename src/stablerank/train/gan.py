"""GAN trainer (``stablerank gan``): SN-GAN / SRN-GAN, readable top to bottom.

``run(cfg)`` builds the data, G and D (:mod:`stablerank.train.gan_models`), then sequences
``n_dis`` discriminator updates and one generator update per step; the models own the losses
(:mod:`stablerank.models.gan`). Around that: linear learning-rate decay, an optional EMA
generator, sample grids (:mod:`stablerank.train.figures`), periodic FID/KID/IS and the final
``metrics.json`` (:mod:`stablerank.train.gan_scores`), atomic checkpoints (the newest
``keep_checkpoints`` kept) and exact resume, JSONL/CSV logs, all in the run folder of
:mod:`stablerank.train.rundir`. :func:`stablerank.train.gan_models.load_gan_run` restores a
run's G and D.

.. note:: **Randomness is counter-based**: see :mod:`stablerank.train.gan_sampling`.

.. note:: **The D step runs D once on the concatenated real+fake batch.** The discriminators have
    no BatchNorm, so this equals two forwards, yet runs the SN/SRN power iteration once per update
    (so ``parametrize.cached()`` is not needed) and keeps DDP at one forward per backward. The G
    step calls the *unwrapped* D and back-propagates into G's parameters only
    (``backward(inputs=...)``): D's gradients are neither computed nor all-reduced there.

.. note:: **DDP** (``torchrun``): G and D are wrapped separately; ``batch_size`` is global and
    split evenly over ranks. D's SN/SRN vectors ``_u``/``_v`` are buffers, which DDP broadcasts
    from rank 0 at each training forward (``broadcast_buffers=True``); since every rank then sees
    the same weights (all-reduced gradients) and the same u, its power iteration produces the same
    u/v, so they stay identical across ranks (tested with 2 gloo processes). G's BatchNorm
    normalizes with each rank's own batch statistics (no SyncBatchNorm: per-rank batches of
    ``batch_size / world_size``); its running statistics are broadcast from rank 0 at each
    forward, which then adds its own batch, so they are rank 0's in every checkpoint (and differ
    by one local update on the other ranks).
    Rank 0 alone writes files. A Ctrl-C checkpoint is written only in single-process runs (ranks
    could stop at different steps); under DDP the newest periodic checkpoint is the resume point.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stablerank._optional import import_optional
from stablerank.config import config_to_dict
from stablerank.config.gan import GanConfig
from stablerank.data import DatasetSplits, load_dataset
from stablerank.layers import layer_report
from stablerank.metrics import NonFiniteError, eval_mode
from stablerank.metrics.ema import ema_update
from stablerank.metrics.gan import KEY_FID
from stablerank.models.gan import compute_d_loss, compute_g_loss
from stablerank.train.figures import GRID_SIDE, save_image_grid
from stablerank.train.gan_models import KEY_EMA_STANDING_BN, build_gan_models
from stablerank.train.gan_sampling import (
    STREAM_D_NOISE,
    STREAM_FIXED,
    STREAM_G_NOISE,
    Sampler,
    grid_labels,
    latents,
    real_batches,
)
from stablerank.train.gan_scores import (
    KEY_D_LOSS,
    KEY_G_LOSS,
    KEY_SRN_ACTIVE,
    Evaluator,
    divergence_of,
    score_baselines,
    scores_only,
    write_result,
)
from stablerank.train.records import MetricLog, environment_info
from stablerank.train.results import GanResult, active_fraction, layer_stats
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

_BAR_KEYS = (KEY_D_LOSS, KEY_G_LOSS, KEY_FID)  # shown in the progress bar


# ----------------------------------------------------------------------------------------------
# The networks and one G step
# ----------------------------------------------------------------------------------------------


def _linear_decay(total: int) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - step / total)


@dataclass
class _Nets:
    """G and D with their optimizers and the EMA generator.

    ``G`` and ``D`` are the raw modules (state dicts, sampling, the layer report); ``G_train``
    and ``D_train`` are what the D step calls (compiled and DDP-wrapped when asked); ``D_local``
    is D compiled but outside DDP, for the G step (see the module note).
    """

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    G_train: nn.Module
    D_train: nn.Module
    D_local: nn.Module

    def state(self) -> dict[str, Any]:
        """The checkpoint's model and optimizer entries."""
        state = {"G": self.G.state_dict(), "D": self.D.state_dict(),
                 "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}  # fmt: skip
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
        return state


def _build_nets(
    cfg: GanConfig, splits: DatasetSplits, num_classes: int | None, ckpt: dict[str, Any] | None,
    info: DistInfo, device: torch.device,
) -> _Nets:  # fmt: skip
    """G, D (the same initialisation on every rank: ``seed``, not ``seed + rank``), the EMA
    generator and Adam, restored from ``ckpt`` when resuming, then compiled and wrapped."""
    seed_everything(cfg.seed)
    G, D = build_gan_models(cfg, splits.in_channels, splits.image_size, num_classes)
    G.to(device)
    D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema > 0 else None
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas)
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
    G_train, D_train = (torch.compile(G), torch.compile(D)) if cfg.compile else (G, D)
    D_local = D_train
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G_train = DistributedDataParallel(G_train, device_ids=ids, broadcast_buffers=True)
        D_train = DistributedDataParallel(D_train, device_ids=ids, broadcast_buffers=True)
    return _Nets(G, D, G_ema, opt_g, opt_d, G_train, D_train, D_local)


def _g_step(cfg: GanConfig, nets: _Nets, real: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
            step: int, lr_scale: float, info: DistInfo, local_batch: int,
            num_classes: int | None, device: torch.device) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """G step ``step``: ``n_dis`` D updates, then one G update and the EMA; returns the losses
    ``(d_loss, g_loss, d_real, d_fake)`` of its last updates (D's outputs per example; on the
    device, not synced).

    Every draw comes from its (seed, rank, counter) stream; the D step runs D once on the
    concatenated real and fake batch, the G step the unwrapped D (see the module note)."""
    for opt, base in ((nets.opt_g, cfg.lr_g), (nets.opt_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * lr_scale
    seed_model_draws(device, cfg.seed, info.rank, step)  # dropout, were G or D to have any
    for i in range(cfg.n_dis):
        b = step * cfg.n_dis + i  # this rank's update counter: the RNG stream index
        x_real, y_real = real(b)
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, info.rank, b, STREAM_D_NOISE))
        z, y_fake = latents(local_batch, cfg.z_dim, num_classes, gen, device)
        with mixed_precision(device, cfg.amp):
            with torch.no_grad():
                x_fake = nets.G_train(z, y_fake)
            y_both = torch.cat([y_real, y_fake]) if num_classes else None
            d_real, d_fake = nets.D_train(torch.cat([x_real, x_fake]), y_both).float().chunk(2)
            d_loss = compute_d_loss(d_real, d_fake, cfg.loss)
        nets.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        nets.opt_d.step()
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, info.rank, step, STREAM_G_NOISE))
    z, y_fake = latents(local_batch, cfg.z_dim, num_classes, gen, device)
    with mixed_precision(device, cfg.amp):
        g_loss = compute_g_loss(nets.D_local(nets.G_train(z, y_fake), y_fake).float(), cfg.loss)
    nets.opt_g.zero_grad(set_to_none=True)
    g_loss.backward(inputs=list(nets.G.parameters()))
    nets.opt_g.step()
    if nets.G_ema is not None:
        ema_update(nets.G_ema, nets.G, cfg.ema)
    return d_loss.detach(), g_loss.detach(), d_real.detach(), d_fake.detach()


def _mean_losses(losses: tuple[torch.Tensor, ...], info: DistInfo) -> dict[str, float]:
    """The logged losses (D's outputs as their means), averaged over the ranks (one small
    all-reduce per log): reduced here, on logged steps only."""
    stacked = torch.stack([loss.mean() for loss in losses]).float()
    if info.distributed:
        dist.all_reduce(stacked)
        stacked /= info.world_size
    return dict(zip((KEY_D_LOSS, KEY_G_LOSS, "d_real", "d_fake"), stacked.tolist(), strict=True))


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(cfg: GanConfig, *, stop_at: int | None = None) -> GanResult | None:
    """Train a GAN as ``cfg`` says; return its result (also written to metrics.json).

    Args:
        cfg: the resolved config.
        stop_at: stop (with a checkpoint) once this many G steps are done, as if interrupted;
            ``cfg.resume=True`` later continues exactly (default None: train to ``cfg.g_steps``).

    Returns:
        The :class:`stablerank.train.results.GanResult` of the finished run (None on ranks other
        than 0, and when ``stop_at`` ended it early). The run folder is
        :meth:`RunDir.for_config(cfg, world_size) <stablerank.train.rundir.RunDir.for_config>`
        (``-ddpN`` ends its default name under torchrun with N processes); the process
        holds its lock and keeps its ``status.json`` while it trains. A non-finite loss, or
        non-finite samples at an evaluation, stop the run as diverged (no FID on NaN samples);
        a discriminator collapse (:func:`stablerank.train.gan_scores.divergence_of`) marks it
        diverged at the end. A folder that holds this run finished returns its stored result
        without training (``overwrite`` retrains it).

    Raises:
        FileExistsError: the run folder holds another run and neither ``resume`` nor
            ``overwrite`` is set (:meth:`stablerank.train.rundir.RunDir.begin`).
        RunLockedError: another process trains this run.
        ValueError: resuming under a config that differs from the run's (its ``config.json``,
            else its checkpoint's; the differences are listed), or a ``batch_size`` that does not
            split evenly over the ranks.
        KeyboardInterrupt: after saving a checkpoint, on Ctrl-C (single process).
    """
    info, device = start_trainer(cfg, stop_at, "G steps")
    if cfg.amp and device.type != "cuda":  # the config refuses device="cpu"; "auto" may get here
        raise ValueError(f"amp=True needs a CUDA device; device={cfg.device!r} gave {device}")
    folder = RunDir.for_config(cfg, info.world_size)
    finished = folder.finished_result(cfg, GanResult, is_main=info.is_main)
    if finished is None:
        # The data before the folder: a missing data folder is refused before a run folder is
        # made. So is a missing package of the experiments extra that the run needs at its end.
        import_optional("matplotlib.image", "the sample grid")
        if cfg.eval_every or cfg.n_final_samples:
            import_optional("torchmetrics", "FID/KID (eval_every, n_final_samples)")
        splits = load_dataset(cfg.dataset, cfg.data_dir)
        with folder.session(cfg, is_main=info.is_main):
            result = _train(cfg, splits, folder, info, device, stop_at)
    else:  # the same run, finished before: nothing to train
        result = finished if info.is_main else None
    say_finished(folder.path, result)
    end_worker(info)
    return result


def _train(cfg: GanConfig, splits: DatasetSplits, folder: RunDir, info: DistInfo,
           device: torch.device, stop_at: int | None) -> GanResult | None:  # fmt: skip
    """The run inside its folder session (see :func:`run`)."""
    local_batch = cfg.batch_size // info.world_size
    run_dir = folder.path
    cfg_dict = config_to_dict(cfg)
    # The newest intact checkpoint: a cut or altered newest file (a kill mid-write, a flipped
    # bit) falls back to the older one kept beside it.
    ckpt = folder.resume_point(cfg, map_location="cpu", is_main=info.is_main)

    # --- data ---
    num_classes = splits.num_classes if cfg.conditional else None
    real = real_batches(
        splits, batch_size=local_batch, device=device, seed=cfg.seed, rank=info.rank,
        world_size=info.world_size,
    )  # fmt: skip

    # --- models ---
    nets = _build_nets(cfg, splits, num_classes, ckpt, info, device)
    # The lr is a pure function of the G step, as in the classifier trainer: nothing to save.
    decay = _linear_decay(cfg.g_steps) if cfg.lr_decay == "linear" else (lambda step: 1.0)
    start, seconds_before, baselines, standing_bn = 0, 0.0, None, False
    if ckpt is not None:
        start, seconds_before = int(ckpt["step"]), float(ckpt["train_seconds"])
        baselines = ckpt["baselines"]
        standing_bn = bool(ckpt.get(KEY_EMA_STANDING_BN, False))
    del ckpt

    # The feature network before the run files: an unknown one or missing weights leave no log
    # behind that would make the corrected command need --overwrite.
    sampler = Sampler(
        nets.G, nets.G_ema, z_dim=cfg.z_dim, num_classes=num_classes, device=device, seed=cfg.seed
    )
    if standing_bn:  # G_ema was saved with them: refreshing again would step an SN G's u, v
        sampler.stats_step = start
    evaluator = None
    if info.is_main and (cfg.eval_every > 0 or cfg.n_final_samples > 0):
        evaluator = Evaluator(cfg, splits.test_x, sampler.G, num_classes, device)

    # --- run files (rank 0) ---
    log = None
    if info.is_main:
        env = environment_info(device, cfg.seed, info.world_size)
        folder.write_run_files(cfg_dict, env)
        log = MetricLog(run_dir, key="step")
        log.truncate_after(start)
    sample_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, 0, 0, STREAM_FIXED))
    fixed_y = grid_labels(num_classes, GRID_SIDE).to(device) if num_classes else None
    n_grid = GRID_SIDE**2 if fixed_y is None else len(fixed_y)
    fixed_z, _ = latents(n_grid, cfg.z_dim, None, sample_gen, device)  # labels: fixed_y

    def save_samples(step: int) -> None:
        G_s = sampler.ready(step)
        with torch.no_grad(), eval_mode(G_s):
            save_image_grid(G_s(fixed_z, fixed_y), folder.samples_dir / f"step_{step:07d}.png")

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "train_seconds": seconds_before + time.perf_counter() - t0,
            "baselines": baselines,
            "config": cfg_dict,
            **nets.state(),
            "schedule": "lr is a pure function of the G step (_linear_decay); nothing to restore",
            "world_size": info.world_size,
        }
        if nets.G_ema is not None:
            # load_gan_run reuses G_ema's statistics when a sample grid or an evaluation refreshed
            # them at this step; resuming ignores them (ema_update copies G's buffers each step).
            state[KEY_EMA_STANDING_BN] = sampler.stats_step == step
        folder.save_checkpoint(step, state, keep=cfg.keep_checkpoints)

    if evaluator is not None and cfg.n_final_samples > 0:
        if start == 0:
            sampler.ready(0)
        saved = None if start == 0 else baselines or {}
        baselines = score_baselines(evaluator, splits.train_x, cfg.n_final_samples, cfg.seed, saved)

    # --- the loop ---
    show = cfg.progress and info.is_main and sys.stderr.isatty()
    bar = tqdm(
        total=cfg.g_steps,
        initial=start,
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="gan",
    )
    last_eval: dict[str, float] = {}
    divergence = ""
    t0, step = time.perf_counter(), start
    end = cfg.g_steps if stop_at is None else min(stop_at, cfg.g_steps)
    lines = cfg.progress and info.is_main and not show  # progress=False: neither bar nor line
    plain = ProgressLine("gan step", end, start) if lines else None
    with deferred_sigint(enabled=not info.distributed, run_dir=run_dir) as interrupt:
        while step < end and not interrupt["stop"]:
            losses = _g_step(cfg, nets, real, step, decay(step), info, local_batch, num_classes,
                             device)  # fmt: skip
            step += 1

            # The last step, not a stop_at one: a resumed run logs as an uninterrupted one.
            if step % cfg.log_every == 0 or step == cfg.g_steps:
                values = _mean_losses(losses, info)
                if not all(math.isfinite(v) for v in values.values()):
                    divergence = f"non-finite loss at G step {step}: {values}"
                if log is not None:
                    active = None
                    if cfg.d_norm == "srn" and not divergence:
                        active = active_fraction(layer_stats(layer_report(nets.D)))
                    log.append(
                        {
                            "step": step,
                            **values,
                            KEY_SRN_ACTIVE: active,
                            "lr_g": cfg.lr_g * decay(step),  # the next step's
                            "seconds": seconds_before + time.perf_counter() - t0,
                        }
                    )
                if divergence:
                    if info.is_main:  # every rank stops: the losses are all-reduced
                        print(f"diverged: {divergence}; the run stops here", file=sys.stderr)
                    break
                shown = {**values, **last_eval}
                bar.set_postfix({k: f"{shown[k]:.3f}" for k in _BAR_KEYS if k in shown})
                if plain is not None and plain.due(step):
                    plain.show(step, **{k: shown[k] for k in _BAR_KEYS if k in shown})
            if not info.is_main:
                bar.update(1)
                continue
            if cfg.sample_every and step % cfg.sample_every == 0:
                save_samples(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and evaluator is not None:
                sampler.ready(step)
                try:
                    last_eval = scores_only(evaluator(cfg.n_eval_samples))
                except NonFiniteError as err:  # NaN samples before the next logged losses
                    divergence = f"the generator's samples are not finite at G step {step}: {err}"
                    print(f"diverged: {divergence}; the run stops here", file=sys.stderr)
                    break
                log.append({"step": step, **{f"eval_{k}": v for k, v in last_eval.items()}})
            if step % cfg.checkpoint_every == 0 or step == end:
                checkpoint(step)
            bar.update(1)
        # A diverged run ends as diverged (its last step's weights are no point to resume from).
        stopped = interrupt["stop"] and not divergence
        if stopped and info.is_main and step % cfg.checkpoint_every:
            checkpoint(step)
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0
    if stopped:
        raise interrupted(run_dir, f"the checkpoint of G step {step}")

    result = None
    if info.is_main and (step == cfg.g_steps or divergence):
        records = log.records()
        divergence = divergence or divergence_of(records)
        scores = None
        if not divergence:
            save_samples(step)  # also readies the sampler for the final scores
            if evaluator and cfg.n_final_samples:
                try:
                    scores = evaluator(cfg.n_final_samples)
                except NonFiniteError as err:  # NaN samples with finite losses: no score
                    divergence = f"the generator's samples are not finite: {err}"
        result = write_result(
            run_dir, cfg, scores, baselines, nets.D, step, train_seconds, records, divergence,
            splits.source,
        )  # fmt: skip
    if info.is_main:
        log.close()
        state = INTERRUPTED if result is None else DIVERGED if result.diverged else DONE
        folder.write_status(status=state, divergence=result.divergence if result else "")
    return result
