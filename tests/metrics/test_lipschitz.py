"""Empirical Lipschitz measures against SVD and autograd oracles, for plain and conditional
models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stablerank.metrics import NonFiniteError
from stablerank.metrics.lipschitz import (
    KEY_EL_MAX,
    KEY_EL_MEAN,
    KEY_EL_N,
    interpolate,
    jacobian_spectral_norm,
    pairwise_lipschitz,
    plot_histogram,
    quantile_key,
    summarize,
)
from stablerank.models.gan import build_discriminator


def _linear_with_spectrum(singular_values: list[float], n_in: int, seed: int = 0) -> nn.Linear:
    """f(x) = A x with A = U diag(s) V^T, so sigma_max(A) = s[0] exactly."""
    gen = torch.Generator().manual_seed(seed)
    m = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n_in, m, generator=gen, dtype=torch.float64))
    layer = nn.Linear(n_in, m, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T)
    return layer


def test_pairwise_ratios_of_linear_map_bounded_by_sigma_max():
    layer = _linear_with_spectrum([3.0, 1.0, 0.5], n_in=5)
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
    x = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ratios = pairwise_lipschitz(layer, x, n_pairs=300, seed=0, batch_size=7)
    assert ratios.shape == (300,)
    # float64 rounding only: the ratio ||A d|| / ||d|| can never exceed sigma_max.
    assert ratios.max().item() <= sigma * (1 + 1e-12)
    # A has a null space (n_in = 5 > rank 3), so the only lower bound is 0.
    assert ratios.min().item() >= 0.0
    # Batch size does not change the result (same pairs, same arithmetic per sample).
    again = pairwise_lipschitz(layer, x, n_pairs=300, seed=0, batch_size=300)
    torch.testing.assert_close(ratios, again, rtol=1e-12, atol=0.0)


def test_pairwise_against_explicit_pairs_with_x_other():
    layer = _linear_with_spectrum([2.0, 1.0], n_in=3)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    ratios = pairwise_lipschitz(layer, x, x_other=y, n_pairs=50, seed=3)
    # Oracle: every ratio is one of the 24 cross ratios computed directly.
    a = layer.weight.detach()
    cross = {
        round(
            (torch.linalg.vector_norm(a @ (xi - yj)) / torch.linalg.vector_norm(xi - yj)).item(), 9
        )
        for xi in x
        for yj in y
    }
    assert {round(r, 9) for r in ratios.tolist()} <= cross


def test_pairwise_drops_identical_pairs():
    layer = nn.Linear(2, 2).double()
    x = torch.zeros(5, 2, dtype=torch.float64)
    assert pairwise_lipschitz(layer, x, n_pairs=10, seed=0).numel() == 0


def test_jacobian_norm_of_linear_map_equals_sigma_max():
    layer = _linear_with_spectrum([4.0, 2.0, 1.0], n_in=6)
    x = torch.randn(5, 6, dtype=torch.float64)
    est = jacobian_spectral_norm(layer, x, n_iters=30, seed=0)
    # Power iteration error shrinks like (s2/s1)^(2k) = 0.5^60: float64 precision is the limit.
    torch.testing.assert_close(est, torch.full((5,), 4.0, dtype=torch.float64), rtol=1e-10, atol=0)


def test_jacobian_norm_matches_autograd_jacobian_for_relu_bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)
    ).double()
    net.train()
    net(torch.randn(8, 1, 4, 4, dtype=torch.float64))  # non-trivial BN running stats
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    est = jacobian_spectral_norm(net, x, n_iters=60, seed=1, batch_size=2)
    assert net.training, "the model's previous mode must be restored"
    net.eval()
    oracle = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t: net(t[None])[0], xi)  # (4, 1, 4, 4)
        oracle.append(torch.linalg.matrix_norm(jac.reshape(4, -1), ord=2))
    # The estimate's relative error decays like (s2/s1)^(2k); these Jacobians have
    # s2/s1 <= 0.82 (seeded), so 60 iterations leave < 0.82^120 ~ 4e-11: rtol 1e-8 is safe.
    torch.testing.assert_close(est, torch.stack(oracle), rtol=1e-8, atol=0)
    # The exact mode builds each Jacobian itself (one VJP per output): equal up to round-off, in
    # any batching, with the model's mode restored.
    net.train()
    exact = jacobian_spectral_norm(net, x, exact=True, batch_size=2)
    assert net.training
    torch.testing.assert_close(exact, torch.stack(oracle), rtol=1e-12, atol=0)


def test_exact_jacobian_norm_where_power_iteration_falls_short():
    # Two nearly equal top singular values (1.0 and 0.99): 3 power iterations stay below the
    # norm, the exact mode does not; the D-style labelled call takes the same path.
    layer = _linear_with_spectrum([1.0, 0.99, 0.5], n_in=5)
    x = torch.randn(4, 5, dtype=torch.float64)
    short = jacobian_spectral_norm(layer, x, n_iters=3, seed=0)
    exact = jacobian_spectral_norm(layer, x, exact=True)
    assert (short < 1.0 - 1e-4).all()
    torch.testing.assert_close(exact, torch.ones(4, dtype=torch.float64), rtol=1e-12, atol=0)
    labelled = jacobian_spectral_norm(lambda t, y: layer(t), x, y=torch.zeros(4), exact=True)
    torch.testing.assert_close(labelled, exact, rtol=0, atol=0)


def test_interpolate_points_lie_on_segments():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0]])
    pts = interpolate(x, y, n=20, seed=0)
    assert pts.shape == (20, 2)
    # Each point p = x_i + t (y - x_i) with t in [0, 1]: solve for t on the first coordinate.
    for p in pts:
        on_first = torch.allclose(p[1], torch.tensor(0.0)) and 0 <= p[0] <= 2
        t = 1 - p[1]  # for x_i = (1, 1): p = (1 + t, 1 - t)
        on_second = torch.allclose(p[0], 1 + t, atol=1e-6) and 0 <= t <= 1
        assert on_first or on_second


def test_interpolate_draws_t_uniformly_on_each_segment():
    # x = 0, y = 1 (one point each): each point is its own t, which must spread over [0, 1].
    t = interpolate(torch.zeros(1, 1), torch.ones(1, 1), n=400, seed=3).flatten()
    assert t.min() < 0.05 and t.max() > 0.95 and abs(t.mean().item() - 0.5) < 0.05


def test_summarize_keys_and_values():
    assert summarize(torch.tensor([1.0, 2.0, 3.0, 10.0]))[KEY_EL_MEAN] == 4.0  # mean, not median
    out = summarize(torch.arange(101, dtype=torch.float64))
    assert out[KEY_EL_MAX] == 100.0
    assert out[KEY_EL_MEAN] == 50.0
    assert out[KEY_EL_N] == 101
    assert out[quantile_key(0.5)] == 50.0
    assert out[quantile_key(0.9)] == 90.0
    assert quantile_key(0.99) == "q99"


def test_plot_histogram_writes_png(tmp_path):
    path = plot_histogram({"real": torch.rand(50), "fake": torch.rand(30)}, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nan = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"values\['fake'\] contain 1 non-finite"):
        plot_histogram({"real": torch.rand(5), "fake": nan}, tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()


def test_plot_histogram_counts_every_value_the_extremes_included(tmp_path, monkeypatch):
    # The ratios are float64. Bin edges rounded to float32 put float32(0.1) > 0.1 above the
    # smallest value and float32(0.7) < 0.7 below the largest: both fell outside every bin, and
    # the largest is the eL max the claims report.
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    values = {"real": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
              "fake": torch.tensor([0.4, 0.5, 0.7], dtype=torch.float64)}  # fmt: skip
    plot_histogram(values, tmp_path / "h.png", bins=4)
    bars = drawn[0].axes[0].containers
    assert [sum(p.get_height() for p in bar) for bar in bars] == [3, 3]


def test_callables_are_accepted():
    layer = _linear_with_spectrum([2.0, 1.0], n_in=2)
    x = torch.randn(4, 2, dtype=torch.float64)
    # A closure binding an extra argument, as for a conditional discriminator D(x, y).
    est = jacobian_spectral_norm(lambda t: 3.0 * layer(t), x, n_iters=40)
    # s2/s1 = 0.5: 40 iterations converge to float64 round-off.
    torch.testing.assert_close(est, torch.full((4,), 6.0, dtype=torch.float64), rtol=1e-10, atol=0)
    assert pairwise_lipschitz(lambda t: layer(t), x, n_pairs=5).max().item() <= 2.0 + 1e-12


# ----------------------------------------------------------------------------------------------
# Conditional models f(x, y): the class held fixed per pair / per point
# ----------------------------------------------------------------------------------------------


def _class_scaled(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f(x, y) = s_y x with s = (1, 3): the map x -> f(x, y) is exactly s_y-Lipschitz."""
    return torch.tensor([1.0, 3.0], dtype=x.dtype)[y].reshape(-1, 1) * x


def test_pairwise_with_labels_uses_the_first_points_label_for_both():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    ratios = pairwise_lipschitz(_class_scaled, x, y=y, n_pairs=20, seed=0)
    # Pair (0, 1) is scored with class 0 (ratio 1), pair (1, 0) with class 1 (ratio 3). Labels
    # taken per point instead would give |f(x0, 0) - f(x1, 1)| / |x0 - x1| = 3, and pair (0, 1)
    # could then never give 1; both orders occur among 20 seeded pairs.
    assert set(ratios.tolist()) == {1.0, 3.0}
    # x_other has no labels: every pair takes the label of its point from x.
    other = torch.tensor([[5.0, -1.0], [2.0, 2.0]], dtype=torch.float64)
    cross = pairwise_lipschitz(_class_scaled, x, y=torch.tensor([1, 1]), x_other=other,
                               n_pairs=10, seed=0)  # fmt: skip
    torch.testing.assert_close(cross, torch.full((10,), 3.0, dtype=torch.float64))


def test_pairwise_with_labels_draws_the_same_pairs_as_a_bound_label():
    torch.manual_seed(0)
    D = build_discriminator("cnn", image_size=8, channels=1, ndf=4, num_classes=3).double().eval()
    x = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    y = torch.full((12,), 2)
    labelled = pairwise_lipschitz(D, x, y=y, n_pairs=30, seed=4, batch_size=5)
    bound = pairwise_lipschitz(lambda t: D(t, torch.full((len(t),), 2)), x, n_pairs=30, seed=4)
    # Same pairs, same arithmetic per sample: only the batching differs (float64 round-off).
    torch.testing.assert_close(labelled, bound, rtol=1e-12, atol=0.0)


def test_jacobian_with_labels_matches_autograd_per_sample():
    torch.manual_seed(1)
    D = build_discriminator("cnn", image_size=8, channels=1, ndf=4, num_classes=3).double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    est = jacobian_spectral_norm(D, x, y=y, n_iters=3, seed=0, batch_size=2)
    oracle = []
    for xi, yi in zip(x, y, strict=True):
        xi = xi.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(xi[None], yi[None]).sum(), xi)
        oracle.append(torch.linalg.vector_norm(grad))
    # D has one output per image, so J is 1 x d (rank 1): power iteration is exact after one
    # step and ||J||_2 is the gradient norm; only float64 round-off remains.
    torch.testing.assert_close(est, torch.stack(oracle), rtol=1e-10, atol=0)


def test_labels_must_match_the_samples():
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"y must hold one label per sample of x, shape \(4,\)"):
        pairwise_lipschitz(_class_scaled, x, y=torch.zeros(3, dtype=torch.long), n_pairs=2)
    with pytest.raises(ValueError, match="y must hold one label per sample"):
        jacobian_spectral_norm(_class_scaled, x, y=torch.zeros(4, 1, dtype=torch.long))


def _not_called(*args):
    raise AssertionError("the model was evaluated before its inputs were checked")


_OK = torch.ones(3, 2, dtype=torch.float64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("x", lambda x: pairwise_lipschitz(_not_called, x, n_pairs=5)),
        ("x_other", lambda x: pairwise_lipschitz(_not_called, _OK, x_other=x, n_pairs=5)),
        ("x", lambda x: jacobian_spectral_norm(_not_called, x)),
        ("values", lambda x: summarize(x.flatten())),
    ],
    ids=["pairwise-x", "pairwise-x_other", "jacobian-x", "summarize-values"],
)
def test_non_finite_inputs_are_refused_before_the_model_runs(bad, name, call):
    x = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    x[1, 0] = bad
    with pytest.raises(NonFiniteError, match=rf"^{name} contain 1 non-finite values"):
        call(x)


def test_the_lipschitz_estimates_refuse_a_diverged_model_and_bad_arguments():
    def diverged(x):  # a network whose weights hold NaN
        return x[:, :3] * float("nan")  # NaN ratios and norms were returned

    x = torch.randn(6, 4)
    with pytest.raises(NonFiniteError, match="the model's outputs"):
        pairwise_lipschitz(diverged, x, n_pairs=5)
    for exact in (False, True):  # the exact path checks before its SVD sees NaN
        with pytest.raises(NonFiniteError):
            jacobian_spectral_norm(diverged, x, exact=exact)
    with pytest.raises(TypeError, match="exact must be True or False"):
        jacobian_spectral_norm(nn.Linear(4, 3), x, exact="yes")
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        jacobian_spectral_norm(nn.Linear(4, 3), x[:0])  # an empty result before
    for call in (lambda: pairwise_lipschitz(nn.Linear(4, 3), x, n_pairs=5, seed="1"),
                 lambda: interpolate(x, x, 3, seed=0.5)):  # fmt: skip
        with pytest.raises(TypeError, match="seed must be an integer"):
            call()
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        interpolate(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long), 2)
