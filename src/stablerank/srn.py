"""Stable Rank Normalization of one weight, as a ``torch.nn.utils.parametrize`` parametrization.

Users call :func:`stable_rank_norm` (registration, like torch's ``spectral_norm``) and
:func:`remove_stable_rank_norm`; the private :class:`_StableRankNorm` module does the work.
Depends only on torch and :mod:`stablerank.linalg`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stablerank.linalg import matrix_to_weight, power_iteration, target_srank, weight_to_matrix

__all__ = ["remove_stable_rank_norm", "stable_rank_norm"]

# Power iterations run at registration so the first training step starts from converged u, v
# (torch's spectral_norm uses the same number).
_WARMUP_POWER_ITERS = 15
DEFAULT_RANK_RATIO = 0.7  # the reference implementation's default c
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class _StableRankNorm(nn.Module):
    """Maps a raw weight W to its stable-rank-normalized version (SPEC 1.3, Algorithm 1).

    With unit vectors u, v from power iteration and sigma = u^T W v, the output is

        W_f = u v^T + s * R,   R = W / sigma - u v^T,   s = min(1, sqrt(r - 1) / ||R||_F),

    computed without forming R (Note [srn without R]). ``_u`` and ``_v`` are buffers: they follow
    ``.to()``, live in ``state_dict`` and are never optimized.
    """

    _u: Tensor
    _v: Tensor

    def __init__(
        self,
        weight: Tensor,
        *,
        srank: float,
        n_power_iterations: int,
        dim: int,
        eps: float,
        exact: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.exact = exact
        self.n_power_iterations = n_power_iterations
        matrix = weight_to_matrix(weight.detach(), dim)  # (m, n)
        m, n = matrix.shape
        self.srank = float(srank)
        # r >= min(m, n) >= srank(W) always: the clamp can never act, the layer is plain SN. Decided
        # once here so the forward stays branch-free and agrees exactly with torch's spectral_norm.
        self.clamps_srank = self.srank < min(m, n)
        self._sqrt_r_minus_1 = math.sqrt(self.srank - 1.0)
        # Power iteration runs in float32 for half-precision weights (their range and precision are
        # too small for the iterates); float32/float64 weights keep their dtype (gradcheck).
        vec_dtype = torch.float32 if weight.dtype in _HALF_DTYPES else weight.dtype
        u = F.normalize(matrix.new_empty(m, dtype=vec_dtype).normal_(0, 1), dim=0, eps=eps)
        v = F.normalize(matrix.new_empty(n, dtype=vec_dtype).normal_(0, 1), dim=0, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self._eval_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self._update_vectors(matrix, _WARMUP_POWER_ITERS)

    @torch.no_grad()
    def _update_vectors(self, matrix: Tensor, n_iterations: int) -> Tensor:
        """Update u, v in place; return the spectral-norm estimate u^T W v (no gradient)."""
        if self.exact:
            # SVD of the current weight: u, v are the exact top singular pair.
            u, s, vh = torch.linalg.svd(matrix.to(self._u.dtype), full_matrices=False)
            self._u.copy_(u[:, 0])
            self._v.copy_(vh[0])
            return s[0]
        return power_iteration(matrix, self._u, self._v, n_iterations, self.eps)

    def forward(self, weight: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._compute(weight)
        # Eval mode under no_grad: u, v are frozen, so the normalized weight changes only when
        # the raw weight or the vectors change in place (optimizer step, load_state_dict, .to).
        key = (weight._version, weight.data_ptr(), weight.dtype, self._u._version,
               self._v._version, self._u.data_ptr())  # fmt: skip
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self._compute(weight))
        return self._eval_cache[1]

    def _compute(self, weight: Tensor) -> Tensor:
        if torch.is_autocast_enabled(weight.device.type):
            # Norms and the rank-one update in the weight's precision (float32 for half weights),
            # never in autocast's lower one.
            with torch.autocast(device_type=weight.device.type, enabled=False):
                return self._compute(weight)
        matrix = weight_to_matrix(weight, self.dim)
        if matrix.dtype != self._u.dtype:
            matrix = matrix.to(self._u.dtype)
        sigma_estimate = (
            self._update_vectors(matrix, self.n_power_iterations) if self.training else None
        )
        # Clones: the in-place updates of a later forward must not touch vectors saved for this
        # forward's backward (e.g. D(real) and D(fake) in one graph).
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        sqrt_r_minus_1 = self._sqrt_r_minus_1 if self.clamps_srank else None
        path = _normalization_path(matrix)
        if path == "composite":
            normalized = _composite_normalize(matrix, u, v, sqrt_r_minus_1, self.eps)
        else:
            if sigma_estimate is None:
                sigma_estimate = torch.dot(u, torch.mv(matrix.detach(), v))
            if path == "fused":
                normalized = _FusedStableRankNorm.apply(
                    matrix, u, v, float(sigma_estimate), sqrt_r_minus_1, self.eps
                )
            else:
                normalized = _TensorStableRankNorm.apply(
                    matrix, u, v, sigma_estimate.detach(), sqrt_r_minus_1, self.eps
                )
        out = matrix_to_weight(normalized, weight.shape, self.dim)
        return out if out.dtype == weight.dtype else out.to(weight.dtype)

    def right_inverse(self, value: Tensor) -> Tensor:
        # Assigning ``module.weight = W`` stores W itself as the raw weight (as torch's SN does):
        # the normalization is not invertible.
        return value

    def train(self, mode: bool = True) -> _StableRankNorm:
        self._eval_cache = None
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> _StableRankNorm:
        self._eval_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # The eval cache is derived data; copies (deepcopy for EMA) rebuild it.
        state = self.__dict__.copy()
        state["_eval_cache"] = None
        return state

    def extra_repr(self) -> str:
        mode = "exact" if self.exact else f"n_power_iterations={self.n_power_iterations}"
        return f"srank={self.srank:.4g}, dim={self.dim}, {mode}"


def _normalization_path(matrix: Tensor) -> str:
    # Note [srn fused path]
    # Three implementations of the same maths (Note [srn without R]), all with u, v constants:
    # * "fused" (CPU, eager): the scalars of SRN (sigma, ||W||_F^2, the clamp) are read as Python
    #   floats (free on the CPU) and the normalization is one addr kernel with a hand-written
    #   backward: fewer kernels than torch's spectral_norm.
    # * "tensor" (accelerators, eager): the same hand-written forward and backward with the
    #   scalars kept as 0-d device tensors, so nothing waits for the device (a .item() would) and
    #   a step launches about half the kernels autograd needs for the composite formula.
    # * "composite" (under torch.compile or torch.func transforms, which trace tensor ops and do
    #   not see through custom autograd Functions' Python arithmetic): the branch-free formula
    #   that autograd differentiates, one compiled graph.
    if torch.compiler.is_compiling():
        return "composite"
    transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if transforms_active is not None and transforms_active():
        return "composite"
    return "fused" if matrix.device.type == "cpu" else "tensor"


class _FusedStableRankNorm(torch.autograd.Function):
    """out = a * W + b * u v^T with a = s / sigma, b = 1 - s, s = min(1, sqrt(r-1) / sqrt(q)),
    q = ||W||_F^2 / sigma^2 - 1 (Note [srn without R]); u, v constants, sigma = u^T W v.

    Backward (first order), with G the output gradient, A = <G, W>, B = u^T G v:
        dL/dW = a G + k_W W + k_uv u v^T,
        t = (A / sigma - B) * (-s / q) when the clamp is inactive, else 0,
        k_W = t / sigma^2,  k_uv = -t ||W||_F^2 / sigma^3 - A s / sigma^2.
    Higher-order gradients (create_graph=True, e.g. gradient penalties) differentiate the
    composite tensor formula instead, so they stay exact.
    """

    @staticmethod
    def forward(
        ctx: Any,
        matrix: Tensor,
        u: Tensor,
        v: Tensor,
        sigma: float,
        sqrt_r_minus_1: float | None,
        eps: float,
    ) -> Tensor:
        sigma = max(sigma, eps)  # an all-zero weight: zeros out, as the composite formula gives
        s, active, fro_sq, q = 1.0, False, 0.0, 1.0
        if sqrt_r_minus_1 is not None:
            flat = matrix.reshape(-1)
            fro_sq = float(torch.dot(flat, flat))
            q_raw = fro_sq / (sigma * sigma) - 1.0
            q = max(q_raw, eps)
            s_raw = sqrt_r_minus_1 / math.sqrt(q)
            s = min(1.0, s_raw)
            active = s_raw < 1.0 and q_raw > eps
        ctx.save_for_backward(matrix, u, v)
        ctx.scalars = (sigma, s, active, fro_sq, q, sqrt_r_minus_1, eps)
        if s == 1.0:
            return matrix / sigma
        return torch.addr(matrix, u, v, beta=s / sigma, alpha=1.0 - s)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        matrix, u, v = ctx.saved_tensors
        sigma, s, active, fro_sq, q, sqrt_r_minus_1, eps = ctx.scalars
        nones = (None,) * 5
        if torch.is_grad_enabled():
            return (_differentiable_backward(grad, matrix, u, v, sqrt_r_minus_1, eps), *nones)
        a_dot = float(torch.dot(grad.reshape(-1), matrix.reshape(-1)))
        b_dot = float(torch.dot(u, torch.mv(grad, v)))
        t = (a_dot / sigma - b_dot) * (-s / q) if active else 0.0
        out = grad.mul(s / sigma)
        if t != 0.0:
            out.add_(matrix, alpha=t / sigma**2)
        out.addr_(u, v, alpha=-t * fro_sq / sigma**3 - a_dot * s / sigma**2)
        return (out, *nones)


class _TensorStableRankNorm(torch.autograd.Function):
    """The maths of :class:`_FusedStableRankNorm` with the scalars as 0-d tensors on the weight's
    device (no host synchronisation). ``sigma`` is the detached estimate u^T W v; its dependence
    on W (d sigma / dW = u v^T) is part of the hand-written backward."""

    @staticmethod
    def forward(
        ctx: Any,
        matrix: Tensor,
        u: Tensor,
        v: Tensor,
        sigma: Tensor,
        sqrt_r_minus_1: float | None,
        eps: float,
    ) -> Tensor:
        inv_sigma = sigma.clamp_min(eps).reciprocal()
        ctx.clamps = sqrt_r_minus_1 is not None
        ctx.composite_args = (sqrt_r_minus_1, eps)
        if sqrt_r_minus_1 is None:  # plain SN: W / sigma
            ctx.save_for_backward(matrix, u, v, inv_sigma)
            return matrix * inv_sigma
        flat = matrix.reshape(-1)
        fro_sq = torch.dot(flat, flat)
        inv_sigma_sq = inv_sigma * inv_sigma
        q_raw = fro_sq * inv_sigma_sq - 1.0  # ||R||_F^2 (Note [srn without R])
        # s = min(1, sqrt(r - 1) / sqrt(q)) = sqrt(r - 1) / sqrt(max(q, r - 1)): one clamp is both
        # the min and the guard against q <= 0 (fewer kernels than clamping twice).
        floor = max(eps, sqrt_r_minus_1 * sqrt_r_minus_1)
        q = q_raw.clamp_min(floor)
        s = q.rsqrt() * sqrt_r_minus_1
        # -2 ds/dq_raw where the clamp does not act (the 2 of dq/dW folded in), else 0.
        k_q = torch.where(q_raw > floor, s / q, 0.0)
        a = s * inv_sigma
        ctx.save_for_backward(matrix, u, v, inv_sigma, inv_sigma_sq, fro_sq, s, a, k_q)
        return torch.addr(matrix * a, u * (1.0 - s), v)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        nones = (None,) * 5
        matrix, u, v, inv_sigma, *rest = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (_differentiable_backward(grad, matrix, u, v, *ctx.composite_args), *nones)
        a_dot = torch.dot(grad.reshape(-1), matrix.reshape(-1))  # <G, W>
        if not ctx.clamps:  # d(W/sigma) = G/sigma - <G, W>/sigma^2 u v^T
            k_uv = -a_dot * inv_sigma * inv_sigma
            return (torch.addr(grad * inv_sigma, u * k_uv, v), *nones)
        inv_sigma_sq, fro_sq, s, a, k_q = rest
        b_dot = torch.dot(u, torch.mv(grad, v))  # u^T G v
        t = (b_dot - a_dot * inv_sigma) * k_q  # t of _FusedStableRankNorm's docstring
        k_w = t * inv_sigma_sq
        # k_uv = -t ||W||_F^2 / sigma^3 - <G, W> s / sigma^2
        k_uv = -(t * fro_sq * inv_sigma + a_dot * s) * inv_sigma_sq
        out = torch.addcmul(grad * a, matrix, k_w)
        return (torch.addr(out, u * k_uv, v), *nones)


def _differentiable_backward(
    grad: Tensor, matrix: Tensor, u: Tensor, v: Tensor, sqrt_r_minus_1: float | None, eps: float
) -> Tensor:
    """The backward under create_graph=True (e.g. a gradient penalty): autograd differentiates
    the composite formula, so second derivatives are exact (the hand-written backwards are
    first-order only)."""
    with torch.enable_grad():
        out = _composite_normalize(matrix, u, v, sqrt_r_minus_1, eps)
        return torch.autograd.grad(out, matrix, grad, create_graph=True)[0]


def _composite_normalize(
    matrix: Tensor, u: Tensor, v: Tensor, sqrt_r_minus_1: float | None, eps: float
) -> Tensor:
    """The branch-free tensor formula of SRN (no host sync; compiles into one graph)."""
    # Note [srn without R]
    # For unit u, v and sigma = u^T W v, ||W/sigma - u v^T||_F^2 = ||W||_F^2/sigma^2 - 1 exactly
    # (expand the square), so R is never formed and the output is one rank-one update of a
    # scaled W: (s / sigma) * W + (1 - s) * u v^T. The clamp on s replaces the branch of step 5
    # (no host sync, one compiled graph). For exact u, v, ||R||_F^2 = srank(W) - 1.
    if matrix.dtype != u.dtype:
        matrix = matrix.to(u.dtype)
    sigma = torch.dot(u, torch.mv(matrix, v)).clamp_min(eps)  # differentiable in W
    if sqrt_r_minus_1 is None:
        return matrix / sigma
    flat = matrix.reshape(-1)
    tail_sq = (torch.dot(flat, flat) / (sigma * sigma) - 1.0).clamp_min(eps)
    # sqrt(r - 1) is a Python float, so r = 1 gives s = 0 with a finite (zero) gradient.
    scale = (sqrt_r_minus_1 * torch.rsqrt(tail_sq)).clamp(max=1.0)
    return torch.addr(matrix * (scale / sigma), u * (1.0 - scale), v)


def _default_dim(module: nn.Module) -> int:
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if isinstance(module, transposed) else 0


def _find_srn(module: nn.Module, name: str) -> _StableRankNorm | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, _StableRankNorm):
            return p
    return None


def stable_rank_norm(
    module: nn.Module,
    name: str = "weight",
    *,
    rank_ratio: float | None = None,
    srank: float | None = None,
    n_power_iterations: int = 1,
    dim: int | None = None,
    eps: float = 1e-12,
    exact: bool = False,
) -> nn.Module:
    """Apply Stable Rank Normalization (SRN) to a parameter of ``module``.

    SRN rescales the weight so that its spectral norm is 1 and its stable rank is at most ``r``:
    it is spectral normalization followed by the optimal stable-rank projection that keeps the top
    singular value (SPEC 1.2-1.3; Sanyal, Torr & Dokania, ICLR 2020, Theorem 1 and Algorithm 1):

    .. math::
        \\hat W = \\frac{W}{\\sigma(W)}, \\quad
        W_{\\mathrm{SRN}} = u v^\\top + \\min\\Bigl(1, \\frac{\\sqrt{r - 1}}
            {\\|\\hat W - u v^\\top\\|_F}\\Bigr) (\\hat W - u v^\\top)

    where :math:`\\sigma(W) = u^\\top W v` with u, v from power iteration. Then
    :math:`\\|W_{\\mathrm{SRN}}\\|_2 = 1` and
    :math:`\\operatorname{srank}(W_{\\mathrm{SRN}}) = \\min(\\operatorname{srank}(W), r)` once u, v
    have converged. Controlling both factors of the spectrally-normalized generalization bounds
    (SPEC 1.1) is what distinguishes SRN from spectral normalization, which it equals at
    ``rank_ratio=1``. The cost is that of spectral normalization plus one Frobenius norm and one
    rank-one update.

    Weights of more than 2 dimensions are reshaped to (shape[dim], -1) (SPEC 1.4).

    .. note::
        As in torch's ``spectral_norm``, u and v are updated (``n_power_iterations`` steps) only in
        training mode; in eval mode they are frozen and the output is deterministic. In eval mode
        under ``torch.no_grad()`` the normalized weight is cached until the raw weight or the
        vectors change in place.

    Args:
        module: the module holding the parameter.
        name: name of the parameter (default ``"weight"``).
        rank_ratio: c in (0, 1]: target ``r = max(1, c * min(m, n))`` of the reshaped (m, n)
            weight. Default 0.7 (the reference implementation's) when ``srank`` is not given.
            ``rank_ratio=1`` is plain spectral normalization.
        srank: absolute target stable rank r >= 1 (instead of ``rank_ratio``).
        n_power_iterations: power-iteration steps per training forward (default 1, >= 1).
        dim: the row axis of the reshape (default: 1 for ConvTranspose1d/2d/3d, else 0).
        eps: numerical floor for norms (default 1e-12, > 0).
        exact: use the exact top singular pair by SVD instead of power iteration (default False;
            for validation and small layers).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: invalid ``rank_ratio``/``srank`` (both given, out of range), a missing or
            1-D parameter, non-finite values, ``n_power_iterations < 1``, ``eps <= 0``, or SRN
            already registered on this parameter.
        TypeError: a non-floating parameter.
        IndexError: ``dim`` out of range.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = stable_rank_norm(nn.Linear(20, 40), rank_ratio=0.3)
        >>> round(torch.linalg.matrix_norm(layer.weight, ord=2).item(), 2)
        1.0
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(
            f"module {type(module).__name__} has no parameter or buffer named {name!r}"
        )
    if _find_srn(module, name) is not None:
        raise ValueError(
            f"parameter {name!r} of {type(module).__name__} already has stable_rank_norm"
        )
    if not weight.is_floating_point():
        raise TypeError(f"parameter {name!r} must be floating point, got dtype {weight.dtype}")
    if weight.ndim < 2:
        raise ValueError(
            f"parameter {name!r} must have 2 or more dimensions, got shape {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"parameter {name!r} contains non-finite values (inf or NaN)")
    if rank_ratio is not None and srank is not None:
        raise ValueError(
            "give at most one of rank_ratio and srank, "
            f"got rank_ratio={rank_ratio} and srank={srank}"
        )
    if srank is None and rank_ratio is None:
        rank_ratio = DEFAULT_RANK_RATIO
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    if srank is not None and not srank >= 1:
        raise ValueError(f"srank must be >= 1, got {srank}")
    if not isinstance(n_power_iterations, int) or n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be an integer >= 1, got {n_power_iterations!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if dim is None:
        dim = _default_dim(module)
    if not -weight.ndim <= dim < weight.ndim:
        raise IndexError(
            f"dim must be in [-{weight.ndim}, {weight.ndim - 1}] for parameter {name!r} of shape "
            f"{tuple(weight.shape)}, got {dim}"
        )
    shape = tuple(weight_to_matrix(weight.detach(), dim).shape)
    r = target_srank(rank_ratio, shape) if srank is None else float(srank)
    if r <= 1 and min(shape) > 1:
        warnings.warn(
            f"stable_rank_norm on {name!r} of shape {tuple(weight.shape)}: "
            "the target stable rank is "
            f"1, so the normalized weight has rank one (rank_ratio={rank_ratio}, srank={srank})",
            UserWarning,
            stacklevel=2,
        )
    norm = _StableRankNorm(
        weight,
        srank=r,
        n_power_iterations=n_power_iterations,
        dim=dim % weight.ndim,
        eps=eps,
        exact=exact,
    )
    parametrize.register_parametrization(module, name, norm)
    return module


def remove_stable_rank_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Remove SRN from ``module.name``, baking the normalized weight in.

    The baked weight is the one the layer uses in eval mode (the frozen u, v; no extra power
    iteration), so eval outputs before and after removal are identical. The parameter object is
    kept (same ``id()``), so an optimizer holding it keeps working.

    Raises:
        ValueError: the parameter has no stable rank normalization.
    """
    srn = _find_srn(module, name)
    if srn is None:
        raise ValueError(f"parameter {name!r} of {type(module).__name__} has no stable_rank_norm")
    was_training = srn.training
    srn.eval()
    try:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    finally:
        srn.train(was_training)
    return module
