"""Stable Rank Normalization of one weight, as a ``torch.nn.utils.parametrize`` parametrization.

Users call :func:`stable_rank_norm` (registration, like torch's ``spectral_norm``) and
:func:`remove_stable_rank_norm`; the private :class:`_StableRankNorm` module does the work.
Depends only on torch and :mod:`stablerank.linalg`.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stablerank.linalg import (
    matrix_to_weight,
    power_iteration,
    power_iteration_steps,
    target_srank,
    weight_to_matrix,
)

__all__ = ["DEFAULT_RANK_RATIO", "RankOneWarning", "remove_stable_rank_norm", "stable_rank_norm"]

# Power iterations run at registration so the first training step starts from converged u, v
# (torch's spectral_norm uses the same number).
_WARMUP_POWER_ITERS = 15
# The library's one default rank ratio c (r = c * min(m, n)), the value of the SRN authors' group's
# co-author copy. At initialization the cap binds on every body layer of the project's
# classifiers for c <= 0.2 and on almost none at c = 0.7 (docs/library.md); trained weights have
# lower stable ranks, so the default keeps a margin below where the cap stops binding.
DEFAULT_RANK_RATIO = 0.1
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class RankOneWarning(UserWarning):
    """SRN's target stable rank is 1 on a weight of more than one row and column: the normalized
    weight is the rank-one u v^T, whose gradient with respect to the raw weight is zero, so the
    weight does not train (the layer's bias still does; a small ``rank_ratio`` on a small
    layer).

    Silence it with ``warnings.filterwarnings("ignore", category=RankOneWarning)``.
    """


class _StableRankNorm(nn.Module):
    """Maps a raw weight W to its stable-rank-normalized version (docs/math.md §1.3, Algorithm 1).

    With unit vectors u, v from power iteration and sigma = u^T W v, the output is

        W_f = u v^T + s * R,   R = W / sigma - u v^T,   s = min(1, sqrt(r - 1) / ||R||_F),

    computed without forming R (Note [srn without R]). ``_u``, ``_v`` and the target ``_srank``
    (0-d float64) are buffers: they follow ``.to()``, live in ``state_dict`` and are never
    optimized. Loading a state_dict adopts its ``_srank`` (Note [srn target in state_dict]).
    """

    _u: Tensor
    _v: Tensor
    _srank: Tensor

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
        self._shape = tuple(matrix.shape)
        # Power iteration runs in float32 for half-precision weights (their range and precision are
        # too small for the iterates); float32/float64 weights keep their dtype (gradcheck).
        vec_dtype = torch.float32 if weight.dtype in _HALF_DTYPES else weight.dtype
        m, n = self._shape
        u = F.normalize(matrix.new_empty(m, dtype=vec_dtype).normal_(0, 1), dim=0, eps=eps)
        v = F.normalize(matrix.new_empty(n, dtype=vec_dtype).normal_(0, 1), dim=0, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self.register_buffer("_srank", torch.tensor(0.0, dtype=torch.float64, device=u.device))
        self._shift_cache: tuple[Any, Tensor] | None = None
        self._set_srank(srank)
        if weight.device.type != "meta":  # deferred init: nothing to iterate on (as torch's SN)
            self._update_vectors(matrix, _WARMUP_POWER_ITERS)

    sparse_grad = False  # set by stable_rank_norm for nn.Embedding(sparse=True)

    def _set_srank(self, srank: float) -> None:
        """Set the target r: the Python floats the forward uses and the ``_srank`` buffer."""
        self.srank = float(srank)
        # r >= min(m, n) >= srank(W) always: the clamp can never act, the layer is plain SN. Decided
        # here so the forward stays branch-free and agrees exactly with torch's spectral_norm.
        self.clamps_srank = self.srank < min(self._shape)
        self._r_minus_1 = self.srank - 1.0
        if self._srank.device.type != "meta":
            with torch.no_grad():
                self._srank.fill_(self.srank)

    def _update_vectors(self, matrix: Tensor, n_iterations: int) -> Tensor:
        """Update u, v in place (no gradient); return the estimate of sigma (a 0-d tensor)."""
        if self.exact:
            with torch.no_grad():  # the exact top singular pair by SVD
                u, s, vh = torch.linalg.svd(matrix.detach().to(self._u.dtype), full_matrices=False)
                self._u.copy_(u[:, 0])
                self._v.copy_(vh[0])
                return s[0]
        return power_iteration(matrix, self._u, self._v, n_iterations, self.eps)

    def _shift(self, matrix: Tensor) -> Tensor:
        """The constant -1 / (r - 1) as a (1,) tensor on the matrix's device and dtype, cached
        (creating it in every forward would cost a kernel; Note [srn forward])."""
        key = (matrix.device, matrix.dtype, self._r_minus_1)
        if self._shift_cache is None or self._shift_cache[0] != key:
            shift = torch.full((1,), -1.0 / self._r_minus_1, device=key[0], dtype=key[1])
            self._shift_cache = (key, shift)
        return self._shift_cache[1]

    def forward(self, weight: Tensor) -> Tensor:
        # No implicit eval cache: like torch's spectral_norm, every access recomputes the weight
        # from (W, u, v); ``parametrize.cached()`` is the explicit cache.
        if (
            weight.is_cpu
            and not self.exact
            and weight.dtype == self._buffers["_u"].dtype
            and not _autocast_enabled("cpu")
            and not _needs_composite(weight)
        ):
            return self._cpu_forward(weight)
        if weight.device.type != "meta" and _autocast_enabled(weight.device.type):
            # Norms and the rank-one update in the weight's precision (float32 for half weights),
            # never in autocast's lower one.
            with torch.autocast(device_type=weight.device.type, enabled=False):
                return self.forward(weight)
        matrix = weight_to_matrix(weight, self.dim)
        if matrix.dtype != self._u.dtype:
            matrix = matrix.to(self._u.dtype)
        sigma = None
        if self.training and matrix.device.type != "meta":
            sigma = self._update_vectors(matrix, self.n_power_iterations)
        u, v = self._u, self._v
        graph = torch.is_grad_enabled() and matrix.requires_grad
        if graph or torch.jit.is_tracing():
            # Clones: the in-place updates of a later forward must not touch vectors saved for
            # this forward's backward (e.g. D(real) and D(fake) in one graph). Without a graph
            # (eval under no_grad) nothing is saved and the output does not alias u or v.
            u = u.clone(memory_format=torch.contiguous_format)
            v = v.clone(memory_format=torch.contiguous_format)
        r_minus_1 = self._r_minus_1 if self.clamps_srank else None
        if _needs_composite(weight):
            normalized = _composite_normalize(matrix, u, v, r_minus_1, self.eps)
        else:
            if sigma is None:  # eval: frozen u, v (Note [srn sigma sign])
                sigma = _floor_sigma(torch.dot(u, torch.mv(matrix.detach(), v)), self.eps)
            else:  # training: ||W v|| >= 0, so the floor is one clamp
                sigma = sigma.clamp_min(self.eps)
            if matrix.device.type == "cpu":  # Note [srn cpu path]
                scalars = _cpu_scalars(matrix, float(sigma), r_minus_1, self.eps)
                if graph:
                    normalized = _CpuStableRankNormFunction.apply(matrix, u, v, scalars)
                else:
                    normalized = _cpu_normalize(matrix, u, v, scalars)
            else:
                shift = self._shift(matrix) if r_minus_1 else None
                args = (matrix, u, v, sigma, r_minus_1, self.eps, shift)
                # no graph to record: the same forward without autograd.Function's overhead
                normalized = _StableRankNormFunction.apply(*args) if graph else _normalize(*args)[0]
        out = matrix_to_weight(normalized, weight.shape, self.dim)
        out = out if out.dtype == weight.dtype else out.to(weight.dtype)
        return _DenseGrad.apply(out) if self.sparse_grad and graph else out

    def _cpu_forward(self, weight: Tensor) -> Tensor:
        """:meth:`forward` in eager mode on the CPU for a weight in the vectors' dtype (float32 or
        float64; power iteration, not SVD), the common case: the same steps with less Python per
        call, sigma read as a float (Note [srn cpu path])."""
        u, v = self._buffers["_u"], self._buffers["_v"]
        # weight_to_matrix without its checks for the usual dim 0 (the rows' axis first)
        matrix = (
            weight.flatten(1)
            if self.dim == 0 and weight.ndim > 1
            else weight_to_matrix(weight, self.dim)
        )
        if self.training:
            norm, scale = power_iteration_steps(matrix, u, v, self.n_power_iterations)
            sigma = float(norm) * scale
        else:  # eval: frozen u, v
            sigma = float(torch.dot(u, torch.mv(matrix.detach(), v)))
        r_minus_1 = self._r_minus_1 if self.clamps_srank else None
        scalars = _cpu_scalars(matrix, sigma, r_minus_1, self.eps)
        graph = matrix.requires_grad and torch.is_grad_enabled()
        if graph:
            # Clones, as in forward: a later forward updates u, v in place.
            u = u.clone(memory_format=torch.contiguous_format)
            v = v.clone(memory_format=torch.contiguous_format)
            normalized = _CpuStableRankNormFunction.apply(matrix, u, v, scalars)
        else:
            normalized = _cpu_normalize(matrix, u, v, scalars)
        if self.dim == 0:
            out = normalized.view(weight.shape)
        else:
            out = matrix_to_weight(normalized, weight.shape, self.dim)
        return _DenseGrad.apply(out) if self.sparse_grad and graph else out

    def right_inverse(self, value: Tensor) -> Tensor:
        # Assigning ``module.weight = W`` stores W itself as the raw weight (as torch's SN does):
        # the normalization is not invertible.
        return value

    def _apply(self, fn: Any, recurse: bool = True) -> _StableRankNorm:
        # ``.half()``/``.double()`` cast every floating buffer. The target is a float64 number
        # whatever the weight's dtype (51.2 would become 51.1875 in float16). Under half-precision
        # weights u and v stay float32, as when SRN is registered on such weights (__init__), and
        # keep their values: ``model.half()`` after registration must not round them. The buffer
        # is refilled from the Python float after every ``fn``: ``to_empty()`` (after a meta
        # registration) leaves it uninitialized, and the state_dict would save that garbage.
        u, v = self._u, self._v
        super()._apply(fn, recurse)
        if self._u.dtype in _HALF_DTYPES:
            self._u = u.to(device=self._u.device, dtype=torch.float32)
            self._v = v.to(device=self._v.device, dtype=torch.float32)
        if self._srank.dtype != torch.float64:
            self._srank = self._srank.to(torch.float64)
        self._set_srank(self.srank)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Note [srn target in state_dict]
        # The target travels with the weights: loading a state_dict adopts its ``_srank``, so a
        # layer built with another target reproduces the saved outputs exactly. A state_dict
        # without the key (torch's spectral_norm, or SRN before the key existed) is a missing key:
        # strict loading raises (convert it with ``convert_spectral_norm_state_dict``). A refused
        # target is refused before anything is loaded: the buffer must not disagree with it.
        saved = None
        if prefix + "_srank" in state_dict:
            saved = float(state_dict[prefix + "_srank"])
            if not (math.isfinite(saved) and saved >= 1):
                raise ValueError(f"{prefix}_srank must be a finite number >= 1, got {saved}")
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self._u.dtype in _HALF_DTYPES or self._v.dtype in _HALF_DTYPES:
            # ``assign=True`` put the saved half u, v in place (torch's spectral_norm on half
            # weights): float32, as __init__ and _apply keep them.
            self._u, self._v = self._u.float(), self._v.float()
        if saved is not None:
            self._set_srank(saved)

    def extra_repr(self) -> str:
        mode = "exact" if self.exact else f"n_power_iterations={self.n_power_iterations}"
        return f"srank={self.srank:.4g}, dim={self.dim}, {mode}"


def _autocast_enabled_before_2_4(device_type: str) -> bool:
    # torch < 2.4: is_autocast_enabled() is CUDA's, without an argument; the other device types
    # have their own query, on torch (cpu, xla, ipu) or on the device's module (xpu, hpu).
    if device_type == "cuda":
        return torch.is_autocast_enabled()
    name = f"is_autocast_{device_type}_enabled"
    query = getattr(torch, name, None) or getattr(getattr(torch, device_type, None), name, None)
    return bool(query()) if query is not None else False


def _autocast_enabled_from_2_4(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know ("mps" on torch 2.4)
        return False


try:
    torch.is_autocast_enabled("cpu")
    _autocast_enabled = _autocast_enabled_from_2_4
except TypeError:  # torch < 2.4
    _autocast_enabled = _autocast_enabled_before_2_4


_PLAIN_DISPATCH = torch._C._disabled_torch_dispatch_impl  # Tensor's and Parameter's


def _needs_composite(weight: Tensor) -> bool:
    # Note [srn normalization paths]
    # One hand-written autograd Function (:class:`_StableRankNormFunction`) on every device in
    # eager mode: the scalars of SRN (sigma, ||W||_F, the clamp) stay 0-d tensors (no host sync,
    # so batched gradients, jacobian(vectorize=True) and CUDA streams all work), the forward is
    # one rank-one update of a scaled W and the backward is written by hand (fewer kernels than
    # autograd through the formula). Under torch.compile, torch.jit.trace and torch.func
    # transforms (vmap, grad, jacrev), which trace tensor ops, the branch-free composite formula
    # runs instead and autograd differentiates it: the same maths, one graph of aten ops. So it
    # does inside ``forward_ad.dual_level()``: the eager paths' float scalars and detached sigma
    # would drop the weight's tangent everywhere but in the W term (a wrong jvp, no error).
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a trace records aten ops only
        return True
    # So does a tensor subclass that dispatches aten ops itself: torch.compile and torch.export
    # before 2.5 (at least) run a parametrized module outside dynamo's trace, where
    # is_compiling() is False, on fake and functional tensors whose values cannot be read as
    # floats. (A subclass of Parameter that only marks a weight dispatches as a plain tensor.)
    if type(weight).__torch_dispatch__ is not _PLAIN_DISPATCH:
        return True
    if getattr(forward_ad, "_current_level", -1) >= 0:  # eager forward-mode AD is active
        return True
    transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return transforms_active is not None and bool(transforms_active())


def _normalize(
    matrix: Tensor,
    u: Tensor,
    v: Tensor,
    sigma: Tensor,
    r_minus_1: float | None,
    eps: float,
    shift: Tensor | None,
) -> tuple[Tensor, tuple[Any, ...]]:
    """The forward of :class:`_StableRankNormFunction`; returns (output, what the backward
    needs).

    Note [srn forward]
        With Wn = W / sigma, z = (||Wn||_F^2 - 1) / (r - 1) clamped at 1 and s = 1 / sqrt(z),
        the output is lerp(u v^T, Wn, s) = s Wn + (1 - s) u v^T (Note [srn without R]). The
        scalar part is three kernels (addmv, clamp, rsqrt); the matrix part four (W / sigma, the
        squared norm inside addmv, outer, lerp). When the clamp acts, z = 1 and s = 1 exactly.
        W is divided by sigma before any square, so float32 weights near 1e20 do not overflow.
        r = 1 gives s = 0 (the rank-one u v^T). The (1,)-shaped z and s broadcast.
    """
    wn = matrix / sigma  # sigma floored by the caller
    if r_minus_1 is None:  # plain SN
        return wn, (sigma, wn)
    uv = torch.outer(u, v)
    if r_minus_1 > 0:
        flat = wn.reshape(-1)
        z_floor = max(eps / r_minus_1, 1.0)
        # (||Wn||_F^2 - 1) / (r - 1) in one kernel: the (1, mn) x (mn,) product shifted by the
        # cached constant -1 / (r - 1); then the clamp and rsqrt (three kernels in all).
        z = torch.addmv(shift, flat.unsqueeze(0), flat, alpha=1.0 / r_minus_1)  # (1,)
        s = z.clamp_min_(z_floor).rsqrt()
    else:
        z_floor, z, s = math.inf, wn.new_ones(1), wn.new_zeros(1)
    return torch.lerp(uv, wn, s), (sigma, wn, uv, z, s, z_floor)


class _StableRankNormFunction(torch.autograd.Function):
    """out = s Wn + (1 - s) u v^T (Note [srn forward]) with u, v constants and ``sigma`` the
    detached estimate of u^T W v, whose dependence on W (d sigma / dW = u v^T) is part of the
    backward. Plain SN (``r_minus_1=None``): out = Wn.

    Backward (first order), with G the output gradient, A = <G, Wn>, B = <G, u v^T>, q = (r-1) z:
        dL/dW = (s G + t Wn - (t ||Wn||_F^2 + A s) u v^T) / sigma,
        t = (B - A) s / q where the clamp does not act (z > 1), else 0;
    for plain SN dL/dW = (G - A u v^T) / sigma. All scalars are 0-d tensors (no host sync).
    Higher-order gradients (create_graph=True, e.g. gradient penalties) differentiate the
    composite formula instead, so they stay exact.
    """

    @staticmethod
    def forward(
        ctx: Any,
        matrix: Tensor,
        u: Tensor,
        v: Tensor,
        sigma: Tensor,
        r_minus_1: float | None,
        eps: float,
        shift: Tensor | None,
    ) -> Tensor:
        out, saved = _normalize(matrix, u, v, sigma, r_minus_1, eps, shift)
        ctx.composite_args = (r_minus_1, eps)
        ctx.z_floor = saved[-1] if r_minus_1 is not None else None
        ctx.save_for_backward(matrix, u, v, *saved[:5])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        nones = (None,) * 6
        matrix, u, v, sigma, wn, *rest = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (_differentiable_backward(grad, matrix, u, v, *ctx.composite_args), *nones)
        flat = grad.reshape(-1)
        a_dot = torch.dot(flat, wn.reshape(-1))  # A = <G, Wn>
        if not rest:  # plain SN: (G - A u v^T) / sigma
            return (torch.addr(grad, u * a_dot, v, alpha=-1.0).div_(sigma), *nones)
        uv, z, s = rest
        r_minus_1 = ctx.composite_args[0]
        inv_r = 1.0 / r_minus_1 if r_minus_1 > 0 else 0.0
        b_dot = torch.dot(flat, uv.reshape(-1))  # B = <G, u v^T> = u^T G v
        # (r - 1) t: s / z = (r - 1) s / q where the clamp does not act, else 0
        t_r = (b_dot - a_dot) * (s / z).mul_(z > ctx.z_floor)
        out = torch.addcmul(grad * s, wn, t_r, value=inv_r)  # s G + t Wn
        # t ||Wn||_F^2 + A s, with ||Wn||_F^2 = (r - 1) z + 1 wherever t != 0
        k_uv = torch.addcmul(a_dot * s, t_r, z + inv_r)
        # one division by sigma at the end: fewer kernels than folding it into each scalar
        return (torch.addcmul(out, uv, k_uv, value=-1.0).div_(sigma), *nones)


# Note [srn cpu path]
# On the CPU a scalar read (``float(t)``) costs nothing like a device sync, and each tiny
# kernel's dispatch dominates: the forward reads sigma and ||W||_F^2 as Python floats and is one
# ``addr`` (s/sigma W + (1 - s) u v^T), fewer kernels than torch's spectral_norm; the backward
# reads <G, W> and u^T G v as floats as well. Only when the backward runs under vmap (batched
# gradients: ``is_grads_batched``, ``jacobian(vectorize=True)``, gradcheck's batched check) do
# those two stay tensors, since a batched tensor has no single float. Forward-mode transforms run
# the composite formula (_needs_composite). Per layer and step the Python around the kernels
# costs as much as they do, so float32/float64 weights take ``_cpu_forward``, which skips the
# general forward's checks; half weights, autocast and exact (SVD) mode take the general one.


def _batched_checks() -> tuple[Any, ...] | None:
    """torch's private predicates for batched tensors and active functorch transforms, looked up
    once (a backward runs per layer and step); None where this torch lacks one of them."""
    functorch = getattr(torch._C, "_functorch", None)
    checks = (
        getattr(torch._C, "_are_functorch_transforms_active", None),
        getattr(functorch, "is_legacy_batchedtensor", None),
        getattr(functorch, "is_functorch_wrapped_tensor", None),
    )
    return None if any(check is None for check in checks) else checks


_BATCHED_CHECKS = _batched_checks()


def _is_batched(t: Tensor) -> bool:
    """Whether this backward runs batched: on a (legacy, autograd's ``is_grads_batched``) batched
    tensor, a functorch-wrapped one, or under a functorch transform. True when that cannot be
    told, so the caller takes the path that works either way."""
    if _BATCHED_CHECKS is None:
        return True
    transforms_active, is_legacy_batched, is_wrapped = _BATCHED_CHECKS
    return bool(transforms_active() or is_legacy_batched(t) or is_wrapped(t))


class _CpuScalars(NamedTuple):
    """SRN's scalars as Python floats: sigma, the tail scale s, ||W/sigma||_F^2, q = that - 1
    (floored), whether the cap binds, and the target (None: plain SN). A NamedTuple: built once
    per layer and forward, where a frozen dataclass's construction costs several microseconds."""

    sigma: float
    s: float
    wn_sq: float
    q: float
    active: bool
    r_minus_1: float | None
    eps: float


# ||W||_F^2 is squared unscaled when it lies in this range (one kernel, no copy of W); outside it
# the squares may overflow or underflow in float32, and W is divided by sigma first.
_UNSCALED_SQ_RANGE = (1e-20, 1e30)


def _cpu_scalars(matrix: Tensor, sigma: float, r_minus_1: float | None, eps: float) -> _CpuScalars:
    sigma_f = eps if abs(sigma) < eps else sigma  # as _floor_sigma
    if r_minus_1 is None:
        return _CpuScalars(sigma_f, 1.0, 0.0, 1.0, False, None, eps)
    fro_sq = float(torch.linalg.vector_norm(matrix.detach())) ** 2
    if _UNSCALED_SQ_RANGE[0] < fro_sq < _UNSCALED_SQ_RANGE[1]:
        wn_sq = fro_sq / (sigma_f * sigma_f)  # in float64 arithmetic
    else:  # scaled before squaring: no overflow near 1e20, no underflow near 1e-20
        wn = matrix.detach().reshape(-1) / sigma_f
        wn_sq = float(torch.dot(wn, wn))
    q_raw = wn_sq - 1.0
    if r_minus_1 <= 0:  # r = 1: the rank-one u v^T
        return _CpuScalars(sigma_f, 0.0, wn_sq, max(q_raw, eps), q_raw > eps, r_minus_1, eps)
    q = max(q_raw, eps)
    s_raw = math.sqrt(r_minus_1 / q)
    active = s_raw < 1.0 and q_raw > eps
    return _CpuScalars(sigma_f, min(1.0, s_raw), wn_sq, q, active, r_minus_1, eps)


def _cpu_normalize(matrix: Tensor, u: Tensor, v: Tensor, c: _CpuScalars) -> Tensor:
    if c.s == 1.0:
        return matrix / c.sigma
    return torch.addr(matrix, u, v, beta=c.s / c.sigma, alpha=1.0 - c.s)


class _CpuStableRankNormFunction(torch.autograd.Function):
    """The CPU path (Note [srn cpu path]): out = (s / sigma) W + (1 - s) u v^T.

    Backward, with G the output gradient, a = <G, W>, b = u^T G v and t = (b - a / sigma) s / q
    where the cap binds (else 0):
        dL/dW = (s / sigma) G + (t / sigma^2) W - ((t ||Wn||_F^2 + a s / sigma) / sigma) u v^T.
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, u: Tensor, v: Tensor, c: _CpuScalars) -> Tensor:
        ctx.save_for_backward(matrix, u, v)
        ctx.c = c
        return _cpu_normalize(matrix, u, v, c)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        matrix, u, v = ctx.saved_tensors
        c = ctx.c
        nones = (None,) * 3
        if torch.is_grad_enabled():
            return (_differentiable_backward(grad, matrix, u, v, c.r_minus_1, c.eps), *nones)
        if not _is_batched(grad):  # the usual backward: its scalars as floats too
            if c.s == 0.0:  # r = 1: the output u v^T does not depend on W (NaNs still flow)
                return (grad.mul(0.0), *nones)
            a = float(torch.dot(grad.reshape(-1), matrix.reshape(-1)))  # <G, W>
            if not c.active:  # one addr: (s / sigma) G - (a s / sigma^2) u v^T
                return (torch.addr(grad, u, v, beta=c.s / c.sigma, alpha=-a * c.s / c.sigma**2),
                        *nones)  # fmt: skip
            b = float(torch.dot(u, torch.mv(grad, v)))  # u^T G v
            t = (b - a / c.sigma) * (c.s / c.q)
            k_uv = -(t * c.wn_sq + a * c.s / c.sigma) / c.sigma
            # (s / sigma) (G + t / (s sigma) W) + k_uv u v^T: an add and an addr
            out = torch.add(grad, matrix, alpha=t / (c.s * c.sigma))
            return (out.addr_(u, v, beta=c.s / c.sigma, alpha=k_uv), *nones)
        # Batched gradients (is_grads_batched, jacobian(vectorize=True)) vmap this backward: the
        # gradient-dependent scalars stay tensors there (a float() of a batched tensor fails).
        a_dot = torch.dot(grad.reshape(-1), matrix.reshape(-1))  # <G, W>
        out = grad * (c.s / c.sigma)
        if c.active:
            b_dot = torch.dot(u, torch.mv(grad, v))  # u^T G v
            t = (b_dot - a_dot / c.sigma) * (c.s / c.q)
            out = torch.addcmul(out, matrix, t, value=1.0 / c.sigma**2)
            k_uv = (t * c.wn_sq + a_dot * (c.s / c.sigma)) * (-1.0 / c.sigma)
        else:
            k_uv = a_dot * (-c.s / c.sigma**2)
        return (torch.addr(out, u * k_uv, v), *nones)


class _DenseGrad(torch.autograd.Function):
    """The identity, whose backward makes a sparse gradient dense: both forwards' last node for
    an ``nn.Embedding(sparse=True)``, whose sparse gradient the reshapes, casts and formulas
    before it refuse; the raw weight then gets a dense gradient, as under torch's spectral_norm
    (the normalized weight is dense anyway)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor) -> Tensor:
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad if grad.layout == torch.strided else grad.to_dense()


def _differentiable_backward(
    grad: Tensor, matrix: Tensor, u: Tensor, v: Tensor, r_minus_1: float | None, eps: float
) -> Tensor:
    """The backward under create_graph=True (e.g. a gradient penalty): autograd differentiates
    the composite formula, so second derivatives are exact (the hand-written backward is
    first-order only)."""
    with torch.enable_grad():
        out = _composite_normalize(matrix, u, v, r_minus_1, eps)
        return torch.autograd.grad(out, matrix, grad, create_graph=True)[0]


def _floor_sigma(sigma: Tensor, eps: float) -> Tensor:
    """sigma = u^T W v with its magnitude floored at eps and its sign kept.

    Note [srn sigma sign]
        In training, sigma is ||W v|| >= 0. With frozen u, v (eval) it is negative once the
        weight has changed sign since the last training step (or raw weights were loaded with
        ``strict=False``); torch's spectral_norm then divides by the negative sigma, and so do
        we: ``u^T (W / sigma) v = 1`` still holds, so the formula of SRN is unchanged. Only a
        sigma below eps in magnitude (a zero weight) is replaced, by eps; clamping at eps
        instead turned a negative sigma into W / 1e-12. NaN stays NaN.
    """
    return torch.where(sigma.abs() < eps, eps, sigma)


def _composite_normalize(
    matrix: Tensor, u: Tensor, v: Tensor, r_minus_1: float | None, eps: float
) -> Tensor:
    """The branch-free tensor formula of SRN (no host sync; compiles into one graph)."""
    # Note [srn without R]
    # For unit u, v and sigma = u^T W v, ||W/sigma - u v^T||_F^2 = ||W||_F^2/sigma^2 - 1 exactly
    # (expand the square), so R is never formed and the output is one interpolation between the
    # rank-one u v^T and the spectrally normalized Wn = W / sigma: s Wn + (1 - s) u v^T. The clamp
    # on s replaces the branch of step 5 (no host sync, one compiled graph). For exact u, v,
    # ||R||_F^2 = srank(W) - 1. Wn is formed before squaring, so large weights do not overflow.
    if matrix.dtype != u.dtype:
        matrix = matrix.to(u.dtype)
    sigma = _floor_sigma(torch.dot(u, torch.mv(matrix, v)), eps)  # differentiable in W
    wn = matrix / sigma
    if r_minus_1 is None:
        return wn
    flat = wn.reshape(-1)
    q = (torch.dot(flat, flat) - 1.0).clamp_min(max(eps, r_minus_1))
    # r - 1 is a Python float: r = 1 gives s = 0 with a finite (zero) gradient.
    s = torch.rsqrt(q / r_minus_1) if r_minus_1 > 0 else q * 0.0
    return torch.lerp(torch.outer(u, v), wn, s)


def _default_dim(module: nn.Module) -> int:
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if isinstance(module, transposed) else 0


def _input_of(plist: Any, p: nn.Module) -> Tensor:
    """What the parametrization ``p`` of ``plist`` (a ParametrizationList) receives in eval
    mode: its ``original`` through the parametrizations registered before ``p`` (usually none),
    each run in eval mode (no random mask drawn, no state moved). The raw weight SRN's cap and
    SN's sigma act on, which a mask or another transform before them changes."""
    x = plist.original
    for q in plist:
        if q is p:
            return x
        mode = q.training
        q.train(False)
        try:
            x = q(x)
        finally:
            q.train(mode)
    raise ValueError(f"{type(p).__name__} is not among the parametrizations of this tensor")


def _own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own before a removal or another
    registration (a plain one is left as it is: torch gives it a new class): a ``copy.deepcopy``
    shares its original's class, from which torch deletes the tensor's property on removal (its
    SN too), leaving the original without that tensor, and to which it adds the property of a
    new one."""
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _find_srn(module: nn.Module, name: str) -> _StableRankNorm | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, _StableRankNorm):
            return p
    return None


def _old_style_spectral_norm(module: nn.Module, name: str) -> Any:
    """The hook of ``torch.nn.utils.spectral_norm`` (the pre-parametrization API) on
    ``module.name``, or None."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm) and hook.name == name:
            return hook
    return None


def _check_real(value: Any, what: str) -> float:
    """A finite real number (bools refused: ``True`` is not a rank ratio)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def check_srn_arguments(
    rank_ratio: float | None,
    srank: float | None,
    n_power_iterations: int,
    eps: float,
    exact: bool = False,
) -> tuple[float | None, float | None]:
    """Validate SRN's arguments (shared by :func:`stable_rank_norm` and ``normalize_model``).

    Returns:
        ``(rank_ratio, srank)`` as floats, the default rank ratio filled in when neither is given.
    """
    if rank_ratio is not None and srank is not None:
        raise ValueError(
            "give at most one of rank_ratio and srank, "
            f"got rank_ratio={rank_ratio} and srank={srank}"
        )
    if srank is None and rank_ratio is None:
        rank_ratio = DEFAULT_RANK_RATIO
    if rank_ratio is not None:
        rank_ratio = _check_real(rank_ratio, "rank_ratio")
        if not 0 < rank_ratio <= 1:
            raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    if srank is not None:
        srank = _check_real(srank, "srank")
        if not srank >= 1:
            raise ValueError(f"srank must be >= 1, got {srank}")
    if (
        isinstance(n_power_iterations, bool)
        or not isinstance(n_power_iterations, numbers.Integral)  # numpy integers too, as torch
        or n_power_iterations < 1
    ):
        raise ValueError(f"n_power_iterations must be an integer >= 1, got {n_power_iterations!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    if not isinstance(exact, bool):  # a Python bool: a string "no" would be truthy
        raise TypeError(f"exact must be True or False, got {exact!r}")
    return rank_ratio, srank


def _caller_outside_package() -> int:
    """The ``stacklevel`` that names the first caller outside this package, for a warning raised
    by a function that another of ours (``apply_stable_rank_norm``, a trainer) may call on a
    user's behalf: the line to fix is the user's, not ours."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package + os.sep
    ):
        frame, level = frame.f_back, level + 1
    return level


def stable_rank_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    rank_ratio: float | None = None,
    srank: float | None = None,
    exact: bool = False,
) -> nn.Module:
    """Apply Stable Rank Normalization (SRN) to a parameter of ``module``.

    SRN rescales the weight so that its spectral norm is 1 and its stable rank is at most ``r``:
    it is spectral normalization followed by the optimal stable-rank projection that keeps the top
    singular value (docs/math.md §1.2-1.3; Sanyal, Torr & Dokania, ICLR 2020, Theorem 1 and
    Algorithm 1):

    .. math::
        \\hat W = \\frac{W}{\\sigma(W)}, \\quad
        W_{\\mathrm{SRN}} = u v^\\top + \\min\\Bigl(1, \\frac{\\sqrt{r - 1}}
            {\\|\\hat W - u v^\\top\\|_F}\\Bigr) (\\hat W - u v^\\top)

    where :math:`\\sigma(W) = u^\\top W v` with u, v from power iteration. Then
    :math:`\\|W_{\\mathrm{SRN}}\\|_2 = 1` and
    :math:`\\operatorname{srank}(W_{\\mathrm{SRN}}) = \\min(\\operatorname{srank}(W), r)` once u, v
    have converged. Controlling both factors of the spectrally-normalized generalization bounds
    (docs/math.md §1.1) is what distinguishes SRN from spectral normalization, which it equals at
    ``rank_ratio=1``. The cost is that of spectral normalization plus one Frobenius norm and one
    rank-one update. The positional arguments follow torch's
    ``spectral_norm(module, name, n_power_iterations, eps, dim)``.

    Weights of more than 2 dimensions are reshaped to (shape[dim], -1) (docs/math.md §1.4).

    .. note::
        As in torch's ``spectral_norm``, u and v are updated (``n_power_iterations`` steps) only in
        training mode; in eval mode they are frozen and the output is deterministic. Every access
        of ``module.weight`` recomputes it (no implicit cache; use
        ``torch.nn.utils.parametrize.cached()`` to reuse it within a block).

    .. note::
        The target r is stored in the ``state_dict`` (``..._srank``); loading a state_dict adopts
        the saved target, so the saved outputs reproduce exactly.

    .. note::
        A weight that is zero, or far smaller than ``eps``, keeps u, v as they are (the power
        iteration adds a vanishing multiple of the previous vector, Note [srn power iteration]),
        so normalization resumes when the weight becomes non-zero again. On the ``meta`` device
        no power iteration runs; ``to_empty()`` then leaves u and v uninitialized memory (the
        target ``_srank`` is refilled), so load a state_dict after it.

    Args:
        module: the module holding the parameter.
        name: name of the parameter (default ``"weight"``).
        n_power_iterations: power-iteration steps per training forward (default 1, an integer
            >= 1; numpy integers too).
        eps: numerical floor for sigma and ||R||_F^2 (default 1e-12, finite and > 0).
        dim: the row axis of the reshape (default: 1 for ConvTranspose1d/2d/3d, else 0; numpy
            integers too).
        rank_ratio: c in (0, 1]: target ``r = max(1, c * min(m, n))`` of the reshaped (m, n)
            weight. Default :data:`DEFAULT_RANK_RATIO` when ``srank`` is not given.
            ``rank_ratio=1`` is plain spectral normalization.
        srank: absolute target stable rank r >= 1 (instead of ``rank_ratio``).
        exact: use the exact top singular pair by SVD instead of power iteration (default False;
            for validation and small layers).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: invalid ``rank_ratio``/``srank`` (both given, out of range, NaN/inf), a
            missing or 1-D parameter, non-finite weights, ``n_power_iterations < 1``, ``eps`` not
            finite and > 0, SRN or spectral normalization already on this parameter.
        TypeError: a non-floating parameter, or a bool/non-number for a numeric argument.
        IndexError: ``dim`` out of range.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = stable_rank_norm(nn.Linear(20, 40), rank_ratio=0.3)
        >>> round(torch.linalg.matrix_norm(layer.weight, ord=2).item(), 2)
        1.0
    """
    if _old_style_spectral_norm(module, name) is not None:
        raise ValueError(
            f"parameter {name!r} of {type(module).__name__} has torch.nn.utils.spectral_norm "
            "(the hook-based API): remove it with torch.nn.utils.remove_spectral_norm first, "
            "SRN already includes spectral normalization"
        )
    # The refusals of a parametrized tensor come before reading it: in training mode a read runs
    # SN's or SRN's power iteration, and a refused call must leave u, v as they were.
    if parametrize.is_parametrized(module, name):
        kinds = [type(p).__name__ for p in module.parametrizations[name]]
        if _find_srn(module, name) is not None:
            raise ValueError(
                f"parameter {name!r} of {type(module).__name__} already has stable_rank_norm"
            )
        if any(hasattr(p, "_u") for p in module.parametrizations[name]):
            raise ValueError(
                f"parameter {name!r} of {type(module).__name__} already has spectral "
                f"normalization ({kinds}): remove it first, SRN includes it"
            )
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(
            f"module {type(module).__name__} has no parameter or buffer named {name!r}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"parameter {name!r} must be floating point, got dtype {weight.dtype}")
    if weight.ndim < 2:
        raise ValueError(
            f"parameter {name!r} must have 2 or more dimensions, got shape {tuple(weight.shape)}"
        )
    rank_ratio, srank = check_srn_arguments(rank_ratio, srank, n_power_iterations, eps, exact)
    if dim is None:
        dim = _default_dim(module)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an integer, got {dim!r}")
    dim = int(dim)
    if not -weight.ndim <= dim < weight.ndim:
        raise IndexError(
            f"dim must be in [-{weight.ndim}, {weight.ndim - 1}] for parameter {name!r} of shape "
            f"{tuple(weight.shape)}, got {dim}"
        )
    if weight.device.type != "meta" and not bool(torch.isfinite(weight).all()):
        raise ValueError(f"parameter {name!r} contains non-finite values (inf or NaN)")
    shape = tuple(weight_to_matrix(weight.detach(), dim).shape)
    r = target_srank(rank_ratio, shape) if srank is None else srank
    if r <= 1 and min(shape) > 1:
        warnings.warn(
            f"stable_rank_norm on {name!r} of shape {tuple(weight.shape)}: "
            "the target stable rank is "
            f"1, so the normalized weight has rank one (u v^T) and its raw weight gets no "
            f"gradient: the weight does not train, a bias still does (rank_ratio={rank_ratio}, "
            f"srank={srank})",
            RankOneWarning,
            stacklevel=_caller_outside_package(),
        )
    norm = _StableRankNorm(
        weight,
        srank=r,
        n_power_iterations=int(n_power_iterations),
        dim=dim % weight.ndim,
        eps=eps,
        exact=exact,
    )
    # nn.Embedding(sparse=True) sends a sparse gradient into the normalized weight: densified
    # first (see _DenseGrad).
    norm.sparse_grad = bool(getattr(module, "sparse", False))
    _own_parametrized_class(module)  # its class may be a deep copy's original's too
    parametrize.register_parametrization(module, name, norm)
    return module


def remove_stable_rank_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Remove SRN from ``module.name``, baking the normalized weight in.

    The baked weight is the one the layer uses in eval mode (the frozen u, v; no extra power
    iteration), so eval outputs before and after removal are identical. The parameter object is
    kept (same ``id()``), so an optimizer holding it keeps working.

    Raises:
        ValueError: the parameter has no stable rank normalization, or has other
            parametrizations too (torch removes only a whole list: they would be baked in).
    """
    srn = _find_srn(module, name)
    if srn is None:
        raise ValueError(f"parameter {name!r} of {type(module).__name__} has no stable_rank_norm")
    plist = module.parametrizations[name]
    others = [type(p).__name__ for p in plist if p is not srn]
    if others:
        raise ValueError(
            f"parameter {name!r} of {type(module).__name__} has other parametrizations {others} "
            "besides stable_rank_norm: removing it would bake them in too; use "
            "torch.nn.utils.parametrize.remove_parametrizations to remove them all"
        )
    modes = [p.training for p in plist]
    plist.eval()
    try:
        _own_parametrized_class(module)
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    finally:
        for p, mode in zip(plist, modes, strict=True):
            p.train(mode)
    return module
