"""Empirical Lipschitz constant (eL) of a network, in both forms of docs/math.md §2.2.

* **Pairwise** (the paper's "eLhist"): for sampled pairs of inputs,

  .. math::
      \\frac{\\lVert f(x_i) - f(x_j) \\rVert_2}{\\lVert x_i - x_j \\rVert_2}.

* **Local**: the spectral norm of the input-output Jacobian :math:`\\lVert J_f(x) \\rVert_2`,
  at data points and at points on segments between them (:func:`interpolate`), by power iteration
  on :math:`J^T J` with ``torch.func`` JVP/VJP products (the Jacobian is never materialized).

Both are data dependent, unlike the layer-wise product :math:`\\prod_l \\lVert W_l \\rVert_2`
(an upper bound for a chain of linear layers only: docs/math.md §2.2).

``model`` is an ``nn.Module`` or any callable ``f(x) -> Tensor`` (put a callable's modules in eval
mode yourself). A **conditional** model ``f(x, y)`` (e.g. a projection discriminator) is measured
as the map :math:`x \\mapsto f(x, y)` with the class ``y`` held fixed: pass each input's label as
``y``; a pair is evaluated with the label of its first point for both points, so the ratio
compares outputs of one function of x (see :func:`pairwise_lipschitz`).

.. note::
    Every measurement runs the model in **eval mode** (BatchNorm uses its running statistics,
    SN/SRN reuse their frozen u, v) so that samples are independent of one another and repeated
    calls are deterministic; the model's previous mode is restored afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from stablerank._optional import import_optional
from stablerank.metrics._checks import (
    check_finite,
    check_positive_int,
    check_seed,
    described,
    eval_mode,
)

__all__ = [
    "KEY_EL_MAX",
    "KEY_EL_MEAN",
    "KEY_EL_N",
    "interpolate",
    "jacobian_spectral_norm",
    "pairwise_lipschitz",
    "plot_histogram",
    "quantile_key",
    "summarize",
]

KEY_EL_MAX = "max"
KEY_EL_MEAN = "mean"
KEY_EL_N = "n"
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
# Inputs closer than this (in L2) are treated as duplicates: their ratio is undefined.
_MIN_PAIR_DISTANCE = 1e-12
_DEFAULT_BATCH_SIZE = 256
_DEFAULT_POWER_ITERS = 20
_DEFAULT_BINS = 50


def quantile_key(q: float) -> str:
    """The key of quantile ``q`` in :func:`summarize`: 0.5 -> ``"q50"``, 0.99 -> ``"q99"``."""
    return f"q{100 * q:g}"


# f(x), or f(x, y) for a conditional model (the functions pass y when they are given one).
Model = nn.Module | Callable[..., Tensor]


def _outputs(model: Model, x: Tensor, batch_size: int, y: Tensor | None = None) -> Tensor:
    """f(x) (or f(x, y) with per-sample labels), flattened per sample, (N, D), computed in
    batches without gradients."""
    with torch.no_grad():
        if y is None:
            return torch.cat([model(xb).reshape(xb.shape[0], -1) for xb in x.split(batch_size)])
        return torch.cat(
            [
                model(xb, yb).reshape(xb.shape[0], -1)
                for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
            ]
        )


def _check_labels(y: Tensor | None, x: Tensor) -> Tensor | None:
    """Labels of ``x`` moved to its device, after checking there is one per sample."""
    if y is None:
        return None
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must hold one label per sample of x, shape ({x.shape[0]},), got {tuple(y.shape)}"
        )
    return y.to(x.device)


def pairwise_lipschitz(
    model: Model,
    x: Tensor,
    *,
    n_pairs: int,
    seed: int = 0,
    x_other: Tensor | None = None,
    batch_size: int = _DEFAULT_BATCH_SIZE,
    y: Tensor | None = None,
) -> Tensor:
    """Pairwise empirical Lipschitz ratios over sampled pairs (eLhist, docs/math.md §2.2).

    .. math::
        r_{ij} = \\frac{\\lVert f(x_i) - f(x_j) \\rVert_2}{\\lVert x_i - x_j \\rVert_2}

    Pairs are drawn uniformly with a seeded generator: both members from ``x`` (``i != j``), or,
    when ``x_other`` is given, ``x_i`` from ``x`` and ``x_j`` from ``x_other`` (e.g. real-vs-fake
    pairs for a GAN discriminator). Pairs of identical inputs (distance below 1e-12) are dropped,
    so the result may hold fewer than ``n_pairs`` values. Outputs and inputs are flattened per
    sample. Runs in eval mode (see module note) on the device of ``x``.

    With labels ``y`` (a conditional model ``f(x, y)``), both points of pair ``(i, j)`` are
    evaluated with the label ``y_i`` of the first point (from ``x``), so each ratio is one of the
    class-``y_i`` map :math:`x \\mapsto f(x, y_i)`:

    .. math::
        r_{ij} = \\frac{\\lVert f(x_i, y_i) - f(x_j, y_i) \\rVert_2}{\\lVert x_i - x_j \\rVert_2}.

    The pairs drawn for a seed are the same with or without labels.

    Args:
        model: the network f (module or callable); a module's mode is restored afterwards.
        x: inputs, (N, ...) with N >= 2 (N >= 1 when ``x_other`` is given).
        n_pairs: number of pairs to sample (>= 1).
        seed: seed of the pair sampler (default 0).
        x_other: optional second set, (M, ...) with the same per-sample shape as ``x``.
        batch_size: forward batch size (default 256); does not change the result.
        y: labels of ``x``, (N,), for a model called as ``model(x, y)`` (default None: the
            model is called as ``model(x)``).

    Returns:
        float64 tensor of ratios, (n_valid,), on the CPU.

    Raises:
        ValueError: on too few samples, mismatched shapes (``y`` included) or non-positive
            counts.
        TypeError: a ``seed`` that is not an integer.
        NonFiniteError: ``x`` or ``x_other`` holds NaN or inf (a NaN distance fails the
            duplicate test, so its pair would be dropped without a word), or the model's
            outputs do.
    """
    n_pairs = check_positive_int("n_pairs", n_pairs)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_seed(seed)
    if x_other is None and x.shape[0] < 2:
        raise ValueError(
            f"x must hold at least 2 samples to form pairs, got shape {tuple(x.shape)}"
        )
    if x_other is not None and x_other.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"x_other must have per-sample shape {tuple(x.shape[1:])}, got {tuple(x_other.shape)}"
        )
    if x.shape[0] < 1 or (x_other is not None and x_other.shape[0] < 1):
        raise ValueError("x and x_other must be non-empty")
    check_finite(x, "x")
    if x_other is not None:
        check_finite(x_other, "x_other")
    y = _check_labels(y, x)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    i = torch.randint(n, (n_pairs,), generator=gen)
    if x_other is None:
        # j uniform over the n - 1 indices other than i.
        j = (i + 1 + torch.randint(n - 1, (n_pairs,), generator=gen)) % n
        second = x
    else:
        j = torch.randint(x_other.shape[0], (n_pairs,), generator=gen)
        second = x_other
    # Evaluate f only on the samples used, once each.
    ui, inv_i = torch.unique(i, return_inverse=True)
    uj, inv_j = torch.unique(j, return_inverse=True)
    with eval_mode(model):
        if y is None:
            fi = _outputs(model, x[ui.to(x.device)], batch_size)[inv_i.to(x.device)]
            fj = _outputs(model, second[uj.to(x.device)], batch_size)[inv_j.to(x.device)]
        else:
            ui_d = ui.to(x.device)
            fi = _outputs(model, x[ui_d], batch_size, y[ui_d])[inv_i.to(x.device)]
            # The second point takes the first point's label, so f(x_j, .) is evaluated once per
            # pair rather than once per distinct j.
            fj = _outputs(model, second[j.to(x.device)], batch_size, y[i.to(x.device)])
    check_finite(fi, "the model's outputs")  # a diverged network has no Lipschitz estimate
    check_finite(fj, "the model's outputs")
    xi = x[i.to(x.device)].reshape(n_pairs, -1).double()
    xj = second[j.to(x.device)].reshape(n_pairs, -1).double()
    dx = torch.linalg.vector_norm(xi - xj, dim=1)
    df = torch.linalg.vector_norm(fi.double() - fj.double(), dim=1)
    keep = dx > _MIN_PAIR_DISTANCE
    return (df[keep] / dx[keep]).cpu()


def jacobian_spectral_norm(
    model: Model,
    x: Tensor,
    *,
    n_iters: int = _DEFAULT_POWER_ITERS,
    seed: int = 0,
    batch_size: int = _DEFAULT_BATCH_SIZE,
    y: Tensor | None = None,
    exact: bool = False,
) -> Tensor:
    """Per-sample spectral norm of the input-output Jacobian, ||J_f(x_n)||_2 (docs/math.md §2.2).

    With ``exact``, the whole Jacobian (one VJP per output coordinate, all samples at once) and
    its largest singular value: exact, and cheaper than power iteration where the outputs are few
    (K outputs cost K VJPs; ``n_iters`` iterations cost ``n_iters`` JVP/VJP pairs), as a
    classifier's logits or a discriminator's score. Otherwise
    power iteration on :math:`J^T J`: :math:`v \\leftarrow J^T J v / \\lVert J^T J v \\rVert`,
    with :math:`Jv` from ``torch.func.jvp`` and :math:`J^T u` from ``torch.func.vjp``; the
    estimate is :math:`\\lVert J v \\rVert_2` for the final unit ``v`` (a lower bound that
    increases to :math:`\\sigma_{max}` at rate :math:`(\\sigma_2/\\sigma_1)^{2k}`). In eval mode
    the samples of a batch are independent, so the Jacobian of the batched map is block diagonal:
    one JVP/VJP over the batch gives every sample's product at once and each block is normalized
    on its own.

    Args:
        model: the network f (module or callable); a module runs in eval mode, its mode
            restored afterwards.
        x: points, (N, ...).
        n_iters: power iterations (default 20, >= 1).
        seed: seed of the random start vectors (default 0).
        batch_size: samples per batch (default 256); does not change the result.
        y: labels of ``x``, (N,), for a model called as ``model(x, y)``: the Jacobian of
            :math:`x \\mapsto f(x, y_n)` at each ``x_n`` (default None: ``model(x)``).
        exact: the whole Jacobian's largest singular value instead of power iteration (default
            False; ``n_iters`` and ``seed`` are then unused).

    Returns:
        float tensor (N,) on the CPU, in the dtype of ``x``.

    Raises:
        ValueError: on non-positive ``n_iters`` or ``batch_size``, ``y`` not of shape (N,), or
            ``x`` not a non-empty floating-point tensor.
        TypeError: a ``seed`` that is not an integer, an ``exact`` that is not a bool.
        NonFiniteError: ``x`` holds NaN or inf, or the norms do (the model's outputs did).
    """
    n_iters = check_positive_int("n_iters", n_iters)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_seed(seed)
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be True or False, got {exact!r}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a floating-point tensor (N, ...) with N >= 1, got "
            f"{described(x)}{'' if not isinstance(x, Tensor) else tuple(x.shape)}"
        )
    check_finite(x, "x")
    y = _check_labels(y, x)
    gen = torch.Generator().manual_seed(seed)
    # Start vectors drawn on the CPU for device-independent results.
    v0 = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    out = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb, vb = x[start : start + batch_size], v0[start : start + batch_size]
            f = (
                model
                if y is None
                else functools.partial(_with_labels, model, y[start : start + batch_size])
            )
            if exact:
                out.append(_jacobian_norm_exact(f, xb.detach()).cpu())
            else:
                out.append(_jacobian_norm_batch(f, xb.detach(), vb.to(xb.device), n_iters).cpu())
    norms = torch.cat(out)
    check_finite(norms, "the Jacobian norms (the model's outputs diverged)")
    return norms


def _with_labels(model: Model, y: Tensor, x: Tensor) -> Tensor:
    """``model(x, y)`` as a function of x alone (the class held fixed)."""
    return model(x, y)


def _unit(t: Tensor) -> Tensor:
    """Normalize each sample of t (N, ...) to unit L2 norm."""
    norm = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)
    return t / norm.clamp_min(torch.finfo(t.dtype).tiny).reshape(-1, *([1] * (t.dim() - 1)))


def _jacobian_norm_batch(model: Model, x: Tensor, v: Tensor, n_iters: int) -> Tensor:
    def f(inp: Tensor) -> Tensor:
        return model(inp).reshape(inp.shape[0], -1)  # (B, D_out)

    # One VJP closure serves every iteration (J^T u is linear in u at fixed x).
    _, vjp_fn = torch.func.vjp(f, x)
    v = _unit(v)
    for _ in range(n_iters):
        _, jv = torch.func.jvp(f, (x,), (v,))  # (B, D_out)
        (jtjv,) = vjp_fn(jv)  # (B, *in)
        v = _unit(jtjv.detach())
    _, jv = torch.func.jvp(f, (x,), (v,))
    return torch.linalg.vector_norm(jv.detach(), dim=1)


def _jacobian_norm_exact(model: Model, x: Tensor) -> Tensor:
    def f(inp: Tensor) -> Tensor:
        return model(inp).reshape(inp.shape[0], -1)  # (B, K)

    out, vjp_fn = torch.func.vjp(f, x)
    # Row k of every sample's Jacobian at once: the batch's Jacobian is block diagonal in eval
    # mode, so the cotangent e_k on every sample gives each sample's own row.
    rows = [vjp_fn(torch.zeros_like(out).index_fill_(1, torch.tensor([k], device=out.device), 1))[0]
            for k in range(out.shape[1])]  # fmt: skip
    jac = torch.stack([r.detach().reshape(x.shape[0], -1) for r in rows], dim=1)  # (B, K, D_in)
    check_finite(jac, "the Jacobians (the model's outputs diverged)")  # before the SVD sees NaN
    return torch.linalg.matrix_norm(jac, ord=2)


def interpolate(x: Tensor, y: Tensor, n: int, seed: int = 0) -> Tensor:
    """Points on segments between data pairs: x_i + t (y_j - x_i), t ~ U[0, 1].

    ``i`` and ``j`` are drawn uniformly from ``x`` and ``y`` (pass the same set twice for
    within-set segments, or real and fake samples for segments between them).

    Args:
        x: first endpoints, (N, ...).
        y: second endpoints, (M, ...) with the per-sample shape of ``x``.
        n: number of points (>= 1).
        seed: seed of the sampler (default 0).

    Returns:
        (n, ...) tensor on the device and in the dtype of ``x``.

    Raises:
        ValueError: on mismatched shapes, empty sets or non-positive ``n``.
    """
    n = check_positive_int("n", n)
    seed = check_seed(seed)
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor and y a tensor, got {described(x)} "
                        f"and {described(y)}")  # fmt: skip
    if x.dim() < 1 or y.dim() < 1:
        raise ValueError(f"x and y must be (N, ...) tensors, got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")  # fmt: skip
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"x and y must share the per-sample shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"x and y must be non-empty, got {tuple(x.shape)} and {tuple(y.shape)}")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(x.shape[0], (n,), generator=gen).to(x.device)
    j = torch.randint(y.shape[0], (n,), generator=gen).to(x.device)
    t = torch.rand((n,) + (1,) * (x.dim() - 1), generator=gen, dtype=x.dtype).to(x.device)
    return x[i] + t * (y[j].to(x) - x[i])


def summarize(
    values: Tensor | Sequence[float], quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> dict[str, float]:
    """Max, mean, count and quantiles of a set of eL values.

    Args:
        values: 1-D values (ratios or Jacobian norms).
        quantiles: levels in [0, 1] (default (0.5, 0.9, 0.99)), keyed by :func:`quantile_key`.

    Returns:
        dict with ``KEY_EL_MAX``, ``KEY_EL_MEAN``, ``KEY_EL_N`` and one key per quantile.

    Raises:
        ValueError: on empty values or a quantile outside [0, 1].
        NonFiniteError: values that hold NaN or inf.
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    if v.numel() == 0:
        raise ValueError("values must be non-empty")
    check_finite(v, "values")
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q!r}")
    out = {KEY_EL_MAX: v.max().item(), KEY_EL_MEAN: v.mean().item(), KEY_EL_N: int(v.numel())}
    for q in quantiles:
        out[quantile_key(q)] = torch.quantile(v, q).item()
    return out


def plot_histogram(
    values: Tensor | Mapping[str, Tensor],
    path: str | Path,
    *,
    bins: int = _DEFAULT_BINS,
    title: str | None = None,
    xlabel: str = "empirical Lipschitz ratio",
) -> Path:
    """Write a PNG histogram (matplotlib Agg backend, no global pyplot state).

    Args:
        values: one tensor, or a mapping label -> tensor drawn as overlaid histograms on shared
            bins (e.g. real-real, fake-fake, real-fake).
        path: output file (parent folders are created).
        bins: number of bins (default 50).
        title: optional figure title.
        xlabel: x-axis label (default "empirical Lipschitz ratio").

    Returns:
        The written path.

    Raises:
        ModuleNotFoundError: matplotlib is not installed
            (``pip install "stablerank[experiments]"``).
    """
    # matplotlib is in the "experiments" extra: imported only to draw.
    backend_agg = import_optional("matplotlib.backends.backend_agg", "plot_histogram")
    figure = import_optional("matplotlib.figure", "plot_histogram")

    bins = check_positive_int("bins", bins)
    series = {"": values} if isinstance(values, Tensor) else dict(values)
    tensors = {k: torch.as_tensor(v, dtype=torch.float64).flatten() for k, v in series.items()}
    for k, t in tensors.items():  # a NaN would make every bin edge NaN: an empty figure
        check_finite(t, f"values[{k!r}]" if k else "values")
    arrays = {k: t.numpy() for k, t in tensors.items()}
    nonempty = [a for a in arrays.values() if a.size]
    if not nonempty:
        raise ValueError("values must hold at least one non-empty series")
    lo = min(float(a.min()) for a in nonempty)
    hi = max(float(a.max()) for a in nonempty)
    # float64 edges, as the values: float32 ones can round inside [lo, hi] and drop the extremes
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1, dtype=torch.float64).numpy()
    fig = figure.Figure(figsize=(6, 4))
    backend_agg.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, a in arrays.items():
        ax.hist(a, bins=edges, alpha=0.5, label=label or None)
    if any(label for label in arrays):
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
