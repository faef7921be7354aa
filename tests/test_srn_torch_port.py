"""PyTorch's own spectral-norm tests (``test_new_spectral_norm*`` of pytorch's
test/nn/test_parametrization.py), rewritten for ``stable_rank_norm(rank_ratio=1)``, which is
spectral normalization. Deliberate differences (listed in docs/library.md) are marked
"Refusal" or "Difference"; everything else must behave as torch's spectral_norm does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck
from torch.nn.utils import parametrize

from stablerank import stable_rank_norm


def _sn(module: nn.Module, name: str = "weight") -> nn.Module:
    return stable_rank_norm(module, name, rank_ratio=1.0)


def test_structure_removal_and_refusals():
    m = _sn(nn.Linear(5, 7).double())
    p = m.parametrizations.weight[0]
    assert p._u.shape == (7,) and p._v.shape == (5,)
    assert "original" in m.parametrizations.weight._parameters  # trainable raw weight
    assert {"_u", "_v", "_srank"} == set(p._buffers)  # Difference: the target is a buffer too
    assert "weight" not in m._buffers and "weight" not in m._parameters
    w = m.parametrizations.weight.original
    assert w.shape == m.weight.shape and w.stride() == m.weight.stride()
    parametrize.remove_parametrizations(m, "weight")
    assert not hasattr(m, "parametrizations") and "weight" in m._parameters
    _sn(m)
    # Refusal: registering twice on one tensor (torch allows stacking SN on SN)
    with pytest.raises(ValueError, match="already has stable_rank_norm"):
        _sn(m)
    # Refusal: 1-D tensors (torch normalizes a bias by its norm)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        _sn(m, "bias")


def _modules(requires_grad: bool):
    m = nn.Linear(3, 4).double()
    m.weight.requires_grad_(requires_grad)
    _sn(m)
    return m, m.parametrizations.weight[0]


@pytest.mark.parametrize("requires_grad", [True, False])
def test_training_behaviour_and_gradchecks(requires_grad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.float64)
    m, p = _modules(requires_grad)
    u0, v0 = p._u.clone(), p._v.clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.zero_grad()
    m(x).sum().backward()
    opt.step()
    out = m(x)
    if requires_grad:  # u, v move in training mode
        assert not torch.equal(u0, p._u) and not torch.equal(v0, p._v)
        torch.autograd.grad(out.sum(), m.parametrizations.weight.original)
    saved_u, saved_v = p._u.clone(), p._v.clone()

    def double_forward(inp):
        p._u.data.copy_(saved_u)
        p._v.data.copy_(saved_v)
        return m(inp) + m(inp)

    double_forward(x.clone().requires_grad_()).sum().backward()
    assert gradcheck(double_forward, (x.clone().requires_grad_(),), check_batched_grad=False)

    # removal in eval mode keeps the output
    m, p = _modules(requires_grad)
    before = m(x).detach()
    m.eval()
    parametrize.remove_parametrizations(m, "weight")
    torch.testing.assert_close(m(x), before)
    _sn(m)
    for _ in range(3):
        before = m(x).detach()
    m.eval()
    parametrize.remove_parametrizations(m, "weight")
    torch.testing.assert_close(m(x), before)

    # eval: the last training output, u and v frozen
    m, p = _modules(requires_grad)
    m(x)
    last = m(x)
    last_u, last_v = p._u.clone(), p._v.clone()
    m.zero_grad()
    m.eval()
    torch.testing.assert_close(m(x), last)
    torch.testing.assert_close(m(x), m(x))
    assert torch.equal(last_u, p._u) and torch.equal(last_v, p._v)
    saved_u, saved_v = p._u.clone(), p._v.clone()

    def mixed_modes(inp):
        p._u.data.copy_(saved_u)
        p._v.data.copy_(saved_v)
        outs = []
        for training in (True, False, True, False):
            m.train(training)
            outs.append(m(inp))
        return sum(outs)

    assert gradcheck(mixed_modes, (x.clone().requires_grad_(),))  # default gradcheck
    if requires_grad:  # backprop reaches the raw weight in eval
        assert gradcheck(lambda weight: m(x), (m.parametrizations.weight.original,))


@pytest.mark.parametrize("activate_times", [0, 3])
def test_load_state_dict(activate_times):
    torch.manual_seed(1)
    x = torch.randn(2, 3)
    m = _sn(nn.Linear(3, 5)).train()
    for _ in range(activate_times):
        m(x)
    state = copy.deepcopy(m.state_dict())
    assert set(state) == {  # Difference: the target's key
        "parametrizations.weight.original",
        "bias",
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
        "parametrizations.weight.0._srank",
    }
    loose = copy.deepcopy(state)
    loose["nonsense"] = "nonsense"
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "nonsense"'):
        m.load_state_dict(loose, strict=True)
    m.load_state_dict(loose, strict=False)
    for key in (
        "parametrizations.weight.original",
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
        "parametrizations.weight.0._srank",
    ):
        del loose[key]
        m.load_state_dict(loose, strict=False)
    loose["weight"] = m.weight.detach().clone()
    m.load_state_dict(loose, strict=False)
    del loose._metadata["parametrizations.weight.0"]
    m.load_state_dict(loose, strict=False)
    del loose["weight"], loose["bias"]
    m.load_state_dict(loose, strict=False)

    def outputs(module):
        module.load_state_dict(state)
        with torch.no_grad():
            module.eval()
            o0 = module(x)
            module.train()
            o1, o2 = module(x), module(x)
            module.eval()
            return o0, o1, o2, module(x)

    m = _sn(parametrize.remove_parametrizations(m, "weight"))  # re-wrapping does not matter
    first = outputs(m)
    m = _sn(parametrize.remove_parametrizations(m, "weight"))
    for a, b in zip(first, outputs(m), strict=True):
        torch.testing.assert_close(a, b)


def test_dim_of_conv_transpose():
    m = _sn(nn.ConvTranspose2d(3, 4, (5, 6)))
    m(torch.randn(2, 3, 10, 12))
    assert (
        m.parametrizations.weight[0]._u.shape
        == m.parametrizations.weight.original[0, :, 0, 0].shape
    )


def test_forward_against_a_naive_forward():
    torch.manual_seed(2)
    x = torch.randn(3, 5)
    m = _sn(nn.Linear(5, 7))
    p = m.parametrizations.weight[0]
    w = m.parametrizations.weight.original.detach()
    # Difference: the power-iteration order of docs/math.md §1.3 (v from u, then u from v);
    # torch computes u from v first.
    v = F.normalize(torch.mv(w.t(), p._u), dim=0, eps=1e-12)
    u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
    expected = F.linear(x, w / torch.dot(u, torch.mv(w, v)), m.bias)
    torch.testing.assert_close(m(x), expected)


def test_value_of_a_diagonal_matrix():
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight = nn.Parameter(torch.diag(torch.diagonal(m.weight)))
    d = torch.diagonal(m.weight).detach().clone()
    _sn(m)
    torch.testing.assert_close(m.weight.detach(), torch.diag(d / d.abs().max()))
    # Refusal: complex weights (torch's spectral_norm accepts them)
    with pytest.raises(TypeError, match="floating point"):
        _sn(nn.Linear(2, 2, dtype=torch.cfloat))
