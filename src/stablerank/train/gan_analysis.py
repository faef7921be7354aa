"""Post-training measures of a GAN run that the GAN trainer does not write (claims 4 and 5).

:func:`run` restores a finished run folder of :func:`stablerank.train.gan.run` with
:func:`stablerank.train.gan_models.load_gan_run` (its final checkpoint; G and D exactly as the
trainer samples and scores with them), then measures with :mod:`stablerank.metrics`:

* the **neural divergence** (docs/math.md §2.5): a fresh WGAN-GP critic on the test split vs
  fresh samples (:func:`stablerank.metrics.divergence.neural_divergence`), and the same protocol
  with real training images in place of samples (the real-vs-real end of the scale);
* the discriminator's **eLhist**: pairwise ratios |D(x) - D(x')| / ||x - x'|| over real-real,
  fake-fake and real-fake pairs (:func:`stablerank.metrics.lipschitz.pairwise_lipschitz`), and
  the Jacobian spectral norm at real and fake points, with D in eval mode (u, v frozen). For a
  conditional (projection) D the map measured is x -> D(x, y) with the class held fixed: both
  points of a pair take the first point's label (a real image's test label, or the label a fake
  was generated with), and the Jacobian at a point uses that point's label (recorded in the
  protocol).

Writes ``gan_analysis.json`` (a :class:`stablerank.train.results.GanAnalysis`: summaries, the raw
ratios for the report's histograms, and the protocol) and ``d_el_hist.png`` beside the trainer's
files.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from stablerank._optional import import_optional
from stablerank.config import config_to_dict
from stablerank.config.gan import GanAnalysisConfig
from stablerank.data import DatasetSplits, load_dataset
from stablerank.metrics import lipschitz
from stablerank.metrics.divergence import (
    KEY_ND,
    KEY_ND_STD,
    KEY_PROTOCOL,
    NeuralDivergenceProtocol,
    build_default_critic,
    neural_divergence,
)
from stablerank.metrics.features import to_signed_unit
from stablerank.train.gan_models import load_gan_run
from stablerank.train.gan_sampling import make_generate
from stablerank.train.results import (
    DElProtocol,
    GanAnalysis,
    GanAnalysisProtocol,
    GanResult,
    Summary,
)
from stablerank.train.rundir import RunDir
from stablerank.train.runtime import apply_runtime, resolve_device

PAIR_TYPES = ("real-real", "fake-fake", "real-fake")
_JACOBIAN_POINTS = 64  # real and fake points each for the Jacobian norm
_JACOBIAN_ITERS = 10
_POOL_FACTOR = 2  # images drawn per pair type: a pool of 2 * n_pairs
_SIG_DIGITS = 6  # raw ratios are stored rounded: enough for a histogram, small files
# How a conditional D's eL holds the class fixed (recorded in the protocol).
_CONDITIONAL_LABELS = (
    "x -> D(x, y) with y fixed per pair: both points of a pair take the first point's label "
    "(real-real and real-fake: the real image's test label; fake-fake: the label the first fake "
    "was generated with); the Jacobian at a point uses that point's label"
)


def _subset_indices(n_total: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def run(settings: GanAnalysisConfig, run_dir: str | Path) -> GanAnalysis:
    """Neural divergence and discriminator eL of a finished GAN run; writes ``gan_analysis.json``.

    Args:
        settings: critic steps, evaluation batches, pairs per pair type, seed, device.
        run_dir: a folder written by :func:`stablerank.train.gan.run` (finished).

    Returns:
        The :class:`stablerank.train.results.GanAnalysis` written to ``gan_analysis.json``.

    Raises:
        FileNotFoundError: ``run_dir`` or its final checkpoint does not exist.
        CorruptCheckpointError: the final checkpoint is corrupt (an older one is not read).
        ValueError: its training has not finished, or diverged.
    """
    apply_runtime(settings)
    # Its plots need matplotlib (the experiments extra): say so before the measurements.
    import_optional("matplotlib.figure", "the analysis")
    run_dir = Path(run_dir)
    dev = resolve_device(settings.device)
    trained = RunDir(run_dir).trained_result(GanResult)
    # The final step's checkpoint, which the run's scores are of: an older one (the fallback for
    # a corrupt newest one) is a partial model.
    run = load_gan_run(run_dir, device=dev, checkpoint=trained.steps)
    print(f"gan analysis of {run_dir}: neural divergence ({settings.nd_critic_steps} critic "
          f"steps, twice), discriminator eL ({settings.d_el_pairs} pairs per pair type)",
          file=sys.stderr, flush=True)  # fmt: skip
    cfg, G, D, num_classes = run.config, run.G, run.D, run.num_classes
    splits = load_dataset(cfg.dataset, settings.data_dir or cfg.data_dir)
    seed = cfg.seed + settings.seed
    generate_labelled = make_generate(
        G, z_dim=cfg.z_dim, num_classes=num_classes, device=dev, seed=seed, with_labels=True
    )

    def generate(k: int) -> torch.Tensor:  # the same stream, images only
        return generate_labelled(k)[0]

    nd_kwargs = dict(
        n_critic_steps=settings.nd_critic_steps,
        n_eval_batches=settings.nd_eval_batches,
        batch_size=settings.nd_batch_size,
        critic_builder=functools.partial(build_default_critic, width=settings.nd_critic_width),
        seed=seed,
        reference_split="test",
        device=dev,
        progress=settings.progress,
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

    ratios, jac, d_el = _discriminator_el(
        D, splits, generate_labelled, n_pairs=settings.d_el_pairs, seed=seed, device=dev,
        conditional=num_classes is not None,
    )  # fmt: skip
    protocol = GanAnalysisProtocol(
        neural_divergence=NeuralDivergenceProtocol(**nd[KEY_PROTOCOL]),
        neural_divergence_real_train="same protocol; fresh training images of the dataset in "
        "place of generator samples (the real-vs-real end of the scale)",
        neural_divergence_real_train_std=nd_real[KEY_ND_STD],
        generator="ema (standing BatchNorm statistics)"
        if run.ema
        else "raw, eval mode (BatchNorm running statistics)",
        checkpoint_step=run.step,
        d_el=d_el,
    )
    result = GanAnalysis(
        neural_divergence=nd[KEY_ND],
        neural_divergence_std=nd[KEY_ND_STD],
        neural_divergence_real_train=nd_real[KEY_ND],
        d_el={k: Summary.of(lipschitz.summarize(v)) for k, v in ratios.items()},
        d_jacobian={k: Summary.of(lipschitz.summarize(v)) for k, v in jac.items()},
        d_el_values={
            k: tuple(float(f"{x:.{_SIG_DIGITS}g}") for x in v.tolist()) for k, v in ratios.items()
        },
        protocol=protocol,
        settings=config_to_dict(settings),
    )
    c = f" (c={cfg.rank_ratio:g})" if cfg.d_norm == "srn" else ""
    lipschitz.plot_histogram(
        ratios, run_dir / "d_el_hist.png", title=f"discriminator eL, d_norm={cfg.d_norm}{c}"
    )
    path = result.to_json(run_dir)
    print(f"gan analysis: {result.summary()}; wrote {path}", file=sys.stderr, flush=True)
    return result


def _discriminator_el(
    D: torch.nn.Module,
    splits: DatasetSplits,
    generate_labelled: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    n_pairs: int,
    seed: int,
    device: torch.device,
    conditional: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], DElProtocol]:
    """D's pairwise ratios per pair type, Jacobian norms at real and fake points, and their
    protocol. A conditional D is measured as x -> D(x, y), the label of a pair's first point
    held for both (``pairwise_lipschitz(..., y=)``)."""
    pool = _POOL_FACTOR * n_pairs
    idx = _subset_indices(len(splits.test_x), pool, seed)
    real = to_signed_unit(splits.test_x[idx]).to(device)
    y_real = splits.test_y[idx].to(device) if conditional else None
    fake, y_fake = generate_labelled(pool)  # make_generate's callable runs without gradients
    fake = fake.to(device)
    y_fake = y_fake.to(device) if y_fake is not None else None
    el = functools.partial(lipschitz.pairwise_lipschitz, D, n_pairs=n_pairs, seed=seed)
    ratios = {
        "real-real": el(real, y=y_real),
        "fake-fake": el(fake, y=y_fake),
        "real-fake": el(real, y=y_real, x_other=fake),
    }
    k = _JACOBIAN_POINTS
    jac = {
        name: lipschitz.jacobian_spectral_norm(
            D, x[:k], n_iters=_JACOBIAN_ITERS, seed=seed, y=None if y is None else y[:k]
        )
        for name, x, y in (("real", real, y_real), ("fake", fake, y_fake))
    }
    protocol = DElProtocol(
        mode="eval (SN/SRN u, v frozen)",
        n_pairs=n_pairs,
        pool=f"{len(real)} test images and {pool} fresh samples",  # fewer from a small split
        inputs="images in [-1, 1] as D sees them",
        jacobian_points=min(k, len(real)),  # real and fake each (fewer when the pool is)
        jacobian_iterations=_JACOBIAN_ITERS,
        labels=_CONDITIONAL_LABELS if conditional else None,
    )
    return ratios, jac, protocol
