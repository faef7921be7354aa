"""The SRN layer: invariants after convergence, agreement with the SVD oracle and with torch's
spectral_norm, structure, modes, gradients, copies, removal and errors."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from stablerank import (
    RankOneWarning,
    remove_stable_rank_norm,
    srn_optimal,
    stable_rank,
    stable_rank_norm,
)
from stablerank.linalg import target_srank, weight_to_matrix

# Relative tolerance of the converged invariants (the 1e-3): float32 SVD and power
# iteration converge far below it; anything looser would hide a wrong formula.
CONVERGED_RTOL = 1e-3


def _converge(module: nn.Module, steps: int = 200) -> None:
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module.weight  # noqa: B018 - each access runs one power-iteration step


def _sigma(w: torch.Tensor, dim: int = 0) -> float:
    return torch.linalg.matrix_norm(weight_to_matrix(w.detach().double(), dim), ord=2).item()


def _layers():
    return [
        (lambda: nn.Linear(30, 50), 0),
        (lambda: nn.Conv2d(6, 12, 3), 0),
        (lambda: nn.ConvTranspose2d(6, 10, 3), 1),
    ]


@pytest.mark.parametrize(("make", "dim"), _layers())
@pytest.mark.parametrize("rank_ratio", [0.1, 0.3, 0.7])
def test_converged_layer_has_unit_sigma_and_target_srank(make, dim, rank_ratio):
    torch.manual_seed(0)
    layer = make()
    raw = layer.weight.detach().clone()
    stable_rank_norm(layer, rank_ratio=rank_ratio)
    _converge(layer)
    w = layer.weight
    r = target_srank(rank_ratio, tuple(weight_to_matrix(raw, dim).shape))
    expected = min(stable_rank(raw, dim).item(), r)
    assert _sigma(w, dim) == pytest.approx(1.0, rel=CONVERGED_RTOL)
    assert stable_rank(w, dim).item() == pytest.approx(expected, rel=CONVERGED_RTOL)


@pytest.mark.parametrize(("make", "dim"), _layers())
def test_layer_equals_sn_then_theorem1_oracle(make, dim):
    torch.manual_seed(1)
    layer = make()
    raw = layer.weight.detach().double()
    stable_rank_norm(layer.double(), rank_ratio=0.2)
    _converge(layer)
    m = weight_to_matrix(raw, dim)
    r = target_srank(0.2, tuple(m.shape))
    oracle = srn_optimal(m / _sigma(raw, dim), r, keep_top=1)
    torch.testing.assert_close(
        weight_to_matrix(layer.weight.detach(), dim), oracle, rtol=1e-6, atol=1e-8
    )


def test_exact_mode_equals_converged_power_iteration():
    torch.manual_seed(2)
    a, b = nn.Conv2d(4, 8, 3).double(), None
    b = copy.deepcopy(a)
    stable_rank_norm(a, rank_ratio=0.25)
    stable_rank_norm(b, rank_ratio=0.25, exact=True)
    _converge(a)
    b.train()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-7, atol=1e-9)


def test_rank_ratio_one_agrees_with_torch_spectral_norm():
    torch.manual_seed(3)
    ours, theirs = nn.Linear(20, 15), None
    theirs = copy.deepcopy(ours)
    stable_rank_norm(ours, rank_ratio=1.0)
    spectral_norm(theirs)
    p_ours = ours.parametrizations.weight[0]
    p_theirs = theirs.parametrizations.weight[0]
    # same u, v -> the same eval-mode weight
    with torch.no_grad():
        p_theirs._u.copy_(p_ours._u)
        p_theirs._v.copy_(p_ours._v)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-7)
    # and both converge to the same training-mode weight (the same update rule)
    ours.train(), theirs.train()
    for _ in range(30):
        wo, wt = ours.weight, theirs.weight
    torch.testing.assert_close(wo, wt, rtol=0, atol=1e-6)


@pytest.mark.parametrize("composite", [False, True])
@pytest.mark.parametrize("rank_ratio", [0.3, 1.0])
def test_eval_divides_by_a_negative_sigma_as_torch_does(monkeypatch, composite, rank_ratio):
    # Frozen u, v meet a weight with u^T W v < 0 once the weight changed sign after the last
    # training step (or raw weights were loaded with strict=False): torch's spectral_norm divides
    # by that sigma. Flooring it at eps gave W / 1e-12 at rank_ratio 1, with no error.
    import stablerank.srn as srn_module

    monkeypatch.setattr(srn_module, "_needs_composite", lambda _weight: composite)
    torch.manual_seed(17)
    ours, theirs = nn.Linear(9, 6).double(), None
    theirs = spectral_norm(copy.deepcopy(ours))
    stable_rank_norm(ours, rank_ratio=rank_ratio)
    p, q = ours.parametrizations.weight[0], theirs.parametrizations.weight[0]
    with torch.no_grad():
        q._u.copy_(p._u), q._v.copy_(p._v)
        ours.parametrizations.weight.original.neg_()
        theirs.parametrizations.weight.original.neg_()
    ours.eval(), theirs.eval()
    w = ours.parametrizations.weight.original.detach()
    sigma = torch.dot(p._u, torch.mv(w, p._v))
    assert sigma < 0
    # SPEC 1.3 steps 3-5 with sigma = u^T W v, R formed explicitly
    expected = w / sigma
    tail = expected - torch.outer(p._u, p._v)
    if rank_ratio < 1:
        assert tail.norm() > (p.srank - 1) ** 0.5  # the cap binds
        expected = torch.outer(p._u, p._v) + (p.srank - 1) ** 0.5 * tail / tail.norm()
    else:
        torch.testing.assert_close(theirs.weight, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.weight, expected, rtol=1e-12, atol=1e-14)
    w = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(p, (w,))


def test_structure_buffers_and_state_dict_keys():
    layer = stable_rank_norm(nn.Linear(5, 4))
    assert {n for n, _ in layer.named_parameters()} == {"bias", "parametrizations.weight.original"}
    assert {n for n, _ in layer.named_buffers()} == {
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
        "parametrizations.weight.0._srank",
    }
    assert set(layer.state_dict()) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
        "parametrizations.weight.0._srank",
    }
    srank = layer.state_dict()["parametrizations.weight.0._srank"]
    assert srank.dtype == torch.float64 and srank.ndim == 0


def test_eval_freezes_vectors_and_repeats_last_training_weight():
    torch.manual_seed(4)
    layer = stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.5)
    p = layer.parametrizations.weight[0]
    layer.train()
    last_train = layer.weight.detach().clone()
    u, v = p._u.clone(), p._v.clone()
    layer.eval()
    # Training uses the power iteration's ||W v|| for sigma, eval u^T W v with the same (u, v):
    # equal up to float32 rounding (1e-6 relative); repeated eval calls are bitwise equal.
    first = layer.weight
    for _ in range(3):
        torch.testing.assert_close(layer.weight, last_train, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(layer.weight, first, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(layer.weight, first, rtol=0, atol=0)
    assert torch.equal(p._u, u) and torch.equal(p._v, v)


def test_eval_follows_data_writes_and_outputs_do_not_alias():
    # torch's spectral_norm semantics: no implicit eval cache. A `.data` write does not bump
    # `_version` (the old cache key) and must still be seen; editing a returned weight in place
    # must not change later outputs.
    torch.manual_seed(5)
    layer = stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.5).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        layer.parametrizations.weight.original.data = layer.parametrizations.weight.original * 2
        layer.parametrizations.weight.original.data[0].add_(1.0)
        after = layer(x)
        w = layer.weight
        w.mul_(0.0)  # a user's in-place edit of the computed weight
        torch.testing.assert_close(layer(x), after, rtol=0, atol=0)
    assert not torch.allclose(before, after)
    with torch.enable_grad():
        torch.testing.assert_close(layer(x).detach(), after, rtol=0, atol=0)
    with parametrize.cached():  # the explicit cache, as in torch
        assert layer.weight is layer.weight


def test_gradcheck_float64():
    torch.manual_seed(6)
    layer = stable_rank_norm(nn.Linear(5, 7).double(), rank_ratio=0.3).eval()
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach().clone().requires_grad_(True)
    assert p.clamps_srank and stable_rank(w).item() > p.srank  # the clamp branch is exercised
    assert torch.autograd.gradcheck(p, (w,))
    p.clamps_srank = False  # and the plain-SN path
    assert torch.autograd.gradcheck(p, (w,))


def test_gradients_reach_raw_weight_in_training():
    layer = stable_rank_norm(nn.Linear(6, 4), rank_ratio=0.5)
    layer(torch.randn(3, 6)).square().sum().backward()
    g = layer.parametrizations.weight.original.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_state_dict_round_trip_strict():
    torch.manual_seed(7)
    a = stable_rank_norm(nn.Conv2d(3, 5, 3), rank_ratio=0.4)
    a(torch.randn(2, 3, 8, 8))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = stable_rank_norm(nn.Conv2d(3, 5, 3), rank_ratio=0.4)
    b.load_state_dict(torch.load(buf), strict=True)
    a.eval(), b.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_deepcopy_after_forward_gives_identical_copy():
    torch.manual_seed(8)
    net = nn.Sequential(
        stable_rank_norm(nn.Linear(4, 8)), nn.ReLU(), stable_rank_norm(nn.Linear(8, 2))
    )
    x = torch.randn(5, 4)
    net(x).sum().backward()
    net.eval()
    with torch.no_grad():
        net(x)
    ema = copy.deepcopy(net)
    torch.testing.assert_close(ema(x), net(x), rtol=0, atol=0)


def test_parametrize_cached_runs_power_iteration_once():
    torch.manual_seed(9)
    layer = stable_rank_norm(nn.Linear(6, 6))
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach()
    v_once = torch.nn.functional.normalize(w.t() @ p._u, dim=0)
    u_once = torch.nn.functional.normalize(w @ v_once, dim=0)
    with parametrize.cached():
        w1 = layer.weight
        w2 = layer.weight
    assert w1 is w2
    # exactly one power-iteration step happened (a second would move u again)
    torch.testing.assert_close(p._u, u_once, rtol=0, atol=1e-7)
    torch.testing.assert_close(p._v, v_once, rtol=0, atol=1e-7)


def test_remove_keeps_eval_output_and_parameter_identity():
    torch.manual_seed(10)
    layer = stable_rank_norm(nn.Linear(6, 5), rank_ratio=0.4)
    layer(torch.randn(2, 6))
    original = layer.parametrizations.weight.original
    x = torch.randn(3, 6)
    layer.eval()
    before = layer(x)
    layer.train()  # removal in training mode must not run an extra power iteration
    remove_stable_rank_norm(layer)
    assert type(layer) is nn.Linear and layer.weight is original
    layer.eval()
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    stable_rank_norm(layer, rank_ratio=0.4)  # re-registration after removal
    assert parametrize.is_parametrized(layer, "weight")


def test_zero_weight_gives_finite_zero():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    stable_rank_norm(layer, rank_ratio=0.5)
    w = layer.weight
    assert torch.isfinite(w).all() and torch.count_nonzero(w) == 0
    layer(torch.randn(2, 4)).sum().backward()
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


def test_the_rank_one_warning_names_the_users_line_through_the_model_helpers_too():
    from stablerank import apply_stable_rank_norm

    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))  # the head stays plain
    for call in (lambda: stable_rank_norm(nn.Linear(10, 8), rank_ratio=0.05),
                 lambda: apply_stable_rank_norm(model, 0.05)):  # fmt: skip
        with pytest.warns(UserWarning, match="rank one") as caught:
            call()
        assert [w.filename for w in caught] == [__file__]
    # So do normalize_model's own warnings when apply_stable_rank_norm raises them.
    with pytest.warns(UserWarning, match="normalized no layer") as caught:
        apply_stable_rank_norm(nn.Sequential(nn.Linear(10, 8)), 0.5)  # a lone Linear: the head
    assert [w.filename for w in caught] == [__file__]


def test_target_one_warns_rank_one():
    with pytest.warns(RankOneWarning, match="rank one"):  # its own category, to filter
        stable_rank_norm(nn.Linear(10, 10), rank_ratio=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stable_rank_norm(nn.Linear(10, 1), rank_ratio=0.05)  # a vector is rank one anyway


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(dtype):
    torch.manual_seed(11)
    layer = nn.Linear(16, 24).to(dtype)
    stable_rank_norm(layer, rank_ratio=0.5)
    p = layer.parametrizations.weight[0]
    assert p._u.dtype == torch.float32
    _converge(layer, 50)
    w = layer.weight
    assert w.dtype == dtype
    # 1e-2: the output is rounded to bf16/fp16 (8/11 mantissa bits).
    assert _sigma(w.float()) == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_half_after_registration_trains_as_torch_sn_does(dtype):
    # The usual order: normalize, then ``model.half()``. torch's spectral_norm trains after it;
    # so must SRN, with u, v kept float32 (as when registered on half weights) and not rounded.
    torch.manual_seed(13)
    layer = stable_rank_norm(nn.Linear(16, 24), rank_ratio=0.2)  # r = 3.2: the cap binds
    srn = layer.parametrizations.weight[0]
    u, v = srn._u.clone(), srn._v.clone()
    layer.to(dtype)
    assert srn._u.dtype == srn._v.dtype == torch.float32
    assert torch.equal(srn._u, u) and torch.equal(srn._v, v)
    assert layer(torch.randn(4, 16, dtype=dtype)).dtype == dtype  # a training-mode forward
    _converge(layer, 50)
    assert _sigma(layer.weight.float()) == pytest.approx(1.0, rel=1e-2)
    assert stable_rank(layer.weight.double()).item() == pytest.approx(3.2, rel=2e-2)
    layer.double()  # and back to a full precision: the vectors follow it
    assert srn._u.dtype == torch.float64 and srn._srank.dtype == torch.float64


def test_autocast_cpu_bfloat16():
    torch.manual_seed(12)
    layer = stable_rank_norm(nn.Linear(16, 8), rank_ratio=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert layer.parametrizations.weight[0]._u.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"rank_ratio": 0.0}, ValueError, r"rank_ratio must be in \(0, 1\], got 0.0"),
        ({"rank_ratio": 1.5}, ValueError, r"rank_ratio must be in \(0, 1\], got 1.5"),
        ({"srank": 0.5}, ValueError, "srank must be >= 1, got 0.5"),
        ({"rank_ratio": 0.5, "srank": 2.0}, ValueError, "at most one of rank_ratio and srank"),
        ({"name": "nope"}, ValueError, "no parameter or buffer named 'nope'"),
        ({"name": "bias"}, ValueError, "must have 2 or more dimensions"),
        ({"n_power_iterations": 0}, ValueError, "n_power_iterations must be an integer >= 1"),
        ({"eps": 0.0}, ValueError, "eps must be finite and > 0, got 0.0"),
        ({"eps": float("inf")}, ValueError, "eps must be finite and > 0, got inf"),
        ({"eps": float("nan")}, ValueError, "eps must be finite and > 0, got nan"),
        ({"eps": True}, TypeError, "eps must be a real number, got True"),
        ({"rank_ratio": True}, TypeError, "rank_ratio must be a real number, got True"),
        ({"srank": True}, TypeError, "srank must be a real number, got True"),
        ({"rank_ratio": float("nan")}, ValueError, "rank_ratio must be finite, got nan"),
        ({"srank": float("inf")}, ValueError, "srank must be finite, got inf"),
        ({"n_power_iterations": True}, ValueError, "n_power_iterations must be an integer"),
        ({"dim": 2}, IndexError, r"dim must be in \[-2, 1\]"),
    ],
)
def test_bad_arguments_raise_before_any_change(kwargs, exc, match):
    layer = nn.Linear(4, 3)
    with pytest.raises(exc, match=match):
        stable_rank_norm(layer, **kwargs)
    assert not parametrize.is_parametrized(layer)


def test_bad_weights_raise():
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        stable_rank_norm(lin)
    emb = nn.Module()
    emb.register_buffer("weight", torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="must be floating point"):
        stable_rank_norm(emb)
    twice = stable_rank_norm(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="already has stable_rank_norm"):
        stable_rank_norm(twice)
    with pytest.raises(ValueError, match="has no stable_rank_norm"):
        remove_stable_rank_norm(nn.Linear(3, 3))


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph(training):
    torch.manual_seed(13)
    net = nn.Sequential(
        stable_rank_norm(nn.Conv2d(3, 8, 3), rank_ratio=0.3),
        nn.ReLU(),
        nn.Flatten(),
        stable_rank_norm(nn.Linear(8 * 6 * 6, 4), rank_ratio=0.3),
    )
    net.train(training)
    reference = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        out = compiled(x)
        expected = reference(x)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if training:
        torch.testing.assert_close(
            net[0].parametrizations.weight[0]._u,
            reference[0].parametrizations.weight[0]._u,
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.filterwarnings("ignore:.*has rank one")  # r = 1 here on purpose (0.1 * 6 -> 1)
@pytest.mark.parametrize(
    "target", [{"rank_ratio": 0.1}, {"rank_ratio": 0.5}, {"rank_ratio": 1.0}, {"srank": 1.0}]
)
def test_every_normalization_path_gives_the_same_values_and_gradients(monkeypatch, target):
    # Note [srn normalization paths]: the eager path (hand-written backward, float scalars on
    # the CPU) against the tensor formula autograd differentiates (the path under compile /
    # torch.func). rank_ratio 1.0 is plain SN; srank 1 the rank-one u v^T (zero gradient).
    import stablerank.srn as srn_module

    torch.manual_seed(14)
    fused = stable_rank_norm(nn.Conv2d(3, 6, 3).double(), n_power_iterations=2, **target)
    other = copy.deepcopy(fused)
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    for _ in range(2):  # two steps: u, v move; the second forward starts from updated vectors
        fused.zero_grad()
        other.zero_grad()
        fused(x).sin().sum().backward()
        with monkeypatch.context() as m:
            m.setattr(srn_module, "_needs_composite", lambda _weight: True)
            other(x).sin().sum().backward()
        g_f = fused.parametrizations.weight.original.grad
        g_o = other.parametrizations.weight.original.grad
        torch.testing.assert_close(other.weight, fused.weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_o, g_f, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("srank", [None, 1.0, 1.5, 4.5])
def test_the_device_path_function_is_checked_on_the_cpu(srank):
    # _StableRankNormFunction is the path of every non-CPU device, so CI without a GPU would
    # otherwise never run it: its forward against the composite formula and its hand-written
    # backward by gradcheck, with sigma = u^T W v recomputed from W as the layer does. srank None
    # is plain SN, 1 the rank-one u v^T, 1.5 a binding cap, 4.5 a cap that does not bind (the
    # clamp acts, so the gradient must not see the cap), and a zero weight stays finite.
    import stablerank.srn as srn_module

    torch.manual_seed(17)
    w = torch.randn(6, 5, dtype=torch.float64)
    assert 1.5 < stable_rank(w) < 4.5
    u_all, _, vh = torch.linalg.svd(w)
    u, v = u_all[:, 0].contiguous(), vh[0].contiguous()
    eps = 1e-12
    r_minus_1 = None if srank is None else srank - 1.0
    shift = torch.full((1,), -1.0 / r_minus_1, dtype=torch.float64) if r_minus_1 else None

    def device_path(matrix):  # sigma as the layer passes it: its size floored at eps
        sigma = srn_module._floor_sigma(torch.dot(u, torch.mv(matrix.detach(), v)), eps)
        fn = srn_module._StableRankNormFunction
        return fn.apply(matrix, u, v, sigma, r_minus_1, eps, shift)

    expected = srn_module._composite_normalize(w, u, v, r_minus_1, eps)
    torch.testing.assert_close(device_path(w), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(device_path, (w.clone().requires_grad_(True),))
    zero = torch.zeros_like(w, requires_grad=True)
    device_path(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("rank_ratio", [0.3, 1.0])
def test_tensor_path_gradcheck_and_gradgradcheck(rank_ratio):
    torch.manual_seed(16)
    layer = stable_rank_norm(nn.Linear(14, 10).double(), rank_ratio=rank_ratio).eval()
    p = layer.parametrizations.weight[0]
    assert p.clamps_srank == (rank_ratio < 1.0)
    w = layer.parametrizations.weight.original.detach()
    assert stable_rank(w) > p.srank or rank_ratio == 1.0  # the clamp acts (s < 1)
    w = layer.parametrizations.weight.original.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(p, (w,))
    assert torch.autograd.gradgradcheck(p, (w,))


@pytest.mark.parametrize("composite", [False, True])
def test_all_zero_weight_is_finite_on_every_path(monkeypatch, composite):
    import stablerank.srn as srn_module

    monkeypatch.setattr(srn_module, "_needs_composite", lambda _weight: composite)
    layer = stable_rank_norm(nn.Linear(6, 4), rank_ratio=0.5)
    with torch.no_grad():
        layer.parametrizations.weight.original.zero_()
    out = layer(torch.randn(3, 6))
    out.sum().backward()
    assert torch.equal(layer.weight.detach(), torch.zeros(4, 6))
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


def test_eager_path_supports_double_backward():
    torch.manual_seed(15)
    layer = stable_rank_norm(nn.Linear(4, 6).double(), rank_ratio=0.3).eval()
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach().clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(p, (w,))


def test_numpy_integers_are_accepted_as_torch_spectral_norm_accepts_them():
    # Config values often arrive as numpy integers; torch's spectral_norm takes them.
    np = pytest.importorskip("numpy")
    layer = stable_rank_norm(
        nn.ConvTranspose2d(3, 4, 3), n_power_iterations=np.int64(2), dim=np.int64(1)
    )
    p = layer.parametrizations.weight[0]
    assert (p.n_power_iterations, p.dim) == (2, 1)
    assert type(p.n_power_iterations) is int and type(p.dim) is int


def test_remove_refuses_a_weight_with_other_parametrizations():
    # torch can only remove a tensor's whole parametrization list: removing SRN there would
    # silently bake (and drop) the user's other parametrization too.
    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    layer = nn.Linear(5, 4)
    parametrize.register_parametrization(layer, "weight", Double())
    stable_rank_norm(layer, rank_ratio=0.5)
    with pytest.raises(ValueError, match=r"other parametrizations \['Double'\]"):
        remove_stable_rank_norm(layer)
    assert len(layer.parametrizations.weight) == 2
