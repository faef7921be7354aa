"""DeviceLoader: coverage per epoch, DDP shards, determinism per (seed, epoch), augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stablerank.data.loader import DeviceLoader, random_crop, random_flip
from stablerank.data.splits import DatasetSplits

N, C, H = 103, 3, 6
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, C, H, H), generator=g, dtype=torch.uint8)
    return x, torch.arange(N)  # labels = indices, so batches say which examples they hold


def _loader(data, **kw) -> DeviceLoader:
    kw.setdefault("batch_size", 10)
    return DeviceLoader(*data, mean=MEAN, std=STD, **kw)


def _ys(loader) -> list[torch.Tensor]:
    return [y for _, y in loader]


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_example_once_per_epoch(data, shuffle):
    loader = _loader(data, shuffle=shuffle, augment="crop_flip")
    ys = _ys(loader)
    assert len(loader) == len(ys) == math.ceil(N / 10)
    assert [y.numel() for y in ys] == [10] * 10 + [3]
    assert torch.equal(torch.cat(ys).sort().values, torch.arange(N))
    assert torch.equal(torch.cat(ys), torch.arange(N)) != shuffle


def test_drop_last(data):
    loader = _loader(data, drop_last=True)
    ys = _ys(loader)
    assert len(loader) == len(ys) == N // 10 and all(y.numel() == 10 for y in ys)
    assert torch.cat(ys).unique().numel() == 100


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_disjoint_covering_same_length(data, world_size, drop_last):
    loaders = [
        _loader(data, batch_size=4, rank=r, world_size=world_size, drop_last=drop_last, seed=5)
        for r in range(world_size)
    ]
    lengths = {len(loader) for loader in loaders}
    assert len(lengths) == 1  # same number of batches on every rank (DDP steps in lockstep)
    shards = [torch.cat(_ys(loader)) for loader in loaders]
    union = torch.cat(shards)
    assert union.unique().numel() == union.numel()  # disjoint
    global_batch = 4 * world_size
    expected = N // global_batch * global_batch if drop_last else N
    assert union.numel() == expected  # covering (all of it unless dropping the last batch)
    assert [len(list(loader)) for loader in loaders] == [lengths.pop()] * world_size


def test_ddp_union_equals_single_process_global_batch(data):
    """Rank r's t-th batch is the r-th quarter of the single-process t-th batch of size
    4 * batch_size, augmentation included: DDP and one process see the same data."""
    world = 4
    single = list(_loader(data, batch_size=3 * world, augment="crop_flip", seed=9))
    ranks = [
        list(_loader(data, batch_size=3, augment="crop_flip", seed=9, rank=r, world_size=world))
        for r in range(world)
    ]
    for t, (x, y) in enumerate(single):
        xr = torch.cat([ranks[r][t][0] for r in range(world)])
        yr = torch.cat([ranks[r][t][1] for r in range(world)])
        assert torch.equal(yr, y) and torch.equal(xr, x)


def test_determinism_per_seed_and_epoch(data):
    a, b = _loader(data, augment="crop_flip", seed=1), _loader(data, augment="crop_flip", seed=1)
    epochs_a = [list(a) for _ in range(3)]  # auto-advances 0, 1, 2
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs_a[2], list(b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # resuming at epoch 2 is exact
    assert not torch.equal(
        torch.cat([y for _, y in epochs_a[0]]), torch.cat([y for _, y in epochs_a[1]])
    )
    other = _loader(data, augment="crop_flip", seed=2)
    assert not torch.equal(torch.cat(_ys(other)), torch.cat([y for _, y in epochs_a[0]]))
    assert torch.equal(torch.cat(a.batch_indices(epoch=1)), torch.cat([y for _, y in epochs_a[1]]))


def test_normalization_without_augmentation(data):
    x, _ = data
    loader = _loader(data, shuffle=False)
    out = torch.cat([xb for xb, _ in loader])
    mean, std = torch.tensor(MEAN).view(1, C, 1, 1), torch.tensor(STD).view(1, C, 1, 1)
    expected = (x.double() / 255 - mean.double()) / std.double()
    # float32 arithmetic on values of magnitude < 5: 1e-5 absolute is ~100 ulps of slack
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_flip_on_tiny_image():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    out = random_flip(x, torch.tensor([True, False]))
    assert out[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]
    assert torch.equal(out[1], x[1])


def test_crop_on_tiny_image_matches_slicing_oracle():
    x = torch.arange(1, 1 + 2 * 2 * 4 * 4, dtype=torch.uint8).view(2, 2, 4, 4)
    pad = 2
    padded = F.pad(x, (pad,) * 4)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            offsets = torch.tensor([[dy, dx], [2 * pad - dy, dx]])
            out = random_crop(x, offsets, pad)
            for b in range(2):
                oy, ox = offsets[b].tolist()
                assert torch.equal(out[b], padded[b, :, oy : oy + 4, ox : ox + 4])
    centre = random_crop(x, torch.full((2, 2), pad), pad)
    assert torch.equal(centre, x)
    assert random_crop(x, torch.zeros(2, 2, dtype=torch.long), pad)[0, 0, 0, 0] == 0  # zero pad


def test_loader_crops_are_crops_and_flips_are_half(data):
    x, _ = data
    loader = _loader(data, augment="crop", pad=1, shuffle=False, batch_size=N)
    ((xb, _),) = list(loader)
    scale = torch.tensor(STD).view(1, C, 1, 1) * 255
    raw = torch.round(xb * scale + torch.tensor(MEAN).view(1, C, 1, 1) * 255).to(torch.uint8)
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(N):  # each output is one of the 9 crops of its own padded image
        crops = [padded[i, :, dy : dy + H, dx : dx + H] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(raw[i], crop) for crop in crops)
    # flips alone (pad 0): each image is itself or its mirror; about half are mirrored.
    many = torch.randint(
        0, 256, (2000, 1, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    flipper = DeviceLoader(
        many,
        torch.arange(2000),
        batch_size=2000,
        mean=(0.5,),
        std=(0.5,),
        augment="crop_flip",
        pad=0,
        shuffle=False,
    )
    ((xf, _),) = list(flipper)
    raw = torch.round((xf * 0.5 + 0.5) * 255).to(torch.uint8)
    same, mirrored = (raw == many).flatten(1).all(1), (raw == many.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    flipped = float((mirrored & ~same).sum()) / 2000
    assert abs(flipped - 0.5) < 5 * math.sqrt(0.25 / 2000)  # 5 sigma of Binomial(2000, 1/2)


def test_one_dimensional_data():
    x = torch.randn(20, 1, 40)
    loader = DeviceLoader(x, torch.arange(20), batch_size=8, mean=(0.0,), std=(2.0,))
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(8, 1, 40), (8, 1, 40), (4, 1, 40)]
    out = torch.cat([b[0] for b in batches])
    idx = torch.cat([b[1] for b in batches])
    torch.testing.assert_close(out, x[idx] / 2.0)  # float data: pixel_scale 1, std 2
    with pytest.raises(ValueError, match="augment='crop' needs images"):
        DeviceLoader(x, torch.arange(20), batch_size=8, mean=(0.0,), std=(1.0,), augment="crop")


def test_from_splits_and_channels_last(data):
    x, y = data
    splits = DatasetSplits(
        name="fake",
        train_x=x,
        train_y=y,
        test_x=x[:7],
        test_y=y[:7],
        num_classes=N,
        in_channels=C,
        image_size=H,
        mean=MEAN,
        std=STD,
    )
    test = DeviceLoader.from_splits(
        splits, train=False, batch_size=4, shuffle=False, channels_last=True
    )
    xb, yb = next(iter(test))
    assert yb.tolist() == [0, 1, 2, 3]
    assert xb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(xb, splits.normalize(x[:4]))


def test_argument_errors(data):
    with pytest.raises(ValueError, match="augment must be one of"):
        _loader(data, augment="flip")
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 1\], got 2"):
        _loader(data, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        _loader(data, batch_size=0)
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceLoader(*data, batch_size=2, mean=(0.5,), std=(0.5,))
    for std in ((1.0, 0.0, 1.0), (1.0, float("nan"), 1.0)):  # NaN compares False with 0
        with pytest.raises(ValueError, match="std finite and > 0"):
            DeviceLoader(*data, batch_size=2, mean=MEAN, std=std)


def test_short_last_global_batch_gives_empty_batch_not_fewer_batches(data):
    """103 = 17 * (3 * 2) + 1: rank 0 gets the last example, rank 1 an empty last batch, so both
    still run 18 steps (documented; training under DDP uses drop_last=True)."""
    loaders = [_loader(data, batch_size=3, world_size=2, rank=r) for r in range(2)]
    last = [list(loader)[-1] for loader in loaders]
    assert [len(loader) for loader in loaders] == [18, 18]
    assert last[0][1].numel() == 1 and last[1][0].shape == (0, C, H, H)


def test_batch_larger_than_the_split_with_drop_last_is_an_error():
    x = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    y = torch.zeros(10, dtype=torch.int64)
    kw = dict(mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match=r"batch_size=16 .* larger than the dataset's 10"):
        DeviceLoader(x, y, batch_size=16, drop_last=True, **kw)
    with pytest.raises(ValueError, match=r"world_size=3\) is larger than the dataset's 10"):
        DeviceLoader(x, y, batch_size=4, world_size=3, drop_last=True, **kw)
    # A global batch of exactly the split is one full batch, not an error.
    assert len(DeviceLoader(x, y, batch_size=10, drop_last=True, **kw)) == 1
    assert len(DeviceLoader(x, y, batch_size=5, world_size=2, drop_last=True, **kw)) == 1
    # Without drop_last the one short batch is kept (evaluation loaders).
    assert len(DeviceLoader(x, y, batch_size=16, drop_last=False, **kw)) == 1


def test_the_loader_refuses_float_labels_and_a_pixel_scale_that_is_not_a_finite_positive_number():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    y = torch.tensor([2, 0, 1, 1])
    with pytest.raises(ValueError, match="y must have an integer dtype"):  # truncated before
        DeviceLoader(x, y.float() + 0.7, batch_size=2, mean=(0.5,), std=(0.25,))
    for scale in (float("nan"), float("inf"), 0.0, "255"):  # every batch NaN or constant before
        with pytest.raises(ValueError, match="pixel_scale must be a finite number > 0"):
            DeviceLoader(x, y, batch_size=2, mean=(0.5,), std=(0.25,), pixel_scale=scale)
