"""The typed results (stablerank.train.results): what their JSON files hold and read back as, the
older layouts they still read, and the derived numbers the report and the claims use."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import stablerank as sr
from stablerank.train.results import (
    ClassifierResult,
    EpochRecord,
    GanAnalysis,
    GanResult,
    Summary,
    active_fraction,
    layer_stats,
    mean_active_fraction,
)


def _classifier(**kw) -> ClassifierResult:
    fields = {"train_acc": 1.0, "test_acc": 0.5, "train_loss": 0.1, "test_loss": 1.0,
              "gap_acc": 0.5, "gap_loss": 0.9, "epochs": 2}  # fmt: skip
    return ClassifierResult(**{**fields, **kw})


def _summary(mean: float, n: int, max_: float = 1.0) -> Summary:
    return Summary(max=max_, mean=mean, n=n)


# ----------------------------------------------------------------------------- files


def test_non_finite_numbers_are_strict_json_nulls_and_read_back_as_nan(tmp_path):
    # A float field holds NaN where a loss diverged; a strict JSON reader (jq, a browser) must
    # read the file, and the field must come back a float, not None.
    result = _classifier(test_loss=math.nan, gap_loss=math.inf)
    path = result.to_json(tmp_path)
    data = json.loads(path.read_text(), parse_constant=pytest.fail)  # no bare NaN/Infinity
    assert data["test_loss"] is None and data["gap_loss"] is None
    read = ClassifierResult.from_json(tmp_path)
    assert math.isnan(read.test_loss) and math.isnan(read.gap_loss)
    assert read.srn_active_fraction is None  # an optional field stays None


def test_from_json_reads_the_file_itself_too(tmp_path):
    path = _classifier().to_json(tmp_path)
    assert ClassifierResult.from_json(path) == ClassifierResult.from_json(tmp_path) == _classifier()


def test_a_file_of_another_layout_is_a_value_error_naming_it(tmp_path):
    # ValueError (not TypeError): the sweep's reader turns it into a run "not counted", with why.
    path = _classifier().to_json(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "renamed_acc": 0.5}))
    with pytest.raises(ValueError, match=r"metrics.json is not a valid ClassifierResult file.*"
                                         r"no field\(s\) \['renamed_acc'\]"):  # fmt: skip
        ClassifierResult.from_json(tmp_path)


def test_a_gan_result_whose_scores_protocol_was_written_flat_reads_back_typed(tmp_path):
    scores = {"feature_net": "toy", "weights_sha256": "0" * 64, "reference_split": "train",
              "n_real": 64, "n_fake": 50, "is_splits": 2, "kid_subsets": 3, "kid_subset_size": 20,
              "seed": 1}  # fmt: skip
    protocol = {"generator": "ema", "generator_bn": "train", "d_norm": "srn", "rank_ratio": 0.5,
                "divergence_rule": "non-finite loss", "data_dir_read": None, **scores}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps({"steps": 3, "d_loss": 0.5, "g_loss": 1.0,
                                                       "protocol": protocol}))  # fmt: skip
    read = GanResult.from_json(tmp_path).protocol
    assert read.scores.n_fake == 50 and read.scores.feature_net == "toy"
    assert read.rank_ratio == 0.5 and read.baselines == {}


# ----------------------------------------------------------------------------- derived numbers


def test_srns_cap_binds_where_the_raw_stable_rank_is_above_r_and_only_where_it_can_act(tmp_path):
    # Four 4 x 8 layers: SRN at r = 2 with a full-rank raw weight (binds) and with a rank-one raw
    # weight (stable rank 1 <= 2: does not bind); SRN at r = 4 = min(m, n), whose cap never acts,
    # and SN: no cap (None, not False), so they do not count in the fraction.
    torch.manual_seed(0)
    net = nn.Sequential(*(nn.Linear(8, 4) for _ in range(4)))
    for layer, ratio in zip(net[:3], (0.5, 0.5, 1.0), strict=True):
        sr.stable_rank_norm(layer, rank_ratio=ratio)
    torch.nn.utils.parametrizations.spectral_norm(net[3])
    with torch.no_grad():
        net[1].parametrizations.weight.original.copy_(torch.outer(torch.rand(4), torch.rand(8)))
    report = sr.layer_report(net)
    report.to_json(tmp_path / "layers.json")  # as d_layers.json holds it: null where no cap acts
    assert [row["active"] for row in json.loads((tmp_path / "layers.json").read_text())] == [
        True, False, None, None
    ]  # fmt: skip
    assert [line.split()[9] for line in str(report).splitlines()[2:]] == ["True", "False", "-", "-"]
    stats = layer_stats(report)
    assert [s.active for s in stats] == [True, False, None, None]
    assert [s.target_srank for s in stats] == [2.0, 2.0, 4.0, None]
    assert active_fraction(stats) == 0.5  # the layers whose cap can act: 1 of 2
    assert active_fraction(stats[2:]) is None


def test_means_over_training_average_every_point_that_recorded_the_value():
    curve = (EpochRecord(1, train_acc=0.2, srn_active_fraction=1.0), EpochRecord(2),
             EpochRecord(3, train_acc=0.6, srn_active_fraction=0.5))  # fmt: skip
    assert mean_active_fraction(curve) == 0.75
    assert mean_active_fraction(curve[1:2]) is None
    assert _classifier(curve=curve).mean_train_acc == pytest.approx(0.4)
    assert math.isnan(_classifier().mean_train_acc)


def test_gan_analysis_pools_every_pair_type_and_weights_the_jacobian_mean_by_points():
    analysis = GanAnalysis(
        neural_divergence=1.0, neural_divergence_std=0.1, neural_divergence_real_train=0.5,
        d_el={"real": _summary(0.0, 2, max_=3.0), "fake": _summary(0.0, 2, max_=5.0)},
        d_jacobian={"real": _summary(1.0, n=1), "fake": _summary(4.0, n=3)},
        d_el_values={"real": (1.0, 2.0), "fake": (10.0,)},
    )  # fmt: skip
    assert analysis.d_el_max == 5.0
    assert analysis.d_el_median == 2.0  # of (1, 2, 10) pooled: not a mean (4.33)
    assert analysis.d_jacobian_mean == (1.0 * 1 + 4.0 * 3) / 4  # not (1 + 4) / 2
