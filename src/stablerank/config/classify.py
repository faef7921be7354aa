"""Configs of the classification experiments: :class:`ClassifyConfig` (``stablerank train``) and
:class:`AnalyzeConfig` (``stablerank analyze``, the post-hoc measures of docs/math.md §2).

Named presets (:data:`CLASSIFY_PRESETS`) hold values that replace the defaults; apply one with
:func:`classify_preset`. Cross-field rules are checked in ``__post_init__``; fields that
do not apply are ignored, not errors: ``rank_ratio`` unless ``norm="srn"``, ``n_power_iterations``
with ``norm="none"``, ``momentum`` with Adam, ``amp`` on the CPU, ``channels_last`` for 1-D data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from stablerank.config._base import (
    ANALYSIS_DATA_DIR_HELP,
    DETERMINISTIC_HELP,
    RUNTIME_KEYS,
    check_config,
    config_from_dict,
    option,
)

__all__ = [
    "AUGMENTS",
    "CLASSIFY_PRESETS",
    "DATASETS",
    "MODELS",
    "NORMS",
    "AnalyzeConfig",
    "ClassifyConfig",
    "classify_preset",
]

# Names must match stablerank.data.load_dataset and stablerank.models.build_classifier; config may
# not import those packages (import rules), so a test checks the lists against them.
DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits", "mnist1d")
MODELS = (
    "mlp", "small_cnn", "resnet", "wrn", "densenet_bc", "vgg", "alexnet", "resnet20", "resnet56",
    "resnet110", "wrn28_10", "densenet_bc100", "vgg19",
)  # fmt: skip
NORMS = ("none", "sn", "srn")
AUGMENTS = ("none", "crop", "crop_flip", "auto")
# What augment="auto" means per dataset: the standard recipe (crop+flip for CIFAR, crop only for
# Fashion-MNIST, whose classes are not all mirror symmetric in the usual protocol), none for the
# tiny sets (8x8 digits, 1-D signals).
AUTO_AUGMENT = MappingProxyType(
    {"fashion-mnist": "crop", "cifar10": "crop_flip", "cifar100": "crop_flip", "digits": "none",
     "mnist1d": "none"}
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    """One classification run: vanilla vs SN vs SRN on one dataset/model/seed."""

    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = RUNTIME_KEYS  # config._base's
    SCORING_KEYS: ClassVar[tuple[str, ...]] = ()  # as GanConfig's: none here

    # --- data ---
    dataset: str = option("fashion-mnist", "dataset name", choices=DATASETS)
    data_dir: str | None = option(
        None, "folder holding the dataset files (None = the dataset's standard location)"
    )
    augment: str = option(
        "auto", "training augmentation, batched on the device ('auto' = the dataset's default, "
        "and none with label noise, which refuses crop and crop_flip)",
        choices=AUGMENTS,
    )  # fmt: skip
    label_noise: float = option(
        0.0, "fraction of training labels replaced by fixed random labels (shattering); above "
        "0, augment 'auto' means none",
        min=0.0, max=1.0,
    )  # fmt: skip
    train_subset: int = option(0, "train on this many images, a seeded subset (0 = all)", min=0)
    train_eval_size: int = option(
        10000, "training images (fixed seeded subset) scored in eval mode each epoch for the "
        "train accuracy / generalization gap (0 = the whole training set)", min=0,
    )  # fmt: skip
    test_eval_size: int = option(
        0, "test images (fixed seeded subset) scored each epoch for the logged curves; "
        "metrics.json always scores the whole test split (0 = whole split every epoch)", min=0,
    )  # fmt: skip
    # --- model ---
    model: str = option("small_cnn", "classifier architecture", choices=MODELS)
    depth: int = option(
        0, "depth of a family name (resnet, wrn, densenet_bc, vgg); 0 = the family's default or "
        "the depth a fixed name (resnet20, ...) pins", min=0,
    )  # fmt: skip
    width: float = option(
        1.0, "width multiplier of the architecture's channels / units", min=0.0, min_exclusive=True
    )
    # --- normalization ---
    norm: str = option("none", "weight normalization of every conv/linear layer", choices=NORMS)
    # The library's default c (stablerank.srn.DEFAULT_RANK_RATIO; a test keeps them equal).
    rank_ratio: float = option(
        0.1, "SRN target stable rank as a fraction c of min(m, n) of each reshaped weight",
        min=0.0, max=1.0, min_exclusive=True,
    )  # fmt: skip
    n_power_iterations: int = option(1, "power iterations per training forward (sn and srn)", min=1)
    head: str = option(
        "none",
        "normalization of the classifier head (the final Linear): none, or sn (SRN's "
        "rank on a 10-class head is 1-3, so the head is never SRN-normalized)",
        choices=("none", "sn"),
    )
    # --- optimization ---
    epochs: int = option(10, "training epochs", min=1)
    batch_size: int = option(128, "global batch size (split evenly across DDP ranks)", min=1)
    eval_batch_size: int = option(1000, "batch size of the evaluation passes (per rank)", min=1)
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adam"))
    lr: float = option(0.05, "peak learning rate", min=0.0, min_exclusive=True)
    momentum: float = option(0.9, "SGD momentum (ignored by adam)", min=0.0, max=1.0)
    nesterov: bool = option(True, "Nesterov momentum (sgd)")
    weight_decay: float = option(
        5e-4, "L2 weight decay (coupled, as in torch.optim) on every parameter: biases, BatchNorm "
        "and the raw weights under SN/SRN too", min=0.0,
    )  # fmt: skip
    schedule: str = option(
        "cosine", "lr schedule over all training steps", choices=("step", "cosine", "none")
    )
    milestones: tuple[float, ...] = option(
        (0.5, 0.75), "step schedule: fractions of the run where lr is multiplied by lr_gamma",
        min=0.0, max=1.0,
    )  # fmt: skip
    lr_gamma: float = option(0.1, "step schedule: lr factor at each milestone", min=0.0, max=1.0)
    warmup_epochs: float = option(0.0, "linear lr warm-up from 0, in epochs", min=0.0)
    # --- runtime ---
    seed: int = option(
        0, "seed of init, data order, subset, random labels, augmentation", min=0, max=2**31 - 1
    )
    device: str = option("auto", "device: auto (cuda when present), cpu, mps, cuda or cuda:N")
    amp: bool = option(True, "bfloat16 autocast on CUDA (ignored on the CPU)")
    channels_last: bool = option(
        True, "channels_last memory format for 4-D image tensors (CUDA, and oneDNN on the CPU)",
    )  # fmt: skip
    compile: bool = option(False, "torch.compile the model")
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    # --- output ---
    log_layers: bool = option(True, "log every layer's spectral norm and stable rank each epoch")
    out_dir: str = option("runs", "parent folder of run folders")
    run_name: str | None = option(
        None,
        "run folder name inside out_dir (None = <dataset>-<model>-<norm>-s<seed>-<hash>, norm "
        "none, sn or srn<c>)",
    )
    overwrite: bool = option(
        False, "start afresh in a run folder that holds another run's results (they are lost)"
    )
    resume: bool = option(
        False, "continue from the newest intact checkpoint of the run folder (config must match)"
    )
    progress: bool = option(
        True, "progress on stderr: a tqdm bar on a terminal, else a plain line every 10 s"
    )

    def __post_init__(self) -> None:
        check_config(self)
        # Augmenting an image whose label is random would change the task being memorized.
        if self.label_noise > 0 and self.augment not in ("none", "auto"):
            raise ValueError(
                f"label_noise={self.label_noise} (random labels) requires augment 'none' or "
                f"'auto', got augment={self.augment!r}"
            )
        if self.schedule == "step":
            ms = self.milestones
            if not ms or any(not 0.0 < m < 1.0 for m in ms) or list(ms) != sorted(set(ms)):
                raise ValueError(
                    "schedule='step' needs milestones strictly increasing in (0, 1), "
                    f"got milestones={ms!r}"
                )
        if self.train_subset and self.batch_size > self.train_subset:
            # drop_last: an epoch of a subset smaller than one batch would have no step at all.
            raise ValueError(
                f"batch_size ({self.batch_size}) must be <= train_subset ({self.train_subset})"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs must be < epochs={self.epochs}, got {self.warmup_epochs}"
            )

    def unused(self) -> dict[str, str]:
        """The fields that the other values leave unread, each with why: still part of the run
        folder's hash, so that a CLI user who set one is told (the device-dependent ``amp`` and
        ``channels_last`` are left out)."""
        rules = {
            "rank_ratio": (self.norm != "srn", f"norm={self.norm!r}: only SRN reads it"),
            "n_power_iterations": (self.norm == "none", "norm='none': no SN or SRN"),
            "momentum": (self.optimizer == "adam", "optimizer='adam'"),
            "nesterov": (self.optimizer == "adam" or not self.momentum, "no SGD momentum"),
            "head": (self.norm == "none", "norm='none': no layer is normalized"),
            "milestones": (self.schedule != "step", f"schedule={self.schedule!r}"),
            "lr_gamma": (self.schedule != "step", f"schedule={self.schedule!r}"),
        }
        return {key: why for key, (unread, why) in rules.items() if unread}

    @property
    def run_label(self) -> str:
        """The readable start of the run folder's default name."""
        norm = f"srn{self.rank_ratio:g}" if self.norm == "srn" else self.norm
        return f"{self.dataset}-{self.model}-{norm}"

    @property
    def resolved_augment(self) -> str:
        """The augmentation actually used ('auto' resolved; always 'none' with random labels)."""
        if self.augment != "auto":
            return self.augment
        return "none" if self.label_noise > 0 else AUTO_AUGMENT[self.dataset]


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """Post-hoc measures of a trained run (docs/math.md §2), all computed in eval mode."""

    n_pairs: int = option(2000, "sampled pairs per split for the pairwise eL histogram", min=1)
    n_jacobian: int = option(
        100, "data points (per split) where the Jacobian spectral norm is estimated", min=1
    )
    n_interpolated: int = option(
        100, "points on segments between random data pairs for the Jacobian norm", min=0
    )
    jacobian_iterations: int = option(
        20, "power iterations (JVP/VJP pairs) per Jacobian spectral norm, which approach it from "
        "below; 0 = exact: the whole Jacobian's largest singular value (one VJP per class; "
        "cheaper than power iteration for few classes)", min=0,
    )  # fmt: skip
    n_margin: int = option(
        0, "training images scored for the margins, and for the train accuracy, loss and gaps of "
        "analysis.json (0 = all the run trained on)", min=0,
    )  # fmt: skip
    margin_quantile: float = option(
        0.1, "margin quantile used by the Neyshabur/Bartlett measures (paper: 10th percentile)",
        min=0.0, max=1.0, min_exclusive=True,
    )  # fmt: skip
    quantiles: tuple[float, ...] = option(
        (0.5, 0.9, 0.99), "quantiles reported for eL and Jacobian norms", min=0.0, max=1.0
    )
    bins: int = option(50, "histogram bins of the eL plot", min=1)
    batch_size: int = option(500, "batch size of the forward passes", min=1)
    seed: int = option(0, "seed of the sampled pairs and points", min=0, max=2**31 - 1)
    device: str = option("auto", "device: auto (cuda when present), cpu, mps, cuda or cuda:N")
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    deterministic: bool = option(False, DETERMINISTIC_HELP, omit_default=True)
    plots: bool = option(True, "write PNG plots next to analysis.json")
    data_dir: str | None = option(None, ANALYSIS_DATA_DIR_HELP, omit_default=True)

    def __post_init__(self) -> None:
        check_config(self)


# Each preset: values that replace ClassifyConfig's defaults (some restate one, to read whole).
CLASSIFY_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # Small CNN (with BatchNorm), 10 epochs: its accuracy is in docs/acceptance.md.
    "fmnist-cnn": MappingProxyType({
        "dataset": "fashion-mnist", "model": "small_cnn", "epochs": 10, "batch_size": 128,
        "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine",
    }),
    # ResNet-20, 15 epochs: its accuracy is in docs/acceptance.md.
    "fmnist-resnet20": MappingProxyType({
        "dataset": "fashion-mnist", "model": "resnet20", "epochs": 15, "batch_size": 128,
        "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine",
    }),
    # Shattering (Zhang et al. 2017; docs/math.md §2.3): train accuracy vs epoch on fixed random
    # labels; 30 epochs leave room for seeds slower than seed 0 (docs/reproduction.md).
    "shatter": MappingProxyType({
        "dataset": "fashion-mnist", "model": "small_cnn", "label_noise": 1.0,
        "train_subset": 2000, "train_eval_size": 0, "test_eval_size": 2000, "augment": "none",
        "weight_decay": 0.0,
        "optimizer": "sgd", "lr": 0.01, "schedule": "none", "epochs": 30, "batch_size": 128,
    }),
    # CIFAR-10 with the paper's architectures, all under one recipe (SGD 0.1, momentum 0.9, 200
    # epochs, lr /10 at 50% and 75%; weight decay 1e-4 for ResNet/DenseNet, 5e-4 otherwise), not
    # each family's published one (no ResNet-110 warm-up, no Nesterov, WRN without dropout,
    # AlexNet at 10x Zhang et al.'s lr and without their 28 px crops). GPU-scale; use
    # --dataset cifar100 for CIFAR-100.
    **{
        f"cifar10-{model}": MappingProxyType({
            "dataset": "cifar10", "model": model, "epochs": 200, "batch_size": 128,
            "optimizer": "sgd", "lr": 0.1, "weight_decay": wd, "schedule": "step",
            "nesterov": False, "eval_batch_size": 500,
        })
        for model, wd in (("resnet110", 1e-4), ("wrn28_10", 5e-4), ("densenet_bc100", 1e-4),
                          ("vgg19", 5e-4), ("alexnet", 5e-4))
    },
    # Seconds-long smoke run (8x8 digits, MLP) for demos and tests.
    "tiny": MappingProxyType({
        "dataset": "digits", "model": "mlp", "width": 0.25, "epochs": 2, "batch_size": 64,
        "lr": 0.05, "train_eval_size": 0,
    }),
})  # fmt: skip


def classify_preset(name: str, **overrides: Any) -> ClassifyConfig:
    """The preset ``name`` with ``overrides`` on top, validated like a YAML/CLI config.

    Raises:
        ValueError: unknown preset (the message lists the names) or invalid override.
    """
    if name not in CLASSIFY_PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(CLASSIFY_PRESETS)}")
    return config_from_dict(ClassifyConfig, {**CLASSIFY_PRESETS[name], **overrides})
