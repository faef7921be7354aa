"""Model-wide normalization and the layer report."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import stablerank as sr


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.Embedding(5, 3),
        nn.Linear(16, 10),
    )


@pytest.mark.parametrize("norm", ["sn", "srn"])
def test_normalize_model_covers_every_eligible_layer(norm):
    net = sr.normalize_model(_net(), norm, rank_ratio=0.5, head=norm)
    for i in (0, 3, 5, 7):
        assert parametrize.is_parametrized(net[i], "weight")
    assert not parametrize.is_parametrized(net[1]) and not parametrize.is_parametrized(net[6])
    assert not parametrize.is_parametrized(net[0], "bias")


def test_normalize_model_passes_its_settings_to_every_layer():
    sn = sr.normalize_model(_net(), "sn", n_power_iterations=3, head="sn")
    assert {sn[i].parametrizations.weight[0].n_power_iterations for i in (0, 3, 5, 7)} == {3}
    srn = sr.normalize_model(_net(), "srn", n_power_iterations=2, exact=True, head="srn")
    layers = [srn[i].parametrizations.weight[0] for i in (0, 3, 5, 7)]
    assert all(p.exact and p.n_power_iterations == 2 for p in layers)


def test_exclude_patterns_and_predicates():
    net = sr.normalize_model(_net(), "srn", exclude=["7"], head="srn")
    assert not parametrize.is_parametrized(net[7])
    net = sr.normalize_model(
        _net(), "srn", exclude=lambda name, m: isinstance(m, nn.Conv2d), head="srn"
    )
    assert not parametrize.is_parametrized(net[0]) and parametrize.is_parametrized(net[3])
    assert sr.normalize_model(_net(), "none") is not None


def _vgg() -> nn.Module:
    """torchvision's VGG/AlexNet layout: the head is the last layer of a container."""
    torch.manual_seed(0)
    net = nn.Module()
    net.features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())
    net.classifier = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                   nn.Linear(32, 10))  # fmt: skip
    return net


def test_a_pattern_naming_a_container_covers_its_layers():
    # It matched the container alone, which has no weight: exclude spared nothing, and
    # head_names made no layer the head, so the output layer was normalized as the body.
    def normalized(**kw) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank-one warnings of the small layers
            net = sr.normalize_model(_vgg(), "srn", rank_ratio=0.5, **kw)
        return [n for n, m in net.named_modules() if parametrize.is_parametrized(m, "weight")]

    assert normalized(exclude="classifier") == ["features.0"]
    assert normalized(head_names="classifier") == ["features.0"]
    assert normalized(head_names="classifier.4") == ["features.0", "classifier.0", "classifier.2"]
    assert normalized(head_names="classifier", head="sn")[1:] == ["classifier.0", "classifier.2",
                                                                  "classifier.4"]  # fmt: skip
    assert sr.head_layers(_vgg(), "classifier")[:2] == ["classifier", "classifier.0"]
    # A pattern that reaches no layer would let the body's norm reach the head: refused. No
    # pattern (no head), a predicate, or a head that exclude also spares are fine.
    with pytest.raises(ValueError, match=r"head_names 'classifier.1' covers no Linear"):
        normalized(head_names="classifier.1")
    assert len(normalized(head_names=[])) == 4
    assert len(normalized(head_names=lambda name, module: False)) == 4
    assert normalized(head_names="classifier.4", exclude="classifier.4") == normalized(
        head_names="classifier.4"
    )


def test_normalize_model_rejects_bad_norm_before_any_change():
    net = _net()
    with pytest.raises(ValueError, match=r"norm must be one of \('none', 'sn', 'srn'\), got 'bn'"):
        sr.normalize_model(net, "bn")
    for norm in ("sn", "srn"):  # SRN's arguments are checked whichever norm they would serve
        with pytest.raises(ValueError, match="rank_ratio must be in"):
            sr.normalize_model(net, norm, rank_ratio=2.0)
    # both targets: refused, as stable_rank_norm refuses them (srank used to win silently)
    with pytest.raises(ValueError, match="at most one of rank_ratio and srank"):
        sr.normalize_model(net, "srn", rank_ratio=0.5, srank=2.0)
    with pytest.raises(ValueError, match="at most one of rank_ratio and srank"):
        sr.apply_stable_rank_norm(net, 0.5, srank=2.0)
    assert not any(parametrize.is_parametrized(m) for m in net.modules())


def _plain(net: nn.Module) -> dict[str, list[str]]:
    return {
        n: [type(p).__name__ for p in m.parametrizations["weight"]]
        for n, m in net.named_modules()
        if parametrize.is_parametrized(m, "weight")
    }


def test_normalize_model_refuses_an_already_normalized_layer_instead_of_skipping_it():
    # A second call with another rank ratio used to skip every layer and keep the first c.
    net = sr.normalize_model(_net(), "srn", rank_ratio=0.3)
    before = _plain(net)
    with pytest.raises(ValueError, match=r"already have \{'0': \['_StableRankNorm'\]"):
        sr.normalize_model(net, "srn", rank_ratio=0.5)
    assert _plain(net) == before
    assert net[0].parametrizations.weight[0].srank == pytest.approx(0.3 * 8)
    # Torch's spectral_norm (either API) or another parametrization: refused, not skipped.
    for put in (
        torch.nn.utils.parametrizations.spectral_norm,
        torch.nn.utils.spectral_norm,
        torch.nn.utils.parametrizations.weight_norm,
    ):
        net = _net()
        put(net[3])
        with pytest.raises(ValueError, match=r"these layers' weights already have \{'3'"):
            sr.normalize_model(net, "srn", rank_ratio=0.3)
        assert not parametrize.is_parametrized(net[0])  # nothing changed
    # Removing first, excluding, or a head the rule leaves alone: accepted.
    net = sr.normalize_model(_net(), "srn", rank_ratio=0.3)
    sr.normalize_model(sr.normalize_model(net, "none"), "srn", rank_ratio=0.5)
    assert net[0].parametrizations.weight[0].srank == pytest.approx(0.5 * 8)
    net = _net()
    torch.nn.utils.parametrizations.spectral_norm(net[3])
    sr.normalize_model(net, "srn", exclude=["3"])
    net = _net()
    torch.nn.utils.parametrizations.spectral_norm(net[7])
    sr.normalize_model(net, "srn", head="none")  # the head (7) keeps its SN
    assert _plain(net)["7"] == ["_SpectralNorm"] and _plain(net)["0"] == ["_StableRankNorm"]


def test_a_pattern_that_matches_no_module_is_an_error_not_a_silent_no_op():
    net = _net()
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['classifier'\] match no module"):
        sr.normalize_model(net, "srn", exclude=["0", "classifier"])
    with pytest.raises(ValueError, match=r"head_names pattern\(s\) \['head'\] match no module"):
        sr.normalize_model(net, "srn", head_names="head")
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert [n for n, _ in sr.eligible_layers(net, exclude="*")] == []
    assert sr.head_layers(net, ["5", "7"]) == ["5", "7"]


def _no_bare_nan(token: str) -> None:
    raise AssertionError(f"{token} is not strict JSON")


def test_layer_report_values_and_no_side_effects(tmp_path):
    net = sr.normalize_model(_net(), "srn", rank_ratio=0.3, exclude=["7"])
    net.train()
    for _ in range(100):
        net[0].weight, net[3].weight, net[5].weight  # converge
    p = net[0].parametrizations.weight[0]
    u = p._u.clone()
    report = sr.layer_report(net)
    assert torch.equal(p._u, u) and p.training
    by_name = {r.name: r for r in report}
    assert set(by_name) == {"0", "3", "5", "7"}
    for name in ("0", "3", "5"):
        rec = by_name[name]
        assert rec.norm == "srn"
        assert rec.sigma_max == pytest.approx(1.0, rel=1e-3)
        assert rec.srank == pytest.approx(min(rec.raw_srank, rec.target_srank), rel=1e-3)
        assert rec.sigma_power == pytest.approx(rec.raw_sigma_max, rel=1e-3)
    assert by_name["7"].norm == "none" and by_name["7"].sigma_max == by_name["7"].raw_sigma_max
    assert by_name["3"].matrix_shape == (4, 8 * 9)  # ConvTranspose2d reshaped along dim 1
    text = str(report)
    assert "sigma_max" in text and "srank" in text and len(text.splitlines()) == 6
    report.to_csv(tmp_path / "r.csv")
    report.to_json(tmp_path / "r.json")
    rows = json.loads((tmp_path / "r.json").read_text(), parse_constant=_no_bare_nan)
    assert len(rows) == 4 and rows[-1]["sigma_power"] is None  # the plain head's: NaN as null
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("name,norm,shape,matrix_shape,sigma_max,")
    assert ",4x72," in lines[1 + list(by_name).index("3")]  # the ConvTranspose2d's matrix


def test_layer_report_of_plain_and_sn_layers_against_the_svd():
    """Plain and SN layers: every column against torch.linalg on the matrix the layer acts with
    (a ConvTranspose2d's weight (C_in, C_out, kh, kw) is reshaped along dim 1 by default, as
    torch's spectral_norm does); the target is min(m, n) where no clamp acts; the frobenius
    column is of the weight as used, not the raw one."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(6, 9),
        nn.ConvTranspose2d(4, 3, 2),
        torch.nn.utils.parametrizations.spectral_norm(nn.Linear(9, 5)),
    )
    with torch.no_grad():
        net[2].parametrizations.weight.original.mul_(3.0)  # raw sigma far from 1
    net.eval()
    report = sr.layer_report(net)
    for rec, weight, dim in zip(
        report, (net[0].weight, net[1].weight, net[2].weight), (0, 1, 0), strict=True
    ):
        mat = weight.detach().double().movedim(dim, 0).flatten(1)
        s = torch.linalg.svdvals(mat)
        assert rec.matrix_shape == tuple(mat.shape), rec.name
        # float64 Gram eigenvalue vs float64 SVD of float32 weights: 1e-6 relative is ample
        assert rec.sigma_max == pytest.approx(s[0].item(), rel=1e-6), rec.name
        assert rec.frobenius == pytest.approx(torch.linalg.norm(mat).item(), rel=1e-6)
        assert rec.srank == pytest.approx((s.square().sum() / s[0] ** 2).item(), rel=1e-6)
        assert math.isnan(rec.target_srank) and rec.active is None  # no cap: no target
    assert report[1].matrix_shape == (3, 4 * 2 * 2)
    assert report[2].frobenius < report[2].raw_sigma_max  # the used weight, W / sigma


def test_layer_report_runs_no_power_iteration_on_unconverged_vectors():
    # Fresh vectors (15 warm-up iterations) still move under another training-mode iteration;
    # the report must read the weights without one.
    net = sr.normalize_model(_net(), "srn", rank_ratio=0.3, exclude=["7"])
    torch.nn.utils.parametrizations.spectral_norm(net[7])
    net.train()
    before = copy.deepcopy(net.state_dict())
    sr.layer_report(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    _ = net[0].weight  # a training-mode read does move them (the check above can fail)
    key = "0.parametrizations.weight.0._u"
    assert not torch.equal(net.state_dict()[key], before[key])


def test_layer_report_of_a_meta_model_says_to_materialize_it():
    with torch.device("meta"):
        net = sr.normalize_model(_net(), "srn", rank_ratio=0.3)
    with pytest.raises(ValueError, match="meta device: materialize it first"):
        sr.layer_report(net)


def test_normalize_model_warns_when_it_normalizes_nothing():
    # A lone Linear is the model's last Linear, the head, which head="none" leaves plain; an
    # LSTM has no eligible layer. Either way the call must not pass as a silent no-op.
    for model in (nn.Linear(10, 10), nn.Sequential(nn.LSTM(4, 4))):
        with pytest.warns(UserWarning, match="normalized no layer"):
            sr.normalize_model(model, "srn", rank_ratio=0.3)
        assert not any(parametrize.is_parametrized(m) for m in model.modules())
    # The advice fits the cause: a model without eligible layers is not told to pass head=...,
    # which would change nothing (it was, even with head="srn" given).
    with pytest.warns(UserWarning, match="no Linear/ConvNd/ConvTransposeNd weight") as caught:
        sr.normalize_model(nn.Sequential(nn.LSTM(4, 4)), "srn", head="srn")
    assert "head=" not in str(caught[0].message)
    with pytest.warns(UserWarning, match="pass head='srn' to normalize it"):
        sr.normalize_model(nn.Linear(10, 10), "srn", rank_ratio=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sr.normalize_model(nn.Linear(10, 10), "sn", head="sn")


def test_refusals_and_eligible_layers_leave_the_vectors_as_they_were():
    # Reading ``layer.weight`` of a normalized layer in training mode runs a power-iteration
    # step; a refused call (or a read-only listing) must not move u, v of any layer.
    net = sr.normalize_model(_net(), "srn", rank_ratio=0.3)
    torch.nn.utils.parametrizations.spectral_norm(net[7])
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="already have"):
        sr.normalize_model(net, "srn", rank_ratio=0.5)
    with pytest.raises(ValueError, match="already has stable_rank_norm"):
        sr.stable_rank_norm(net[0], rank_ratio=0.5)
    with pytest.raises(ValueError, match="already has spectral normalization"):
        sr.stable_rank_norm(net[7], rank_ratio=0.5)
    assert [name for name, _ in sr.eligible_layers(net)] == ["0", "3", "5", "7"]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())


def test_layer_report_says_no_cap_binds_where_r_is_at_least_min_m_n():
    """A 1 x n SRN layer has srank 1 = r: the cap cannot act. Its raw stable rank, computed in
    floating point, can land a hair above 1, which must not read as "binds"."""
    above = 0
    for seed in range(10):
        torch.manual_seed(seed)
        net = sr.normalize_model(nn.Sequential(nn.Linear(3136, 1)), "srn", rank_ratio=0.1,
                                 head="srn")  # fmt: skip
        (row,) = sr.layer_report(net)
        assert row.target_srank == 1.0 and row.active is None, seed  # none, not False
        above += row.raw_srank > 1.0
        assert sr.srn_active_fraction(net) != sr.srn_active_fraction(net)  # NaN: none can bind
    if not above:  # here every raw stable rank rounds to exactly 1: the case is not exercised
        pytest.skip("no seed's float64 raw stable rank rounds above 1 on this platform")


def test_the_raw_weight_measured_is_what_srn_receives_after_a_parametrization_before_it():
    """A mask registered before SRN: the cap acts on the masked weight (stable rank 1.25 < r = 4,
    so it does not bind), which the activity and the layer table must measure, not
    ``original`` (4.15: "binds")."""

    class KeepTwoRows(nn.Module):  # in training, a random half of the rows (DropConnect-like)
        def forward(self, w):
            keep = torch.rand(w.shape[0]) < 0.5 if self.training else torch.arange(w.shape[0]) < 2
            return w * keep.to(w.dtype)[:, None]

    torch.manual_seed(0)
    layer = nn.Linear(16, 16)
    parametrize.register_parametrization(layer, "weight", KeepTwoRows())
    sr.stable_rank_norm(layer, rank_ratio=0.25)
    received = KeepTwoRows().eval()(layer.parametrizations.weight.original.detach())
    rng = torch.get_rng_state()  # in training mode: measured in eval mode, without random draws
    assert sr.stable_rank(layer.parametrizations.weight.original).item() > 4.0
    (activity,) = sr.srn_activity(layer)
    assert activity.raw_srank == pytest.approx(sr.stable_rank(received).item(), rel=1e-6)
    assert activity.raw_srank < 4.0 and not activity.active
    assert torch.equal(torch.get_rng_state(), rng) and layer.parametrizations.weight[0].training
    (row,) = sr.layer_report(layer)
    assert row.raw_srank == pytest.approx(activity.raw_srank, rel=1e-6) and row.active is False
    assert row.raw_sigma_max == pytest.approx(
        torch.linalg.matrix_norm(received, 2).item(), rel=1e-5
    )


def test_a_weight_tied_to_another_module_is_normalized_with_a_warning():
    # The language-model pattern: the output layer shares the embedding's weight. Only the
    # Linear is normalized; the Embedding reads the raw weight, which the user must hear of.
    net = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(8, 10))
    net[2].weight = net[0].weight
    with warnings.catch_warnings(), pytest.warns(UserWarning, match=r"the weight of \['2'\] is sh"):
        warnings.simplefilter("ignore", sr.SrnInactiveWarning)
        sr.normalize_model(net, "srn", rank_ratio=0.5, head="srn")
    assert (
        parametrize.is_parametrized(net[2], "weight")
        and net[0].weight is net[2].parametrizations.weight.original
    )
    shared = nn.Linear(8, 8)  # one module used twice: one weight, one normalization, not tied
    reused = nn.Sequential(nn.Linear(4, 8), shared, nn.ReLU(), shared, nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no such warning (nor any other)
        sr.normalize_model(nn.Sequential(nn.Linear(8, 8)), "sn", head="sn")
        sr.normalize_model(reused, "sn")
    assert type(sr.bake_stable_rank_norm(reused)[1]) is nn.Linear  # was refused as "tied"


def test_baking_a_deep_copy_leaves_the_original_working():
    """``copy.deepcopy`` shares the parametrized class, from which torch's removal deletes the
    property: the original then had no ``weight`` (AttributeError on its next forward)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sr.SrnInactiveWarning)
        original = sr.normalize_model(nn.Sequential(nn.Linear(4, 5)), "srn", rank_ratio=0.5,
                                      head="srn").eval()  # fmt: skip
    x = torch.randn(2, 4)
    expected = original(x)
    baked = sr.bake_stable_rank_norm(copy.deepcopy(original))
    assert type(baked[0]) is nn.Linear and torch.equal(baked(x), expected)
    assert parametrize.is_parametrized(original[0], "weight") and torch.equal(original(x), expected)
    removed = sr.remove_stable_rank_norm(copy.deepcopy(original)[0])  # the same for one layer
    assert type(removed) is nn.Linear and torch.equal(removed(x), expected)
    assert torch.equal(original(x), expected)
    # Registering on a deep copy of a parametrized module adds no property to the original's
    # class (its next forward raised KeyError: 'weight' had become a property there).

    class Double(nn.Module):
        def forward(self, bias):
            return 2 * bias

    layer = nn.Linear(4, 5)
    parametrize.register_parametrization(layer, "bias", Double())
    before = layer(x)
    sr.stable_rank_norm(copy.deepcopy(layer), rank_ratio=0.5)
    assert torch.equal(layer(x), before)


def test_layer_report_lists_a_normalized_embedding_and_skips_a_plain_one():
    # A conditional discriminator's projection embedding under SRN is a normalized weight like the
    # others (its binding counts, and at r = 1 it is frozen): the report must show it.
    torch.manual_seed(0)
    net = nn.ModuleDict({"embed": nn.Embedding(10, 6), "plain": nn.Embedding(10, 6),
                         "fc": nn.Linear(6, 3)})  # fmt: skip
    sr.stable_rank_norm(net["embed"], rank_ratio=0.5)
    report = sr.layer_report(net)
    assert [r.name for r in report] == ["embed", "fc"]
    embed = report[0]
    assert embed.norm == "srn" and embed.target_srank == 3.0 and embed.matrix_shape == (10, 6)
    net.eval()  # read the weight as the report does: no power-iteration step
    s = torch.linalg.svdvals(net["embed"].weight.detach().double())
    assert embed.srank == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=1e-6)


def test_normalizing_a_model_on_the_meta_device_does_not_warn_that_the_cap_never_binds():
    # srn_active_fraction skips meta tensors (NaN): the warning told the user to lower c.
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sr.SrnInactiveWarning)
        sr.normalize_model(model, "srn", rank_ratio=0.5)


@pytest.mark.parametrize("exact", ["yes", None, 1])
def test_exact_must_be_a_bool(exact):
    with pytest.raises(TypeError, match="exact must be True or False"):
        sr.stable_rank_norm(nn.Linear(4, 3), exact=exact)
    with pytest.raises(TypeError, match="exact must be True or False"):
        sr.normalize_model(nn.Sequential(nn.Linear(4, 3)), "srn", exact=exact)
