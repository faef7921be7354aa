"""Exponential moving average (EMA) of a model's weights: the one copy of the update shared by the
GAN trainer's EMA generator and the neural-divergence critic.

It sits in :mod:`stablerank.metrics` because the critic of :mod:`stablerank.metrics.divergence`
needs it and metrics may not import the trainers (STYLE.md); the trainers import it from here.
"""

from __future__ import annotations

import torch
from torch import nn

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
            pair up one to one.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(b)
