"""Property tests (hypothesis) over shapes, targets and dtypes: the exact-mode layer always has
spectral norm 1 and stable rank min(srank(W), r), and equals SN + the Theorem-1 oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stablerank import srn_optimal, stable_rank, stable_rank_norm
from stablerank.linalg import target_srank

shapes = st.tuples(st.integers(2, 12), st.integers(2, 12))


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    rank_ratio=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_exact_layer_invariants(shape, rank_ratio, seed, dtype):
    torch.manual_seed(seed)
    layer = nn.Linear(shape[1], shape[0]).to(dtype)
    raw = layer.weight.detach().clone()
    with pytest.warns(UserWarning) if rank_ratio * min(shape) <= 1 else _nullcontext():
        stable_rank_norm(layer, rank_ratio=rank_ratio, exact=True)
    w = layer.weight.detach().double()
    r = target_srank(rank_ratio, shape)
    # float32 SVD and rounding: 1e-4 relative; float64 far tighter.
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=tol)
    assert stable_rank(w).item() == pytest.approx(min(stable_rank(raw).item(), r), rel=tol)
    sigma = torch.linalg.matrix_norm(raw.double(), ord=2)
    torch.testing.assert_close(
        w, srn_optimal(raw.double() / sigma, r, keep_top=1), rtol=tol, atol=tol
    )


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    keep_top=st.integers(0, 3),
    fraction=st.floats(0.05, 0.95),
)
def test_projection_hits_any_feasible_target(shape, seed, keep_top, fraction):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    keep_top = min(keep_top, len(s) - 1)
    floor = float((s[: max(keep_top, 1)] ** 2).sum() / s[0] ** 2)
    r = floor + fraction * (stable_rank(w).item() - floor)
    x = srn_optimal(w, max(r, 1.0), keep_top=keep_top)
    assert stable_rank(x).item() == pytest.approx(max(r, 1.0), rel=1e-8)
    # the projection never moves W further than the trivial feasible point for keep_top >= 1:
    # rescaling the tail (any other scale of S2 changes srank away from r).
    assert torch.isfinite(x).all()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
