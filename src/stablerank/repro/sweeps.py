"""The reproduction's sweeps: Python functions that return lists of :class:`Run`.

A run is one trainer config (built with ``dataclasses.replace`` on the trainers' presets), the
analysis that follows it, and the *setting* it belongs to: the runs that claims compare (same
data, model and protocol; different normalization and seed). :func:`quick` is ``make demo``
(minutes on a CPU), :func:`standard` hours on a CPU, :func:`paper` the paper's CIFAR setting (GPU
cluster), :func:`tiny` seconds, for the tests.

The rank ratios are where the stable-rank cap binds on the trained weights (docs/c_sweep.md): at
the library's usual c = 0.3-0.7 these networks' trained weights are already below the target and
SRN is spectral normalization.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablerank.config import RUNTIME_KEYS, config_hash, config_to_dict, diff_configs
from stablerank.config.classify import AnalyzeConfig, ClassifyConfig, classify_preset
from stablerank.config.gan import GAN_PRESETS, GanAnalysisConfig, GanConfig
from stablerank.config.reproduce import ReproduceConfig
from stablerank.train.results import ClassifierAnalysis, ClassifierResult, GanAnalysis, GanResult
from stablerank.train.rundir import RunDir, ddp_suffix

__all__ = [
    "KINDS",
    "RUNS_DIR",
    "SWEEPS",
    "TRAINERS",
    "Run",
    "Trainer",
    "arm_label",
    "build_sweep",
    "comparison",
    "paper",
    "quick",
    "standard",
    "tiny",
]

KIND_CLASSIFY, KIND_SHATTER, KIND_GAN = "classify", "shatter", "gan"
KINDS = (KIND_CLASSIFY, KIND_SHATTER, KIND_GAN)
RUNS_DIR = "runs"  # run folders live in out_dir/runs/


@dataclass(frozen=True)
class Trainer:
    """How the sweeps drive one trainer: the one place that tells a classifier run from a GAN."""

    command: str  # its CLI subcommand (what a torchrun launch starts)
    norm_field: str  # the config field of the normalization the claims compare
    result: type[ClassifierResult] | type[GanResult]  # what training writes (metrics.json)
    analysis: type[ClassifierAnalysis] | type[GanAnalysis]  # what the analysis writes
    train_module: str  # module whose run(config) trains
    analysis_module: str  # module whose run(settings, run_dir) analyses

    # Imported when a run trains or is analysed: the trainers pull in data/, models/ and
    # metrics/, which a dry run or a report never needs.
    def train(self, config: Any) -> Any:
        return importlib.import_module(self.train_module).run(config)

    def analyse(self, settings: Any, run_dir: Path) -> Any:
        return importlib.import_module(self.analysis_module).run(settings, run_dir)


TRAINERS: dict[type, Trainer] = {
    ClassifyConfig: Trainer("train", "norm", ClassifierResult, ClassifierAnalysis,
                            "stablerank.train.classify", "stablerank.train.analyze"),
    GanConfig: Trainer("gan", "d_norm", GanResult, GanAnalysis, "stablerank.train.gan",
                       "stablerank.train.gan_analysis"),
}  # fmt: skip


def arm_label(norm: str, rank_ratio: float | None) -> str:
    """The name of an arm: ``none``, ``sn`` or ``srn(c=0.05)`` (the rank ratio read for SRN)."""
    return f"srn(c={rank_ratio:g})" if norm == "srn" else norm


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a trainer config, its analysis (None: none) and its comparison group.

    ``kind`` is ``classify`` (claims 1, 3), ``shatter`` (random labels: claim 2) or ``gan``
    (claims 4, 5); ``setting`` (e.g. ``fashion-mnist/mlp``) groups the runs that differ only in
    normalization, rank ratio and seed. ``config`` gets its run folder from :meth:`placed`.
    """

    kind: str
    setting: str
    config: ClassifyConfig | GanConfig
    analysis: AnalyzeConfig | GanAnalysisConfig | None = None
    # torch CPU threads of training and analysis alike (0 = torch's default): the same in every
    # executor, so their results are bitwise equal.
    threads: int = 0
    nproc_per_node: int = 1  # > 1: training is launched with torchrun (DDP)

    @property
    def trainer(self) -> Trainer:
        return TRAINERS[type(self.config)]

    @property
    def norm(self) -> str:
        return getattr(self.config, self.trainer.norm_field)

    @property
    def rank_ratio(self) -> float | None:
        return self.config.rank_ratio if self.norm == "srn" else None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def arm(self) -> str:
        """``none``, ``sn`` or ``srn(c=0.05)``: the normalization compared."""
        return arm_label(self.norm, self.rank_ratio)

    @property
    def digest(self) -> str:
        """Hash of what the run computes (its config without :data:`RUNTIME_KEYS`) and of its
        analysis: the cache key of its folder."""
        parts = config_hash(self.config, exclude=RUNTIME_KEYS)
        if self.analysis is not None:
            parts += config_hash(self.analysis, exclude=RUNTIME_KEYS)
        parts += ddp_suffix(self.nproc_per_node)  # another run (RunDir.world_size says why)
        return hashlib.sha256(parts.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        slug = f"{self.kind}-{self.setting.replace('/', '-')}-{self.arm}-s{self.seed}"
        return f"{slug.replace('(c=', '').replace(')', '')}-{self.digest}"

    def placed(self, cfg: ReproduceConfig) -> Run:
        """The run in its folder ``out_dir/runs/<name>``, with the runtime settings of ``cfg``."""
        run = dataclasses.replace(self, threads=cfg.threads, nproc_per_node=cfg.nproc_per_node)
        # Shared with the analysis, a given --data-dir too: a run trained before reads its
        # config.json, which names the folder it was trained from.
        shared = {"device": cfg.device, "deterministic": cfg.deterministic}
        if cfg.data_dir is not None:
            shared["data_dir"] = cfg.data_dir
        runtime = {**shared, "progress": cfg.progress, "num_threads": cfg.threads}
        out_dir = str(Path(cfg.resolved_out_dir) / RUNS_DIR)
        config = dataclasses.replace(
            run.config, out_dir=out_dir, run_name=run.name, resume=True, **runtime
        )
        analysis = run.analysis and dataclasses.replace(run.analysis, **shared)
        return dataclasses.replace(run, config=config, analysis=analysis)

    @property
    def run_dir(self) -> Path:
        return RunDir.for_config(self.config).path


# ----------------------------------------------------------------------------- building blocks


def comparison(
    kind: str,
    setting: str,
    base: ClassifyConfig | GanConfig,
    rank_ratios: Sequence[float],
    seeds: int,
    analysis: AnalyzeConfig | GanAnalysisConfig | None = None,
) -> list[Run]:
    """The runs of one setting that claims compare: seeds 0 .. ``seeds`` - 1 of vanilla
    (classifiers only), SN, and SRN at each c of ``rank_ratios``, each ``base`` with its
    normalization and seed replaced, in that order. The building block of every sweep, your
    own included.

    Args:
        kind: ``classify`` (claims 1, 3), ``shatter`` (random labels; claim 2) or ``gan``
            (claims 4, 5).
        setting: the name that groups them in the report, e.g. ``cifar100/resnet110``.
        base: the trainer config every run starts from.
        rank_ratios: SRN's c, one arm each.
        seeds: seeds per arm.
        analysis: the analysis each run gets after training (None: none).
    """
    field = TRAINERS[type(base)].norm_field
    arms = [{field: "sn"}, *({field: "srn", "rank_ratio": c} for c in rank_ratios)]
    if kind != KIND_GAN:
        arms.insert(0, {field: "none"})
    return [
        Run(kind, setting, dataclasses.replace(base, seed=seed, **arm), analysis)
        for seed in range(seeds)
        for arm in arms
    ]


def _mlp_clean(train_subset: int, epochs: int) -> ClassifyConfig:
    """BN-free MLP (784-512-512-10) on clean Fashion-MNIST, trained to ~100% train accuracy: no
    augmentation, no weight decay, cosine lr (the regime with a generalization gap to shrink)."""
    return classify_preset(
        "fmnist-cnn",
        model="mlp",
        epochs=epochs,
        train_subset=train_subset,
        train_eval_size=0,
        test_eval_size=2000,
        augment="none",
        weight_decay=0.0,
        lr=0.05,
        batch_size=128,
    )


def _mlp_shatter(train_subset: int, epochs: int) -> ClassifyConfig:
    """The MLP memorizing random labels (Zhang et al. 2017): constant lr, no augmentation."""
    return classify_preset(
        "shatter",
        model="mlp",
        train_subset=train_subset,
        epochs=epochs,
        lr=0.05,
        test_eval_size=1000,
    )


def _analysis(n_pairs: int, n_jacobian: int, n_margin: int) -> AnalyzeConfig:
    return AnalyzeConfig(
        n_pairs=n_pairs,
        n_jacobian=n_jacobian,
        n_interpolated=n_jacobian,
        jacobian_iterations=10,
        n_margin=n_margin,
        batch_size=250,
        plots=False,
    )


def _gan(ndf: int, g_steps: int, n_final_samples: int) -> GanConfig:
    return dataclasses.replace(
        GanConfig(**GAN_PRESETS["quick"]),
        ngf=ndf,
        ndf=ndf,
        g_steps=g_steps,
        n_final_samples=n_final_samples,
        n_eval_samples=min(1000, n_final_samples),
        eval_every=0,
        sample_every=g_steps,
        checkpoint_every=max(g_steps // 4, 1),
        log_every=max(g_steps // 20, 1),
    )


# ----------------------------------------------------------------------------- sweeps

MLP_RANK_RATIOS = (0.05,)
GAN_RANK_RATIOS = (0.2,)
# At c = 0.1, not 0.2, quick's GAN decides claim 5 (docs/reproduction.md, "Claim 5 in quick").
QUICK_GAN_RANK_RATIOS = (0.1,)
_FMNIST_MLP = "fashion-mnist/mlp"


def quick(seeds: int = 5, gan_seeds: int = 10) -> list[Run]:
    """``make demo``: MLP on 4,000 clean images and on 1,500 random labels (``seeds`` seeds per
    arm), a 300-step SN-GAN vs SRN-GAN at c = 0.1 (``gan_seeds`` per arm: GAN seeds spread more
    than classifier seeds; docs/reproduction.md), at rank ratios where the cap binds."""
    analysis = _analysis(n_pairs=300, n_jacobian=16, n_margin=0)
    gan_analysis = GanAnalysisConfig(
        nd_critic_steps=100, nd_eval_batches=5, d_el_pairs=300, nd_critic_width=16
    )
    gan = _gan(16, 300, 500)
    return [
        *comparison(
            KIND_CLASSIFY, _FMNIST_MLP, _mlp_clean(4000, 30), MLP_RANK_RATIOS, seeds, analysis
        ),
        *comparison(KIND_SHATTER, _FMNIST_MLP, _mlp_shatter(1500, 30), MLP_RANK_RATIOS, seeds),
        *comparison(
            KIND_GAN, "fashion-mnist/gan-cnn16", gan, QUICK_GAN_RANK_RATIOS, gan_seeds, gan_analysis
        ),
    ]


def standard(seeds: int = 5, gan_seeds: int = 10) -> list[Run]:
    """Hours on a CPU: the MLP and the small AlexNet (BN-free) and the small CNN (BatchNorm) on
    10,000 clean images, shattering of 2,000 random labels with the MLP (``seeds`` seeds per
    arm), a 2,000-step GAN scored with 5,000 samples (``gan_seeds`` per arm)."""
    analysis = _analysis(n_pairs=1000, n_jacobian=50, n_margin=0)
    cnn = classify_preset(
        "fmnist-cnn",
        width=0.5,
        epochs=6,
        train_subset=10000,
        train_eval_size=0,
        test_eval_size=2000,
        weight_decay=0.0,
        augment="none",
    )
    alexnet = dataclasses.replace(cnn, model="alexnet", lr=0.02)
    gan_analysis = GanAnalysisConfig(
        nd_critic_steps=500, nd_eval_batches=10, d_el_pairs=1000, nd_critic_width=32
    )
    mlp_ratios = (*MLP_RANK_RATIOS, 0.1)
    gan = _gan(32, 2000, 5000)
    return [
        *comparison(KIND_CLASSIFY, _FMNIST_MLP, _mlp_clean(10000, 40), mlp_ratios, seeds, analysis),
        *comparison(KIND_CLASSIFY, "fashion-mnist/small_cnn-bn", cnn, (0.1, 0.3), seeds, analysis),
        *comparison(KIND_CLASSIFY, "fashion-mnist/alexnet", alexnet, (0.2, 0.3), seeds, analysis),
        *comparison(KIND_SHATTER, _FMNIST_MLP, _mlp_shatter(2000, 40), mlp_ratios, seeds),
        *comparison(
            KIND_GAN, "fashion-mnist/gan-cnn32", gan, GAN_RANK_RATIOS, gan_seeds, gan_analysis
        ),
    ]


def paper(seeds: int = 3, gan_seeds: int = 3) -> list[Run]:
    """The paper's CIFAR-10 comparisons (GPU scale): ResNet-110, WRN-28-10, DenseNet-BC-100,
    VGG-19 and AlexNet, shattering with AlexNet, SN-GAN ResNet; CIFAR-100 and CelebA are left to
    custom sweeps. Rank ratios 0.1 and 0.3 (0.2 and 0.3 for the BN-free AlexNet, which does not
    train at c <= 0.1): docs/c_sweep.md shows that 0.5 and above rarely bind."""
    analysis = _analysis(n_pairs=2000, n_jacobian=100, n_margin=10000)
    runs: list[Run] = []
    for model in ("resnet110", "wrn28_10", "densenet_bc100", "vgg19", "alexnet"):
        base = classify_preset(f"cifar10-{model}")
        ratios = (0.2, 0.3) if model == "alexnet" else (0.1, 0.3)  # BN-free AlexNet: c >= 0.2
        runs += comparison(KIND_CLASSIFY, f"cifar10/{model}", base, ratios, seeds, analysis)
    shatter = classify_preset(
        "shatter",
        dataset="cifar10",
        model="alexnet",
        train_subset=0,
        epochs=200,
        test_eval_size=2000,
    )
    runs += comparison(KIND_SHATTER, "cifar10/alexnet", shatter, (0.2, 0.3), seeds)
    gan = dataclasses.replace(
        GanConfig(**GAN_PRESETS["sngan-resnet"]),
        dataset="cifar10",
        n_final_samples=50000,
        feature_net="inception-v3",
    )
    gan_analysis = GanAnalysisConfig(nd_critic_steps=10000, nd_eval_batches=50, d_el_pairs=2000)
    runs += comparison(
        KIND_GAN, "cifar10/sngan-resnet", gan, (0.1, 0.3, 0.7), gan_seeds, gan_analysis
    )
    return runs


def tiny(seeds: int = 2, gan_seeds: int = 2) -> list[Run]:
    """Seconds: 8x8 digits MLP (clean and random labels) and a 2-step GAN; for tests."""
    base = classify_preset("tiny", epochs=2, train_subset=256, test_eval_size=0)
    shatter = dataclasses.replace(base, label_noise=1.0, augment="none")
    analysis = _analysis(n_pairs=20, n_jacobian=4, n_margin=0)
    # digits has no offline feature network: no FID/IS (claim 4), D's eL only (claim 5).
    gan = dataclasses.replace(_gan(8, 2, 64), dataset="digits", batch_size=16, n_final_samples=0)
    gan_analysis = GanAnalysisConfig(
        nd_critic_steps=2, nd_eval_batches=1, d_el_pairs=10, nd_critic_width=8, nd_batch_size=16
    )
    return [
        *comparison(KIND_CLASSIFY, "digits/mlp", base, (0.1,), seeds, analysis),
        *comparison(KIND_SHATTER, "digits/mlp", shatter, (0.1,), seeds),
        *comparison(KIND_GAN, "digits/gan", gan, (0.5,), gan_seeds, gan_analysis),
    ]


SWEEPS: dict[str, Callable[..., list[Run]]] = {
    f.__name__: f for f in (quick, standard, paper, tiny)
}


def build_sweep(cfg: ReproduceConfig) -> list[Run]:
    """The runs of ``cfg.sweep`` with their folders under ``cfg.out_dir`` and runtime filled in;
    ``cfg.seeds`` (when not 0) is the number of seeds of every arm, GANs included, and
    ``cfg.gan_seeds`` (when not 0) that of the GAN arms; each is passed by keyword (``seeds``,
    ``gan_seeds``) when given, else the sweep's default holds.

    Raises:
        RuntimeError: a sweep of your own raised (its error in the message).
        FileNotFoundError, ImportError, ValueError, TypeError: a sweep of your own
            (``MODULE:FUNCTION``, ``FILE.py:FUNCTION``) that cannot be read or called, or whose
            list is empty, holds something not a :class:`Run`, of another kind than
            :data:`KINDS` or whose config is not of its kind, two runs of one arm and seed, or
            two runs of one setting that differ in more than normalization, c and seed.
    """
    make = SWEEPS.get(cfg.sweep) or _own_sweep(cfg.sweep)
    seeds = {"seeds": cfg.seeds} if cfg.seeds else {}
    if cfg.gan_seeds or cfg.seeds:
        seeds["gan_seeds"] = cfg.gan_seeds or cfg.seeds
    try:
        inspect.signature(make).bind(**seeds)
    except (TypeError, ValueError) as err:  # before the call: a TypeError inside is the sweep's
        raise TypeError(
            f"sweep {cfg.sweep!r} cannot be called with {seeds or 'no arguments'} ({err}): a "
            "sweep is a function taking seeds= and gan_seeds= by keyword, both with defaults, "
            "and returning a list of Run"
        ) from None
    try:
        runs = make(**seeds)
    except Exception as err:  # a sweep of your own: say whose error it is
        if cfg.sweep in SWEEPS:
            raise
        raise RuntimeError(f"sweep {cfg.sweep!r} raised {type(err).__name__}: {err}") from err
    if not isinstance(runs, list) or not runs or not all(isinstance(r, Run) for r in runs):
        got = type(runs).__name__
        if isinstance(runs, list):
            odd = [f"a list holding {type(r).__name__}" for r in runs if not isinstance(r, Run)]
            got = odd[0] if odd else "an empty list"
        raise TypeError(f"sweep {cfg.sweep!r} must return a non-empty list of "
                        f"stablerank.repro.sweeps.Run, got {got}")  # fmt: skip
    if odd := sorted({r.kind for r in runs} - set(KINDS)):
        raise ValueError(f"sweep {cfg.sweep!r}: kind must be one of {KINDS}, got {odd}")
    if mismatch := _kind_mismatch(runs):
        raise ValueError(f"sweep {cfg.sweep!r}: {mismatch}")
    placed = [run.placed(cfg) for run in runs]
    arms = Counter((r.kind, r.setting, r.arm, r.seed) for r in placed)
    if twice := sorted("/".join(map(str, key)) for key, n in arms.items() if n > 1):
        raise ValueError(
            f"sweep {cfg.sweep!r} holds two runs of one arm and seed (kind/setting/arm/seed): "
            f"{twice}; the claims would count that seed twice (one comparison() with every c "
            "gives each arm once)"
        )
    # Distinct arms in one folder: setting names that differ only in '/' against '-'.
    if twice := sorted(name for name, n in Counter(r.name for r in placed).items() if n > 1):
        raise ValueError(
            f"sweep {cfg.sweep!r} holds runs of one folder: {twice} (settings whose names "
            "differ only in '/' against '-' name folders alike)"
        )
    if unfair := _compared_unlike(placed):
        raise ValueError(
            f"sweep {cfg.sweep!r}: {unfair}; the claims compare the runs of a setting as differing "
            "only in normalization, c and seed: give runs trained otherwise a setting of their own"
        )
    return placed


def _kind_mismatch(runs: Sequence[Run]) -> str:
    """'' when each run's config is of its kind (``gan``: a GanConfig; ``classify`` and
    ``shatter``: a ClassifyConfig, with random labels for ``shatter``); else the first that is
    not, and why."""
    for run in runs:
        wanted = GanConfig if run.kind == KIND_GAN else ClassifyConfig
        if not isinstance(run.config, wanted):
            got = type(run.config).__name__
            return f"a run of kind {run.kind!r} needs a {wanted.__name__}, got a {got}"
        noise = getattr(run.config, "label_noise", 0.0)
        if run.kind == KIND_SHATTER and not noise > 0:
            return (f"a run of kind 'shatter' (claim 2: fitting random labels) needs "
                    f"label_noise > 0, got {noise} in setting {run.setting!r}")  # fmt: skip
    return ""


def _compared_unlike(runs: Sequence[Run]) -> str:
    """'' when the runs of each setting (of a kind) differ only in normalization, c and seed, and
    not in their analysis; else the first two that differ otherwise, and how. Each run is checked
    against the first run of every arm of its setting before it, so a field that one of the two
    leaves unread (vanilla's ``head``) may differ between them, not between arms reading it."""
    firsts: dict[tuple[str, str], dict[str, Run]] = {}  # by kind and setting: arm -> first run
    for run in runs:
        arms = firsts.setdefault((run.kind, run.setting), {})
        for ref in arms.values():
            unread = [*ref.config.unused(), *run.config.unused()]
            ignore = (*RUNTIME_KEYS, run.trainer.norm_field, "rank_ratio", "seed", *unread)
            configs = [config_to_dict(r.config, complete=True) for r in (ref, run)]
            diffs = diff_configs(*configs, ignore=ignore)
            analyses = [
                config_to_dict(r.analysis, complete=True) if r.analysis else {} for r in (ref, run)
            ]
            diffs += [f"analysis {d}" for d in diff_configs(*analyses, ignore=RUNTIME_KEYS)]
            if diffs:
                pair = f"{ref.name} and {run.name} of setting {run.setting!r}"
                return f"{pair} differ in {'; '.join(diffs)}"
        arms.setdefault(run.arm, run)
    return ""


def _own_sweep(spec: str) -> Callable[..., list[Run]]:
    """The function that ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` names."""
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"sweep {spec!r}: {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"stablerank_sweep_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None  # a .py file
        module = importlib.util.module_from_spec(module_spec)
        # Registered before it runs, as an import would: dataclasses look their module up there.
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f"sweep {spec!r}: {err} (a module must be importable, e.g. on PYTHONPATH; a file "
                "is named FILE.py:FUNCTION)"
            ) from err
    make = getattr(module, name, None)
    if not callable(make):
        raise ValueError(f"sweep {spec!r}: {where} has no function {name!r}")
    return make
