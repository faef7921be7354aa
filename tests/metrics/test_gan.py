"""FID / KID / IS through torchmetrics against closed-form oracles, with a toy feature network."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from stablerank.metrics.features import FeatureExtractor
from stablerank.metrics.gan import (
    KEY_FID,
    KEY_IS_MEAN,
    KEY_IS_STD,
    KEY_KID_MEAN,
    KEY_KID_STD,
    KEY_PROTOCOL,
    FeatureSet,
    compute_gan_metrics,
    extract_features,
    is_splits_for,
    real_vs_real_baseline,
)

D = 6  # pixels = features = classes of the toy network


class _Identity(nn.Module):
    """features = flattened pixels; logits = LOGIT_SCALE * pixels."""

    def __init__(self, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.logit_scale = logit_scale

    def extract(self, x):
        flat = x.flatten(1)
        return flat, self.logit_scale * flat


def _toy(logit_scale: float = 1.0) -> FeatureExtractor:
    return FeatureExtractor(
        "toy", _Identity(logit_scale), input_shape=(1, 1, D), num_features=D, num_classes=D,
        weights_sha256="0" * 64,
    )  # fmt: skip


def _images(n: int, seed: int, scale: float = 0.4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * (2 * torch.rand(n, 1, 1, D, generator=gen) - 1)).double()


def test_fid_of_a_set_against_itself_is_zero():
    x = _images(200, 0)
    out = compute_gan_metrics(x, x, feature_net=_toy(), reference_split="test", metrics=["fid"])
    # Exact identity; only the eigenvalue square roots of Sigma^2 round off (float64).
    assert abs(out[KEY_FID]) < 1e-3


@pytest.mark.parametrize("shift", [0.1, 0.3, 0.5])
def test_fid_of_a_shift_equals_squared_shift_norm(shift):
    # Equal covariances: FID = ||mu_r - mu_g||^2 = D * shift^2 exactly (in exact arithmetic).
    x = _images(300, 1)
    out = compute_gan_metrics(
        x + shift, x, feature_net=_toy(), reference_split="t", metrics=["fid"]
    )
    assert out[KEY_FID] == pytest.approx(D * shift**2, rel=1e-6, abs=1e-6)


def test_fid_grows_monotonically_with_shift():
    x = _images(300, 2)
    fids = [
        compute_gan_metrics(x + s, x, feature_net=_toy(), reference_split="t", metrics=["fid"])[
            KEY_FID
        ]
        for s in (0.0, 0.05, 0.1, 0.2, 0.4)
    ]
    assert all(a < b for a, b in itertools.pairwise(fids))


def test_inception_score_of_uniform_predictions_is_one():
    x = torch.zeros(100, 1, 1, D)  # all logits equal
    out = compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics=["is"])
    assert out[KEY_IS_MEAN] == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_confident_balanced_predictions_is_class_count():
    # Logit 50 on one class: p(y|x) is one-hot up to e^-50; every class appears equally often.
    x = torch.eye(D).repeat(20, 1).reshape(-1, 1, 1, D)
    out = compute_gan_metrics(
        x, x, feature_net=_toy(logit_scale=50.0), reference_split="t", metrics=["is"], is_splits=1
    )
    assert out[KEY_IS_MEAN] == pytest.approx(D, rel=1e-6)
    assert out[KEY_IS_STD] == 0.0


def _kid_oracle(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (the KID of Binkowski et al. 2018)."""
    d, m = f_real.shape[1], f_real.shape[0]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(f_real, f_real), k(f_fake, f_fake), k(f_real, f_fake)
    off = lambda a: (a.sum() - np.trace(a)) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_of_identical_sets_matches_unbiased_oracle_and_is_tiny():
    x = _images(50, 3)
    # One subset of all samples: the permutation is irrelevant and the oracle is exact.
    out = compute_gan_metrics(
        x, x, feature_net=_toy(), reference_split="t", metrics=["kid"], kid_subsets=1,
        kid_subset_size=50,
    )  # fmt: skip
    f = x.reshape(50, D).numpy()
    assert out[KEY_KID_MEAN] == pytest.approx(_kid_oracle(f, f), rel=1e-9, abs=1e-12)
    shifted = compute_gan_metrics(
        x + 0.3, x, feature_net=_toy(), reference_split="t", metrics=["kid"], kid_subsets=1,
        kid_subset_size=50,
    )  # fmt: skip
    # Identical sets: only the O(1/m) diagonal bias of the unbiased estimator remains.
    assert abs(out[KEY_KID_MEAN]) < 0.05 * shifted[KEY_KID_MEAN]


def test_scores_do_not_depend_on_batch_size_and_are_seeded():
    real, fake = _images(120, 4), _images(90, 5, scale=0.3)
    kwargs = dict(feature_net=_toy(), reference_split="test", kid_subsets=5, kid_subset_size=40,
                  is_splits=3, seed=7)  # fmt: skip
    a = compute_gan_metrics(fake, real, batch_size=1, **kwargs)
    b = compute_gan_metrics(fake, real, batch_size=1000, **kwargs)
    for key in (KEY_FID, KEY_KID_MEAN, KEY_KID_STD, KEY_IS_MEAN, KEY_IS_STD):
        # float64 features summed in different orders: agreement to 1e-9 relative.
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    assert a[KEY_PROTOCOL] == b[KEY_PROTOCOL]


def test_generator_callable_protocol_and_rng_restored():
    gen_calls = []

    def generate(k):
        gen_calls.append(k)
        return 0.5 * torch.tanh(torch.randn(k, 1, 1, D))

    real = _images(64, 6)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    out1 = compute_gan_metrics(
        generate, real, feature_net=_toy(), n_fake=50, batch_size=16, reference_split="test",
        kid_subsets=3, kid_subset_size=20, is_splits=2, seed=1,
    )  # fmt: skip
    assert torch.rand(1) == before, "the caller's RNG stream must be untouched"
    out2 = compute_gan_metrics(
        generate, real, feature_net=_toy(), n_fake=50, batch_size=16, reference_split="test",
        kid_subsets=3, kid_subset_size=20, is_splits=2, seed=1,
    )  # fmt: skip
    assert out1 == out2
    assert gen_calls[:4] == [16, 16, 16, 2]
    assert out1[KEY_PROTOCOL] == {
        "feature_net": "toy", "weights_sha256": "0" * 64, "reference_split": "test",
        "n_real": 64, "n_fake": 50, "is_splits": 2, "kid_subsets": 3, "kid_subset_size": 20,
        "seed": 1, "sample_source": "generator", "image_range": "[-1, 1]",
    }  # fmt: skip


def test_cached_real_features_and_baseline():
    train, test = _images(80, 8), _images(60, 9)
    cached = extract_features(train, _toy(), split="train")
    a = compute_gan_metrics(test, cached, feature_net=_toy(), kid_subsets=2, kid_subset_size=30)
    base = real_vs_real_baseline(train, test, feature_net=_toy(), kid_subsets=2, kid_subset_size=30)
    assert a[KEY_FID] == pytest.approx(base[KEY_FID], rel=1e-12)
    assert base[KEY_PROTOCOL]["sample_source"] == "test"
    assert base[KEY_PROTOCOL]["reference_split"] == "train"
    assert math.isfinite(base[KEY_IS_MEAN])


def test_errors():
    x = _images(10, 0)
    other = FeatureExtractor("other", _Identity(), input_shape=(1, 1, D), num_features=D,
                             num_classes=D, weights_sha256="1" * 64)  # fmt: skip
    cached = extract_features(x, _toy(), split="train")
    with pytest.raises(ValueError, match="recompute them"):
        compute_gan_metrics(x, cached, feature_net=other)
    with pytest.raises(ValueError, match="reference_split is required"):
        compute_gan_metrics(x, x, feature_net=_toy())
    with pytest.raises(ValueError, match="metrics must name some of"):
        compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics=["fd"])
    with pytest.raises(ValueError, match=r"metrics must name some of .*, got \[\]"):
        compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics=())
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 1, 6\), got \(10, 6\)"):
        compute_gan_metrics(x.reshape(10, D), x, feature_net=_toy(), reference_split="t")
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        compute_gan_metrics(x * 10, x, feature_net=_toy(), reference_split="t")
    with pytest.raises(ValueError, match="n is required"):
        extract_features(lambda k: x[:k], _toy(), split="g")


# ---- non-finite inputs are refused before any linear algebra (a NaN reaching LAPACK's
# eigensolver crashed the process with exit 139 instead of raising)


@pytest.mark.parametrize("metric", ["fid", "kid", "is"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_are_refused(metric, bad):
    real = _images(50, 0)
    fake = _images(50, 1)
    fake[3, 0, 0, 2] = bad
    with pytest.raises(ValueError, match=r"images of split 'generator'.*1 non-finite"):
        compute_gan_metrics(fake, real, feature_net=_toy(), reference_split="test",
                            metrics=[metric], is_splits=2)  # fmt: skip


def test_non_finite_real_images_and_generator_output_are_refused():
    real = _images(50, 0)
    real[0] = float("nan")
    with pytest.raises(ValueError, match=r"images of split 'test'.*non-finite"):
        compute_gan_metrics(_images(50, 1), real, feature_net=_toy(), reference_split="test")

    def generate(k):
        return torch.full((k, 1, 1, D), float("nan"), dtype=torch.float64)

    with pytest.raises(ValueError, match="non-finite"):
        extract_features(generate, _toy(), split="generator", n=10)


def test_non_finite_features_of_a_diverged_network_are_refused():
    class _Broken(nn.Module):
        def extract(self, x):
            return x.flatten(1) * float("nan"), None

    broken = FeatureExtractor(
        "broken", _Broken(), input_shape=(1, 1, D), num_features=D, num_classes=None,
        weights_sha256="1" * 64,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"features of broken.*non-finite"):
        extract_features(_images(10, 0), broken, split="test")


def test_non_finite_cached_features_are_refused():
    real = extract_features(_images(50, 0), _toy(), split="test")
    poisoned = FeatureSet(
        features=real.features.clone().index_fill_(0, torch.tensor([0]), float("nan")),
        logits=real.logits, feature_net=real.feature_net, weights_sha256=real.weights_sha256,
        split=real.split,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"real features.*non-finite"):
        compute_gan_metrics(_images(50, 1), poisoned, feature_net=_toy(), metrics=["fid"])


# ---- IS splits


def _is_oracle(logits: np.ndarray, splits: int, seed: int) -> list[float]:
    """IS of each of ``splits`` near-equal splits (numpy's array_split) of the seeded shuffle."""
    perm = torch.randperm(len(logits), generator=torch.Generator().manual_seed(seed)).numpy()
    p = np.exp(logits[perm])
    p /= p.sum(axis=1, keepdims=True)
    return [
        float(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(axis=0))), axis=1))))
        for part in np.array_split(p, splits)
    ]


def test_inception_score_uses_exactly_is_splits_when_they_do_not_divide_n():
    # 25 samples in 10 splits: sizes 3 (five times) and 2 (five times), not 9 chunks of torch.chunk.
    x = _images(25, 10, scale=1.0)
    out = compute_gan_metrics(
        x, x, feature_net=_toy(logit_scale=5.0), reference_split="t", metrics=["is"],
        is_splits=10, seed=3,
    )  # fmt: skip
    logits = extract_features(x, _toy(logit_scale=5.0), split="t").logits  # float32 precision
    scores = _is_oracle(logits.numpy(), 10, seed=3)
    assert out[KEY_IS_MEAN] == pytest.approx(np.mean(scores), rel=1e-12)
    # The population std over splits, as torch-fidelity and Salimans et al.'s code report it.
    assert out[KEY_IS_STD] == pytest.approx(np.std(scores), rel=1e-12)
    assert out[KEY_PROTOCOL]["is_splits"] == 10


@pytest.mark.filterwarnings("ignore:Metric `InceptionScore` will save all extracted features")
@pytest.mark.parametrize(("n", "splits"), [(40, 10), (2000, 10), (90, 3)])
def test_inception_score_mean_equals_torchmetrics_bitwise_when_splits_divide_n(n, splits):
    inception = pytest.importorskip("torchmetrics.image.inception")
    x = _images(n, 11, scale=1.0)
    out = compute_gan_metrics(
        x, x, feature_net=_toy(logit_scale=5.0), reference_split="t", metrics=["is"],
        is_splits=splits, seed=4,
    )  # fmt: skip
    logits = extract_features(x, _toy(logit_scale=5.0), split="t").logits
    metric = inception.InceptionScore(feature=nn.Identity(), splits=splits)
    metric.update(logits)
    torch.manual_seed(4)
    mean, std = metric.compute()
    assert out[KEY_IS_MEAN] == float(mean)
    # torchmetrics reports the std with Bessel's correction, we the population one.
    assert out[KEY_IS_STD] == pytest.approx(float(std) * ((splits - 1) / splits) ** 0.5, rel=1e-12)


def test_a_class_no_sample_gives_probability_adds_nothing_instead_of_nan():
    # A logit gap of 2000 underflows the softmax to exactly 0 in float64: 0 * log 0 is 0 there.
    x = torch.zeros(20, 1, 1, D, dtype=torch.float64)
    x[:, 0, 0, 0] = 1.0  # every sample: class 0 at logit 2000, the others at 0
    out = compute_gan_metrics(
        x, x, feature_net=_toy(logit_scale=2000.0), reference_split="t", metrics=["is"],
        is_splits=2,
    )  # fmt: skip
    assert out[KEY_IS_MEAN] == 1.0 and out[KEY_IS_STD] == 0.0  # one class for all: IS 1


def test_the_splits_of_a_few_samples_hold_enough_of_them_or_it_is_said():
    assert [is_splits_for(n, 10) for n in (5, 10, 20, 99, 100, 500)] == [1, 1, 2, 9, 10, 10]
    # An ImageNet-size classifier (1008 logits): splits of 100 at least.
    assert [is_splits_for(n, 1008) for n in (500, 5000, 50000)] == [5, 10, 10]
    x = _images(12, 1, scale=1.0)
    with pytest.warns(UserWarning, match="a split of 2 samples scores at most that"):
        compute_gan_metrics(x, x, feature_net=_toy(5.0), reference_split="t", metrics=["is"],
                            is_splits=6)  # fmt: skip


def test_float_images_none_darker_than_mid_grey_are_warned_of():
    x = (_images(50, 2, scale=1.0) + 1) / 2  # images in [0, 1]
    with pytest.warns(UserWarning, match=r"float values all in \[0, .*x \* 2 - 1") as caught:
        extract_features(x, _toy(), split="t")
    assert [w.filename for w in caught] == [__file__]  # the caller's line, through our calls too
    with pytest.warns(UserWarning, match="float values all in") as caught:
        compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics="fid")
    assert {w.filename for w in caught} == {__file__}
    # Judged on the whole set, and not on a generator's batches (a generator may draw bright ones).
    mixed = _images(50, 2, scale=1.0)
    mixed[-1] = 0.9  # alone in the last batch of 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(mixed, _toy(), split="t", batch_size=7)
        extract_features(lambda k: x[:k], _toy(), split="g", n=20)


def test_a_generate_returning_images_and_labels_is_refused_by_name():
    with pytest.raises(TypeError, match=r"generate\(4\) must return a tensor of images, got tuple"):
        extract_features(lambda k: (_images(k, 0), None), _toy(), split="g", n=4)


def test_counts_may_be_numpy_integers():
    x = _images(30, 3)
    out = compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t",
                              n_fake=np.int64(20), batch_size=np.int64(7), is_splits=np.int64(2),
                              kid_subsets=np.int64(3), kid_subset_size=np.int64(10))  # fmt: skip
    protocol = json.loads(json.dumps(out[KEY_PROTOCOL]))  # plain ints: it can be written
    assert (protocol["n_fake"], protocol["is_splits"], protocol["kid_subsets"]) == (20, 2, 3)


# ---- arguments are checked before any feature is extracted


class _Counting(nn.Module):
    """The toy network, counting its calls."""

    def __init__(self, classifier: bool = True) -> None:
        super().__init__()
        self.calls = 0
        self.classifier = classifier

    def extract(self, x):
        self.calls += 1
        return x.flatten(1), x.flatten(1) if self.classifier else None


def _counting(classifier: bool = True) -> FeatureExtractor:
    return FeatureExtractor(
        "counting", _Counting(classifier), input_shape=(1, 1, D), num_features=D,
        num_classes=D if classifier else None, weights_sha256="0" * 64,
    )  # fmt: skip


def _no_generation(k):
    raise AssertionError("samples were generated before the arguments were checked")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kid_subset_size=1), "kid_subset_size must be an integer >= 2, got 1"),
        (dict(n_fake=1), "need >= 2 real and fake images, got 30 and 1"),
        (dict(is_splits=11), r"is_splits must be <= n_fake \(10\), got 11"),
        (dict(n_fake=0), "n_fake must be an integer >= 1, got 0"),
        (dict(n_fake=None), "n_fake is required for a generate"),
    ],
)
def test_bad_counts_are_refused_before_feature_extraction(kwargs, message):
    extractor = _counting()
    with pytest.raises(ValueError, match=message):
        compute_gan_metrics(
            _no_generation, _images(30, 0), feature_net=extractor, reference_split="t",
            **{"n_fake": 10, **kwargs},
        )  # fmt: skip
    assert extractor.net.calls == 0


def test_inception_score_of_a_network_without_classifier_is_refused_first():
    extractor = _counting(classifier=False)
    with pytest.raises(ValueError, match="counting has no classifier: IS is unavailable"):
        compute_gan_metrics(
            _no_generation, _images(30, 0), feature_net=extractor, reference_split="t", n_fake=10
        )
    assert extractor.net.calls == 0
    # FID and KID of that network are fine.
    out = compute_gan_metrics(
        _images(30, 1), _images(30, 0), feature_net=extractor, reference_split="t",
        metrics=["fid", "kid"], kid_subsets=2, kid_subset_size=10,
    )  # fmt: skip
    assert set(out) == {KEY_FID, KEY_KID_MEAN, KEY_KID_STD, KEY_PROTOCOL}


def test_a_single_metric_name_is_one_metric():
    x = _images(20, 0)
    out = compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics="fid")
    assert set(out) == {KEY_FID, KEY_PROTOCOL}
    with pytest.raises(ValueError, match=r"metrics must name some of .*, got \['fd'\]"):
        compute_gan_metrics(x, x, feature_net=_toy(), reference_split="t", metrics="fd")


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (-5, "n must be an integer >= 1, got -5"),
        (0, "n must be an integer >= 1, got 0"),
        (31, "n must be <= the 30 images given, got 31"),
    ],
)
def test_real_vs_real_baseline_refuses_n_outside_the_test_set(n, message):
    extractor = _counting()
    with pytest.raises(ValueError, match=message):
        real_vs_real_baseline(_images(40, 0), _images(30, 1), feature_net=extractor, n=n)
    assert extractor.net.calls == 0


def test_real_vs_real_baseline_takes_the_first_n_test_images():
    train, test = _images(40, 0), _images(30, 1)
    kw = dict(feature_net=_toy(), kid_subsets=2, kid_subset_size=10, is_splits=2)
    base = real_vs_real_baseline(train, test, n=20, **kw)
    direct = compute_gan_metrics(test[:20], train, reference_split="train", **kw)
    assert base[KEY_PROTOCOL]["n_fake"] == 20
    assert base[KEY_FID] == direct[KEY_FID] and base[KEY_IS_MEAN] == direct[KEY_IS_MEAN]
