"""Pure tensor maths of stable rank normalization (docs/math.md §1); depends only on torch.

* :func:`weight_to_matrix` / :func:`matrix_to_weight`: the reshape of a weight to the matrix SRN
  acts on and its exact inverse (Note [srn reshape]).
* :func:`stable_rank`: the exact stable rank ``||W||_F^2 / ||W||_2^2`` by SVD.
* :func:`srn_optimal`: the closed-form optimum of the stable-rank projection (the paper's
  Theorem 1) by SVD, for any number ``keep_top`` of preserved top singular values. It is the
  oracle the layer (``stablerank.srn``) is tested against.
* :func:`power_iteration`: the in-place power-iteration step shared by the layer.

Note [srn reshape]
    SRN acts on a matrix whose rows are indexed by the weight's ``dim`` (output channels for
    Linear/ConvNd, dim 0; dim 1 for ConvTransposeNd, whose weight is (C_in, C_out, k...)). We move
    ``dim`` to the front and flatten the rest: (C_out, C_in*k*k) for a Conv2d. The inverse must
    move the axis back to where it was: a plain ``reshape(weight.shape)`` of a matrix built with a
    permutation scrambles the entries whenever ``dim != 0`` (the reference implementation's bug).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "matrix_to_weight",
    "power_iteration",
    "power_iteration_steps",
    "spectral_norm_exact",
    "srn_optimal",
    "stable_rank",
    "target_srank",
    "weight_to_matrix",
]


def _check_dim(weight: Tensor, dim: int) -> int:
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):  # numpy ints, as torch
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -weight.ndim <= dim < weight.ndim:
        raise IndexError(
            f"dim must be in [-{weight.ndim}, {weight.ndim - 1}] for a weight of shape "
            f"{tuple(weight.shape)}, got {dim}"
        )
    return int(dim) % weight.ndim


def weight_to_matrix(weight: Tensor, dim: int = 0) -> Tensor:
    """Reshape a weight to the 2-D matrix SRN normalizes: ``dim`` first, the rest flattened.

    Args:
        weight: a tensor of 2 or more dimensions (a 1-D tensor becomes a (1, n) row).
        dim: the axis that indexes the matrix rows (default 0; 1 for ConvTransposeNd).

    Returns:
        A (weight.shape[dim], numel / weight.shape[dim]) tensor (a view when ``dim == 0``).

    See Note [srn reshape].
    """
    if weight.ndim <= 1:
        if weight.ndim == 0:
            raise TypeError("weight must be a tensor of 1 or more dimensions, got a 0-d tensor")
        return weight.unsqueeze(0)
    if dim != 0:
        dim = _check_dim(weight, dim)
        if dim != 0:
            weight = weight.movedim(dim, 0)
    # explicit column count: reshape(0, -1) is ambiguous for a weight with no rows
    return weight.reshape(weight.shape[0], math.prod(weight.shape[1:]))


def matrix_to_weight(matrix: Tensor, shape: torch.Size | tuple[int, ...], dim: int = 0) -> Tensor:
    """Exact inverse of :func:`weight_to_matrix` for a weight of the given ``shape``."""
    if dim == 0 or len(shape) == 1:
        return matrix.reshape(shape)
    dim = dim % len(shape)
    moved = (shape[dim], *shape[:dim], *shape[dim + 1 :])
    return matrix.reshape(moved).movedim(0, dim)


def _sigma_max_and_frobenius(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Exact sigma_max and ||W||_F of the reshaped weight, both float64 0-d tensors.

    sigma_max^2 is the top eigenvalue of the float64 Gram matrix of the smaller side
    (m x m for m <= n): a BLAS-3 product and a small symmetric eigensolve, 5-20x faster than the
    SVD of a 640x5760 conv matrix, and exact to float64 rounding (the absolute error of the
    eigenvalue is ~1e-16 ||W||_F^2, i.e. relative ~1e-16 srank(W) <= 1e-16 min(m, n)).
    """
    # Measurements only (not the layer's forward): the checks cost nothing there. An integer,
    # bool or complex weight would give a wrong number, not an error.
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a floating-point tensor, got {type(weight).__name__}")
    if not weight.is_floating_point() or weight.ndim == 0:
        raise TypeError(
            "weight must be a floating-point tensor of 1 or more dimensions, got a "
            f"{weight.ndim}-d {weight.dtype} tensor"
        )
    matrix = weight_to_matrix(weight.detach(), dim).double()
    if matrix.numel() == 0:
        zero = matrix.new_zeros(())
        return zero, zero
    # Scaled by the largest entry first: squares of tiny (1e-200) or huge float64 entries would
    # underflow or overflow the Gram matrix. A non-finite entry gives NaN for both.
    scale = matrix.abs().amax()
    if not bool(torch.isfinite(scale)):
        nan = matrix.new_full((), float("nan"))
        return nan, nan
    if scale == 0:
        return scale, scale
    matrix = matrix / scale
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    sigma_max = torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt()
    return sigma_max * scale, torch.linalg.vector_norm(matrix) * scale


def _result_dtype(weight: Tensor) -> torch.dtype:
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def spectral_norm_exact(weight: Tensor, dim: int = 0) -> Tensor:
    """The exact largest singular value of the reshaped weight (no gradient; float32 for
    half-precision input)."""
    return _sigma_max_and_frobenius(weight, dim)[0].to(_result_dtype(weight))


def stable_rank(weight: Tensor, dim: int = 0) -> Tensor:
    """Exact stable rank of the reshaped weight (docs/math.md §1.1).

    .. math::
        \\operatorname{srank}(W) = \\frac{\\|W\\|_F^2}{\\|W\\|_2^2}
            = \\frac{\\sum_i \\sigma_i^2}{\\sigma_1^2} \\in [1, \\operatorname{rank}(W)]

    Args:
        weight: a weight of 2 or more dimensions, reshaped with :func:`weight_to_matrix`.
        dim: the row axis of the reshape (default 0; a ConvTranspose layer's is 1, as in
            :func:`stablerank.stable_rank_norm` and :func:`stablerank.layer_report`).

    Returns:
        A 0-d tensor without gradient: a measurement, not a differentiable penalty (a
        regularizer needs ``matrix_norm(M, "fro") ** 2 / matrix_norm(M, 2) ** 2`` of
        ``M = weight_to_matrix(weight, dim)``, whose gradient goes through an SVD).
        Float32 for half-precision input. An all-zero weight has stable rank 0 by
        convention; a weight with an inf or NaN entry has stable rank NaN. The weight is scaled
        by its largest entry first, so tiny (1e-200) and huge float64 weights are exact.

    Example:
        >>> stable_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0])))
        tensor(1.5000)
    """
    sigma_max, fro = _sigma_max_and_frobenius(weight, dim)
    srank = torch.where(sigma_max != 0, (fro / sigma_max).square(), 0.0)
    return srank.to(_result_dtype(weight))


def target_srank(rank_ratio: float, shape: tuple[int, int]) -> float:
    """The absolute target ``r = max(1, c * min(m, n))`` of a rank ratio ``c`` in (0, 1]
    (docs/math.md §1.4)."""
    if (
        not isinstance(rank_ratio, numbers.Real)
        or isinstance(rank_ratio, bool)
        or not (0.0 < rank_ratio <= 1.0)
    ):
        raise ValueError(f"rank_ratio must be a number in (0, 1], got {rank_ratio!r}")
    return max(1.0, rank_ratio * min(shape))


def srn_optimal(weight: Tensor, srank: float, keep_top: int = 1) -> Tensor:
    """Closed-form optimal stable-rank projection (docs/math.md §1.2, the paper's Theorem 1).

    Solves

    .. math::
        \\min_X \\|W - X\\|_F \\quad \\text{s.t.}\\quad \\operatorname{srank}(X) = r,\\;
        \\sigma_i(X) = \\sigma_i(W)\\ (i \\le k)

    by SVD. With :math:`S_1 = \\sum_{i \\le \\max(k,1)} \\sigma_i u_i v_i^\\top` and
    :math:`S_2 = W - S_1`, the optimum is :math:`\\gamma_1 S_1 + \\gamma_2 S_2`:

    * :math:`k \\ge 1`: :math:`\\gamma_1 = 1`,
      :math:`\\gamma_2 = \\sqrt{r\\sigma_1^2 - \\|S_1\\|_F^2} / \\|S_2\\|_F`;
    * :math:`k = 0`: :math:`\\gamma = \\sqrt{r-1}\\,\\sigma_1/\\|S_2\\|_F`,
      :math:`\\gamma_2 = (\\gamma + r - 1)/r`, :math:`\\gamma_1 = \\gamma_2/\\gamma`.

    When ``srank(W) <= r`` the answer is ``W`` itself.

    Args:
        weight: a 2-D floating tensor W (m x n).
        srank: the target stable rank r >= 1.
        keep_top: k >= 0, the number of top singular values kept unchanged (default 1).

    Returns:
        The optimal X, same shape and dtype as ``weight`` (computed in float64 at least for half
        input, cast back).

    Raises:
        ValueError: ``weight`` not 2-D, empty or not floating, ``srank < 1``, ``keep_top < 0``, or
            ``keep_top >= 1`` with ``r * sigma_1^2 < ||S_1||_F^2`` (no feasible X keeps the top
            ``keep_top`` singular values at stable rank ``r``).
    """
    if weight.ndim != 2 or not weight.is_floating_point() or weight.numel() == 0:
        raise ValueError(
            f"weight must be a non-empty 2-D floating tensor, got shape {tuple(weight.shape)} "
            f"and dtype {weight.dtype}"
        )
    if not (isinstance(srank, numbers.Real) and not isinstance(srank, bool)) or not (
        1 <= srank < math.inf
    ):
        raise ValueError(f"srank must be a finite number >= 1, got {srank!r}")
    if not isinstance(keep_top, int) or keep_top < 0:
        raise ValueError(f"keep_top must be an integer >= 0, got {keep_top!r}")
    work = weight.double() if weight.dtype != torch.float64 else weight
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    total = (s * s).sum()
    if s[0] == 0 or total / (s[0] * s[0]) <= srank:
        return weight.clone()
    head = max(keep_top, 1)
    s1 = (u[:, :head] * s[:head]) @ vh[:head]
    s2 = work - s1
    s2_norm = torch.linalg.matrix_norm(s2)
    head_energy = (s[:head] ** 2).sum()
    if keep_top >= 1:
        slack = srank * s[0] ** 2 - head_energy
        if slack < 0:
            raise ValueError(
                f"no matrix keeps the top keep_top={keep_top} singular values at srank={srank}: "
                f"needs srank >= ||S1||_F^2 / sigma_1^2 = {(head_energy / s[0] ** 2).item():.6g}"
            )
        out = s1 + (torch.sqrt(slack) / s2_norm) * s2
    else:
        gamma = math.sqrt(srank - 1) * s[0] / s2_norm
        gamma2 = (gamma + srank - 1) / srank
        # gamma1 = gamma2 / gamma, written without the division: r = 1 gives gamma = 0 and the
        # limit gamma1 = 1 (X = S1, rank one), not 0/0.
        gamma1 = 1.0 / srank + math.sqrt(srank - 1) * s2_norm / (srank * s[0])
        out = gamma1 * s1 + gamma2 * s2
    return out.to(weight.dtype)


def power_iteration(matrix: Tensor, u: Tensor, v: Tensor, n_iterations: int, eps: float) -> Tensor:
    """Run ``n_iterations`` power-iteration steps in place on unit vectors ``u`` (m) and ``v`` (n):
    ``v <- normalize(W^T u)``, ``u <- normalize(W v)`` (docs/math.md §1.3, step 1).

    In-place so that data-parallel replicas, which share the buffers, see the update (as torch's
    spectral_norm does). ``matrix`` is cast to the vectors' dtype (float32 for half weights).

    Returns:
        ``||W v||`` of the last step, a 0-d tensor: ``u^T W v`` for the updated u, v (since
        u = W v / ||W v||), the estimate of the spectral norm.

    Note [srn power iteration]
        Each half-step adds ``delta`` times the previous vector before normalizing:
        ``v <- normalize(alpha W^T u + delta v)``, in one ``addmv`` (the cost of the plain
        ``mv``, and no ``eps`` clamp). At the fixed point ``W^T u`` is parallel to ``v``, so the
        term changes nothing there; elsewhere it is far below the rounding of ``alpha W^T u``
        (delta = 1e-18 in float32, 1e-150 in float64). But a zero weight now leaves u, v unchanged
        instead of collapsing them to zero forever (the plain iteration's fixed point), with no
        host sync. ``alpha`` = 2^-30 in float32 (1 in float64), a power of two (exact), centers
        the range whose squares neither overflow nor underflow: float32 weights with spectral
        norm in about [1e-8, 1e28] (1e20 included) iterate to the right vectors. The returned
        estimate carries delta / alpha (about 1.1e-9 in float32): below rounding for spectral
        norms above about 0.01, a relative bias below them (docs/library.md, "Tiny float32
        weights").
    """
    del eps  # no clamp needed: ||alpha W^T u + delta v|| >= delta > 0 unless they cancel exactly
    norm, scale = power_iteration_steps(matrix, u, v, n_iterations)
    return norm if scale == 1.0 else norm * scale


def power_iteration_steps(
    matrix: Tensor, u: Tensor, v: Tensor, n_iterations: int
) -> tuple[Tensor, float]:
    """The steps of :func:`power_iteration`; returns ``||alpha W v||`` (a 0-d tensor) and the
    Python float ``1 / alpha`` that scales it to the estimate of sigma. The CPU path of the layer
    reads the norm as a float and scales it in Python, one kernel fewer."""
    if n_iterations < 1:  # the estimate is that of the last step
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations!r}")
    # Detached, so no op here records a graph: no no_grad context needed (its entry costs more
    # than an op on the CPU), and a torch.jit.trace, which records ops but not contexts, works.
    matrix = matrix.detach()
    if matrix.dtype != u.dtype:
        matrix = matrix.to(u.dtype)
    try:
        alpha, delta = _POWER_SCALES[u.dtype]
    except KeyError:
        raise TypeError(
            f"u and v must be float32 or float64 (the layer keeps them in float32 for half "
            f"weights), got {u.dtype}"
        ) from None
    for _ in range(n_iterations):
        x = torch.addmv(v, matrix.t(), u, beta=delta, alpha=alpha)  # (n,)
        torch.div(x, torch.linalg.vector_norm(x), out=v)
        y = torch.addmv(u, matrix, v, beta=delta, alpha=alpha)  # (m,)
        norm = torch.linalg.vector_norm(y)
        torch.div(y, norm, out=u)
    return norm, 1.0 / alpha


# (alpha, delta) of Note [srn power iteration], per vector dtype.
_POWER_SCALES = {torch.float32: (2.0**-30, 1e-18), torch.float64: (1.0, 1e-150)}
