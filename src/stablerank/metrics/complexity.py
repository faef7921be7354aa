"""Margins, spectral sample-complexity measures and the generalization gap (docs/math.md §2.4).

The two measures are those the paper compares across vanilla / SN / SRN networks (its ICLR
version adds a third, Wei & Ma's, which is not implemented: docs/math.md §2.4 says why):

.. math::
    \\text{Neyshabur et al. 2018:}\\quad
    \\frac{\\prod_l \\lVert W_l \\rVert_2^2 \\; \\sum_l \\operatorname{srank}(W_l)}{\\gamma^2}

    \\text{Bartlett et al. 2017:}\\quad
    \\frac{\\prod_l \\lVert W_l \\rVert_2 \\;
    \\big(\\sum_l (\\lVert W_l^T \\rVert_{2,1} / \\lVert W_l \\rVert_2)^{2/3}\\big)^{3/2}}{\\gamma}

with :math:`\\gamma` the margin (the paper uses the 10th-percentile margin of the training set,
:func:`margin_quantile`). The bounds' factors that do not depend on the weights are omitted:
constants, depth, width and log terms, the activations' Lipschitz constants, the reference
matrices (taken as 0), the input norm (:math:`B^2` in Neyshabur's, :math:`\\lVert X
\\rVert_F / n` in Bartlett's) and the sample size (Neyshabur's measure is the term under
:math:`\\sqrt{\\cdot / m}`). So a value compares networks on one dataset with one
preprocessing, not across datasets or input scalings; and Bartlett's scales like the square root
of Neyshabur's (docs/math.md §2.4): compare each across arms, not one with the other.

The numerators do not depend on the margin and are reported on their own
(:func:`margin_free_complexity`): the product of spectral norms, the sum of stable ranks,
Bartlett's spectral complexity :math:`R_W = \\prod_l \\lVert W_l \\rVert_2 (\\sum_l
(\\lVert W_l^T \\rVert_{2,1} / \\lVert W_l \\rVert_2)^{2/3})^{3/2}` and Neyshabur's numerator.
They stay meaningful when the quantile margin is not positive (a network that misclassifies more
than that fraction of the training set), where the ratios are undefined.

Note [complexity layers]: the layers are every ``nn.Linear``, ``nn.ConvNd`` and
``nn.ConvTransposeNd`` of the model, in ``model.modules()`` order, and each term uses
``module.weight`` **as the forward pass uses it**: when a parametrization (SN, SRN) is registered,
that is the normalized weight. Conv kernels are reshaped to matrices (C_out, C_in*k*k) (dim 1
to the front for transposed convs, docs/math.md §1.4): the terms are those of the reshaped kernel,
not of the convolution operator; BatchNorm scales are left out, and every layer counts as one
link of a chain (a residual shortcut's convolution too): the product is the paper's layer-wise
measure, not an upper bound of such networks' Lipschitz constant (docs/math.md §2.2). Spectral
norms are exact
(:func:`stablerank.linalg.spectral_norm_exact`, float64). The products overflow for deep nets,
so everything is computed in float64 in log space and reported as log10.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from stablerank.layers import weight_as_used
from stablerank.linalg import spectral_norm_exact, weight_to_matrix
from stablerank.metrics._checks import check_finite, described, eval_mode

__all__ = [
    "KEY_GAP_ACC",
    "KEY_GAP_LOSS",
    "KEY_LOG10_BARTLETT",
    "KEY_LOG10_MARGIN",
    "KEY_LOG10_NEYSHABUR",
    "KEY_LOG10_NEYSHABUR_NUMERATOR",
    "KEY_LOG10_SPECTRAL_COMPLEXITY",
    "KEY_LOG10_SPECTRAL_PRODUCT",
    "KEY_N_LAYERS",
    "KEY_SUM_SRANK",
    "bartlett_measure",
    "complexity_layers",
    "generalization_gap",
    "margin_free_complexity",
    "margin_quantile",
    "margins",
    "neyshabur_measure",
    "spectral_complexity",
]

KEY_LOG10_NEYSHABUR = "log10_neyshabur"
KEY_LOG10_BARTLETT = "log10_bartlett"
KEY_LOG10_SPECTRAL_PRODUCT = "log10_spectral_product"
# Margin-free numerators of the two measures (defined whatever the margin's sign).
KEY_LOG10_SPECTRAL_COMPLEXITY = "log10_spectral_complexity"  # Bartlett's R_W
KEY_LOG10_NEYSHABUR_NUMERATOR = "log10_neyshabur_numerator"  # prod ||W||_2^2 * sum srank
KEY_SUM_SRANK = "sum_srank"
KEY_LOG10_MARGIN = "log10_margin"
KEY_N_LAYERS = "n_layers"
KEY_GAP_ACC = "gap_acc"
KEY_GAP_LOSS = "gap_loss"
DEFAULT_MARGIN_QUANTILE = 0.1
_LN10 = math.log(10.0)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample margin: the true-class logit minus the largest other logit.

    Args:
        logits: (N, K) with N >= 1 and K >= 2, finite.
        labels: (N,) integer class indices in [0, K).

    Returns:
        (N,) margins (negative for misclassified samples), dtype of ``logits``.

    Raises:
        ValueError: on shapes that do not match, no samples, or labels outside [0, K).
        TypeError: logits that are not a floating-point tensor, or labels that are not
            integers (float labels would be truncated).
        NonFiniteError: logits that hold NaN or inf.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {described(logits)}")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor of class indices, got {described(labels)}")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits, "
            f"got {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("logits and labels must hold at least one sample, got 0")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    k = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k}) for {k} classes, got values in [{lo}, {hi}]")
    check_finite(logits, "logits")
    labels = labels.long().to(logits.device)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return true - other


def margin_quantile(logits: Tensor, labels: Tensor, q: float = DEFAULT_MARGIN_QUANTILE) -> float:
    """The q-quantile of the margins (default 0.1: the paper's 10th-percentile margin).

    Raises:
        ValueError: when ``q`` is outside [0, 1], or as :func:`margins`.
        TypeError, NonFiniteError: as :func:`margins`.
    """
    if not isinstance(q, numbers.Real) or isinstance(q, bool) or not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be a number in [0, 1], got {q!r}")
    return torch.quantile(margins(logits, labels).double().cpu(), q).item()


def complexity_layers(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, reshaped weight matrix) of every layer the measures use (Note [complexity layers]).

    Returns:
        list of (module name, float64 matrix (C_out, C_in*k*...)) in ``model.modules()`` order,
        detached; the weight the forward uses (:func:`stablerank.layers.weight_as_used`: SN
        and SRN apply, torch's hook-based spectral_norm too), in eval mode: with frozen u, v, so
        the measures neither update them nor change from one call to the next.
    """
    layers = []
    with torch.no_grad(), eval_mode(model):
        for name, module in model.named_modules():
            if isinstance(module, _WEIGHTED):
                dim = 0
            elif isinstance(module, _TRANSPOSED):
                dim = 1  # ConvTranspose weights are (C_in, C_out, k...): outputs are dim 1.
            else:
                continue
            layers.append((name, weight_to_matrix(weight_as_used(module).detach(), dim).double()))
    return layers


def _log_terms(model: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Natural logs of sigma_l, ||W_l||_F^2 and ||W_l^T||_{2,1}, per layer (float64)."""
    layers = complexity_layers(model)
    if not layers:
        raise ValueError("model has no Linear/Conv/ConvTranspose layer to measure")
    for name, w in layers:  # a diverged network has no measure (NaN would pass sigma <= 0)
        check_finite(w, f"the weights of layer {name!r}")
    sigma = torch.stack([spectral_norm_exact(w) for _, w in layers])
    fro2 = torch.stack([w.square().sum() for _, w in layers])
    # ||W^T||_{2,1}: the sum over the columns of W^T (the rows of W, one per output unit) of
    # their L2 norms.
    l21 = torch.stack([torch.linalg.vector_norm(w, dim=1).sum() for _, w in layers])
    if bool((sigma <= 0).any()):
        raise ValueError("a layer has an all-zero weight: the measures are undefined")
    return sigma.log(), fro2, l21.log(), sigma


def _check_margin(margin: float) -> float:
    if not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    return float(margin)


def neyshabur_measure(model: nn.Module, margin: float) -> float:
    """log10 of the Neyshabur et al. 2018 measure (docs/math.md §1.1, §2.4).

    .. math::
        \\log_{10}\\Big(\\prod_l \\lVert W_l \\rVert_2^2 \\sum_l \\operatorname{srank}(W_l)
        / \\gamma^2\\Big)

    over the layers of Note [complexity layers] (normalized weights when parametrized; conv
    kernels reshaped to (C_out, C_in*k*k)).

    Args:
        model: the network.
        margin: gamma > 0, typically :func:`margin_quantile` on the training set.

    Returns:
        The measure's base-10 logarithm (computed in float64 log space to avoid overflow).

    Raises:
        ValueError: for a non-positive margin or a model without weighted layers.
        NonFiniteError: a layer's weight holds NaN or inf (a diverged network).
    """
    value = spectral_complexity(model, _check_margin(margin))[KEY_LOG10_NEYSHABUR]
    assert value is not None  # Precondition: the margin was checked positive.
    return float(value)


def bartlett_measure(model: nn.Module, margin: float) -> float:
    """log10 of Bartlett et al. 2017's spectral complexity over the margin (docs/math.md §2.4).

    .. math::
        \\log_{10}\\Big(\\prod_l \\lVert W_l \\rVert_2
        \\big(\\sum_l (\\lVert W_l^T \\rVert_{2,1}/\\lVert W_l \\rVert_2)^{2/3}\\big)^{3/2}
        / \\gamma\\Big)

    with :math:`\\lVert W^T \\rVert_{2,1}` the sum of the L2 norms of the rows of W (one per
    output unit), over the layers of Note [complexity layers].

    Args:
        model: the network.
        margin: gamma > 0.

    Returns:
        The measure's base-10 logarithm.

    Raises:
        ValueError: for a non-positive margin or a model without weighted layers.
        NonFiniteError: a layer's weight holds NaN or inf (a diverged network).
    """
    value = spectral_complexity(model, _check_margin(margin))[KEY_LOG10_BARTLETT]
    assert value is not None  # Precondition: the margin was checked positive.
    return float(value)


def margin_free_complexity(model: nn.Module) -> dict[str, float | int]:
    """The margin-free factors of both measures (defined whatever the margin).

    .. math::
        R_W = \\prod_l \\lVert W_l \\rVert_2
        \\Big(\\sum_l (\\lVert W_l^T \\rVert_{2,1} / \\lVert W_l \\rVert_2)^{2/3}\\Big)^{3/2},
        \\qquad
        N_W = \\prod_l \\lVert W_l \\rVert_2^2 \\sum_l \\operatorname{srank}(W_l)

    Args:
        model: the network (Note [complexity layers]).

    Returns:
        dict with ``KEY_LOG10_SPECTRAL_PRODUCT`` (log10 prod_l ||W_l||_2), ``KEY_SUM_SRANK``,
        ``KEY_LOG10_SPECTRAL_COMPLEXITY`` (log10 R_W, Bartlett's spectral complexity),
        ``KEY_LOG10_NEYSHABUR_NUMERATOR`` (log10 N_W) and ``KEY_N_LAYERS``.

    Raises:
        ValueError: for a model without weighted layers or with an all-zero weight.
        NonFiniteError: a layer's weight holds NaN or inf (a diverged network).
    """
    log_sigma, fro2, log_l21, sigma = _log_terms(model)
    log_prod = log_sigma.sum().item()
    sum_srank = (fro2 / sigma.square()).sum().item()
    log_ratio_sum = torch.logsumexp((2.0 / 3.0) * (log_l21 - log_sigma), dim=0).item()
    return {
        KEY_LOG10_SPECTRAL_PRODUCT: log_prod / _LN10,
        KEY_SUM_SRANK: sum_srank,
        KEY_LOG10_SPECTRAL_COMPLEXITY: (log_prod + 1.5 * log_ratio_sum) / _LN10,
        KEY_LOG10_NEYSHABUR_NUMERATOR: (2.0 * log_prod + math.log(sum_srank)) / _LN10,
        KEY_N_LAYERS: int(sigma.numel()),
    }


def spectral_complexity(model: nn.Module, margin: float | None) -> dict[str, float | int | None]:
    """Both measures and their factors in one pass.

    Args:
        model: the network (Note [complexity layers]).
        margin: gamma. When it is > 0 every entry is a number; when it is None or <= 0 (more than
            the quantile's fraction of training points misclassified) the ratios
            ``KEY_LOG10_NEYSHABUR``, ``KEY_LOG10_BARTLETT`` and ``KEY_LOG10_MARGIN`` are None and
            the margin-free entries are still computed.

    Returns:
        dict with ``KEY_LOG10_NEYSHABUR``, ``KEY_LOG10_BARTLETT``, ``KEY_LOG10_MARGIN`` and the
        entries of :func:`margin_free_complexity` (``KEY_LOG10_SPECTRAL_PRODUCT``,
        ``KEY_SUM_SRANK``, ``KEY_LOG10_SPECTRAL_COMPLEXITY``, ``KEY_LOG10_NEYSHABUR_NUMERATOR``,
        ``KEY_N_LAYERS``).

    Raises:
        ValueError: for a NaN or infinite margin, or a model without weighted layers.
        NonFiniteError: a layer's weight holds NaN or inf (a diverged network).
    """
    if margin is not None and not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number (or None), got {margin!r}")
    out: dict[str, float | int | None] = dict(margin_free_complexity(model))
    if margin is None or margin <= 0:
        out.update({KEY_LOG10_NEYSHABUR: None, KEY_LOG10_BARTLETT: None, KEY_LOG10_MARGIN: None})
        return out
    log10_margin = math.log10(float(margin))
    out[KEY_LOG10_NEYSHABUR] = out[KEY_LOG10_NEYSHABUR_NUMERATOR] - 2.0 * log10_margin
    out[KEY_LOG10_BARTLETT] = out[KEY_LOG10_SPECTRAL_COMPLEXITY] - log10_margin
    out[KEY_LOG10_MARGIN] = log10_margin
    return out


def generalization_gap(
    train_acc: float,
    test_acc: float,
    train_loss: float | None = None,
    test_loss: float | None = None,
) -> dict[str, float]:
    """Generalization gap (docs/math.md §2.1), signed so that overfitting is positive for both.

    Args:
        train_acc: training accuracy (any unit; the gap has the same unit).
        test_acc: test accuracy.
        train_loss: optional training loss.
        test_loss: optional test loss (both losses or neither).

    Returns:
        ``{KEY_GAP_ACC: train_acc - test_acc}`` plus ``KEY_GAP_LOSS: test_loss - train_loss``
        when losses are given.

    Raises:
        ValueError: when only one of the losses is given.
    """
    if (train_loss is None) != (test_loss is None):
        raise ValueError(
            f"give both train_loss and test_loss or neither, got {train_loss!r} and {test_loss!r}"
        )
    out = {KEY_GAP_ACC: float(train_acc) - float(test_acc)}
    if train_loss is not None and test_loss is not None:
        out[KEY_GAP_LOSS] = float(test_loss) - float(train_loss)
    return out
