"""The claims' decision rule on synthetic numbers (oracle: the rule computed by hand)."""

from __future__ import annotations

import math

import pytest

from stablerank.repro.claims import (
    CANNOT_TELL,
    CLAIMS,
    CONTRADICTS,
    NOT_REPRODUCED,
    REPRODUCED,
    SUPPORTS,
    decide,
    evaluate_claims,
)


def test_every_spec_claim_is_defined_once():
    assert [c.number for c in CLAIMS] == [1, 2, 3, 4, 5]
    assert {c.kind for c in CLAIMS} == {"classify", "shatter", "gan"}


def test_decide_matches_the_hand_computed_rule():
    srn, ref = [0.92, 0.93, 0.94], [0.90, 0.91, 0.92]
    # d = 0.02; each sample std = 0.01, so se = sqrt(2 * 0.01^2 / 3) = 0.008165; 2 se = 0.01633.
    outcome, d, se, _ = decide(srn, ref, higher_is_better=True, z=2.0)
    assert outcome == SUPPORTS
    assert d == pytest.approx(0.02, abs=1e-12)  # float sums of three values: exact to ~1e-16
    assert se == pytest.approx(math.sqrt(2 * 0.01**2 / 3), rel=1e-9)
    # A larger z than d / se = 2.449 turns the same numbers into "cannot tell".
    assert decide(srn, ref, higher_is_better=True, z=2.5)[0] == CANNOT_TELL


def test_direction_and_contradiction():
    low, high = [1.0, 1.1, 0.9], [3.0, 3.1, 2.9]
    # Lower is better (FID, gap): SRN lower supports, SRN higher contradicts.
    assert decide(low, high, higher_is_better=False)[0] == SUPPORTS
    assert decide(high, low, higher_is_better=False)[0] == CONTRADICTS
    assert decide(high, low, higher_is_better=True)[0] == SUPPORTS
    _outcome, d, _, _ = decide(high, low, higher_is_better=False)
    assert d == pytest.approx(-2.0)  # signed so that d > 0 favours SRN


def test_one_seed_or_overlap_cannot_tell():
    outcome, d, se, reason = decide([0.9], [0.1], higher_is_better=True)
    assert outcome == CANNOT_TELL and math.isnan(se) and "seeds" in reason
    assert d == pytest.approx(0.8)
    # Spread far larger than the difference.
    assert decide([0.5, 0.9, 0.1], [0.45, 0.85, 0.05], higher_is_better=True)[0] == CANNOT_TELL


def test_decide_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        decide([], [1.0], higher_is_better=True)
    with pytest.raises(ValueError, match="z must be"):
        decide([1.0, 2.0], [1.0, 2.0], higher_is_better=True, z=0)


def _values(srn_acc, none_acc, sn_acc):
    key = ("classify", "cifar10/resnet110")
    return {
        (*key, "srn0.3"): {"test_acc": srn_acc, "gap_acc": [0.01, 0.011, 0.012]},
        (*key, "none"): {"test_acc": none_acc, "gap_acc": [0.05, 0.051, 0.052]},
        (*key, "sn"): {"test_acc": sn_acc, "gap_acc": [0.04, 0.041, 0.042]},
    }


def test_claim_verdicts_combine_the_comparisons():
    good, bad = [0.95, 0.951, 0.952], [0.90, 0.901, 0.902]
    claim1 = {c.number: c for c in CLAIMS}[1]
    [res] = evaluate_claims(_values(good, bad, bad), claims=[claim1])
    assert res.verdict == REPRODUCED and len(res.comparisons) == 4  # 2 refs x 2 metrics
    [res] = evaluate_claims(_values(bad, good, bad), claims=[claim1])
    assert res.verdict == NOT_REPRODUCED  # SRN clearly below vanilla on test accuracy
    noisy = [0.80, 0.99, 0.90]
    [res] = evaluate_claims(_values(noisy, bad, bad), claims=[claim1])
    assert res.verdict == CANNOT_TELL
    assert evaluate_claims({}, claims=[claim1])[0].verdict == CANNOT_TELL
