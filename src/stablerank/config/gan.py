"""The GAN experiment's config (``stablerank gan``): one frozen dataclass plus named presets.

Defaults are the SN-GAN "standard CNN" settings (Miyato et al. 2018); :data:`GAN_PRESETS` holds
the named settings as plain dicts of overrides, applied before a YAML file and CLI flags. Steps
are counted in **generator** updates (each preceded by ``n_dis`` discriminator updates), as in
SN-GAN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from stablerank.config._base import (
    ANALYSIS_DATA_DIR_HELP,
    DETERMINISTIC_HELP,
    RUNTIME_KEYS,
    check_config,
    option,
)

__all__ = ["GAN_PRESETS", "GanAnalysisConfig", "GanConfig"]

# The image datasets of stablerank.data.load_dataset (config may not import data; kept in sync by
# a test). "digits" (8x8) is there for fast smoke runs.
_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits")

# The offline feature network of FID/KID/IS per dataset (feature_net="auto").
_DEFAULT_FEATURE_NETS = {"fashion-mnist": "fmnist-cnn"}


@dataclass(frozen=True)
class GanConfig:
    """Everything one GAN run depends on (the run folder's ``config.json``)."""

    # config._base's, and how the run is watched and scored (evaluation and sampling draw from
    # their own RNG streams, so they never alter training).
    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = (
        *RUNTIME_KEYS, "log_every", "sample_every", "eval_every", "n_eval_samples",
        "n_final_samples", "feature_net", "feature_weights", "checkpoint_every", "keep_checkpoints",
    )  # fmt: skip
    # Runtime keys of the final scoring: a finished run resumed with other values is scored again
    # (its result holds them), not returned as it is.
    SCORING_KEYS: ClassVar[tuple[str, ...]] = ("n_final_samples", "feature_net", "feature_weights")

    # --- data ---
    dataset: str = option(
        "fashion-mnist", "training images (the test split is the FID reference)", choices=_DATASETS
    )
    data_dir: str | None = option(
        None, "folder holding the dataset files (None = the dataset's standard location)"
    )
    # --- models ---
    arch: str = option(
        "cnn", "SN-GAN family: standard CNN (DCGAN-like) or ResNet", choices=("cnn", "resnet")
    )
    conditional: bool = option(
        False, "class-conditional GAN: conditional BatchNorm in G, projection discriminator"
    )
    z_dim: int = option(128, "latent dimension (z ~ N(0, I))", min=1, max=4096)
    ngf: int = option(64, "generator base width (SN-GAN: 64 cnn, 256 resnet)", min=1, max=2048)
    ndf: int = option(64, "discriminator base width (SN-GAN: 64 cnn, 128 resnet)", min=1, max=2048)
    # --- normalization ---
    d_norm: str = option(
        "sn", "weight normalization of every D conv/linear layer", choices=("none", "sn", "srn")
    )
    g_norm: str = option(
        "none", "weight normalization of every G conv/linear layer", choices=("none", "sn")
    )
    # The library's default c (stablerank.srn.DEFAULT_RANK_RATIO; a test keeps them equal).
    rank_ratio: float = option(
        0.1,
        "SRN target stable rank as a fraction c of min(m, n) of each "
        "reshaped weight (d_norm=srn only)",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    n_power_iterations: int = option(1, "power iterations per training forward (sn and srn)", min=1)
    d_first_norm: str = option(
        "same",
        "D's first layers, those that read the image (cnn: the first conv; resnet: the first "
        "block's conv1 and shortcut): 'same' normalization as the others, or 'sn' (differs with "
        "d_norm=srn only: SRN on the others; at a small rank_ratio their target may be 1, a "
        "rank-one layer)",
        choices=("same", "sn"),
        omit_default=True,
    )
    d_norm_embedding: bool = option(
        False,
        "also normalize the projection embedding (Miyato & Koyama 2018 do), with d_norm; "
        "conditional only (with d_norm=srn and few classes the target may be 1: a rank-one "
        "embedding whose weight no longer learns)",
    )
    # --- objective and optimisation ---
    loss: str = option("hinge", "GAN loss: hinge or non-saturating (ns)", choices=("hinge", "ns"))
    g_steps: int = option(100_000, "generator updates", min=1)
    n_dis: int = option(1, "discriminator updates per generator update", min=1, max=100)
    batch_size: int = option(
        64, "samples per update, over all ranks (real and fake each)", min=2, max=65536
    )
    lr_g: float = option(1e-4, "Adam learning rate of G", min=0.0, max=1.0, min_exclusive=True)
    lr_d: float = option(1e-4, "Adam learning rate of D", min=0.0, max=1.0, min_exclusive=True)
    # Adam divides by 1 - beta**t: 0 at beta = 1.
    beta1: float = option(0.5, "Adam beta1", min=0.0, max=1.0, max_exclusive=True)
    beta2: float = option(0.999, "Adam beta2", min=0.0, max=1.0, max_exclusive=True)
    lr_decay: str = option(
        "none",
        "learning-rate schedule over g_steps: constant or linear decay to 0 (both G and D)",
        choices=("none", "linear"),
    )
    ema: float = option(
        0.0,
        "EMA decay of a generator copy used for samples and metrics, started from G's initial "
        "weights (after T steps they still weigh decay**T); 0 = off",
        min=0.0,
        max=1.0,
        max_exclusive=True,
    )
    # --- monitoring ---
    log_every: int = option(50, "log losses every this many G steps", min=1)
    sample_every: int = option(
        1000, "save a sample grid every this many G steps; 0 = only at the end", min=0
    )
    eval_every: int = option(
        0, "FID/KID/IS during training every this many G steps; 0 = off", min=0
    )
    n_eval_samples: int = option(
        5000,
        "generated samples per evaluation during training (against the whole test split)",
        min=2,
    )
    n_final_samples: int = option(
        10_000, "generated samples for the final metrics.json evaluation (>= 2); 0 = skip it", min=0
    )
    feature_net: str = option(
        "auto",
        "feature network of FID/KID/IS (fmnist-cnn, inception-v3 or a registered name); "
        "auto = the dataset's default (fmnist-cnn for Fashion-MNIST)",
    )
    feature_weights: str | None = option(
        None, "weights file of the feature network; None = its shipped default (fmnist-cnn)"
    )
    checkpoint_every: int = option(1000, "write a checkpoint every this many G steps", min=1)
    keep_checkpoints: int = option(2, "newest checkpoints kept on disk", min=1, max=1000)
    # --- run ---
    seed: int = option(
        0, "seed of the run; rank r uses seed + r for data order and noise", min=0, max=2**31 - 1
    )
    device: str = option("auto", "device: auto (cuda when present), cpu, mps, cuda or cuda:N")
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    out_dir: str = option("runs/gan", "parent folder of run folders")
    run_name: str | None = option(
        None,
        "run folder name inside out_dir (None = gan-<dataset>-<arch>-<d_norm>-s<seed>-<hash>, "
        "d_norm sn, srn<c> or none)",
    )
    overwrite: bool = option(
        False, "start afresh in a run folder that holds another run's results (they are lost)"
    )
    resume: bool = option(False, "continue from the newest intact checkpoint (config must match)")
    compile: bool = option(False, "torch.compile G and D")
    amp: bool = option(False, "bfloat16 autocast on CUDA (refused on the CPU)")
    progress: bool = option(
        True, "progress on stderr: a tqdm bar on a terminal, else a plain line every 10 s"
    )

    def __post_init__(self) -> None:
        check_config(self)
        if self.n_final_samples == 1:  # FID's covariance and KID's pairs need two samples
            raise ValueError("n_final_samples must be 0 (skip the final scores) or >= 2, got 1")
        if self.d_norm_embedding and not self.conditional:
            raise ValueError(
                "d_norm_embedding=True needs conditional=True (there is no "
                "projection embedding otherwise)"
            )
        if self.d_norm_embedding and self.d_norm == "none":
            raise ValueError("d_norm_embedding=True needs d_norm sn or srn, got d_norm='none'")
        if self.d_first_norm == "sn" and self.d_norm == "none":
            raise ValueError("d_first_norm='sn' needs d_norm sn or srn, got d_norm='none'")
        if self.amp and self.device == "cpu":
            raise ValueError("amp=True needs a CUDA device, got device='cpu'")
        if (self.eval_every or self.n_final_samples) and self.scoring_net is None:
            raise ValueError(
                f"feature_net='auto' has no offline feature network for dataset "
                f"{self.dataset!r}: set feature_net (e.g. 'inception-v3' with feature_weights) or "
                "turn evaluation off (eval_every=0, n_final_samples=0)"
            )
        if self.eval_every > self.g_steps:
            raise ValueError(
                f"eval_every ({self.eval_every}) exceeds g_steps ({self.g_steps}); "
                "use 0 to turn evaluation off"
            )

    @property
    def scoring_net(self) -> str | None:
        """The feature network of FID/KID/IS: ``feature_net``, or for ``auto`` the dataset's
        offline default (None when it has none)."""
        if self.feature_net != "auto":
            return self.feature_net
        return _DEFAULT_FEATURE_NETS.get(self.dataset)

    def unused(self) -> dict[str, str]:
        """The fields that the other values leave unread, each with why (as
        :meth:`ClassifyConfig.unused`)."""
        no_norm = self.d_norm == "none" and self.g_norm == "none"
        rules = {
            "rank_ratio": (self.d_norm != "srn", f"d_norm={self.d_norm!r}: only SRN reads it"),
            "n_power_iterations": (no_norm, "d_norm and g_norm 'none': no SN or SRN"),
            "d_first_norm": (self.d_norm == "sn", "d_norm='sn': every layer has SN already"),
        }
        return {key: why for key, (unread, why) in rules.items() if unread}

    @property
    def run_label(self) -> str:
        """The readable start of the run folder's default name."""
        norm = f"srn{self.rank_ratio:g}" if self.d_norm == "srn" else self.d_norm
        first = "-first-sn" if self.d_first_norm == "sn" and self.d_norm == "srn" else ""
        return f"gan-{self.dataset}-{self.arch}-{norm}{first}"


@dataclass(frozen=True)
class GanAnalysisConfig:
    """What is measured on a finished GAN run beside FID/KID/IS (claims 4 and 5): the neural
    divergence (docs/math.md §2.5) and the discriminator's empirical Lipschitz constant."""

    nd_critic_steps: int = option(500, "neural divergence: critic updates", min=1)
    nd_eval_batches: int = option(10, "neural divergence: fresh evaluation batches", min=1)
    d_el_pairs: int = option(1000, "discriminator eL: pairs per pair type", min=1)
    nd_critic_width: int = option(
        64, "neural divergence: channels of the fresh critic's first conv", min=1
    )
    nd_batch_size: int = option(64, "neural divergence: real and fake images per step", min=2)
    # The run's seed is at most 2**31 - 1 too: their sum stays in torch's seed range.
    seed: int = option(0, "offset of the analysis seed from the run's seed", min=0, max=2**31 - 1)
    device: str = option("auto", "device: auto (cuda when present), cpu, mps, cuda or cuda:N")
    num_threads: int = option(
        0, "torch CPU threads (0 = torch's default)", min=0, omit_default=True
    )
    deterministic: bool = option(False, DETERMINISTIC_HELP, omit_default=True)
    progress: bool = option(False, "progress bar for the critic")
    data_dir: str | None = option(None, ANALYSIS_DATA_DIR_HELP, omit_default=True)

    def __post_init__(self) -> None:
        check_config(self)


# Named settings (overrides of the defaults above).
GAN_PRESETS: dict[str, dict] = {
    # Miyato et al. 2018, standard CNN: Adam lr 1e-4, betas (0.5, 0.999), n_dis 1, batch 64.
    "sngan-cnn": {
        "arch": "cnn", "ngf": 64, "ndf": 64, "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.5,
        "beta2": 0.999, "n_dis": 1, "batch_size": 64, "loss": "hinge", "g_steps": 100_000,
        "lr_decay": "none",
    },
    # Miyato et al. 2018, ResNet: lr 2e-4, betas (0, 0.9), n_dis 5, batch 64, linear decay.
    "sngan-resnet": {
        "arch": "resnet", "ngf": 256, "ndf": 128, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.0,
        "beta2": 0.9, "n_dis": 5, "batch_size": 64, "loss": "hinge", "g_steps": 50_000,
        "lr_decay": "linear",
    },
    # CPU demo: the standard CNN at half width, 2000 steps, constant lr.
    "quick": {
        "ngf": 32, "ndf": 32, "lr_g": 2e-4, "lr_d": 2e-4, "g_steps": 2000, "sample_every": 250,
        "n_eval_samples": 2000, "n_final_samples": 2000, "checkpoint_every": 250,
    },
    # Seconds, for a first look at the trainer and its run folder: 8x8 digits, no feature
    # network for them, so no FID/IS (gan-analyze measures D's eL and the neural divergence).
    "tiny": {
        "dataset": "digits", "ngf": 8, "ndf": 8, "z_dim": 16, "batch_size": 16, "g_steps": 100,
        "n_final_samples": 0, "sample_every": 100, "checkpoint_every": 50, "log_every": 10,
    },
}  # fmt: skip
