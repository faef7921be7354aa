"""Issues 11/12: function transforms and batched gradients, the target in the state_dict and the
conversions to/from torch's spectral_norm, head rule, activity, bake/export, robustness."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

import stablerank as sr
from stablerank import stable_rank_norm


def _layer(c: float = 0.3) -> nn.Linear:
    torch.manual_seed(0)
    return stable_rank_norm(nn.Linear(12, 9).double(), rank_ratio=c)


# --- transforms and batched gradients (the eager path has no host sync) ---------------------


@pytest.mark.parametrize("training", [True, False])
def test_vmap_over_inputs_matches_the_loop(training):
    layer = _layer().train(training)
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    ref = copy.deepcopy(layer)
    out = torch.func.vmap(layer)(x)
    # training: vmap runs one forward (one power-iteration step); so does ref(x[0])
    expected = torch.stack([ref(x[0])] + [ref.eval()(xi) for xi in x[1:]]) if training else None
    if not training:
        expected = torch.stack([ref(xi) for xi in x])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("c", [0.3, 1.0])
def test_batched_grads_jacobian_and_gradcheck_wrt_the_weight(c):
    layer = _layer(c).eval()
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach().clone().requires_grad_(True)
    out = p(w)
    eye = torch.eye(out.numel(), dtype=out.dtype).reshape(-1, *out.shape)
    (batched,) = torch.autograd.grad(out, w, eye, is_grads_batched=True)
    jac = torch.autograd.functional.jacobian(p, w, vectorize=True)
    torch.testing.assert_close(batched.reshape(jac.shape), jac)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(p, w, vectorize=False))
    assert torch.autograd.gradcheck(p, (w,), check_batched_grad=True)
    # torch.func: the composite path, the same values
    torch.testing.assert_close(torch.func.jacrev(p)(w.detach()), jac)


# --- the target travels with the weights --------------------------------------------------


def test_loading_adopts_the_saved_target_and_reproduces_outputs_exactly():
    torch.manual_seed(1)
    a = stable_rank_norm(nn.Conv2d(3, 8, 3), rank_ratio=0.2)
    a(torch.randn(2, 3, 8, 8))
    b = stable_rank_norm(nn.Conv2d(3, 8, 3), rank_ratio=0.9)
    b.load_state_dict(a.state_dict())
    assert b.parametrizations.weight[0].srank == a.parametrizations.weight[0].srank
    x = torch.randn(2, 3, 8, 8)
    a.eval(), b.eval()
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    b.half().float()  # casts do not round the target
    assert b.parametrizations.weight[0]._srank.dtype == torch.float64
    assert b.parametrizations.weight[0].srank == a.parametrizations.weight[0].srank


def test_srn_and_sn_state_dicts_do_not_load_into_each_other_silently():
    torch.manual_seed(2)
    srn = stable_rank_norm(nn.Linear(10, 6), rank_ratio=0.3)
    sn = spectral_norm(nn.Linear(10, 6))
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*_srank"):
        sn.load_state_dict(srn.state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*_srank"):
        srn.load_state_dict(sn.state_dict())
    # the conversions
    srn.load_state_dict(sr.convert_spectral_norm_state_dict(sn.state_dict(), srn))
    torch.testing.assert_close(
        srn.parametrizations.weight.original, sn.parametrizations.weight.original
    )
    sn.load_state_dict(sr.convert_to_spectral_norm_state_dict(srn.state_dict()))
    # the hook-based torch.nn.utils.spectral_norm too; with r >= min(m, n) SRN is SN
    torch.manual_seed(3)
    old = torch.nn.utils.spectral_norm(nn.Linear(10, 6))
    new = stable_rank_norm(nn.Linear(10, 6), rank_ratio=1.0)
    new.load_state_dict(sr.convert_spectral_norm_state_dict(old.state_dict(), new))
    old.eval(), new.eval()
    x = torch.randn(4, 10)
    torch.testing.assert_close(new(x), old(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_loading_half_vectors_keeps_them_float32(dtype):
    # torch's spectral_norm on half weights saves half u, v; load_state_dict(assign=True) (the
    # meta-device route) put them in place as they were, and the first forward failed with
    # KeyError: torch.float16. They become float32, as when SRN is registered on half weights.
    torch.manual_seed(5)
    sn = spectral_norm(nn.Linear(10, 6).to(dtype))
    srn = stable_rank_norm(nn.Linear(10, 6).to(dtype), rank_ratio=1.0)
    state = sr.convert_spectral_norm_state_dict(sn.state_dict(), srn)
    copied = copy.deepcopy(srn)
    copied.load_state_dict(state)
    srn.load_state_dict(state, assign=True)
    p = srn.parametrizations.weight[0]
    assert p._u.dtype == p._v.dtype == torch.float32
    assert p._srank.dtype == torch.float64
    x = torch.randn(4, 10, dtype=dtype)
    for training in (False, True):
        srn.train(training), copied.train(training)
        torch.testing.assert_close(srn(x), copied(x), rtol=0, atol=0)


# --- head rule, activity, bake ------------------------------------------------------------


def _mlp() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )


@pytest.mark.parametrize("head", ["none", "sn", "srn"])
def test_head_rule(head):
    net = sr.normalize_model(_mlp(), "srn", rank_ratio=0.1, head=head)
    report = {r.name: r.norm for r in sr.layer_report(net)}
    assert report == {"0": "srn", "2": "srn", "4": head}
    net = sr.normalize_model(_mlp(), "srn", rank_ratio=0.1, head=head, head_names=["0"])
    assert {r.name: r.norm for r in sr.layer_report(net)} == {"0": head, "2": "srn", "4": "srn"}


def test_activity_fraction_and_the_inactive_warning():
    net = sr.normalize_model(_mlp(), "srn", rank_ratio=0.1)
    acts = sr.srn_activity(net)
    assert [a.name for a in acts] == ["0.weight", "2.weight"]
    assert all(a.active for a in acts) and sr.srn_active_fraction(net) == 1.0
    assert all(r.active for r in sr.layer_report(net) if r.norm == "srn")
    with pytest.warns(sr.SrnInactiveWarning, match="binds on no layer"):
        sr.normalize_model(_mlp(), "srn", rank_ratio=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=sr.SrnInactiveWarning)
        sr.normalize_model(_mlp(), "srn", rank_ratio=1.0)
    assert sr.srn_active_fraction(_mlp()) != sr.srn_active_fraction(_mlp())  # NaN without SRN
    # A tensor whose target r >= min(m, n) (here the 1 x 64 head: r = max(1, 0.1)) is left
    # out: SRN is exactly SN there, and counting it as "not binding" would halve the fraction.
    torch.manual_seed(4)
    net = sr.normalize_model(
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)), "srn", rank_ratio=0.1,
        head="srn",
    )  # fmt: skip
    assert [a.name for a in sr.srn_activity(net)] == ["0.weight"]
    assert sr.srn_active_fraction(net) == 1.0


def test_normalize_model_is_all_or_nothing():
    net = _mlp()
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")  # the last layer fails
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="non-finite"):
        sr.normalize_model(net, "srn", head="srn")
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert all(
        torch.equal(
            before[k],
            v,
        )
        or k == "4.weight"
        for k, v in net.state_dict().items()
    )


def test_bake_removes_every_kind_and_keeps_eval_outputs():
    torch.manual_seed(5)
    net = nn.Sequential(
        stable_rank_norm(nn.Linear(8, 16), rank_ratio=0.3),
        nn.ReLU(),
        spectral_norm(nn.Linear(16, 16)),
        nn.ReLU(),
        torch.nn.utils.spectral_norm(nn.Linear(16, 4)),
    )
    x = torch.randn(5, 8)
    net(x)  # a training step moves u, v
    net.eval()
    before = net(x)
    original = net[0].parametrizations.weight.original
    sr.normalize_model(net, "none")
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert not net[4]._forward_pre_hooks and net[0].weight is original
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    assert [r.norm for r in sr.layer_report(net)] == ["none"] * 3


@pytest.mark.parametrize("head", ["none", "sn", "srn"])
def test_bake_refuses_a_raw_weight_tied_to_another_parameter(head):
    # Removal writes the eval weight into the raw one: with a tied raw weight both layers ended
    # with the last one's eval weight (each has its own u, v), or the plain layer's weight
    # (head="none", the tied output layer of a language model) became the normalized one.
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12))
    net[2].weight = net[0].weight
    sr.normalize_model(net, "srn", rank_ratio=0.2, head=head)
    net(torch.randn(3, 12))
    raw = net[0].parametrizations.weight.original.detach().clone()
    with pytest.raises(ValueError, match=r"raw weight of 0.weight is tied to another parameter"):
        sr.bake_stable_rank_norm(net)
    assert parametrize.is_parametrized(net[0])
    assert torch.equal(net[0].parametrizations.weight.original, raw)


def test_layer_report_sees_both_torch_spectral_norms():
    net = nn.Sequential(
        spectral_norm(nn.Linear(8, 6)), torch.nn.utils.spectral_norm(nn.Linear(6, 4))
    )
    report = sr.layer_report(net)
    assert [r.norm for r in report] == ["sn", "sn"] and not any(r.active for r in report)
    # torch's parametrization warms u, v up (15 iterations): its eval weight has sigma ~ 1
    assert report[0].sigma_max == pytest.approx(1.0, rel=1e-2)
    # the hook-based one does not; the report reads its eval weight W / (u^T W v)
    hook_sigma = report[1].raw_sigma_max / report[1].sigma_power
    assert report[1].sigma_max == pytest.approx(hook_sigma, rel=1e-5)


# --- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_jit_trace_with_check_trace(training, grad):
    torch.manual_seed(8)
    net = nn.Sequential(stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.3), nn.ReLU())
    net.train(training)
    x = torch.randn(3, 8)
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(net, x)  # check_trace=True by default
    constants = [
        n
        for n in traced.graph.nodes()
        if n.kind() == "prim::Constant" and n.output().type().kind() == "TensorType"
    ]
    assert not constants  # the weight stays a parameter of the traced module
    with torch.no_grad():
        net[0].parametrizations.weight.original.mul_(2).add_(0.1)
    net.eval(), traced.eval()
    torch.testing.assert_close(traced(x), net(x))


def test_torch_export_in_eval_mode():
    net = nn.Sequential(stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.3), nn.ReLU()).eval()
    x = torch.randn(3, 8)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x))


def test_only_tensors_that_dispatch_themselves_take_the_composite_formula():
    # Fake and functional tensors (torch.compile and export before torch 2.5 run the layer on
    # them outside dynamo's trace) cannot be read as floats; a Parameter subclass that only
    # marks a weight keeps the faster eager path.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from stablerank import srn

    class Tagged(nn.Parameter):
        pass

    w = torch.randn(4, 3)
    assert not any(srn._needs_composite(t) for t in (w, nn.Parameter(w), Tagged(w)))
    with FakeTensorMode() as mode:
        assert srn._needs_composite(mode.from_tensor(w))


def test_autocast_is_read_on_every_torch_the_package_admits(monkeypatch):
    from stablerank import srn

    def unknown(device_type):  # torch 2.4 on "mps"
        raise RuntimeError(f"unknown device type for autocast: {device_type}")

    monkeypatch.setattr(torch, "is_autocast_enabled", unknown)
    assert srn._autocast_enabled_from_2_4("mps") is False
    # Before 2.4: CUDA's query takes no argument, the others have their own names.
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda: True)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: False)
    monkeypatch.setattr(torch, "is_autocast_xla_enabled", lambda: True, raising=False)
    assert srn._autocast_enabled_before_2_4("cuda") is True
    assert srn._autocast_enabled_before_2_4("cpu") is False
    assert srn._autocast_enabled_before_2_4("xla") is True
    assert srn._autocast_enabled_before_2_4("mps") is False  # no autocast there before 2.5


# --- robustness ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_weight_step_does_not_freeze_the_vectors(dtype):
    # Denormals kept, as by default: flushed, u's norm after the zero step is 1.0008 in float32
    # (docs/library.md, "An all-zero weight under flush-to-zero"); torch.compile on torch 2.4
    # flushes them for the rest of the process, so an earlier compile test would leak into this.
    torch.set_flush_denormal(False)
    torch.manual_seed(6)
    layer = stable_rank_norm(nn.Linear(10, 8).to(dtype), rank_ratio=0.5)
    w0 = layer.parametrizations.weight.original.detach().clone()
    with torch.no_grad():
        layer.parametrizations.weight.original.zero_()
        layer.weight  # noqa: B018  a training forward on a zero weight
        p = layer.parametrizations.weight[0]
        assert torch.isfinite(p._u).all() and p._u.norm() == pytest.approx(1.0)
        layer.parametrizations.weight.original.copy_(w0)
        for _ in range(100):
            w = layer.weight
    assert torch.linalg.matrix_norm(w.double(), ord=2).item() == pytest.approx(1.0, rel=1e-4)


def test_huge_float32_weight():
    torch.manual_seed(7)
    layer = nn.Linear(10, 8)
    with torch.no_grad():
        layer.weight.mul_(1e20)
    stable_rank_norm(layer, rank_ratio=0.5)
    for _ in range(50):
        w = layer.weight
    assert torch.isfinite(w).all()
    assert torch.linalg.matrix_norm(w.double(), ord=2).item() == pytest.approx(1.0, rel=1e-4)
    w.sum().backward()
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.float32, 1e-11), (torch.float32, 1e-6), (torch.float32, 1e12),
     (torch.float32, 1e20), (torch.float64, 1e-11), (torch.float64, 1e160)],
)  # fmt: skip
def test_output_is_scale_invariant(dtype, scale):
    # SRN(a W) = SRN(W) for a > 0 (u, v, sigma and the tail all scale together). ||W||_F^2 is
    # squared unscaled inside a safe range and after dividing by sigma outside it, where the
    # squares could overflow (1e20 in float32, 1e160 in float64) or underflow (sigma near 1e-11,
    # just above eps, below which sigma is clamped).
    torch.manual_seed(3)
    base = nn.Linear(12, 9).to(dtype)
    scaled = nn.Linear(12, 9).to(dtype)
    with torch.no_grad():
        scaled.weight.copy_(base.weight * scale)
    for layer in (base, scaled):
        stable_rank_norm(layer, rank_ratio=0.3).eval()
    p_base, p_scaled = base.parametrizations.weight[0], scaled.parametrizations.weight[0]
    p_scaled._u.copy_(p_base._u)
    p_scaled._v.copy_(p_base._v)
    with torch.no_grad():
        w_base, w_scaled = base.weight, scaled.weight
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(w_scaled, w_base, rtol=tol, atol=tol)
    srank = torch.linalg.matrix_norm(w_base, "fro") ** 2 / torch.linalg.matrix_norm(w_base, 2) ** 2
    assert srank.item() < 0.3 * 9 + 1e-3  # the cap binds here (a random 9 x 12 has srank ~ 4)


def test_meta_device_and_zero_rows():
    meta = stable_rank_norm(nn.Linear(6, 4, device="meta"), rank_ratio=0.5)
    assert meta.weight.shape == (4, 6) and meta.weight.device.type == "meta"
    net = sr.normalize_model(nn.Sequential(nn.Linear(6, 4, device="meta")), "srn", head="srn")
    assert sr.srn_activity(net) == [] and net[0].weight.device.type == "meta"
    empty = stable_rank_norm(nn.Linear(6, 0), rank_ratio=0.5)
    assert empty(torch.randn(2, 6)).shape == (2, 0)
    empty(torch.randn(2, 6)).sum().backward()


def test_positional_arguments_and_refusals():
    layer = stable_rank_norm(nn.Linear(6, 4), "weight", 3, 1e-10, 0, rank_ratio=0.5)
    p = layer.parametrizations.weight[0]
    assert (p.n_power_iterations, p.eps, p.dim) == (3, 1e-10, 0)
    with pytest.raises(TypeError):
        stable_rank_norm(nn.Linear(6, 4), "weight", 1, 1e-12, 0, 0.5)  # rank_ratio keyword-only
    with pytest.raises(ValueError, match="remove_spectral_norm"):
        stable_rank_norm(torch.nn.utils.spectral_norm(nn.Linear(6, 4)))
    with pytest.raises(ValueError, match="already has spectral normalization"):
        stable_rank_norm(spectral_norm(nn.Linear(6, 4)))


@pytest.mark.parametrize("c", [0.3, 1.0])
def test_forward_mode_ad_through_a_dual_weight_matches_finite_differences(c):
    # Eager forward-mode AD (torch.autograd.forward_ad): the tangent of the weight must reach
    # sigma and the tail scale, not only the ``W`` term (which the float scalars of the eager
    # path would give). Oracle: central differences in float64 (error ~1e-10 at step 1e-6).
    import torch.autograd.forward_ad as fwad

    layer = _layer(c).eval()
    p = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach()
    tangent = torch.randn_like(w)
    with fwad.dual_level():
        jvp = fwad.unpack_dual(p(fwad.make_dual(w, tangent))).tangent
    h = 1e-6
    fd = (p(w + h * tangent) - p(w - h * tangent)) / (2 * h)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)


def test_to_empty_after_meta_keeps_the_target_in_the_state_dict():
    # to_empty() gives every buffer uninitialized memory; the target is known (a Python float),
    # so the ``_srank`` buffer must hold it again, or a checkpoint saved later carries garbage.
    with torch.device("meta"):
        layer = nn.Linear(8, 6)
    stable_rank_norm(layer, rank_ratio=0.5).to_empty(device="cpu")
    assert layer.state_dict()["parametrizations.weight.0._srank"].item() == 3.0
    fresh = stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.9)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.parametrizations.weight[0].srank == 3.0


def test_a_torch_sn_state_dict_converted_for_a_meta_model_loads_with_assign():
    # The meta route of docs/library.md: the added target was a meta tensor (the model's
    # device), and loading it raised "Tensor.item() cannot be called on meta tensors".
    torch.manual_seed(6)
    sn = spectral_norm(nn.Linear(10, 6))
    with torch.device("meta"):
        srn = stable_rank_norm(nn.Linear(10, 6), rank_ratio=1.0)
    state = sr.convert_spectral_norm_state_dict(sn.state_dict(), srn)
    assert state["parametrizations.weight.0._srank"].device.type == "cpu"
    srn.load_state_dict(state, assign=True)
    sn.eval(), srn.eval()
    x = torch.randn(4, 10)
    torch.testing.assert_close(srn(x), sn(x), rtol=0, atol=0)


def test_a_refused_target_in_a_state_dict_leaves_the_layer_as_it_was():
    layer = stable_rank_norm(nn.Linear(8, 6), rank_ratio=0.5)  # target 3
    state = layer.state_dict()
    state["parametrizations.weight.0._srank"] = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"_srank must be a finite number >= 1, got 0\.5"):
        layer.load_state_dict(state)
    p = layer.parametrizations.weight[0]
    assert p.srank == 3.0 and p._srank.item() == 3.0  # the buffer and the target agree


@pytest.mark.parametrize("rank_ratio", [1.0, 0.3])  # plain SN, and a cap that binds
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("exact", "dtype"), [(False, torch.float32), (True, torch.float32),
                                              (False, torch.float16)])  # fmt: skip
def test_a_sparse_embedding_trains_with_the_dense_gradient(rank_ratio, mode, exact, dtype):
    # nn.Embedding(sparse=True) back-propagates a sparse gradient into the normalized weight; the
    # raw weight gets the dense one, as under torch's spectral_norm (it raised in a reshape). The
    # CPU fast path, and the general one (exact, and half weights cast back from float32).
    torch.manual_seed(0)
    sparse = nn.Embedding(20, 8, sparse=True)
    stable_rank_norm(sparse, rank_ratio=rank_ratio, exact=exact)
    dense = nn.Embedding(20, 8)
    stable_rank_norm(dense, rank_ratio=rank_ratio, exact=exact)
    sparse.to(dtype)
    dense.to(dtype)
    dense.load_state_dict(sparse.state_dict())
    idx = torch.tensor([1, 2, 2, 7])
    for emb in (sparse, dense):
        getattr(emb, mode)()
        emb(idx).float().square().sum().backward()
    grads = [e.parametrizations.weight.original.grad for e in (sparse, dense)]
    assert grads[0].layout == torch.strided
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)
