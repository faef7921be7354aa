"""Config of ``stablerank reproduce``: which of the paper's comparisons to run, at what scale.

One frozen dataclass, :class:`ReproduceConfig`, whose fields say *how big* each experiment is
(datasets, models, normalizations, seeds, epochs, GAN steps, sample counts); the experiments
themselves are the classification and GAN trainers, configured from their own presets
(``stablerank.config.classify.CLASSIFY_PRESETS``, ``stablerank.config.gan.GAN_PRESETS``) with the
sizes set here on top. :func:`stablerank.repro.plan.build_plan` expands a config into runs.

Presets (:data:`REPRODUCE_PRESETS`, plain dicts of overrides; ``--preset NAME``):

* ``quick``: the demo (``make demo``); fits in 15 minutes on 2 CPU cores (measured 13.2 min at a
  load of ~4, 8.7 CPU-minutes; it runs one torch thread, which is robust to other jobs). Small
  CNN at half width on 4,000 Fashion-MNIST images for 2 epochs, 2 seeds of vanilla / SN / SRN
  (c=0.3); shattering with an MLP on 1,500 random labels, 2 seeds; a 300-step SN-GAN vs SRN-GAN
  (width 16) scored with the project's own Fashion-MNIST feature network. Its numbers show the
  pipeline end to end; with 2 seeds (one for the GAN) the spread is usually too large to decide
  the paper's claims, and the report says so.
* ``standard``: overnight on 2 CPU cores (~5 h estimated) or minutes on one GPU: ResNet-20 and
  the small CNN at half width on 20,000 images for 10 epochs, 3 seeds; the issue-3 shattering
  protocol (small CNN, 2,000 random labels, 30 epochs), 3 seeds; a 2,000-step GAN, 2 seeds.
* ``paper``: the paper's setting on CIFAR-10/100 (ResNet-110, WideResNet-28-10, DenseNet-BC-100,
  VGG-19, AlexNet; SN-GAN ResNet), for GPU machines; give the dataset folder with ``data_dir``.

A value of 0 in a size field means "the trainer preset's own value" (documented per field).
A bare boolean flag means true on the command line (``--dry-run``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stablerank.config._base import check_field_ranges, config_to_dict, option

__all__ = ["ONLY_CHOICES", "REPRODUCE_PRESETS", "ReproduceConfig"]

# Kept in sync with stablerank.config.classify / .gan by a test (config modules may import only
# config._base).
_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits", "mnist1d")
_GAN_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits")
_MODELS = (
    "mlp",
    "small_cnn",
    "resnet",
    "wrn",
    "densenet_bc",
    "vgg",
    "alexnet",
    "resnet20",
    "resnet56",
    "resnet110",
    "wrn28_10",
    "densenet_bc100",
    "vgg19",
)
_NORMS = ("none", "sn", "srn")
_GAN_PRESET_NAMES = ("quick", "sngan-cnn", "sngan-resnet")
ONLY_CHOICES = ("all", "classify", "gan")


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """What ``stablerank reproduce`` runs and where it writes (see the module docstring)."""

    # --- output and control ---
    out_dir: str = option(
        "runs/reproduce", "folder of the report; run folders go to out_dir/runs/<slug>-<hash>"
    )
    only: str = option(
        "all",
        "which half to run: classification (+ shattering), GAN, or both",
        choices=ONLY_CHOICES,
    )
    dry_run: bool = option(False, "print the plan and its estimated time; run nothing")
    report_only: bool = option(
        False, "rebuild report.md from the run folders already there; train nothing"
    )
    continue_on_error: bool = option(
        True, "record a failed run (status.json, error.txt) and go on with the others"
    )
    decision_z: float = option(
        2.0,
        "claims: a mean difference within this many standard errors counts as 'cannot tell'",
        min=0.0,
        min_exclusive=True,
    )
    device: str = option(
        "auto", "device of every run ('auto' = cuda when present)", choices=("auto", "cpu", "cuda")
    )
    num_threads: int = option(0, "torch CPU threads per run (0 = torch's default)", min=0)
    nproc_per_node: int = option(
        1,
        "processes per training run: > 1 launches each training run with torchrun "
        "--standalone (DDP on this machine, e.g. one per GPU); analysis stays in this process",
        min=1,
    )
    progress: bool = option(True, "progress bars on stderr (off when not a TTY)")
    data_dir: str | None = option(
        None, "folder holding the datasets (None = each dataset's standard location)"
    )
    # --- classification, clean labels (claims 1, 3) ---
    datasets: tuple[str, ...] = option(
        ("fashion-mnist",), "datasets of the clean-label runs", choices=_DATASETS
    )
    models: tuple[str, ...] = option(("small_cnn",), "classifiers (empty: none)", choices=_MODELS)
    norms: tuple[str, ...] = option(
        ("none", "sn", "srn"), "normalizations compared (srn once per rank ratio)", choices=_NORMS
    )
    rank_ratios: tuple[float, ...] = option(
        (0.3,), "SRN rank ratios c of the classifiers", min=0.0, max=1.0, min_exclusive=True
    )
    seeds: tuple[int, ...] = option((0, 1), "seeds of the clean-label runs", min=0)
    width: float = option(1.0, "width multiplier of every classifier", min=0.0, min_exclusive=True)
    epochs: int = option(0, "epochs of the clean-label runs (0 = the model's preset)", min=0)
    train_subset: int = option(
        0, "clean-label runs train on this many images, a seeded subset (0 = all)", min=0
    )
    train_eval_size: int = option(
        10000, "training images scored each epoch for the train accuracy (0 = all)", min=0
    )
    eval_batch_size: int = option(
        0,
        "batch of the evaluation and analysis forward passes (0 = the trainers' default; "
        "small batches are faster on CPU caches)",
        min=0,
    )
    normalize_head: bool = option(False, "also normalize the final linear layer of classifiers")
    # --- analysis of every classifier run (claims 1, 3; SPEC 2) ---
    n_pairs: int = option(2000, "pairs per split of the pairwise eL histogram", min=1)
    n_jacobian: int = option(100, "points per split of the Jacobian spectral norm", min=1)
    n_interpolated: int = option(100, "interpolated points of the Jacobian norm", min=0)
    n_margin: int = option(
        0, "training images scored for the margins (0 = all the run trained on)", min=0
    )
    jacobian_iterations: int = option(20, "power iterations per Jacobian norm", min=1)
    # --- shattering: random labels (claim 2) ---
    shatter_models: tuple[str, ...] = option(
        ("small_cnn",),
        "classifiers trained on random labels (empty: no shattering)",
        choices=_MODELS,
    )
    shatter_dataset: str = option(
        "fashion-mnist", "dataset of the shattering runs", choices=_DATASETS
    )
    shatter_seeds: tuple[int, ...] = option((0,), "seeds of the shattering runs", min=0)
    shatter_subset: int = option(2000, "training images with random labels (0 = all)", min=0)
    shatter_epochs: int = option(60, "epochs of the shattering runs", min=1)
    shatter_label_noise: float = option(
        1.0,
        "fraction of random labels in the shattering runs",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    shatter_lr: float = option(
        0.0, "constant lr of the shattering runs (0 = the preset's)", min=0.0
    )
    shatter_width: float = option(
        0.0, "width multiplier of the shattering models (0 = width)", min=0.0
    )
    # --- GAN (claims 4, 5) ---
    gan_dataset: str = option("fashion-mnist", "GAN training images", choices=_GAN_DATASETS)
    gan_preset: str = option(
        "quick", "GAN trainer preset (architecture and optimizer)", choices=_GAN_PRESET_NAMES
    )
    gan_norms: tuple[str, ...] = option(
        ("sn", "srn"), "discriminator normalizations compared", choices=_NORMS
    )
    gan_rank_ratios: tuple[float, ...] = option(
        (0.7,), "SRN rank ratios c of the discriminator", min=0.0, max=1.0, min_exclusive=True
    )
    gan_seeds: tuple[int, ...] = option((0,), "seeds of the GAN runs", min=0)
    gan_steps: int = option(0, "generator updates (0 = the GAN preset's)", min=0)
    gan_width: int = option(0, "ngf = ndf of G and D (0 = the GAN preset's)", min=0)
    gan_n_samples: int = option(
        -1,
        "generated samples of the final FID/KID/IS (-1 = the GAN preset's; 0 = skip them)",
        min=-1,
    )
    gan_eval_points: int = option(
        4, "FID/KID/IS evaluations during training (FID-over-training curve; 0 = none)", min=0
    )
    gan_eval_samples: int = option(1000, "samples per evaluation during training", min=2)
    gan_ema: float = option(-1.0, "EMA decay of G for samples and metrics (-1 = the preset's)")
    gan_feature_net: str = option("auto", "feature network of FID/KID/IS (auto = dataset default)")
    gan_feature_weights: str | None = option(None, "weights file of the feature network")
    nd_critic_steps: int = option(500, "neural divergence: critic updates per GAN run", min=1)
    nd_critic_width: int = option(
        64,
        "neural divergence: channels of the fresh critic's first conv (WGAN-GP DCGAN-like)",
        min=1,
    )
    nd_batch_size: int = option(64, "neural divergence: real and fake images per step", min=2)
    nd_eval_batches: int = option(10, "neural divergence: fresh evaluation batches", min=1)
    d_el_pairs: int = option(1000, "discriminator eLhist: pairs per pair type", min=1)

    def __post_init__(self) -> None:
        check_field_ranges(self)
        if self.gan_ema != -1.0 and not 0.0 <= self.gan_ema < 1.0:
            raise ValueError(f"gan_ema must be -1 (preset) or in [0, 1), got {self.gan_ema!r}")
        if "srn" in self.norms and not self.rank_ratios:
            raise ValueError("norms includes 'srn' but rank_ratios is empty")
        if "srn" in self.gan_norms and not self.gan_rank_ratios:
            raise ValueError("gan_norms includes 'srn' but gan_rank_ratios is empty")
        if self.dry_run and self.report_only:
            raise ValueError("dry_run and report_only exclude each other; pick one")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# Each preset lists only what it changes from the defaults above. Sizes only: what the trainers
# compute is fixed by their own presets (optimizer, schedule, losses). The times are those of
# `stablerank reproduce --preset NAME --dry-run true` (stablerank.repro.estimate) and, for quick,
# measured (see the module docstring of stablerank.repro.pipeline).
REPRODUCE_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # The demo (`make demo`): at most 15 minutes on 2 CPU cores.
        "quick": MappingProxyType(
            {
                "out_dir": "runs/reproduce-quick",
                # One torch thread: on a shared 2-core machine two threads spin against other
                # jobs (measured ~3x the CPU time per run at a load of 4-5); on an idle one
                # `--num-threads 0` (torch's default) may be faster.
                "num_threads": 1,
                # Clean labels: small CNN at half width, 4,000 images, 2 epochs, 2 seeds.
                "datasets": ("fashion-mnist",),
                "models": ("small_cnn",),
                "width": 0.5,
                "norms": ("none", "sn", "srn"),
                "rank_ratios": (0.3,),
                "seeds": (0, 1),
                "epochs": 2,
                "train_subset": 4000,
                "train_eval_size": 1000,
                "eval_batch_size": 100,
                "n_pairs": 300,
                "n_jacobian": 16,
                "n_interpolated": 16,
                "jacobian_iterations": 5,
                "n_margin": 1000,
                # Shattering: an MLP memorizes 1,500 random labels within 30 cheap epochs (the
                # small CNN's per-epoch pass over the test split would not fit the budget).
                "shatter_models": ("mlp",),
                "shatter_width": 1.0,
                "shatter_seeds": (0, 1),
                "shatter_subset": 1500,
                "shatter_epochs": 30,
                "shatter_lr": 0.05,
                # GAN: the standard CNN at width 16, 300 generator steps, one seed.
                "gan_preset": "quick",
                "gan_norms": ("sn", "srn"),
                "gan_rank_ratios": (0.7,),
                "gan_seeds": (0,),
                "gan_steps": 300,
                "gan_width": 16,
                "gan_n_samples": 500,
                "gan_eval_points": 3,
                "gan_eval_samples": 250,
                "nd_critic_steps": 100,
                "nd_critic_width": 16,
                "nd_eval_batches": 5,
                "d_el_pairs": 300,
            }
        ),
        # Overnight on 2 CPU cores (~5 h estimated), minutes on one GPU: both classifiers at half
        # width on 20,000 images for 10 epochs, 3 seeds; the issue-3 shattering protocol (small
        # CNN, 2,000 random labels); a 2,000-step GAN at width 32, 2 seeds.
        "standard": MappingProxyType(
            {
                "out_dir": "runs/reproduce-standard",
                "datasets": ("fashion-mnist",),
                "models": ("small_cnn", "resnet20"),
                "width": 0.5,
                "norms": ("none", "sn", "srn"),
                "rank_ratios": (0.3,),
                "seeds": (0, 1, 2),
                "epochs": 10,
                "train_subset": 20000,
                "train_eval_size": 5000,
                "eval_batch_size": 100,
                "n_margin": 5000,
                "shatter_models": ("small_cnn",),
                "shatter_width": 1.0,
                "shatter_seeds": (0, 1, 2),
                "shatter_subset": 2000,
                "shatter_epochs": 30,
                "gan_preset": "quick",
                "gan_norms": ("sn", "srn"),
                "gan_rank_ratios": (0.7,),
                "gan_seeds": (0, 1),
                "gan_steps": 2000,
                "gan_width": 32,
                "gan_n_samples": 5000,
                "gan_eval_points": 5,
                "gan_eval_samples": 1000,
                "nd_critic_steps": 500,
                "nd_critic_width": 32,
                "d_el_pairs": 1000,
            }
        ),
        # The paper (CIFAR-10/100, full-size models and schedules, SN-GAN ResNet): GPU machines,
        # each run launched with torchrun through --nproc-per-node. Give the datasets with
        # --data-dir and the Inception weights with --gan-feature-weights.
        "paper": MappingProxyType(
            {
                "out_dir": "runs/reproduce-paper",
                "datasets": ("cifar10", "cifar100"),
                "models": ("resnet110", "wrn28_10", "densenet_bc100", "vgg19", "alexnet"),
                "norms": ("none", "sn", "srn"),
                "rank_ratios": (0.3, 0.5),
                "seeds": (0, 1, 2),
                "epochs": 0,
                "train_subset": 0,
                "train_eval_size": 10000,
                "shatter_models": ("resnet110", "alexnet"),
                "shatter_dataset": "cifar10",
                "shatter_seeds": (0,),
                "shatter_subset": 0,
                "shatter_epochs": 200,
                "gan_dataset": "cifar10",
                "gan_preset": "sngan-resnet",
                "gan_norms": ("sn", "srn"),
                "gan_rank_ratios": (0.5, 0.7, 0.9),
                "gan_seeds": (0, 1, 2),
                "gan_steps": 0,
                "gan_width": 0,
                "gan_n_samples": 50000,
                "gan_eval_points": 10,
                "gan_eval_samples": 10000,
                "nd_critic_steps": 10000,
                "gan_feature_net": "inception-v3",
            }
        ),
    }
)
