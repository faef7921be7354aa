"""Sample-complexity measures against hand-computed values on diagonal weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stablerank.metrics import NonFiniteError
from stablerank.metrics.complexity import (
    KEY_GAP_ACC,
    KEY_GAP_LOSS,
    KEY_LOG10_BARTLETT,
    KEY_LOG10_MARGIN,
    KEY_LOG10_NEYSHABUR,
    KEY_LOG10_NEYSHABUR_NUMERATOR,
    KEY_LOG10_SPECTRAL_COMPLEXITY,
    KEY_LOG10_SPECTRAL_PRODUCT,
    KEY_N_LAYERS,
    KEY_SUM_SRANK,
    bartlett_measure,
    complexity_layers,
    generalization_gap,
    margin_free_complexity,
    margin_quantile,
    margins,
    neyshabur_measure,
    spectral_complexity,
)


def _diag_model() -> nn.Sequential:
    """Two Linear layers with W1 = diag(3, 1), W2 = diag(2, 2, 1)[:, :2] (biases ignored)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([3.0, 1.0])))
        model[2].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    return model


def test_measures_on_diagonal_weights_by_hand():
    model = _diag_model()
    margin = 0.5
    # sigma = (3, 2); srank = (9 + 1) / 9 and (4 + 4) / 4; rows' L2 norms sum to 4 and 4.
    prod = 3.0 * 2.0
    sum_srank = 10.0 / 9.0 + 2.0
    neyshabur = prod**2 * sum_srank / margin**2
    bartlett = prod * ((4.0 / 3.0) ** (2 / 3) + (4.0 / 2.0) ** (2 / 3)) ** 1.5 / margin
    # float64 throughout: agreement to 1e-12 in log10 is round-off only.
    assert neyshabur_measure(model, margin) == pytest.approx(math.log10(neyshabur), abs=1e-12)
    assert bartlett_measure(model, margin) == pytest.approx(math.log10(bartlett), abs=1e-12)
    full = spectral_complexity(model, margin)
    assert full[KEY_N_LAYERS] == 2
    assert full[KEY_SUM_SRANK] == pytest.approx(sum_srank, rel=1e-12)
    assert full[KEY_LOG10_SPECTRAL_PRODUCT] == pytest.approx(math.log10(prod), abs=1e-12)


def test_bartletts_21_norm_sums_the_rows_of_a_non_square_weight():
    # ||W^T||_{2,1} is the sum of the L2 norms of W's rows (one per output unit): 5 + 0 + 1 = 6
    # here, where the columns' norms would sum to 3 + sqrt(17). Diagonal weights cannot tell.
    model = nn.Sequential(nn.Linear(2, 3))
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(w)
    sigma = torch.linalg.matrix_norm(w, ord=2).item()
    expected = sigma * ((6.0 / sigma) ** (2 / 3)) ** 1.5 / 0.5
    assert bartlett_measure(model, 0.5) == pytest.approx(math.log10(expected), abs=1e-12)


def test_deep_product_does_not_overflow():
    # 200 layers of 10 * I: the product 10^200 squared overflows float32 and float64 is at 1e400.
    model = nn.Sequential(*[nn.Linear(3, 3, bias=False) for _ in range(200)])
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(10.0 * torch.eye(3))
    # srank(10 I_3) = 3 for each of 200 layers -> sum 600.
    assert neyshabur_measure(model, 1.0) == pytest.approx(400 + math.log10(600), abs=1e-9)


def test_conv_kernels_are_reshaped_and_parametrizations_are_read():
    conv = nn.Conv2d(2, 4, 3)
    tconv = nn.ConvTranspose2d(4, 5, 3)
    lin = nn.Linear(4, 3)
    model = nn.Sequential(conv, tconv, lin)
    torch.nn.utils.parametrizations.spectral_norm(lin)
    model.eval()  # frozen u, v: every read of lin.weight gives the same tensor
    layers = dict(complexity_layers(model))
    assert layers["0"].shape == (4, 2 * 9)
    assert layers["1"].shape == (5, 4 * 9)
    # The measured matrix is the normalized weight, not the raw one.
    torch.testing.assert_close(layers["2"], lin.weight.detach().double(), rtol=0, atol=0)
    raw = lin.parametrizations.weight.original.detach().double()
    assert not torch.allclose(layers["2"], raw)


def test_torchs_hook_based_spectral_norm_is_read_as_its_forward_uses_it():
    """torch.nn.utils.spectral_norm (the older hooks) leaves ``module.weight`` holding the raw
    weight until a forward: a model loaded from a checkpoint and measured at once must not be
    measured on it."""
    torch.manual_seed(0)
    lin = torch.nn.utils.spectral_norm(nn.Linear(6, 4))
    lin.weight_orig.data.mul_(5.0)  # as a loaded checkpoint: raw weight changed, no forward since
    lin.eval()
    measured = dict(complexity_layers(nn.Sequential(lin)))["0"]
    with torch.no_grad():
        lin(torch.zeros(1, 6))  # the eval forward computes the weight it uses
    torch.testing.assert_close(measured, lin.weight.detach().double(), rtol=0, atol=0)
    assert not torch.allclose(measured, lin.weight_orig.detach().double())  # not the raw one


def test_measures_of_a_training_mode_model_are_repeatable_and_leave_it_untouched():
    # Reading an SN weight in training mode runs a power-iteration step: the measures used to
    # update u, v and give another number at each call.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3))
    torch.nn.utils.parametrizations.spectral_norm(model[0])
    model.train()
    model[2].eval()  # a submodule's own mode is restored too
    sn = model[0].parametrizations.weight[0]
    u = sn._u.clone()
    first = margin_free_complexity(model)
    assert torch.equal(sn._u, u)
    assert margin_free_complexity(model) == first
    assert model.training and sn.training and not model[2].training


def test_margins_and_quantile():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 4.0]])
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(margins(logits, labels), torch.tensor([2.0, -3.0, 3.0]))
    # Linear interpolation between sorted margins (-3, 2, 3) at q = 0.5 -> 2.
    assert margin_quantile(logits, labels, q=0.5) == pytest.approx(2.0)
    # the default: the 10th percentile (position 0.2 between -3 and 2), not the 90th
    assert margin_quantile(logits, labels) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        margins(logits, labels[:2])


_LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 4.0]])

_NOT_INT = "labels must be an integer tensor of class indices, got torch"
_RANGE = r"labels must lie in \[0, 3\) for 3 classes, got values in "


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (torch.tensor([0.7, 1.2, 2.9]), TypeError, _NOT_INT + ".float32"),  # not truncated
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, _NOT_INT + ".float32"),
        (torch.tensor([True, False, True]), TypeError, _NOT_INT + ".bool"),
        (torch.tensor([-1, 1, 2]), ValueError, _RANGE + r"\[-1, 2\]"),
        (torch.tensor([0, 3, 2]), ValueError, _RANGE + r"\[0, 3\]"),
    ],
)
def test_labels_that_are_not_class_indices_are_refused(labels, error, message):
    with pytest.raises(error, match=message):
        margins(_LOGITS, labels)
    with pytest.raises(error, match=message):
        margin_quantile(_LOGITS, labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_refused(bad):
    logits = _LOGITS.clone()
    logits[1, 2] = bad
    with pytest.raises(NonFiniteError, match="logits contain 1 non-finite values"):
        margins(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(NonFiniteError, match="logits contain 1 non-finite values"):
        margin_quantile(logits, torch.tensor([0, 1, 2]))


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="logits and labels must hold at least one sample, got 0"):
        margin_quantile(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="margin must be"):
        neyshabur_measure(_diag_model(), -1.0)
    with pytest.raises(ValueError, match="no Linear/Conv"):
        bartlett_measure(nn.ReLU(), 1.0)


def test_generalization_gap():
    out = generalization_gap(0.99, 0.91, train_loss=0.05, test_loss=0.4)
    assert out[KEY_GAP_ACC] == pytest.approx(0.08)
    assert out[KEY_GAP_LOSS] == pytest.approx(0.35)
    assert KEY_GAP_LOSS not in generalization_gap(1.0, 0.9)
    with pytest.raises(ValueError, match="both train_loss and test_loss"):
        generalization_gap(1.0, 0.9, train_loss=0.1)


def test_margin_free_terms_by_hand_and_for_any_margin():
    model = _diag_model()
    # Same hand values as above: prod sigma = 6, sum srank = 10/9 + 2, R_W as Bartlett's numerator.
    prod = 6.0
    sum_srank = 10.0 / 9.0 + 2.0
    r_w = prod * ((4.0 / 3.0) ** (2 / 3) + (4.0 / 2.0) ** (2 / 3)) ** 1.5
    free = margin_free_complexity(model)
    assert free[KEY_LOG10_SPECTRAL_COMPLEXITY] == pytest.approx(math.log10(r_w), abs=1e-12)
    assert free[KEY_LOG10_NEYSHABUR_NUMERATOR] == pytest.approx(
        math.log10(prod**2 * sum_srank), abs=1e-12
    )
    assert free[KEY_SUM_SRANK] == pytest.approx(sum_srank, rel=1e-12)
    # A non-positive (or absent) margin: the ratios are undefined, the numerators are not.
    for margin in (-0.3, 0.0, None):
        out = spectral_complexity(model, margin)
        assert out[KEY_LOG10_NEYSHABUR] is None
        assert out[KEY_LOG10_BARTLETT] is None
        assert out[KEY_LOG10_MARGIN] is None
        for key, value in free.items():
            assert out[key] == value
    # A positive margin divides the numerators: log10 N / gamma^2 and log10 R / gamma.
    out = spectral_complexity(model, 0.5)
    assert out[KEY_LOG10_NEYSHABUR] == pytest.approx(
        free[KEY_LOG10_NEYSHABUR_NUMERATOR] - 2 * math.log10(0.5), abs=1e-12
    )
    assert out[KEY_LOG10_BARTLETT] == pytest.approx(
        free[KEY_LOG10_SPECTRAL_COMPLEXITY] - math.log10(0.5), abs=1e-12
    )
    with pytest.raises(ValueError, match="margin must be a finite number"):
        spectral_complexity(model, float("nan"))


def test_a_diverged_network_has_no_complexity_measure():
    # NaN passed the all-zero check (NaN <= 0 is False): the measures returned NaN.
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    for measure in (lambda: neyshabur_measure(net, 1.0), lambda: margin_free_complexity(net)):
        with pytest.raises(NonFiniteError, match="layer '0'"):
            measure()


def test_margins_refuse_logits_that_are_not_floating_point_and_q_that_is_not_a_number():
    labels = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        margins(torch.tensor([[1, 2], [3, 4]]), labels)  # torch's overflow message before
    with pytest.raises(ValueError, match=r"q must be a number in \[0, 1\]"):
        margin_quantile(torch.randn(2, 3), labels, q=True)
