"""GAN trainer (``stablerank gan``): SN-GAN / SRN-GAN, readable top to bottom.

``run(cfg)`` builds the data, G and D (normalization applied to D by
:func:`stablerank.normalize_model`), then sequences ``n_dis`` discriminator updates and one
generator update per step; the models own the losses (:mod:`stablerank.models.gan`). Around that:
linear learning-rate decay, an optional EMA generator, sample grids, periodic FID/KID/IS, atomic
checkpoints and exact resume, JSONL/CSV logs and a final ``metrics.json``.

Run folder (``out_dir/run_name``)::

    config.json env.json log.jsonl log.csv metrics.json d_layers.json
    samples/step_0001000.png ...        8x8 grids from a fixed latent batch
    checkpoints/step_0001000.pt ...     the newest ``keep_checkpoints`` are kept

.. note:: **Randomness is counter-based.** The latents and fake labels of D update ``b`` (and of
    G update ``step``) on rank ``r`` come from a generator seeded by ``(seed, r, b)`` (see
    :func:`_stream_seed`); real batch ``b`` is a pure function of ``(seed, epoch)`` in the
    :class:`~stablerank.data.DeviceLoader` (disjoint shards per rank). Nothing draws from a running
    RNG, so a resumed run continues bit for bit (tested on CPU), DDP ranks need no RNG state
    exchange, and sampling or evaluation never perturb training.

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
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stablerank.apply import normalize_model
from stablerank.config._base import config_hash, config_to_dict
from stablerank.config.gan import GanConfig
from stablerank.data import DeviceLoader, load_dataset
from stablerank.metrics.features import build_feature_extractor
from stablerank.metrics.gan import (
    DEFAULT_IS_SPLITS,
    KEY_FID,
    KEY_PROTOCOL,
    compute_gan_metrics,
    extract_features,
)
from stablerank.models.gan import (
    build_discriminator,
    build_generator,
    compute_d_loss,
    compute_g_loss,
)
from stablerank.report import layer_report
from stablerank.srn import stable_rank_norm
from stablerank.train.checkpoint import (
    atomic_write_json,
    capture_rng_state,
    check_resume_config,
    load_checkpoint,
    save_checkpoint,
)
from stablerank.train.records import MetricLog, environment_info, write_run_files
from stablerank.train.runtime import end_worker, init_distributed, seed_everything

__all__ = [
    "KEY_D_LOSS",
    "KEY_G_LOSS",
    "KEY_STEPS",
    "KEY_TRAIN_SECONDS",
    "PREFIX_REAL_TRAIN",
    "PREFIX_UNTRAINED",
    "make_generate",
    "run",
    "save_image_grid",
]

KEY_STEPS = "g_steps"
KEY_D_LOSS = "d_loss"
KEY_G_LOSS = "g_loss"
KEY_TRAIN_SECONDS = "train_seconds"
# Prefixes of the baseline scores in metrics.json (e.g. "untrained_fid", "real_train_fid").
PREFIX_UNTRAINED = "untrained_"
PREFIX_REAL_TRAIN = "real_train_"

# Keys that may change between a run and its resume: where and how it is watched, not what it
# computes (evaluation and sampling use their own RNG streams, so they never alter training).
_RESUME_ALLOWED = (
    "resume",
    "progress",
    "device",
    "out_dir",
    "run_name",
    "log_every",
    "sample_every",
    "eval_every",
    "n_eval_samples",
    "n_final_samples",
    "feature_net",
    "feature_weights",
    "checkpoint_every",
    "keep_checkpoints",
)
_BAR_KEYS = (KEY_D_LOSS, KEY_G_LOSS, KEY_FID)  # shown in the progress bar
_GRID_SIDE = 8  # sample grids are 8x8
# FID/KID/IS compare samples with the whole test split, with this project's own feature network
# where one exists (no Inception weights offline).
_REFERENCE_SPLIT = "test"
_DEFAULT_FEATURE_NETS = {"fashion-mnist": "fmnist-cnn"}
_GRID_PAD = 2  # pixels between grid cells
# RNG streams of _stream_seed (one per kind of draw).
_STREAM_D_NOISE, _STREAM_G_NOISE, _STREAM_FIXED, _STREAM_EVAL, _STREAM_BN = range(5)
# Standing BatchNorm statistics of the EMA generator: 16 x 64 = 1024 fresh samples.
_BN_STAT_BATCHES, _BN_STAT_BATCH = 16, 64


# ----------------------------------------------------------------------------------------------
# Randomness and data
# ----------------------------------------------------------------------------------------------


def _stream_seed(seed: int, rank: int, counter: int, stream: int) -> int:
    """Seed of draw ``counter`` of ``stream`` on ``rank``: a well-mixed 63-bit hash (nearby
    tuples give unrelated streams)."""
    words = np.random.SeedSequence([seed, rank, counter, stream]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class _RealBatches:
    """Real batch number ``b`` of this rank, from a :class:`DeviceLoader` (disjoint shards per
    rank, order a pure function of ``(seed, epoch)``).

    Batch ``b`` is batch ``b % per_epoch`` of epoch ``b // per_epoch``; after a resume the epoch's
    first batches are replayed once to reach it, so no loader state is saved. The loader scales
    uint8 images to [-1, 1] (mean = std = 0.5 after division by 255), the generator's tanh range.
    """

    def __init__(self, loader: DeviceLoader) -> None:
        self.loader, self.per_epoch = loader, len(loader)
        if self.per_epoch == 0:
            raise ValueError(
                f"batch_size {loader.batch_size} x {loader.world_size} rank(s) "
                f"exceeds the {loader.num_total} training images"
            )
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._expect = (-1, -1)

    def __call__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(b, self.per_epoch)
        if self._it is None or (epoch, pos) != self._expect:
            self.loader.set_epoch(epoch)
            self._it = iter(self.loader)
            for _ in range(pos):  # resume mid-epoch
                next(self._it)
        self._expect = (epoch, pos + 1)
        return next(self._it)


def _latents(
    n: int, z_dim: int, num_classes: int | None, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(n, z_dim, generator=gen).to(device)
    y = torch.randint(num_classes, (n,), generator=gen).to(device) if num_classes else None
    return z, y


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def _png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) grey or (H, W, 3) RGB array as PNG (zlib only, no imaging library)."""
    h, w = img.shape[:2]
    color_type = 0 if img.ndim == 2 else 2
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))  # filter 0 per scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = _GRID_SIDE) -> None:
    """Save (N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PNG grid, ``nrow`` per row."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(
        c, rows * (h + _GRID_PAD) + _GRID_PAD, nrow * (w + _GRID_PAD) + _GRID_PAD, dtype=torch.uint8
    )
    for i in range(n):
        top = _GRID_PAD + (i // nrow) * (h + _GRID_PAD)
        left = _GRID_PAD + (i % nrow) * (w + _GRID_PAD)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(arr))


# ----------------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------------


def _run_dir(cfg: GanConfig) -> Path:
    name = cfg.run_name or (
        f"{cfg.dataset}-{cfg.arch}-{cfg.d_norm}-{config_hash(cfg, exclude=_RESUME_ALLOWED)}"
    )
    return Path(cfg.out_dir) / name


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def _linear_decay(total: int) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - step / total)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm running statistics, SN/SRN vectors frozen), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def _deferred_sigint(enabled: bool) -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag checked between steps, so the checkpoint written on interrupt is
    a consistent state (never half a D/G update)."""
    flag = {"stop": False}
    if not enabled:
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def make_generate(
    G: nn.Module,
    *,
    z_dim: int,
    num_classes: int | None,
    device: torch.device,
    seed: int,
    batch_size: int = 256,
) -> Callable[[int], torch.Tensor]:
    """A ``generate(n) -> (n, C, H, W)`` float images in [-1, 1] callable for the metrics.

    Successive calls continue one RNG stream seeded by ``seed`` (a fresh callable with the same
    seed repeats the same latents and labels: every evaluation of a run scores the same z). G runs
    in eval mode (BatchNorm running statistics), without gradients; labels are uniform.
    """
    gen = torch.Generator().manual_seed(_stream_seed(seed, 0, 0, _STREAM_EVAL))

    @torch.no_grad()
    def generate(n: int) -> torch.Tensor:
        out = []
        with _eval_mode(G):
            for start in range(0, n, batch_size):
                z, y = _latents(min(batch_size, n - start), z_dim, num_classes, gen, device)
                out.append(G(z, y).float().cpu())
        return torch.cat(out)

    return generate


@torch.no_grad()
def _refresh_bn_stats(
    G: nn.Module, *, z_dim: int, num_classes: int | None, device: torch.device, seed: int
) -> None:
    """Recompute G's BatchNorm running statistics as exact averages over fresh samples
    ("standing statistics", Brock et al. 2019).

    For the EMA generator: its averaged weights do not match the raw generator's running
    statistics, and early in training eval-mode samples wash out (seen on Fashion-MNIST). The
    latents come from their own stream, so this never changes training.
    """
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches below
    gen = torch.Generator().manual_seed(_stream_seed(seed, 0, 0, _STREAM_BN))
    was_training = G.training
    G.train()
    for _ in range(_BN_STAT_BATCHES):
        G(*_latents(_BN_STAT_BATCH, z_dim, num_classes, gen, device))
    G.train(was_training)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


def _feature_net_name(cfg: GanConfig) -> str:
    if cfg.feature_net != "auto":
        return cfg.feature_net
    if cfg.dataset in _DEFAULT_FEATURE_NETS:
        return _DEFAULT_FEATURE_NETS[cfg.dataset]
    raise ValueError(
        f"no offline feature network for dataset {cfg.dataset!r}: set feature_net (e.g. "
        "'inception-v3' with feature_weights) or turn evaluation off (eval_every=0, "
        "n_final_samples=0)"
    )


class _Evaluator:
    """FID/KID/IS of the sampling generator against the whole test split (rank 0 only).

    The test split's features are extracted once. Samples come from their own RNG stream (the
    same latents at every evaluation), in eval mode, so evaluating never changes training.
    """

    def __init__(
        self, cfg: GanConfig, test_x: torch.Tensor, G: nn.Module, num_classes: int | None,
        device: torch.device,
    ) -> None:  # fmt: skip
        kwargs: dict[str, Any] = {"device": device}
        if cfg.feature_weights is not None:
            kwargs["weights_path"] = cfg.feature_weights
        self.extractor = build_feature_extractor(_feature_net_name(cfg), **kwargs)
        self.real = extract_features(test_x, self.extractor, split=_REFERENCE_SPLIT)
        self.cfg, self.G, self.num_classes, self.device = cfg, G, num_classes, device

    def __call__(self, n_fake: int) -> dict[str, Any]:
        generate = make_generate(self.G, z_dim=self.cfg.z_dim, num_classes=self.num_classes,
                                 device=self.device, seed=self.cfg.seed)  # fmt: skip
        return compute_gan_metrics(
            generate, self.real, feature_net=self.extractor, n_fake=n_fake,
            is_splits=min(DEFAULT_IS_SPLITS, n_fake), seed=self.cfg.seed,
        )  # fmt: skip


def _scores_only(scores: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {prefix + k: v for k, v in scores.items() if k != KEY_PROTOCOL}


def _baselines(evaluator: _Evaluator, train_x: torch.Tensor, n: int, seed: int
               ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The two ends of the scale, with the final evaluation's protocol: an untrained generator
    (call before training) and ``n`` real training images (a seeded subset) as "samples"."""
    gen = torch.Generator().manual_seed(_stream_seed(seed, 0, 0, _STREAM_EVAL))
    subset = train_x[torch.randperm(len(train_x), generator=gen)[:n]]
    real = compute_gan_metrics(
        subset, evaluator.real, feature_net=evaluator.extractor,
        is_splits=min(DEFAULT_IS_SPLITS, n), seed=seed, sample_source="train",
    )  # fmt: skip
    return {PREFIX_UNTRAINED: evaluator(n), PREFIX_REAL_TRAIN: real}


def _write_final_metrics(
    run_dir: Path,
    cfg: GanConfig,
    scores: dict[str, Any] | None,
    baselines: dict[str, dict[str, Any]] | None,
    D: nn.Module,
    step: int,
    train_seconds: float,
    log: MetricLog | None,
) -> None:
    """``metrics.json`` (named keys + protocol) and ``d_layers.json`` (D's spectra)."""
    last = [r for r in (log.records() if log else []) if KEY_D_LOSS in r]
    result: dict[str, Any] = {
        KEY_STEPS: step,
        KEY_TRAIN_SECONDS: train_seconds,
        KEY_D_LOSS: last[-1][KEY_D_LOSS] if last else None,
        KEY_G_LOSS: last[-1][KEY_G_LOSS] if last else None,
    }
    protocol: dict[str, Any] = {
        "generator": "ema" if cfg.ema > 0 else "raw",
        "generator_bn": (
            f"standing statistics of {_BN_STAT_BATCHES * _BN_STAT_BATCH} samples"
            if cfg.ema > 0
            else "running statistics of training"
        ),
        "d_norm": cfg.d_norm,
        "rank_ratio": cfg.rank_ratio if cfg.d_norm == "srn" else None,
    }
    if scores is not None:
        protocol.update(scores[KEY_PROTOCOL])
        result.update(_scores_only(scores))
    if baselines:
        protocol["baselines"] = {}
        for prefix, base in baselines.items():
            result.update(_scores_only(base, prefix))
            protocol["baselines"][prefix.rstrip("_")] = base[KEY_PROTOCOL]
    result[KEY_PROTOCOL] = protocol
    atomic_write_json(run_dir / "metrics.json", result)
    layer_report(D).to_json(run_dir / "d_layers.json")


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def _build_models(cfg: GanConfig, channels: int, image_size: int, num_classes: int | None
                  ) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    G = build_generator(
        cfg.arch,
        image_size=image_size,
        channels=channels,
        z_dim=cfg.z_dim,
        ngf=cfg.ngf,
        num_classes=num_classes,
    )
    D = build_discriminator(
        cfg.arch, image_size=image_size, channels=channels, ndf=cfg.ndf, num_classes=num_classes
    )
    # normalize_model touches Linear/Conv only, so the projection embedding stays plain unless
    # d_norm_embedding asks for it (Miyato & Koyama 2018 spectrally normalize it).
    normalize_model(
        D, cfg.d_norm, rank_ratio=cfg.rank_ratio, n_power_iterations=cfg.n_power_iterations
    )
    if cfg.d_norm_embedding:
        if cfg.d_norm == "sn":
            torch.nn.utils.parametrizations.spectral_norm(
                D.embed, n_power_iterations=cfg.n_power_iterations
            )
        else:
            stable_rank_norm(
                D.embed, rank_ratio=cfg.rank_ratio, n_power_iterations=cfg.n_power_iterations
            )
    normalize_model(G, cfg.g_norm, n_power_iterations=cfg.n_power_iterations)
    return G, D


def run(cfg: GanConfig, *, stop_at: int | None = None) -> Path:
    """Train a GAN as ``cfg`` says; return the run folder.

    Args:
        cfg: the resolved config.
        stop_at: stop (with a checkpoint) once this many G steps are done, as if interrupted;
            ``cfg.resume=True`` later continues exactly (default None: train to ``cfg.g_steps``).

    Returns:
        The run folder (``cfg.out_dir / run name``).

    Raises:
        FileExistsError: the run folder holds checkpoints and ``cfg.resume`` is False.
        ValueError: resuming with a config that differs from the checkpoint's (diffs listed), or a
            ``batch_size`` that does not split evenly over the ranks.
        KeyboardInterrupt: after saving a checkpoint, on Ctrl-C (single process).
    """
    info, device = init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size ({cfg.batch_size}) must be divisible by the world size ({info.world_size})"
        )
    local_batch = cfg.batch_size // info.world_size
    run_dir = _run_dir(cfg)
    cfg_dict = config_to_dict(cfg)

    # --- resume or start ---
    ckpt = None
    found = _checkpoints(run_dir)
    if found and not cfg.resume:
        raise FileExistsError(
            f"run folder {str(run_dir)!r} already holds checkpoints; pass "
            "resume=True to continue it or choose another run_name"
        )
    if found:
        ckpt = load_checkpoint(found[-1], map_location="cpu")
        check_resume_config(ckpt["config"], cfg_dict, allowed=_RESUME_ALLOWED)

    # --- data ---
    splits = load_dataset(cfg.dataset, cfg.data_dir)
    if splits.image_size is None:
        raise ValueError(f"dataset {cfg.dataset!r} holds no images")
    num_classes = splits.num_classes if cfg.conditional else None
    c = splits.in_channels
    real = _RealBatches(
        DeviceLoader(
            splits.train_x,
            splits.train_y,
            batch_size=local_batch,
            mean=(0.5,) * c,
            std=(0.5,) * c,
            device=device,
            shuffle=True,
            drop_last=True,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            pixel_scale=splits.pixel_scale,
        )
    )

    # --- models: the same initialisation on every rank (seed, not seed + rank) ---
    seed_everything(cfg.seed)
    G, D = _build_models(cfg, splits.in_channels, splits.image_size, num_classes)
    G.to(device)
    D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema > 0 else None
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas)
    decay = _linear_decay(cfg.g_steps) if cfg.lr_decay == "linear" else (lambda step: 1.0)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, decay)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, decay)
    start, seconds_before, baselines = 0, 0.0, None
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"])
        for obj, key in (
            (opt_g, "opt_g"),
            (opt_d, "opt_d"),
            (sched_g, "sched_g"),
            (sched_d, "sched_d"),
        ):
            obj.load_state_dict(ckpt[key])
        start, seconds_before = int(ckpt["step"]), float(ckpt["train_seconds"])
        baselines = ckpt["baselines"]
    del ckpt

    G_raw, D_raw = G, D  # state dicts, sampling and the final report use these
    if cfg.compile:
        G, D = torch.compile(G), torch.compile(D)
    D_local = D  # the G step's D forward: compiled, but outside DDP (see the module note)
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G = DistributedDataParallel(G, device_ids=ids, broadcast_buffers=True)
        D = DistributedDataParallel(D, device_ids=ids, broadcast_buffers=True)
    autocast = (
        partial(torch.autocast, device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext
    )

    # --- run files (rank 0) ---
    log = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_files(
            run_dir, cfg_dict, {**environment_info(device, cfg.seed), "world_size": info.world_size}
        )
        log = MetricLog(run_dir, key="step")
        log.truncate_after(start)
    sample_gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, 0, 0, _STREAM_FIXED))
    fixed_z, fixed_y = _latents(_GRID_SIDE**2, cfg.z_dim, num_classes, sample_gen, device)
    if num_classes:  # one class per row
        fixed_y = (torch.arange(_GRID_SIDE**2, device=device) // _GRID_SIDE) % num_classes
    sampler = G_ema if G_ema is not None else G_raw
    stats_at = {"step": -1}

    def ready_sampler(step: int) -> None:
        """Standing BatchNorm statistics for the EMA generator, once per step that uses it."""
        if G_ema is not None and stats_at["step"] != step:
            _refresh_bn_stats(
                G_ema, z_dim=cfg.z_dim, num_classes=num_classes, device=device, seed=cfg.seed
            )
            stats_at["step"] = step

    def save_samples(step: int) -> None:
        ready_sampler(step)
        with torch.no_grad(), _eval_mode(sampler):
            save_image_grid(sampler(fixed_z, fixed_y), run_dir / "samples" / f"step_{step:07d}.png")

    def checkpoint(step: int) -> None:
        state = {
            "step": step,
            "train_seconds": seconds_before + time.perf_counter() - t0,
            "baselines": baselines,
            "config": cfg_dict,
            "G": G_raw.state_dict(),
            "D": D_raw.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "sched_g": sched_g.state_dict(),
            "sched_d": sched_d.state_dict(),
            "rng": capture_rng_state(),
            "world_size": info.world_size,
        }
        if G_ema is not None:
            state["G_ema"] = G_ema.state_dict()
        save_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}.pt", state)
        for old in _checkpoints(run_dir)[: -cfg.keep_checkpoints]:
            old.unlink()

    wants_eval = cfg.eval_every > 0 or cfg.n_final_samples > 0
    evaluator = (
        _Evaluator(cfg, splits.test_x, sampler, num_classes, device)
        if info.is_main and wants_eval
        else None
    )
    if evaluator is not None and cfg.n_final_samples > 0 and start == 0:
        ready_sampler(0)
        baselines = _baselines(evaluator, splits.train_x, cfg.n_final_samples, cfg.seed)

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
    t0, step = time.perf_counter(), start
    end = cfg.g_steps if stop_at is None else min(stop_at, cfg.g_steps)
    with _deferred_sigint(enabled=not info.distributed) as interrupt:
        while step < end and not interrupt["stop"]:
            for i in range(cfg.n_dis):
                b = step * cfg.n_dis + i  # this rank's update counter: the RNG stream index
                x_real, y_real = real(b)
                gen = torch.Generator().manual_seed(
                    _stream_seed(cfg.seed, info.rank, b, _STREAM_D_NOISE)
                )
                z, y_fake = _latents(local_batch, cfg.z_dim, num_classes, gen, device)
                with autocast():
                    with torch.no_grad():
                        x_fake = G(z, y_fake)
                    y_both = torch.cat([y_real, y_fake]) if num_classes else None
                    d_real, d_fake = D(torch.cat([x_real, x_fake]), y_both).float().chunk(2)
                    d_loss = compute_d_loss(d_real, d_fake, cfg.loss)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            gen = torch.Generator().manual_seed(
                _stream_seed(cfg.seed, info.rank, step, _STREAM_G_NOISE)
            )
            z, y_fake = _latents(local_batch, cfg.z_dim, num_classes, gen, device)
            with autocast():
                g_loss = compute_g_loss(D_local(G(z, y_fake), y_fake).float(), cfg.loss)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward(inputs=list(G_raw.parameters()))
            opt_g.step()
            sched_g.step()
            sched_d.step()
            if G_ema is not None:
                _ema_update(G_ema, G_raw, cfg.ema)
            step += 1

            if step % cfg.log_every == 0 or step == end:
                losses = torch.stack(
                    [
                        d_loss.detach(),
                        g_loss.detach(),
                        d_real.detach().mean(),
                        d_fake.detach().mean(),
                    ]
                ).float()
                if info.distributed:  # the mean over ranks (one small all-reduce per log)
                    dist.all_reduce(losses)
                    losses /= info.world_size
                values = dict(
                    zip((KEY_D_LOSS, KEY_G_LOSS, "d_real", "d_fake"), losses.tolist(), strict=True)
                )
                if log is not None:
                    log.append(
                        {
                            "step": step,
                            **values,
                            "lr_g": sched_g.get_last_lr()[0],
                            "seconds": seconds_before + time.perf_counter() - t0,
                        }
                    )
                shown = {**values, **last_eval}
                bar.set_postfix({k: f"{shown[k]:.3f}" for k in _BAR_KEYS if k in shown})
            if not info.is_main:
                bar.update(1)
                continue
            if cfg.sample_every and step % cfg.sample_every == 0:
                save_samples(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and evaluator is not None:
                ready_sampler(step)
                last_eval = _scores_only(evaluator(cfg.n_eval_samples))
                log.append({"step": step, **{f"eval_{k}": v for k, v in last_eval.items()}})
            if step % cfg.checkpoint_every == 0 or step == end:
                checkpoint(step)
            bar.update(1)
        if interrupt["stop"] and info.is_main and step % cfg.checkpoint_every:
            checkpoint(step)
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0
    if interrupt["stop"]:
        raise KeyboardInterrupt(f"interrupted after G step {step}; checkpoint in {run_dir}")

    if info.is_main and step == cfg.g_steps:
        save_samples(step)  # also readies the sampler for the final scores
        scores = evaluator(cfg.n_final_samples) if evaluator and cfg.n_final_samples else None
        _write_final_metrics(run_dir, cfg, scores, baselines, D_raw, step, train_seconds, log)
    if log is not None:
        log.close()
    end_worker(info)
    return run_dir
