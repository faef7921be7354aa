"""Apply no normalization, spectral normalization or SRN to every eligible layer of a model.

Eligible layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` (their
``weight``). Biases, BatchNorm and embeddings are never touched. Depends only on torch and
:mod:`stablerank.srn`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from stablerank.srn import DEFAULT_RANK_RATIO, stable_rank_norm

__all__ = ["NORMS", "apply_stable_rank_norm", "eligible_layers", "normalize_model"]

NORMS = ("none", "sn", "srn")
_ELIGIBLE = (nn.Linear, nn.modules.conv._ConvNd)

Exclude = Callable[[str, nn.Module], bool] | Iterable[str] | None


def _excluder(exclude: Exclude) -> Callable[[str, nn.Module], bool]:
    if exclude is None:
        return lambda name, module: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    patterns = list(exclude)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"exclude must hold name patterns (str), got {p!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def eligible_layers(model: nn.Module, exclude: Exclude = None) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs :func:`normalize_model` would normalize.

    Args:
        model: any module.
        exclude: module-name patterns (``fnmatch``, e.g. ``"classifier"`` or ``"*.shortcut.*"``)
            or a predicate ``(name, module) -> bool``; matching layers are skipped.
    """
    skip = _excluder(exclude)
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _ELIGIBLE)
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and not parametrize.is_parametrized(m, "weight")
        and not skip(name, m)
    ]


def normalize_model(
    model: nn.Module,
    norm: str,
    *,
    rank_ratio: float = DEFAULT_RANK_RATIO,
    srank: float | None = None,
    n_power_iterations: int = 1,
    exclude: Exclude = None,
    exact: bool = False,
) -> nn.Module:
    """Normalize the weight of every Linear / ConvNd / ConvTransposeNd layer of ``model``.

    Args:
        model: the model, modified in place.
        norm: ``"none"`` (nothing), ``"sn"`` (``torch.nn.utils.parametrizations.spectral_norm``)
            or ``"srn"`` (:func:`stablerank.stable_rank_norm`).
        rank_ratio: SRN's c in (0, 1] (default 0.7); ignored for ``"sn"``.
        srank: SRN's absolute target instead of ``rank_ratio`` (default None).
        n_power_iterations: power-iteration steps per training forward (default 1).
        exclude: module-name patterns or a predicate, see :func:`eligible_layers` (default None:
            every eligible layer, the classifier head included).
        exact: SRN by SVD instead of power iteration (default False).

    Returns:
        ``model``.

    Raises:
        ValueError: ``norm`` not one of ``"none"``, ``"sn"``, ``"srn"`` (or an invalid SRN argument,
            raised before any layer is modified).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "srn":
        if srank is not None:
            rank_ratio = None  # type: ignore[assignment]
        elif not 0 < rank_ratio <= 1:
            raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    if not isinstance(n_power_iterations, int) or n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be an integer >= 1, got {n_power_iterations!r}")
    layers = eligible_layers(model, exclude)
    if norm == "none":
        return model
    for _, layer in layers:
        if norm == "sn":
            spectral_norm(layer, n_power_iterations=n_power_iterations)
        else:
            stable_rank_norm(
                layer,
                rank_ratio=rank_ratio,
                srank=srank,
                n_power_iterations=n_power_iterations,
                exact=exact,
            )
    return model


def apply_stable_rank_norm(
    model: nn.Module,
    rank_ratio: float = DEFAULT_RANK_RATIO,
    *,
    srank: float | None = None,
    n_power_iterations: int = 1,
    exclude: Exclude = None,
    exact: bool = False,
) -> nn.Module:
    """SRN on every Linear / ConvNd / ConvTransposeNd layer.

    Same as ``normalize_model(model, "srn", ...)``; see :func:`normalize_model`.
    """
    return normalize_model(
        model,
        "srn",
        rank_ratio=rank_ratio,
        srank=srank,
        n_power_iterations=n_power_iterations,
        exclude=exclude,
        exact=exact,
    )
