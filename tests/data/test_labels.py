"""Random labels (Zhang et al. 2017) and seeded training subsets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stablerank.data.labels import corrupt_labels, subset_indices, train_subset

N, K = 10000, 10


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.arange(N) % K


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_exact_fraction_changed_when_excluding_original(labels, fraction):
    new = corrupt_labels(labels, fraction, K, seed=3, exclude_original=True)
    assert int((new != labels).sum()) == round(fraction * N)
    assert new.dtype == torch.int64 and int(new.min()) >= 0 and int(new.max()) < K
    changed = (new != labels).nonzero().flatten()
    if 0 < fraction < 1:  # positions drawn over the whole set, not the first ones
        assert changed.min() < N // 4 and changed.max() > 3 * N // 4


def test_the_count_is_rounded_not_truncated():
    labels = torch.arange(10) % K
    assert (
        int((corrupt_labels(labels, 0.37, K, seed=0, exclude_original=True) != labels).sum()) == 4
    )


def test_default_draws_uniformly_over_all_classes(labels):
    """Zhang et al.: a corrupted label is uniform over the K classes, so it keeps its value with
    probability 1/K. At p = 1 the changed count is Binomial(N, 0.9): mean 9000, std 30."""
    new = corrupt_labels(labels, 1.0, K, seed=0)
    changed = int((new != labels).sum())
    assert abs(changed - 0.9 * N) < 5 * math.sqrt(N * 0.9 * 0.1)  # 5 sigma
    # every class about N/K times: Binomial(N, 0.1) std 30, 5 sigma again
    counts = new.bincount(minlength=K).double()
    assert torch.all((counts - N / K).abs() < 5 * math.sqrt(N * 0.1 * 0.9))
    # at p = 0.3 at most round(0.3 N) labels can change, about 0.3 * 0.9 N do (std 26)
    partial = corrupt_labels(labels, 0.3, K, seed=0)
    changed = int((partial != labels).sum())
    assert changed <= 3000 and abs(changed - 2700) < 5 * math.sqrt(3000 * 0.9 * 0.1)


def test_seed_determinism_and_no_global_rng(labels):
    rng_before = torch.get_rng_state()
    a = corrupt_labels(labels, 0.5, K, seed=7)
    b = corrupt_labels(labels, 0.5, K, seed=7)
    c = corrupt_labels(labels, 0.5, K, seed=8)
    assert torch.equal(a, b)  # fixed across calls
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global generator untouched
    assert torch.equal(labels, torch.arange(N) % K)  # input not modified


def test_corrupt_labels_errors(labels):
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        corrupt_labels(labels, 1.5, K, seed=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        corrupt_labels(labels, 0.5, 1, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=5\)"):
        corrupt_labels(labels, 0.5, 5, seed=0)
    for seed in (-1, 2**64):  # torch's generators take seeds in [0, 2**64)
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\)"):
            corrupt_labels(labels, 0.5, K, seed=seed)
    with pytest.raises(ValueError, match="labels must have an integer dtype"):
        corrupt_labels(labels.float(), 0.5, K, seed=0)


def test_stratified_subset(labels):
    idx = subset_indices(labels, 2000, seed=1)
    assert idx.numel() == 2000 and idx.unique().numel() == 2000
    assert idx.max() > N // 2  # each class's examples drawn over the class, not its first ones
    assert torch.equal(idx, idx.sort().values)
    assert labels[idx].bincount().tolist() == [200] * K
    uneven = subset_indices(labels, 1005, seed=1)
    counts = labels[uneven].bincount()
    assert counts.sum() == 1005 and counts.max() - counts.min() == 1
    assert torch.equal(uneven, subset_indices(labels, 1005, seed=1))
    assert not torch.equal(uneven, subset_indices(labels, 1005, seed=2))


def test_a_subset_of_every_example_is_the_whole_set_even_with_uneven_classes():
    uneven = torch.tensor([0, 0, 0, 1, 2, 2, 1])  # a stratified quota of 3 exceeds class 1's 2
    for seed, stratified in itertools.product(range(5), (True, False)):
        assert torch.equal(subset_indices(uneven, 7, seed=seed, stratified=stratified),
                           torch.arange(7))  # fmt: skip


def test_random_subset_and_train_subset(labels):
    x = torch.arange(N).view(N, 1, 1, 1).expand(N, 1, 2, 2)
    plain = subset_indices(labels, 300, seed=4, stratified=False)
    assert torch.equal(plain, plain.sort().values)  # sorted ascending, as documented
    xs, ys = train_subset(x, labels, 300, seed=4, stratified=False)
    assert xs.shape == (300, 1, 2, 2) and ys.shape == (300,)
    idx = xs[:, 0, 0, 0]  # x encodes its own index
    assert idx.unique().numel() == 300
    assert torch.equal(ys, labels[idx])


def test_subset_errors(labels):
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 10000\]"):
        subset_indices(labels, N + 1, seed=0)
    skewed = torch.cat([torch.zeros(95, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    with pytest.raises(ValueError, match="needs 10 examples of class 1"):
        subset_indices(skewed, 20, seed=0)
    with pytest.raises(ValueError, match="x and y must have the same length"):
        train_subset(torch.zeros(3, 1), labels, 2, seed=0)
