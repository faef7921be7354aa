"""Typed results of the trainers and their post-training analyses.

Each stage writes one frozen dataclass to one JSON file of its run folder and reads it back with
the same class: :meth:`Result.to_json` / :meth:`Result.from_json` are the only functions that
know the JSON layout. A renamed field therefore fails in the tests (or as a ``TypeError`` when an
old file is read), never as a silently missing column in a report.

* :class:`ClassifierResult` (``metrics.json``): :func:`stablerank.train.classify.run`;
* :class:`ClassifierAnalysis` (``analysis.json``): :func:`stablerank.train.analyze.run`;
* :class:`GanResult` (``metrics.json``): :func:`stablerank.train.gan.run`;
* :class:`GanAnalysis` (``gan_analysis.json``): neural divergence and the discriminator's eL.

Each result carries its *protocol*, typed too: every choice its numbers depend on (the data,
the network, the sample counts, the feature network and its weights' hash, ...). A class whose
file layout changed reads the older layout through its ``from_older_layout``.

Non-finite numbers are written as ``null`` (strict JSON) and read back as ``nan``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from stablerank.metrics.divergence import NeuralDivergenceProtocol
from stablerank.metrics.gan import Protocol as ScoreProtocol
from stablerank.metrics.lipschitz import KEY_EL_MAX, KEY_EL_MEAN, KEY_EL_N
from stablerank.train import rundir
from stablerank.train.checkpoint import atomic_write_json

__all__ = [
    "AnalysisProtocol",
    "ClassifierAnalysis",
    "ClassifierProtocol",
    "ClassifierResult",
    "DElProtocol",
    "EpochRecord",
    "GanAnalysis",
    "GanAnalysisProtocol",
    "GanProtocol",
    "GanResult",
    "LayerStat",
    "Result",
    "ScoreProtocol",
    "Summary",
    "active_fraction",
    "from_dict",
    "layer_stats",
    "mean_active_fraction",
    "to_dict",
]

R = TypeVar("R", bound="Result")


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(obj: Any) -> Any:
    """A result dataclass (or a value inside one) as strict-JSON-ready data: dataclasses and
    mappings become dicts, tuples lists, tensors and arrays (anything with ``tolist``) numbers or
    lists, non-finite floats None."""
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_dict(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: no bare NaN/Infinity
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _convert(tp: Any, value: Any) -> Any:
    """``value`` read from JSON, converted to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return math.nan if float in args and type(None) not in typing.get_args(tp) else None
        return _convert(args[0], value) if len(args) == 1 else value
    if tp is float:
        return math.nan if value is None else float(value)
    if tp is Any or value is None:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping):
        _, vt = typing.get_args(tp) or (str, Any)
        return {k: _convert(vt, v) for k, v in value.items()}
    return value


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict written by :func:`to_dict`.

    Raises:
        TypeError: ``data`` lacks a field without default, or has a field ``cls`` does not know.
    """
    upgrade = getattr(cls, "from_older_layout", None)
    if upgrade is not None:
        data = upgrade(dict(data))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


class Result:
    """Mixin of the stage results: one JSON file, written and read by these two methods."""

    FILE: ClassVar[str]

    def to_json(self, run_dir: str | Path) -> Path:
        """Write the result to ``run_dir/FILE`` atomically; return the path."""
        path = Path(run_dir) / self.FILE
        atomic_write_json(path, to_dict(self))
        return path

    @classmethod
    def from_json(cls: type[R], run_dir: str | Path) -> R:
        """Read the result of ``run_dir`` (a folder, or the JSON file itself).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not valid JSON or not this result's layout.
        """
        path = Path(run_dir)
        if path.is_dir():
            path = path / cls.FILE
        try:
            return from_dict(cls, json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a valid {cls.__name__} file: {err}") from err


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Summary:
    """Max, mean, count and the quantiles asked for of a set of values (e.g. eL ratios), the
    quantiles keyed as :func:`stablerank.metrics.lipschitz.quantile_key` names them (``"q50"``)."""

    max: float
    mean: float
    n: int
    quantiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> Summary:
        """From the dict of :func:`stablerank.metrics.lipschitz.summarize`."""
        rest = {k: v for k, v in summary.items() if k not in (KEY_EL_MAX, KEY_EL_MEAN, KEY_EL_N)}
        return cls(
            max=summary[KEY_EL_MAX], mean=summary[KEY_EL_MEAN], n=summary[KEY_EL_N], quantiles=rest
        )

    @classmethod
    def from_older_layout(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Files written before the quantiles were a dict hold q50, q90 and q99 as fields."""
        older = [k for k in ("q50", "q90", "q99") if k in data]
        if older:
            data["quantiles"] = {k: data.pop(k) for k in older}
        return data


@dataclass(frozen=True)
class LayerStat:
    """One normalized (or plain) weight at a point of training.

    ``raw_srank`` is the stable rank of the raw, unnormalized weight and ``target_srank`` SRN's r;
    the cap binds (``active``) when ``raw_srank > target_srank``. Without SRN both are reported
    and ``active`` is None.
    """

    name: str
    norm: str
    shape: tuple[int, int]
    sigma_max: float
    srank: float
    raw_srank: float
    target_srank: float | None
    active: bool | None


@dataclass(frozen=True)
class EpochRecord:
    """One point of a training curve (an epoch of a classifier, an evaluation step of a GAN)."""

    step: int
    train_acc: float | None = None
    test_acc: float | None = None
    train_loss: float | None = None
    test_loss: float | None = None
    fid: float | None = None
    srn_active_fraction: float | None = None


def layer_stats(rows: typing.Iterable[Any]) -> tuple[LayerStat, ...]:
    """:class:`LayerStat` of each :class:`stablerank.layers.LayerRecord` of a layer report.

    ``active`` is the record's: None where SRN's cap can never act (no SRN, or r >= min(m, n):
    then SRN is exactly SN), so such layers do not count in :func:`active_fraction`.
    """
    return tuple(
        LayerStat(
            row.name, row.norm, tuple(row.matrix_shape), float(row.sigma_max), float(row.srank),
            float(row.raw_srank), float(row.target_srank) if row.norm == "srn" else None,
            row.active,
        ) for row in rows
    )  # fmt: skip


def active_fraction(layers: typing.Iterable[LayerStat]) -> float | None:
    """Fraction of SRN layers whose cap binds; None when there is no SRN layer."""
    flags = [layer.active for layer in layers if layer.active is not None]
    return sum(flags) / len(flags) if flags else None


def mean_active_fraction(curve: typing.Iterable[EpochRecord]) -> float | None:
    """The active fraction averaged over the points of training that recorded one."""
    values = [r.srn_active_fraction for r in curve if r.srn_active_fraction is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ClassifierProtocol:
    """How a classifier run was trained and scored (:attr:`ClassifierResult.protocol`)."""

    dataset: str
    model: str
    width: float
    norm: str
    rank_ratio: float | None  # None unless norm is srn
    n_power_iterations: int | None  # None without normalization
    head: str
    seed: int
    label_noise: float
    train_size: int  # images trained on
    augment: str
    epochs: int
    batch_size: int  # global, over every rank
    world_size: int
    train_acc: str  # how train_acc is measured
    train_eval_size: int  # training images scored for train_acc
    test_size: int  # test images of the final numbers
    test_eval_size_per_epoch: int
    gap: str  # how the two gaps are defined


@dataclass(frozen=True)
class AnalysisProtocol:
    """How a classifier's measures after training were taken (``ClassifierAnalysis.protocol``)."""

    run_dir: str
    dataset: str
    model: str
    norm: str
    rank_ratio: float | None
    head: str
    train_seed: int
    label_noise: float
    mode: str  # train or eval mode of the network measured
    train_set: str
    n_train_scored: int
    n_test_scored: int
    inputs: str
    n_pairs: int  # eL pairs per split
    pair_pool: str
    n_jacobian: int
    n_interpolated: int
    interpolated: str
    jacobian_iterations: int  # power iterations; 0 = the exact norm
    margin_quantile: float
    complexity_layers: str  # which weights the complexity measures take, and how
    seed: int
    loss: dict[str, float]  # eval-mode cross-entropy, "train" and "test"
    jacobian_points: dict[str, int] = field(default_factory=dict)  # per split, as measured
    plots: tuple[str, ...] = ()  # the PNG files written beside analysis.json


@dataclass(frozen=True)
class GanProtocol:
    """How a GAN run's final scores were made (:attr:`GanResult.protocol`): the generator that
    sampled, and the :class:`ScoreProtocol` of its scores and of each baseline."""

    generator: str  # "ema" or "raw"
    generator_bn: str  # which BatchNorm statistics G sampled with
    d_norm: str
    rank_ratio: float | None
    divergence_rule: str
    data_dir_read: str | None
    scores: ScoreProtocol | None = None  # None: the run was not scored
    baselines: dict[str, ScoreProtocol] = field(default_factory=dict)
    d_first_norm: str = "same"  # GanConfig.d_first_norm

    @classmethod
    def from_older_layout(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Files written before the protocols were typed hold the scores' protocol flat."""
        flat = {f.name for f in dataclasses.fields(ScoreProtocol)} & set(data)
        if flat and "scores" not in data:
            data["scores"] = {name: data.pop(name) for name in flat}
        return data


@dataclass(frozen=True)
class DElProtocol:
    """How the discriminator's eL and Jacobian norms were measured."""

    mode: str
    n_pairs: int  # per pair type
    pool: str
    inputs: str
    jacobian_points: int  # real and fake each
    jacobian_iterations: int
    labels: str | None  # how a conditional D holds the class (None: unconditional)


@dataclass(frozen=True)
class GanAnalysisProtocol:
    """How a GAN's post-training measures were taken (:attr:`GanAnalysis.protocol`)."""

    neural_divergence: NeuralDivergenceProtocol
    neural_divergence_real_train: str
    neural_divergence_real_train_std: float
    generator: str
    checkpoint_step: int
    d_el: DElProtocol


def _binding(fraction: float | None, whose: str) -> str:
    """The summary's clause on SRN's cap ('' without SRN layers whose cap can act)."""
    return "" if fraction is None else f"; SRN's cap binds on {fraction:.0%} of {whose} layers"


def _listed(shown: Mapping[str, float | None]) -> str:
    """The summaries' ``label value`` list, leaving out what was not measured (None)."""
    return ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None)


# ----------------------------------------------------------------------------- stage results


@dataclass(frozen=True)
class ClassifierResult(Result):
    """The end of a classifier run (``metrics.json``).

    Accuracies are fractions in [0, 1]; ``gap_acc = train_acc - test_acc``, ``gap_loss =
    test_loss - train_loss`` (train accuracy measured in eval mode on the training subset the run
    trained on, with its labels: random where they were corrupted). ``diverged`` is True when a
    loss became non-finite; then ``divergence`` says where and the numbers are those of the last
    finite epoch (or NaN).
    """

    FILE: ClassVar[str] = rundir.METRICS_FILE

    train_acc: float
    test_acc: float
    train_loss: float
    test_loss: float
    gap_acc: float
    gap_loss: float
    epochs: int
    curve: tuple[EpochRecord, ...] = ()
    layers: tuple[LayerStat, ...] = ()
    srn_active_fraction: float | None = None
    srn_active_fraction_mean: float | None = None
    diverged: bool = False
    divergence: str = ""
    data_dir: str | None = None
    protocol: ClassifierProtocol | None = None

    @property
    def mean_train_acc(self) -> float:
        """The train accuracy averaged over the epochs of the curve (how fast random labels are
        memorized, not only whether they are in the end)."""
        accs = [p.train_acc for p in self.curve if p.train_acc is not None]
        return sum(accs) / len(accs) if accs else math.nan

    def summary(self) -> str:
        """One line for a terminal: the final accuracies, the gap and where SRN's cap binds."""
        return (
            f"train acc {self.train_acc:.4f}, test acc {self.test_acc:.4f}, gap "
            f"{self.gap_acc:+.4f}" + _binding(self.srn_active_fraction, "its")
        )


@dataclass(frozen=True)
class ClassifierAnalysis(Result):
    """Post-training measures of a classifier (``analysis.json``); docs/math.md §2.

    ``log10_neyshabur`` and ``log10_bartlett`` divide by the margin and are None when the margin is
    not positive; the margin-free quantities are always there.
    """

    FILE: ClassVar[str] = rundir.ANALYSIS_FILE

    train_acc: float
    test_acc: float
    gap_acc: float
    gap_loss: float
    el_train: Summary
    el_test: Summary
    jacobian: dict[str, Summary]
    margin: float
    log10_spectral_product: float
    sum_srank: float
    log10_neyshabur: float | None = None
    log10_bartlett: float | None = None
    complexity: dict[str, float | None] = field(default_factory=dict)
    protocol: AnalysisProtocol | None = None
    # The AnalyzeConfig it ran with ({}: a file written before they were recorded).
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def el_test_max(self) -> float:
        """The largest pairwise eL over test pairs."""
        return self.el_test.max

    def summary(self) -> str:
        """One line for a terminal: eL on test pairs, the margin and the complexity measures."""
        shown = {
            "eL max (test pairs)": self.el_test_max, "margin": self.margin,
            "log10 spectral product": self.log10_spectral_product,
            "log10 Neyshabur": self.log10_neyshabur, "log10 Bartlett": self.log10_bartlett,
        }  # fmt: skip
        text = _listed(shown)
        undefined = self.log10_neyshabur is None or self.log10_bartlett is None
        return text + ("; the margin-based measures are undefined (margin not positive)"
                       if undefined else "")  # fmt: skip


@dataclass(frozen=True)
class GanResult(Result):
    """The end of a GAN run (``metrics.json``): final FID/KID/IS of the generator, their
    baselines (an untrained generator and real training images) and D's layers."""

    FILE: ClassVar[str] = rundir.METRICS_FILE

    steps: int
    d_loss: float | None
    g_loss: float | None
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    is_mean: float | None = None
    is_std: float | None = None
    untrained_fid: float | None = None
    untrained_kid_mean: float | None = None
    untrained_kid_std: float | None = None
    untrained_is_mean: float | None = None
    untrained_is_std: float | None = None
    real_train_fid: float | None = None
    real_train_kid_mean: float | None = None
    real_train_kid_std: float | None = None
    real_train_is_mean: float | None = None
    real_train_is_std: float | None = None
    curve: tuple[EpochRecord, ...] = ()
    d_layers: tuple[LayerStat, ...] = ()
    srn_active_fraction: float | None = None
    srn_active_fraction_mean: float | None = None
    diverged: bool = False
    divergence: str = ""
    train_seconds: float = 0.0
    data_dir: str | None = None
    protocol: GanProtocol | None = None

    @property
    def layers(self) -> tuple[LayerStat, ...]:
        """The layers the claims compare: D's (as :attr:`ClassifierResult.layers`)."""
        return self.d_layers

    def summary(self) -> str:
        """One line for a terminal: the final scores beside their baselines, SRN's binding, and
        why the run diverged (a collapse is found after training: nothing else prints it)."""
        shown = {
            "FID": self.fid, "untrained G's FID": self.untrained_fid,
            "real training images' FID": self.real_train_fid, "IS": self.is_mean,
            "KID": self.kid_mean,
        }  # fmt: skip
        scores = _listed(shown)
        why = f" ({self.divergence})" if self.diverged else ""
        return f"{self.steps} G steps{why}, {scores or 'no final scores'}" + _binding(
            self.srn_active_fraction, "D's"
        )


@dataclass(frozen=True)
class GanAnalysis(Result):
    """Neural divergence and the discriminator's empirical Lipschitz constant of a finished GAN
    (``gan_analysis.json``; claims 4 and 5)."""

    FILE: ClassVar[str] = rundir.GAN_ANALYSIS_FILE

    neural_divergence: float
    # The std over the evaluation batches of one trained critic: not a standard error, nor the
    # spread over retrained critics (which can be as large).
    neural_divergence_std: float
    neural_divergence_real_train: float
    d_el: dict[str, Summary]
    d_jacobian: dict[str, Summary]
    d_el_values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    protocol: GanAnalysisProtocol | None = None
    # The GanAnalysisConfig it ran with ({}: a file written before they were recorded).
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a terminal: the neural divergence beside its real-data end, D's eL."""
        return (
            f"neural divergence {self.neural_divergence:.4g} (std over evaluation batches "
            f"{self.neural_divergence_std:.2g}; real training images "
            f"{self.neural_divergence_real_train:.4g}), D's eL max {self.d_el_max:.4g}, median "
            f"{self.d_el_median:.4g}, Jacobian norm mean "
            f"{self.d_jacobian_mean:.4g}"
        )

    @property
    def d_el_max(self) -> float:
        """The largest pairwise eL over every pair type."""
        return max((s.max for s in self.d_el.values()), default=math.nan)

    @property
    def d_el_median(self) -> float:
        """The median pairwise eL over the pairs of every pair type together."""
        values = [v for vs in self.d_el_values.values() for v in vs]
        return statistics.median(values) if values else math.nan

    @property
    def d_jacobian_mean(self) -> float:
        """The mean of D's Jacobian spectral norm ||dD/dx||_2 over every measured point (real and
        fake): D's typical local Lipschitz constant on the data."""
        total = sum(s.n for s in self.d_jacobian.values())
        return sum(s.mean * s.n for s in self.d_jacobian.values()) / total if total else math.nan
