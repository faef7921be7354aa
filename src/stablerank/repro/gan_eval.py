"""Post-training measures of a GAN run that the GAN trainer does not write (claims 4 and 5).

:func:`evaluate_gan_run` loads a finished run folder of :func:`stablerank.train.gan.run`
(``config.json`` and its newest checkpoint), then measures with :mod:`stablerank.metrics`:

* the **neural divergence** (SPEC 2): a fresh WGAN-GP critic on the test split vs fresh samples
  (:func:`stablerank.metrics.divergence.neural_divergence`), and the same protocol with real
  training images in place of samples (the real-vs-real end of the scale);
* the discriminator's **eLhist**: pairwise ratios |D(x) - D(x')| / ||x - x'|| over real-real,
  fake-fake and real-fake pairs (:func:`stablerank.metrics.lipschitz.pairwise_lipschitz`), and
  the Jacobian spectral norm at real and fake points, with D in eval mode (u, v frozen).

Writes ``gan_analysis.json`` (summaries, the raw ratios for the report's histograms, and the
protocol) and ``d_el_hist.png`` beside the trainer's files.

.. note:: The models are rebuilt with the GAN trainer's own builder
    (``stablerank.train.gan._build_models``) so that they match the checkpoint exactly; that
    function is private to the trainer, and a public ``load_gan_run`` there would be cleaner.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from stablerank.config import config_from_dict
from stablerank.config.gan import GanConfig
from stablerank.data import load_dataset
from stablerank.metrics import lipschitz
from stablerank.metrics.divergence import (
    KEY_ND,
    KEY_ND_STD,
    build_default_critic,
    neural_divergence,
)
from stablerank.metrics.features import to_signed_unit
from stablerank.repro.plan import GanEvalSettings
from stablerank.train import gan as gan_trainer
from stablerank.train.checkpoint import atomic_write_json, load_checkpoint
from stablerank.train.runtime import resolve_device

__all__ = [
    "GAN_ANALYSIS_FILE",
    "KEY_D_EL",
    "KEY_D_EL_VALUES",
    "KEY_D_JACOBIAN",
    "KEY_ND_REAL",
    "PAIR_TYPES",
    "evaluate_gan_run",
]

GAN_ANALYSIS_FILE = "gan_analysis.json"
KEY_ND_REAL = "neural_divergence_real_train"  # the same protocol, training images as "samples"
KEY_D_EL = "d_el_pairwise"
KEY_D_EL_VALUES = "d_el_values"
KEY_D_JACOBIAN = "d_jacobian_norm"
PAIR_TYPES = ("real-real", "fake-fake", "real-fake")
_JACOBIAN_POINTS = 64  # real and fake points each for the Jacobian norm
_JACOBIAN_ITERS = 10
_POOL_FACTOR = 2  # images drawn per pair type: a pool of 2 * n_pairs
_SIG_DIGITS = 6  # raw ratios are stored rounded: enough for a histogram, small files


def _load(
    run_dir: Path, device: torch.device
) -> tuple[GanConfig, Any, torch.nn.Module, torch.nn.Module, int | None]:
    cfg = config_from_dict(GanConfig, json.loads((run_dir / "config.json").read_text()))
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no step_*.pt: not a finished GAN run")
    splits = load_dataset(cfg.dataset, cfg.data_dir)
    num_classes = splits.num_classes if cfg.conditional else None
    G, D = gan_trainer._build_models(cfg, splits.in_channels, splits.image_size, num_classes)
    ckpt = load_checkpoint(checkpoints[-1], map_location="cpu")
    G.load_state_dict(ckpt["G_ema"] if cfg.ema > 0 else ckpt["G"])
    D.load_state_dict(ckpt["D"])
    G.to(device).eval()
    D.to(device).eval()
    if cfg.ema > 0:  # the trainer scores the EMA generator with standing BatchNorm statistics
        gan_trainer._refresh_bn_stats(
            G, z_dim=cfg.z_dim, num_classes=num_classes, device=device, seed=cfg.seed
        )
    return cfg, splits, G, D, num_classes


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx]


def evaluate_gan_run(
    run_dir: str | Path,
    settings: GanEvalSettings,
    *,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Neural divergence and discriminator eL of a finished GAN run; writes ``gan_analysis.json``.

    Args:
        run_dir: a folder written by :func:`stablerank.train.gan.run` (finished).
        settings: critic steps, evaluation batches, pairs per pair type, seed.
        device: where to measure (default ``auto``).
        progress: tqdm bar for the critic.

    Returns:
        The dict written to ``gan_analysis.json``.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
    """
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    cfg, splits, G, D, num_classes = _load(run_dir, dev)
    seed = cfg.seed + settings.seed
    generate = gan_trainer.make_generate(
        G, z_dim=cfg.z_dim, num_classes=num_classes, device=dev, seed=seed
    )
    nd_kwargs = dict(
        n_critic_steps=settings.nd_critic_steps,
        n_eval_batches=settings.nd_eval_batches,
        batch_size=settings.nd_batch_size,
        critic_builder=functools.partial(build_default_critic, width=settings.nd_critic_width),
        seed=seed,
        reference_split="test",
        device=dev,
        progress=progress,
    )
    nd = neural_divergence(generate, splits.test_x, **nd_kwargs)
    train_real = to_signed_unit(splits.train_x)
    cursor = {"i": 0}
    order = torch.randperm(len(train_real), generator=torch.Generator().manual_seed(seed))

    def real_train_samples(k: int) -> torch.Tensor:  # successive fresh training images
        idx = order[(torch.arange(k) + cursor["i"]) % len(order)]
        cursor["i"] += k
        return train_real[idx]

    nd_real = neural_divergence(real_train_samples, splits.test_x, **nd_kwargs)

    result: dict[str, Any] = {
        KEY_ND: nd[KEY_ND],
        KEY_ND_STD: nd[KEY_ND_STD],
        KEY_ND_REAL: nd_real[KEY_ND],
        f"{KEY_ND_REAL}_std": nd_real[KEY_ND_STD],
    }
    protocol: dict[str, Any] = {
        "neural_divergence": nd["protocol"],
        "neural_divergence_real_train": "same protocol; fresh training images of the dataset in "
        "place of generator samples (the real-vs-real end of the scale)",
        "generator": "ema (standing BatchNorm statistics)"
        if cfg.ema > 0
        else "raw, eval mode (BatchNorm running statistics)",
    }
    if num_classes is None:
        n = settings.d_el_pairs
        pool = _POOL_FACTOR * n
        real = _subset(to_signed_unit(splits.test_x), pool, seed).to(dev)
        with torch.no_grad():
            fake = generate(pool).to(dev)
        ratios = {
            "real-real": lipschitz.pairwise_lipschitz(D, real, n_pairs=n, seed=seed),
            "fake-fake": lipschitz.pairwise_lipschitz(D, fake, n_pairs=n, seed=seed),
            "real-fake": lipschitz.pairwise_lipschitz(D, real, n_pairs=n, seed=seed, x_other=fake),
        }
        jac = {
            name: lipschitz.jacobian_spectral_norm(
                D, x[:_JACOBIAN_POINTS], n_iters=_JACOBIAN_ITERS, seed=seed
            )
            for name, x in (("real", real), ("fake", fake))
        }
        result[KEY_D_EL] = {k: lipschitz.summarize(v) for k, v in ratios.items()}
        result[KEY_D_JACOBIAN] = {k: lipschitz.summarize(v) for k, v in jac.items()}
        result[KEY_D_EL_VALUES] = {
            k: [float(f"{x:.{_SIG_DIGITS}g}") for x in v.tolist()] for k, v in ratios.items()
        }
        lipschitz.plot_histogram(
            ratios, run_dir / "d_el_hist.png", title=f"discriminator eL, d_norm={cfg.d_norm}"
        )
        protocol["d_el"] = {
            "mode": "eval (SN/SRN u, v frozen)",
            "n_pairs": n,
            "pool": f"{pool} test images and {pool} fresh samples",
            "inputs": "images in [-1, 1] as D sees them",
            "jacobian_points": _JACOBIAN_POINTS,
            "jacobian_iterations": _JACOBIAN_ITERS,
        }
    else:
        protocol["d_el"] = "not measured: a conditional D needs a label per image of each pair"
    result["protocol"] = protocol
    atomic_write_json(run_dir / GAN_ANALYSIS_FILE, result)
    return result
