"""Dataset loading: idx parsing on hand-made files, error messages, the real Fashion-MNIST,
scikit-learn digits and MNIST-1D."""

from __future__ import annotations

import functools
import gzip
import random

import numpy as np
import pytest
import torch

from stablerank.data import datasets
from stablerank.data.datasets import (
    DATASETS,
    CorruptDatasetError,
    DatasetNotFoundError,
    _read_idx,
    dataset_shape,
    load_dataset,
)

FASHION_DIR = datasets.DEFAULT_FASHION_MNIST_DIR
HAVE_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def _idx_bytes(array: np.ndarray, magic_type: int = 0x08) -> bytes:
    """An idx file written from the format's definition: magic (0, 0, type, ndim), big-endian
    int32 dims, then the raw bytes."""
    header = bytes([0, 0, magic_type, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)


@pytest.mark.parametrize("compressed", [True, False])
def test_read_idx_round_trip(tmp_path, images, compressed):
    path = tmp_path / ("x-idx3-ubyte.gz" if compressed else "x-idx3-ubyte")
    data = _idx_bytes(images)
    path.write_bytes(gzip.compress(data) if compressed else data)
    out = _read_idx(path, 3, (3, 4, 5))
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable  # torch.from_numpy must not see a read-only buffer


def test_read_idx_multi_member_gzip(tmp_path, images):
    """A gzip file may hold several members (e.g. written by `cat a.gz b.gz`); all are read."""
    data = _idx_bytes(images)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:30]) + gzip.compress(data[30:]))
    np.testing.assert_array_equal(_read_idx(path, 3), images)


def test_read_idx_truncated_gzip_names_file(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(images))[:-12])  # lose the gzip trailer
    with pytest.raises(CorruptDatasetError, match=r"x-idx3-ubyte\.gz.*(truncated|gzip)"):
        _read_idx(path, 3)


def test_read_idx_truncated_payload(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(images)[:-7]))  # valid gzip, short idx payload
    # 16 header bytes + 60 pixels = 76 expected, 69 present
    expected = r"x-idx3-ubyte\.gz: truncated: 69 bytes, header shape \(3, 4, 5\) needs 76"
    with pytest.raises(CorruptDatasetError, match=expected):
        _read_idx(path, 3)


def test_read_idx_trailing_bytes(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_bytes(images) + b"\x00")
    with pytest.raises(CorruptDatasetError, match="trailing bytes"):
        _read_idx(path, 3)


def test_read_idx_wrong_magic(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_bytes(images, magic_type=0x0D))  # 0x0D = float32 in the idx format
    with pytest.raises(CorruptDatasetError, match="bad idx magic number 00000d03"):
        _read_idx(path, 3)
    path.write_bytes(_idx_bytes(images))
    with pytest.raises(CorruptDatasetError, match="bad idx magic"):
        _read_idx(path, 1)  # a labels (1-D) file was expected


def test_read_idx_wrong_shape(tmp_path, images):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_bytes(images))
    with pytest.raises(CorruptDatasetError, match=r"header shape \(3, 4, 5\), expected"):
        _read_idx(path, 3, (60000, 28, 28))


def test_fashion_mnist_truncated_file_is_reported_not_half_loaded(tmp_path):
    """All four files present in data_dir but the training images cut short: the loader must
    raise naming that file (not fall back to another folder, not return partial data)."""
    n_train, n_test = 60000, 10000
    full = {
        "train-images-idx3-ubyte": (n_train, 28, 28),
        "train-labels-idx1-ubyte": (n_train,),
        "t10k-images-idx3-ubyte": (n_test, 28, 28),
        "t10k-labels-idx1-ubyte": (n_test,),
    }
    for stem, shape in full.items():
        header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
        payload = bytes(int(np.prod(shape)))
        if stem.startswith("train-images"):
            payload = payload[:1000]  # truncated
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(header + payload, compresslevel=1))
    with pytest.raises(CorruptDatasetError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message
    assert str(tmp_path) in message


def test_unknown_name_and_alias():
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("imagenet")
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "digits", "mnist1d")


@pytest.mark.parametrize("name", ["digits", "mnist1d", "fashion-mnist"])
def test_a_datasets_shape_is_known_without_its_files_and_is_the_loaded_ones(name):
    """(CIFAR's: tests/data/test_cifar.py.)"""
    if name == "fashion-mnist" and not HAVE_FASHION:
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_DIR}")
    assert dataset_shape(name) == load_dataset(name).dataset_shape
    assert set(datasets._SHAPES) == set(DATASETS)
    with pytest.raises(ValueError, match="name must be one of"):
        dataset_shape("imagenet")


@pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST not installed in {FASHION_DIR}")
def test_real_fashion_mnist():
    splits = load_dataset("fashion_mnist")  # underscore alias of "fashion-mnist"
    assert splits.name == "fashion-mnist"
    assert splits.train_x.shape == (60000, 1, 28, 28)
    assert splits.test_x.shape == (10000, 1, 28, 28)
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    # The official splits are balanced: 6000 / 1000 images per class.
    assert splits.train_y.bincount().tolist() == [6000] * 10
    assert splits.test_y.bincount().tolist() == [1000] * 10
    # Independent oracle: the first test label and image read with gzip + numpy directly.
    with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        first_label = f.read()[8]
    with gzip.open(FASHION_DIR / "t10k-images-idx3-ubyte.gz") as f:
        first_image = np.frombuffer(f.read()[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)
    assert splits.test_y[0].item() == first_label
    np.testing.assert_array_equal(splits.test_x[0, 0].numpy(), first_image)
    # The widely quoted training statistics 0.2860 / 0.3530 (4 decimals, hence 1e-4 + rounding).
    assert splits.mean[0] == pytest.approx(0.2860, abs=1.5e-4)
    assert splits.std[0] == pytest.approx(0.3530, abs=1.5e-4)


def test_digits():
    splits = load_dataset("digits")
    assert splits.train_x.shape[1:] == (1, 8, 8) and splits.train_x.dtype == torch.uint8
    assert splits.num_train + splits.num_test == 1797  # scikit-learn's digits
    # 17 grey levels 0..16 scaled to 0..255 and rounded: nothing else may appear.
    levels = set(np.rint(np.arange(17) * 255 / 16).astype(int).tolist())
    assert set(splits.train_x.unique().tolist()) <= levels
    assert splits.train_x.max().item() == 255
    # Stratified split: every class's share of the test set within one example of 25%.
    test_counts = splits.test_y.bincount(minlength=10)
    all_counts = test_counts + splits.train_y.bincount(minlength=10)
    assert torch.all((test_counts - 0.25 * all_counts).abs() <= 1)
    # mean/std agree with a direct float64 computation on the training split
    x = splits.train_x.double() / 255
    assert splits.mean[0] == pytest.approx(x.mean().item(), rel=1e-12)
    assert splits.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-12)
    # normalize() gives zero mean and unit std on the training split (up to float32 rounding)
    z = splits.normalize(splits.train_x)
    assert z.dtype == torch.float32
    assert z.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_mnist1d_is_generated_locally_and_leaves_global_rng_alone():
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    splits = load_dataset("mnist1d")
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    assert splits.train_x.shape == (4000, 1, 40) and splits.test_x.shape == (1000, 1, 40)
    assert splits.train_x.dtype == torch.float32
    assert (splits.image_size, splits.length, splits.pixel_scale) == (None, 40, 1.0)
    assert splits.input_shape == (1, 40)
    assert set(splits.train_y.unique().tolist()) == set(range(10))
    # make_dataset standardizes the whole set; the train split's stats are close to (0, 1).
    assert abs(splits.mean[0]) < 0.05 and abs(splits.std[0] - 1) < 0.05
    # ... and they are exactly the training split's (not the test split's, also near (0, 1)):
    x = splits.train_x.double()
    assert splits.mean[0] == pytest.approx(x.mean().item(), abs=1e-12)
    assert splits.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-12)


# ---- data_dir handling: a given folder is the only place looked in (no silent fallback)

_FASHION_SHAPES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


@functools.cache
def _zero_idx_gz(stem: str) -> bytes:
    """A well-formed gzip idx file of the official shape, all zeros (label 0 / black image)."""
    shape = _FASHION_SHAPES[stem]
    return gzip.compress(_idx_bytes(np.zeros(shape, dtype=np.uint8)), compresslevel=1)


def _write_fashion(folder, **replace: bytes) -> None:
    """The four files in ``folder``; ``replace`` maps a stem (with _ for -) to its raw bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in _FASHION_SHAPES:
        data = replace.get(stem.replace("-", "_"), _zero_idx_gz(stem))
        (folder / f"{stem}.gz").write_bytes(data)


@pytest.fixture
def fake_system_dir(tmp_path, monkeypatch):
    """A complete system folder, to prove a given data_dir never falls back to it."""
    system = tmp_path / "system"
    _write_fashion(system)
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", system)
    return system


def test_given_data_dir_that_does_not_exist_is_an_error(tmp_path, fake_system_dir):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", missing)
    message = str(err.value)
    assert f"the data folder {missing} does not exist" in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message
    a_file = tmp_path / "train-images-idx3-ubyte.gz"  # one of the files given for its folder
    a_file.write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match=f"folder {a_file} is a file, not a folder"):
        load_dataset("fashion-mnist", a_file)


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_generated_sets_refuse_a_data_dir_that_does_not_exist(tmp_path, name):
    """They read no files, but a mistyped --data-dir must not pass silently."""
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DatasetNotFoundError, match=rf"--data-dir\) {missing} does not exist"):
        load_dataset(name, missing)


def test_given_data_dir_without_the_files_does_not_fall_back(tmp_path, fake_system_dir):
    given = tmp_path / "given"
    given.mkdir()
    (given / "train-images-idx3-ubyte.gz").write_bytes(_zero_idx_gz("train-images-idx3-ubyte"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", given)
    message = str(err.value)
    # Names the folder and exactly the files it lacks; the system folder is not searched.
    assert f"{given} lacks train-labels-idx1-ubyte[.gz], t10k-images" in message
    assert f"{given} lacks train-images" not in message
    assert str(fake_system_dir) not in message.split("Install them")[0]


def test_system_folder_is_used_only_without_data_dir(fake_system_dir):
    splits = load_dataset("fashion-mnist")
    assert splits.source == str(fake_system_dir.resolve())
    assert splits.train_x.shape == (60000, 1, 28, 28)


def test_source_records_the_folder_read(tmp_path, fake_system_dir):
    _write_fashion(tmp_path / "mine" / "FashionMNIST" / "raw")  # torchvision's layout
    splits = load_dataset("fashion-mnist", tmp_path / "mine")
    assert splits.source == str((tmp_path / "mine" / "FashionMNIST" / "raw").resolve())


def test_no_data_dir_and_no_system_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match=rf"{tmp_path / 'nowhere'} does not exist"):
        load_dataset("fashion-mnist")


# ---- corrupt files raise a ValueError naming the file


def test_bad_labels_name_the_file(tmp_path):
    labels = np.zeros(10000, dtype=np.uint8)
    labels[[5, 17]] = (10, 200)
    _write_fashion(tmp_path, t10k_labels_idx1_ubyte=gzip.compress(_idx_bytes(labels)))
    expected = r"t10k-labels-idx1-ubyte\.gz: 2 labels outside 0\.\.9 \(largest 200\)"
    with pytest.raises(CorruptDatasetError, match=expected) as err:
        load_dataset("fashion-mnist", tmp_path)
    assert isinstance(err.value, ValueError)


def test_garbage_gz_file_names_the_file(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    _write_fashion(tmp_path, train_labels_idx1_ubyte=garbage)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: not a valid gzip file"):
        load_dataset("fashion-mnist", tmp_path)


def test_garbage_inside_valid_gzip_names_the_file(tmp_path):
    garbage = np.random.default_rng(1).integers(1, 256, 5000, dtype=np.uint8).tobytes()
    _write_fashion(tmp_path, t10k_images_idx3_ubyte=gzip.compress(garbage))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: bad idx magic number"):
        load_dataset("fashion-mnist", tmp_path)
