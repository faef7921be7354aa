"""Exponential moving average (EMA) of a model's weights: the one copy of the update shared by the
GAN trainer's EMA generator and the neural-divergence critic.

It sits in :mod:`stablerank.metrics` because the critic of :mod:`stablerank.metrics.divergence`
needs it and metrics may not import the trainers (STYLE.md); the trainers import it from here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s and copy ``model``'s buffers, in place.

    .. math::
        \\theta_{ema} \\leftarrow \\theta_{ema} + (1 - \\beta)\\,(\\theta - \\theta_{ema})
        = \\beta\\, \\theta_{ema} + (1 - \\beta)\\, \\theta

    with decay :math:`\\beta`. Parameters are matched in ``parameters()`` order, so a
    parametrized layer averages its *original* (e.g. ``parametrizations.weight.original``) and
    the SN/SRN normalization is applied to the average at each forward.

    Buffers are **copied**, not averaged: BatchNorm running statistics and the SN/SRN power
    iteration vectors ``_u``/``_v`` are estimates about the current model, and an average of
    past estimates describes no model (``num_batches_tracked`` is an integer count). The GAN
    trainer then replaces the EMA generator's BatchNorm statistics by standing statistics before
    it samples (:func:`stablerank.train.gan_sampling.refresh_bn_stats`).

    Args:
        ema: the averaged copy (same architecture as ``model``), updated in place.
        model: the trained model; not modified.
        decay: :math:`\\beta` in [0, 1]; 0 copies ``model``, 1 leaves ``ema`` unchanged.

    Raises:
        ValueError: ``decay`` outside [0, 1], or the two models' parameters or buffers do not
            pair up one to one with equal shapes (checked before ``ema`` is changed).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    params = _paired("parameter", ema.named_parameters(), model.named_parameters())
    buffers = _paired("buffer", ema.named_buffers(), model.named_buffers())
    for pe, p in params:
        pe.lerp_(p, 1.0 - decay)
    for be, b in buffers:
        be.copy_(b)


def _paired(
    kind: str, ema: Iterator[tuple[str, Tensor]], model: Iterator[tuple[str, Tensor]]
) -> list[tuple[Tensor, Tensor]]:
    """The tensors of ``ema`` and ``model`` paired in order, once all of them pair up: an error
    found in the middle of the update would leave ``ema`` partly overwritten."""
    pairs = list(itertools.zip_longest(ema, model))
    for i, (e, m) in enumerate(pairs):
        if e is None or m is None or e[1].shape != m[1].shape:
            ema_desc, model_desc = (
                "none" if t is None else f"{t[0]} {tuple(t[1].shape)}" for t in (e, m)
            )
            raise ValueError(
                f"ema and model {kind}s do not pair up at {kind} {i}: "
                f"ema has {ema_desc}, model has {model_desc}"
            )
    return [(e[1], m[1]) for e, m in pairs]
