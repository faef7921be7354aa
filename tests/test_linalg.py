"""The pure maths: stable rank, the reshape and its inverse, and the Theorem-1 projection checked
against a hand-computed diagonal case and a generic constrained optimizer (scipy SLSQP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from stablerank.linalg import (
    matrix_to_weight,
    power_iteration,
    power_iteration_steps,
    spectral_norm_exact,
    srn_optimal,
    stable_rank,
    target_srank,
    weight_to_matrix,
)


def _random_with_spectrum(m: int, n: int, s: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = len(s)
    return (u[:, :k] * torch.tensor(s, dtype=torch.float64)) @ v[:, :k].T


def test_stable_rank_diagonal_is_exact():
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert stable_rank(w).item() == pytest.approx((9 + 4 + 1) / 9, rel=1e-12)


def test_stable_rank_bounds_and_scale_invariance():
    w = torch.randn(20, 7, dtype=torch.float64)
    s = stable_rank(w).item()
    assert 1.0 <= s <= 7.0
    assert stable_rank(123.0 * w).item() == pytest.approx(s, rel=1e-12)
    # rank one -> 1, orthonormal columns -> their count
    assert stable_rank(torch.outer(torch.randn(5), torch.randn(4))).item() == pytest.approx(
        1, rel=1e-5
    )
    q, _ = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64))
    assert stable_rank(q).item() == pytest.approx(4, rel=1e-12)


def test_stable_rank_of_zero_is_finite():
    assert stable_rank(torch.zeros(3, 4)).item() == 0.0


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1])
def test_reshape_round_trips_exactly(dim):
    w = torch.randn(2, 3, 4, 5)
    m = weight_to_matrix(w, dim)
    assert m.shape == (w.shape[dim], w.numel() // w.shape[dim])
    assert torch.equal(matrix_to_weight(m, w.shape, dim), w)


def test_reshape_rows_are_the_chosen_axis():
    w = torch.randn(4, 6, 3, 3)  # a ConvTranspose2d weight: (C_in, C_out, kh, kw), dim 1
    m = weight_to_matrix(w, 1)
    for j in range(6):
        assert torch.equal(m[j], w[:, j].reshape(-1))


def test_reshape_rejects_bad_dim():
    with pytest.raises(IndexError, match=r"dim must be in \[-2, 1\]"):
        weight_to_matrix(torch.randn(3, 4), 2)


def test_target_srank_floor_and_ratio():
    assert target_srank(0.5, (10, 40)) == 5.0
    assert target_srank(0.01, (10, 40)) == 1.0


def test_srn_optimal_diagonal_closed_form():
    # W = diag(4, 2, 2, 1): srank = 25/16; target r = 1.25, keep_top = 1:
    # g2 = sqrt(r s1^2 - s1^2) / ||S2||_F = sqrt(0.25 * 16) / 3 = 2/3
    w = torch.diag(torch.tensor([4.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    x = srn_optimal(w, 1.25, keep_top=1)
    expected = torch.diag(torch.tensor([4.0, 4 / 3, 4 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    # keep_top = 0: g = sqrt(0.25) * 4 / 3 = 2/3, g2 = (2/3 + 0.25) / 1.25 = 11/15,
    # g1 = g2 / g = 1.1
    x0 = srn_optimal(w, 1.25, keep_top=0)
    expected0 = torch.diag(torch.tensor([4.4, 22 / 15, 22 / 15, 11 / 15], dtype=torch.float64))
    torch.testing.assert_close(x0, expected0, rtol=1e-12, atol=1e-12)
    assert stable_rank(x0).item() == pytest.approx(1.25, rel=1e-12)


@pytest.mark.parametrize("keep_top", [0, 1, 2])
def test_srn_optimal_hits_target_and_keeps_vectors(keep_top):
    w = _random_with_spectrum(7, 5, [5.0, 3.0, 2.5, 2.0, 1.0], seed=keep_top)
    r = 1.6 if keep_top < 2 else 1.5  # keep_top=2 needs r >= (25 + 9) / 25 = 1.36
    x = srn_optimal(w, r, keep_top=keep_top)
    assert stable_rank(x).item() == pytest.approx(r, rel=1e-10)
    sw = torch.linalg.svdvals(w)
    sx = torch.linalg.svdvals(x)
    torch.testing.assert_close(sx[:keep_top], sw[:keep_top], rtol=1e-10, atol=0)
    # singular vectors unchanged: X commutes with the same left/right singular subspaces
    u, _, vh = torch.linalg.svd(w)
    d = u.T @ x @ vh.T
    off_diagonal = d.clone()
    off_diagonal.diagonal().zero_()
    assert off_diagonal.abs().max().item() < 1e-10


def test_srn_optimal_unchanged_below_target():
    w = _random_with_spectrum(6, 4, [2.0, 1.0, 0.5], seed=3)
    assert torch.equal(srn_optimal(w, stable_rank(w).item() + 0.01), w)


def test_srn_optimal_infeasible_keep_top_raises():
    w = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="no matrix keeps the top keep_top=3"):
        srn_optimal(w, 2.0, keep_top=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"srank": 0.5}, "srank must be a finite number >= 1"),
        ({"srank": math.inf}, "srank must be a finite number >= 1"),  # stable_rank_norm refuses it
        ({"srank": True}, "srank must be a finite number >= 1"),
        ({"srank": 2.0, "keep_top": -1}, "keep_top must be"),
    ],
)
def test_srn_optimal_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        srn_optimal(torch.randn(3, 3), **kwargs)


@pytest.mark.parametrize(
    "weight",
    [
        torch.tensor([[2, 0], [0, 1]]),  # srank 1.25; an integer tensor gave 1
        torch.ones(3, 3, dtype=torch.bool),  # gave True
        torch.tensor([[1j, 0], [0, 1]]),  # srank 2; the imaginary part was dropped: 1
        torch.tensor(3.0),  # a 0-d tensor: an IndexError
        [[1.0, 0.0], [0.0, 1.0]],  # a list: an AttributeError
    ],
)
def test_the_measurements_refuse_what_is_not_a_floating_point_weight(weight):
    for measure in (stable_rank, spectral_norm_exact):
        with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
            measure(weight)


def test_the_helpers_refuse_out_of_range_arguments():
    for c in (0, -1, math.nan, 2, True):  # target_srank(0) was 1.0, target_srank(2) was 12
        with pytest.raises(ValueError, match=r"rank_ratio must be a number in \(0, 1\]"):
            target_srank(c, (6, 8))
    with pytest.raises(TypeError, match="dim must be an int"):
        weight_to_matrix(torch.randn(3, 4, 5), dim=True)
    # numpy numbers are numbers, as torch takes them
    assert weight_to_matrix(torch.randn(3, 4, 5), dim=np.int64(1)).shape == (4, 15)
    assert target_srank(np.float32(0.5), (6, 8)) == 3.0
    u, v = torch.nn.functional.normalize(torch.randn(2), dim=0), torch.randn(3)
    for run in (lambda: power_iteration(torch.randn(2, 3), u, v, 0, 1e-12),
                lambda: power_iteration_steps(torch.randn(2, 3), u, v, 0)):  # fmt: skip
        with pytest.raises(ValueError, match="n_iterations must be >= 1"):  # UnboundLocalError
            run()
    with pytest.raises(TypeError, match="u and v must be float32 or float64"):  # was a KeyError
        power_iteration(torch.randn(2, 3).half(), u.half(), v.half(), 1, 1e-12)
    with pytest.raises(TypeError, match="1 or more dimensions"):  # was an IndexError
        weight_to_matrix(torch.tensor(1.0))
    with pytest.raises(ValueError, match="non-empty 2-D"):  # was an IndexError
        srn_optimal(torch.randn(0, 5), 2)
    assert srn_optimal(torch.randn(4, 4), np.int64(2)).shape == (4, 4)


def test_the_layer_table_reads_a_numpy_dim_that_torch_took():
    from stablerank.layers import layer_report

    ct = torch.nn.ConvTranspose2d(3, 4, 2)
    torch.nn.utils.spectral_norm(ct, dim=np.int64(1))  # torch keeps the numpy integer
    assert len(layer_report(torch.nn.Sequential(ct))) == 1


def _slsqp_projection(w: np.ndarray, r: float, keep_top: int, seed: int) -> float:
    """Best objective a generic optimizer finds for min ||W - X||_F s.t. srank(X) = r and the top
    keep_top singular values kept, from several starts (an independent oracle: it knows nothing
    of the closed form)."""
    s_w = np.linalg.svd(w, compute_uv=False)
    rng = np.random.default_rng(seed)

    def srank(x: np.ndarray) -> float:
        s = np.linalg.svd(x.reshape(w.shape), compute_uv=False)
        return float((s**2).sum() / s[0] ** 2)

    cons = [{"type": "eq", "fun": lambda x: srank(x) - r}]
    for i in range(keep_top):
        cons.append(
            {
                "type": "eq",
                "fun": lambda x, i=i: (
                    np.linalg.svd(x.reshape(w.shape), compute_uv=False)[i] - s_w[i]
                ),
            }
        )
    best = math.inf
    for _ in range(6):
        x0 = (w + 0.3 * rng.standard_normal(w.shape)).ravel()
        res = minimize(
            lambda x: float(((x - w.ravel()) ** 2).sum()),
            x0,
            constraints=cons,
            method="SLSQP",
            options={"maxiter": 500, "ftol": 1e-12},
        )
        if res.success and abs(srank(res.x) - r) < 1e-6:
            best = min(best, math.sqrt(res.fun))
    return best


@pytest.mark.parametrize("keep_top", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_srn_optimal_never_worse_than_slsqp(keep_top, seed):
    g = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    floor = float((s[: max(keep_top, 1)] ** 2).sum() / s[0] ** 2)
    r = floor + 0.45 * (stable_rank(w).item() - floor)  # strictly between feasible and srank(W)
    x = srn_optimal(w, r, keep_top=keep_top)
    ours = torch.linalg.matrix_norm(w - x).item()
    found = _slsqp_projection(w.numpy(), r, keep_top, seed)
    assert math.isfinite(found), "the oracle found no feasible point"
    # 1e-6: SLSQP's tolerance on the objective; the closed form must never be worse than it.
    assert ours <= found + 1e-6
    assert stable_rank(x).item() == pytest.approx(r, rel=1e-10)


@pytest.mark.parametrize("shape", [(5, 3, 2), (40, 7), (7, 40), (64, 32, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_norm_and_stable_rank_match_the_svd(shape, dtype):
    # The Gram-matrix route (top eigenvalue of the smaller side) against the SVD, tall and wide.
    torch.manual_seed(3)
    w = torch.randn(shape, dtype=torch.float64)
    w[0] *= 5.0  # a dominant direction, so srank is well away from min(m, n)
    s = torch.linalg.svdvals(w.reshape(shape[0], -1))
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    sigma, srank = spectral_norm_exact(w.to(dtype)), stable_rank(w.to(dtype))
    assert sigma.dtype == srank.dtype == dtype
    assert sigma.item() == pytest.approx(s[0].item(), rel=rel)
    assert srank.item() == pytest.approx((s.square().sum() / s[0].square()).item(), rel=rel)


def test_transposed_conv_reshape_and_half_precision_results():
    torch.manual_seed(4)
    w = torch.randn(6, 10, 3, 3)  # ConvTranspose2d layout: (C_in, C_out, k, k); rows are dim 1
    s = torch.linalg.svdvals(weight_to_matrix(w.double(), 1))
    assert spectral_norm_exact(w, dim=1).item() == pytest.approx(s[0].item(), rel=1e-6)
    half = stable_rank(w.half(), dim=1)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx((s.square().sum() / s[0] ** 2).item(), rel=1e-2)


def test_srn_optimal_keep_top_zero_at_target_one_is_the_top_component():
    # gamma1 = gamma2 / gamma is 0/0 at r = 1; its limit is 1: X = S1 = diag(2, 0).
    x = srn_optimal(torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)), 1.0, keep_top=0)
    torch.testing.assert_close(x, torch.diag(torch.tensor([2.0, 0.0], dtype=torch.float64)))


def test_stable_rank_of_non_finite_tiny_and_huge_weights():
    w = torch.eye(3, dtype=torch.float64)
    w[0, 1] = float("inf")
    assert torch.isnan(stable_rank(w))  # documented: NaN, never a finite-looking 0
    w[0, 1] = float("nan")
    assert torch.isnan(stable_rank(w))
    d = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    for scale in (1e-200, 1e200):  # squares underflow / overflow without scaling first
        assert stable_rank(d * scale).item() == pytest.approx(1.5, rel=1e-12)
    assert stable_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0])) * 1e20).item() == pytest.approx(
        1.5, rel=1e-6
    )
    assert stable_rank(torch.zeros(3, 4)).item() == 0.0
