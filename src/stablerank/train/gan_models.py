"""G and D of a GAN run: built as the trainer builds them, and restored from a run folder.

:func:`build_gan_models` is the trainer's one builder (normalization of D, and of G when
``g_norm`` asks, included), so :func:`load_gan_run` rebuilds exactly the modules whose
``state_dict`` the checkpoints hold: parametrizations, SN/SRN ``_u``/``_v`` buffers, the EMA
generator and its BatchNorm statistics as the trainer samples with them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stablerank.apply import SrnInactiveWarning, normalize_model
from stablerank.config import config_from_dict
from stablerank.config.gan import GanConfig
from stablerank.data import dataset_shape
from stablerank.models.gan import build_discriminator, build_generator
from stablerank.srn import RankOneWarning, stable_rank_norm
from stablerank.train.checkpoint import load_checkpoint
from stablerank.train.gan_sampling import refresh_bn_stats
from stablerank.train.rundir import RunDir
from stablerank.train.runtime import resolve_device

__all__ = ["GanRun", "build_gan_models", "load_gan_run"]

# Checkpoint key: True when the saved G_ema already holds the standing BatchNorm statistics the
# trainer sampled with at that step (it refreshed them before it wrote the checkpoint).
KEY_EMA_STANDING_BN = "G_ema_standing_bn"


def build_gan_models(
    cfg: GanConfig, channels: int, image_size: int, num_classes: int | None
) -> tuple[nn.Module, nn.Module]:
    """G and D as ``cfg`` describes them, normalization registered, freshly initialised.

    Initial weights and SN/SRN vectors come from torch's global RNG (the trainer seeds it first).

    Args:
        cfg: the run's config (arch, widths, z_dim, d_norm/g_norm and their settings).
        channels: image channels C.
        image_size: image side H = W.
        num_classes: classes of a conditional GAN; None when unconditional.

    Returns:
        ``(G, D)`` on the CPU, in training mode.
    """
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
    # SN-/SRN-GAN normalize every layer of D, its last Linear included (head=norm). Whether
    # SRN's cap binds is logged during training, so the registration warning is not needed.
    # d_first_norm="sn" with SRN: the layers that read the image get SN as "heads", the others
    # (the last Linear too) SRN. Registered in module order as ever, so every layer draws the
    # same power-iteration start vectors as with SRN on every layer.
    first = (cfg.d_first_norm, cfg.d_norm) == ("sn", "srn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SrnInactiveWarning)
        normalize_model(
            D,
            cfg.d_norm,
            rank_ratio=cfg.rank_ratio,
            n_power_iterations=cfg.n_power_iterations,
            head="sn" if first else cfg.d_norm,
            head_names=D.input_layers if first else None,
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
    normalize_model(G, cfg.g_norm, n_power_iterations=cfg.n_power_iterations, head=cfg.g_norm)
    return G, D


@dataclass(frozen=True)
class GanRun:
    """A trained GAN restored by :func:`load_gan_run`.

    Attributes:
        config: the config the checkpoint was trained under.
        G: the generator the trainer samples with (EMA when ``ema``), eval mode.
        D: the discriminator, eval mode (SN/SRN ``_u``/``_v`` frozen).
        num_classes: classes of a conditional run; None when unconditional.
        image_shape: (C, H, W) of the images G makes and D takes.
        step: G steps trained when the checkpoint was written.
        checkpoint: the checkpoint file loaded.
        ema: True when ``G`` is the EMA generator.
    """

    config: GanConfig
    G: nn.Module
    D: nn.Module
    num_classes: int | None
    image_shape: tuple[int, int, int]
    step: int
    checkpoint: Path
    ema: bool


def _load_checkpoint(
    run_dir: Path, checkpoint: int | str | Path | None
) -> tuple[Path, dict[str, object]]:
    """The checkpoint asked for and its path; for None the newest intact one (an older one when
    the newest is corrupt, as when a trainer resumes)."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"GAN run folder {str(run_dir)!r} does not exist")
    folder = RunDir(run_dir)
    if checkpoint is None:
        loaded = folder.load_latest()
        if loaded is None:
            raise FileNotFoundError(
                f"{str(run_dir / 'checkpoints')!r} holds no step_*.pt checkpoint: "
                "not a GAN run folder, or no step finished"
            )
        return loaded
    path = folder.checkpoint_path(checkpoint) if isinstance(checkpoint, int) else Path(checkpoint)
    return path, load_checkpoint(path, map_location="cpu")  # FileNotFoundError if missing


def load_gan_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    checkpoint: int | str | Path | None = None,
    ema: bool = True,
) -> GanRun:
    """Rebuild G and D of a run folder of :func:`stablerank.train.gan.run` exactly as trained.

    The architecture comes from the checkpoint's own copy of the config (the one its weights
    were trained under), the modules from :func:`build_gan_models`, and the weights, SN/SRN
    vectors and BatchNorm statistics from the checkpoint (strict ``load_state_dict``). With
    ``ema`` and an EMA run, G is the EMA generator with the standing BatchNorm statistics the
    trainer samples and scores with: taken from the checkpoint when the trainer had already
    refreshed them at that step, else recomputed from the same latent stream
    (:func:`stablerank.train.gan_sampling.refresh_bn_stats`). On the device the run trained on,
    ``G`` then makes bitwise the trainer's samples for the same latents, and ``D`` gives its
    outputs.

    .. note:: Recomputing the statistics runs G in training mode, which also steps the power
        iteration of an SN-normalized G (``g_norm="sn"``); that is why a checkpoint whose
        statistics are already fresh is not refreshed again. Checkpoints written before the
        trainer recorded this are always refreshed (exact for ``g_norm="none"``).

    Args:
        run_dir: the run folder (holding ``checkpoints/step_*.pt``).
        device: where the models go (default ``"cpu"``; ``"auto"`` picks CUDA when present).
        checkpoint: which checkpoint: a G step (int), a file path, or None for the newest
            intact one (default None; a corrupt newest is skipped, saying so on stderr).
        ema: return the EMA generator when the run has one (default True); False gives the raw
            generator with the running BatchNorm statistics of training.

    Returns:
        The :class:`GanRun`.

    Raises:
        FileNotFoundError: ``run_dir`` or the checkpoint does not exist, or the run folder holds
            no checkpoint (the message names the path).
        CorruptCheckpointError: the checkpoint asked for, or every checkpoint, is corrupt.
        ValueError: the dataset holds no images.
        RuntimeError: the checkpoint's weights do not fit the rebuilt modules.
    """
    run_dir = Path(run_dir)
    path, ckpt = _load_checkpoint(run_dir, checkpoint)
    dev = resolve_device(device) if isinstance(device, str) else device
    cfg = config_from_dict(GanConfig, ckpt["config"])
    shape = dataset_shape(cfg.dataset)  # the dataset's files are not read
    if shape.image_size is None:
        raise ValueError(f"dataset {cfg.dataset!r} holds no images")
    num_classes = shape.num_classes if cfg.conditional else None
    # The initial weights are overwritten below; fork_rng keeps the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RankOneWarning)  # the trainer said so when it built them
        G, D = build_gan_models(cfg, shape.in_channels, shape.image_size, num_classes)
    step = int(ckpt["step"])
    if checkpoint is None and step != cfg.g_steps:
        RunDir(run_dir).warn_not_final(path, f"{step} of {cfg.g_steps} steps", stacklevel=2)
    use_ema = ema and cfg.ema > 0
    G.load_state_dict(ckpt["G_ema"] if use_ema else ckpt["G"])
    D.load_state_dict(ckpt["D"])
    G.to(dev).eval()
    D.to(dev).eval()
    if use_ema and not ckpt.get(KEY_EMA_STANDING_BN, False):
        refresh_bn_stats(G, z_dim=cfg.z_dim, num_classes=num_classes, device=dev, seed=cfg.seed)
    return GanRun(
        config=cfg,
        G=G,
        D=D,
        num_classes=num_classes,
        image_shape=(shape.in_channels, shape.image_size, shape.image_size),
        step=step,
        checkpoint=path,
        ema=use_ema,
    )
