"""Analysis of a trained classification run (``stablerank analyze RUN_DIR``; docs/math.md §2).

Rebuilds the network from the run's ``config.json`` (same data preparation, same normalization),
loads the weights of its last epoch's checkpoint (a damaged one is refused, not replaced by an
earlier epoch's) and measures, **in eval mode** (BatchNorm running
statistics, SN/SRN with frozen u, v):

* the generalization gap (train minus test accuracy; test minus train loss) on the training set
  the run trained on (its labels, random ones included) and the test split;
* the pairwise empirical Lipschitz ratios (eLhist) of the logits over sampled train pairs and
  test pairs;
* the Jacobian spectral norm ||J_f(x)||_2 of the logits (power iteration with torch.func JVP/VJP,
  or exact with ``jacobian_iterations=0``) at train and test points and at points on segments
  between random train pairs;
* the Neyshabur and Bartlett measures over the q-quantile (default 10th percentile) training
  margin, the conv terms on kernels reshaped to (C_out, C_in*k*k) (not the conv operator).

Inputs of the Lipschitz measures are the images as the network sees them (scaled to [0, 1], then
standardized with the dataset mean/std), so the ratios are in the network's input units.

Writes ``analysis.json`` (a :class:`stablerank.train.results.ClassifierAnalysis`) and PNG plots
beside it: the eL histogram, the train/test accuracy curves, every layer's stable rank over epochs
and, for random-label runs, the shattering curve. :func:`plot_shattering` overlays several runs'
shattering curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stablerank._optional import import_optional
from stablerank.config import config_from_dict, config_to_dict
from stablerank.config.classify import AnalyzeConfig, ClassifyConfig
from stablerank.data import dataset_shape
from stablerank.metrics import complexity, lipschitz
from stablerank.srn import RankOneWarning
from stablerank.train.classify import (
    KEY_TEST_ACC,
    KEY_TEST_LOSS,
    KEY_TRAIN_ACC,
    KEY_TRAIN_LOSS,
    RunData,
    build_model,
    prepare_data,
)
from stablerank.train.figures import new_figure, save_figure
from stablerank.train.records import read_jsonl
from stablerank.train.results import AnalysisProtocol, ClassifierAnalysis, ClassifierResult, Summary
from stablerank.train.rundir import RunDir
from stablerank.train.runtime import apply_runtime, resolve_device, seed_everything

SPLIT_TRAIN, SPLIT_TEST, SPLIT_INTERPOLATED = "train", "test", "interpolated"
_POOL_PER_PAIR = 2  # pairs are drawn from a seeded pool of 2 * n_pairs images per split
_MAX_JACOBIAN_BATCH = 128  # JVP/VJP keep the forward's activations alive: smaller batches


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``log.jsonl``), oldest first."""
    path = RunDir(run_dir).log_jsonl
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {str(run_dir)!r} a training run?")
    return read_jsonl(path)  # a cut last line (a kill mid-write) is dropped


def load_run(
    run_dir: str | Path, device: torch.device | str = "cpu", *, final: bool = False,
    data_dir: str | None = None,
) -> tuple[ClassifyConfig, RunData, nn.Module]:  # fmt: skip
    """A run's config, its data (prepared exactly as for training) and its network with the last
    checkpoint's weights, on ``device`` in eval mode.

    Args:
        final: require the checkpoint of the last epoch (default False: the newest intact one).
            A damaged last checkpoint makes the newest intact one an earlier epoch's, whose
            measures would not be those of the run's ``metrics.json``.
        data_dir: read the dataset from this folder (default None: the run's ``data_dir``).

    Raises:
        ValueError: ``final`` and the newest intact checkpoint is not the last epoch's.
    """
    cfg = _run_config(run_dir)
    cfg = cfg if data_dir is None else dataclasses.replace(cfg, data_dir=data_dir)
    data = prepare_data(cfg)
    return cfg, data, _trained_model(run_dir, cfg, device, final=final)


def load_run_model(run_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The network of a run with its newest intact checkpoint's weights, in eval mode; its
    dataset's files are not read (:func:`stablerank.data.dataset_shape`)."""
    return _trained_model(run_dir, _run_config(run_dir), device, final=False)


def _run_config(run_dir: str | Path) -> ClassifyConfig:
    config_path = RunDir(run_dir).config_file
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: is {str(run_dir)!r} a run folder?")
    try:
        saved = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path} is damaged (not JSON: {err})") from err
    return config_from_dict(ClassifyConfig, saved)


def _trained_model(
    run_dir: str | Path, cfg: ClassifyConfig, device: torch.device | str, *, final: bool
) -> nn.Module:
    run_dir = Path(run_dir)
    with warnings.catch_warnings():  # the trainer said so when it built the model
        warnings.simplefilter("ignore", RankOneWarning)
        model = build_model(cfg, dataset_shape(cfg.dataset))
    loaded = RunDir(run_dir).load_latest()
    if loaded is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint: did its training start?")
    epoch, batch = loaded[1]["epoch"], loaded[1].get("batch", 0)
    if (epoch, batch) != (cfg.epochs, 0):
        holds = f"{epoch} of {cfg.epochs} epochs" + (f" and {batch} batches of the next"
                                                      if batch else "")  # fmt: skip
        if final:
            raise ValueError(f"{run_dir}'s newest intact checkpoint ({loaded[0].name}) holds "
                             f"{holds} (the last is damaged): its weights are not those of the "
                             "run's results; retrain it with --overwrite")  # fmt: skip
        RunDir(run_dir).warn_not_final(loaded[0], holds, stacklevel=3)
    model.load_state_dict(loaded[1]["model"])
    return model.to(device).eval()


def _seeded_subset(x: torch.Tensor, y: torch.Tensor, size: int, seed: int):
    """``size`` rows of (x, y) drawn without replacement (all of them when size is 0 or larger)."""
    if not size or size >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
    return x[idx], y[idx]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int, prepare: Any) -> torch.Tensor:
    """Logits of stored inputs ``x``, normalized batch by batch (the float copy of a whole split
    would be 4x its uint8 size)."""
    return torch.cat([model(prepare(xb)).float() for xb in x.split(batch_size)])


def run(cfg: AnalyzeConfig, run_dir: str | Path) -> ClassifierAnalysis:
    """Measure a trained run; write ``analysis.json`` and plots into ``run_dir``.

    Args:
        cfg: what to measure and how many samples.
        run_dir: a folder written by :func:`stablerank.train.classify.run`.

    Returns:
        The :class:`stablerank.train.results.ClassifierAnalysis` (also written to
        ``run_dir/analysis.json``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
        ValueError: its training has not finished, or diverged, or its last checkpoint is
            damaged.
    """
    apply_runtime(cfg)
    if cfg.plots:  # they need matplotlib (the experiments extra): say so before measuring
        import_optional("matplotlib.figure", "the analysis's plots (--plots false skips them)")
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    trained = RunDir(run_dir).trained_result(ClassifierResult)
    train_cfg, data, model = load_run(run_dir, device, final=True, data_dir=cfg.data_dir)
    print(f"analyze {run_dir}: accuracy and margins, pairwise eL ({cfg.n_pairs} pairs per split), "
          f"Jacobian norms ({cfg.n_jacobian} points), complexity measures", file=sys.stderr,
          flush=True)  # fmt: skip
    splits = data.splits

    def images(x: torch.Tensor) -> torch.Tensor:  # stored -> what the network sees, on device
        return splits.normalize(x.to(device))

    # ---- accuracy, loss and margins on the training set trained on and on the test split
    x_tr, y_tr = _seeded_subset(splits.train_x, splits.train_y, cfg.n_margin, cfg.seed)
    logits_tr = _logits(model, x_tr, cfg.batch_size, images)
    logits_te = _logits(model, splits.test_x, cfg.batch_size, images)
    y_tr, y_te = y_tr.to(device), splits.test_y.to(device)
    acc = {
        KEY_TRAIN_ACC: (logits_tr.argmax(1) == y_tr).double().mean().item(),
        KEY_TEST_ACC: (logits_te.argmax(1) == y_te).double().mean().item(),
        KEY_TRAIN_LOSS: F.cross_entropy(logits_tr, y_tr).item(),
        KEY_TEST_LOSS: F.cross_entropy(logits_te, y_te).item(),
    }
    gap = complexity.generalization_gap(
        acc[KEY_TRAIN_ACC], acc[KEY_TEST_ACC], acc[KEY_TRAIN_LOSS], acc[KEY_TEST_LOSS]
    )
    margin = complexity.margin_quantile(logits_tr, y_tr, cfg.margin_quantile)
    # A network that misclassifies more than the quantile has no positive margin there: the
    # measures divided by the margin are None then; the margin-free ones are always there.
    measures: dict[str, Any] = {"margin": margin, **complexity.spectral_complexity(model, margin)}
    del logits_tr, logits_te

    # ---- empirical Lipschitz constant: pairwise ratios and Jacobian spectral norms
    pool = _POOL_PER_PAIR * cfg.n_pairs
    sources = {
        SPLIT_TRAIN: (splits.train_x, splits.train_y, cfg.seed),
        SPLIT_TEST: (splits.test_x, splits.test_y, cfg.seed + 1),
    }
    pools = {split: images(_seeded_subset(x, y, pool, seed)[0])
             for split, (x, y, seed) in sources.items()}  # fmt: skip
    ratios = {
        split: lipschitz.pairwise_lipschitz(
            model, x, n_pairs=cfg.n_pairs, seed=cfg.seed, batch_size=cfg.batch_size
        )
        for split, x in pools.items()
    }
    # The Jacobian points are the pool's first n_jacobian (a seeded draw, or the split in its own
    # order when the pool holds all of it); more than the pool holds are drawn anew with its
    # seed, so asking for more points never moves the pairs.
    points = {}
    for split, x in pools.items():
        if cfg.n_jacobian <= len(x):
            points[split] = x[: cfg.n_jacobian]
        else:
            split_x, split_y, seed = sources[split]
            points[split] = images(_seeded_subset(split_x, split_y, cfg.n_jacobian, seed)[0])
    if cfg.n_interpolated:
        x_tr_pool = pools[SPLIT_TRAIN]
        points[SPLIT_INTERPOLATED] = lipschitz.interpolate(
            x_tr_pool, x_tr_pool, cfg.n_interpolated, seed=cfg.seed
        )
    jac_bs = min(cfg.batch_size, _MAX_JACOBIAN_BATCH)
    iterations, exact = max(cfg.jacobian_iterations, 1), cfg.jacobian_iterations == 0
    jacobian = {
        split: lipschitz.jacobian_spectral_norm(
            model, x, n_iters=iterations, seed=cfg.seed, batch_size=jac_bs, exact=exact
        )
        for split, x in points.items()
    }

    plots = _write_plots(run_dir, train_cfg, trained, ratios, cfg.bins) if cfg.plots else []
    protocol = AnalysisProtocol(
        run_dir=str(run_dir), dataset=train_cfg.dataset, model=train_cfg.model,
        norm=train_cfg.norm,
        rank_ratio=train_cfg.rank_ratio if train_cfg.norm == "srn" else None,
        head=train_cfg.head if train_cfg.norm != "none" else "none",
        train_seed=train_cfg.seed, label_noise=train_cfg.label_noise,
        mode="eval (BatchNorm running statistics; SN/SRN u, v frozen)",
        train_set="the (sub)set trained on, with its labels (random where corrupted)",
        n_train_scored=len(y_tr), n_test_scored=len(y_te),
        inputs="as the network sees them: scaled, then standardized with the dataset mean/std",
        n_pairs=cfg.n_pairs, pair_pool=f"seeded pool of up to {pool} images per split",
        n_jacobian=cfg.n_jacobian, n_interpolated=cfg.n_interpolated,
        jacobian_points={split: len(x) for split, x in points.items()},  # as measured
        interpolated="uniform t on segments between random pairs of the train pool",
        jacobian_iterations=cfg.jacobian_iterations, margin_quantile=cfg.margin_quantile,
        complexity_layers="every Linear/Conv weight as used in the forward pass (normalized "
        "when parametrized); conv kernels reshaped to (C_out, C_in*k*k), not the conv operator; "
        "BatchNorm scales not included; log10 values",
        seed=cfg.seed, loss={"train": acc[KEY_TRAIN_LOSS], "test": acc[KEY_TEST_LOSS]},
        plots=tuple(plots),
    )  # fmt: skip
    el = {k: Summary.of(lipschitz.summarize(v, cfg.quantiles)) for k, v in ratios.items()}
    result = ClassifierAnalysis(
        train_acc=acc[KEY_TRAIN_ACC], test_acc=acc[KEY_TEST_ACC],
        gap_acc=gap[complexity.KEY_GAP_ACC], gap_loss=gap[complexity.KEY_GAP_LOSS],
        el_train=el[SPLIT_TRAIN], el_test=el[SPLIT_TEST],
        jacobian={k: Summary.of(lipschitz.summarize(v, cfg.quantiles))
                  for k, v in jacobian.items()},
        margin=margin,
        log10_spectral_product=measures[complexity.KEY_LOG10_SPECTRAL_PRODUCT],
        sum_srank=measures[complexity.KEY_SUM_SRANK],
        log10_neyshabur=measures.get(complexity.KEY_LOG10_NEYSHABUR),
        log10_bartlett=measures.get(complexity.KEY_LOG10_BARTLETT),
        complexity={k: v for k, v in measures.items() if isinstance(v, (int, float)) or v is None},
        protocol=protocol, settings=config_to_dict(cfg),
    )  # fmt: skip
    path = result.to_json(run_dir)
    print(f"analyze: {result.summary()}; wrote {path}", file=sys.stderr, flush=True)
    return result


# ----------------------------------------------------------------------------- plots


def _run_label(cfg: ClassifyConfig) -> str:
    return f"srn (c={cfg.rank_ratio:g})" if cfg.norm == "srn" else cfg.norm


def _write_plots(
    run_dir: Path,
    cfg: ClassifyConfig,
    trained: ClassifierResult,
    ratios: dict[str, torch.Tensor],
    bins: int,
) -> list[str]:
    written = [
        lipschitz.plot_histogram(
            {k: v for k, v in ratios.items() if v.numel()}, run_dir / "el_hist.png", bins=bins,
            title=f"pairwise eL, {cfg.model} {_run_label(cfg)}",
        ).name
    ]  # fmt: skip
    records = read_log(run_dir)
    epochs = [r["epoch"] for r in records]

    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(epochs, [r[KEY_TRAIN_ACC] for r in records], marker="o", label="train (eval mode)")
    ax.plot(epochs, [r[KEY_TEST_ACC] for r in records], marker="o", label="test")
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"{cfg.model} {_run_label(cfg)}")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 1.25
    ax.legend()
    written.append(save_figure(fig, run_dir / "accuracy.png").name)

    prefix = "raw_srank/"
    names = [k.removeprefix(prefix) for k in records[-1] if k.startswith(prefix)] if records else []
    if names:
        targets = {layer.name: layer.target_srank for layer in trained.layers}
        capped = [name for name in names if targets.get(name) is not None]
        fig = new_figure((7.5, 4.8))
        ax = fig.add_subplot()
        for name in capped or names:
            # With SRN, each layer's raw stable rank over its own target r: one reference line
            # (1, dashed) for every layer; several targets drawn at once would hide each other.
            scale = targets[name] if capped else 1.0
            ax.plot(epochs, [r.get(prefix + name, math.nan) / scale for r in records], label=name)
        if capped:
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.9)
            ylabel, title = "raw stable rank / target r (log)", "SRN layers: above 1 the cap binds"
        else:
            ylabel, title = "stable rank of the raw weight (log)", "per-layer stable rank"
        ax.set(xlabel="epoch", ylabel=ylabel, yscale="log", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both")
        if len(names) <= 12:  # a legend for 100+ layers hides the plot
            ax.legend(fontsize="x-small", ncol=2)
        written.append(save_figure(fig, run_dir / "srank.png").name)

    if cfg.label_noise > 0:
        written.append(plot_shattering([run_dir], run_dir / "shattering.png").name)
    return written


def plot_shattering(run_dirs: Sequence[str | Path], out_png: str | Path) -> Path:
    """Overlay the shattering curves (eval-mode train accuracy vs epoch) of several runs.

    Each run is labelled by its normalization (e.g. ``none``, ``sn``, ``srn (c=0.3)``) and its
    label-noise fraction; pass the vanilla / SN / SRN runs of one shattering setting.

    Returns:
        The written path.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    for run_dir in run_dirs:
        cfg = _run_config(run_dir)
        records = read_log(run_dir)
        ax.plot(
            [r["epoch"] for r in records], [r[KEY_TRAIN_ACC] for r in records],
            label=f"{_run_label(cfg)}, {cfg.label_noise:.0%} random labels",
        )  # fmt: skip
    ax.set(xlabel="epoch", ylabel="train accuracy (eval mode)", ylim=(0, 1.02),
           title="shattering: fitting random labels")  # fmt: skip
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 2.5
    ax.legend()
    return save_figure(fig, Path(out_png))
