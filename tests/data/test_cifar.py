"""CIFAR pickle archives: reading a tiny fake archive written in tmp_path, extraction, download
from a local file:// URL, and the errors for missing, truncated and corrupt files."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stablerank.data import dataset_shape, load_dataset
from stablerank.data.cifar import CIFAR_LAYOUTS, load_cifar
from stablerank.data.splits import CorruptDatasetError, DatasetNotFoundError

PER_BATCH = 2  # images per fake CIFAR-10 training batch file (5 files)
N_TEST = 3
TINY10 = dataclasses.replace(
    CIFAR_LAYOUTS["cifar10"], md5=None, train_size=5 * PER_BATCH, test_size=N_TEST, file_md5=()
)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _write_pickle(path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _write_cifar10(root, layout=TINY10) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / layout.folder
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(layout.train_files + layout.test_files):
        n = N_TEST if name in layout.test_files else PER_BATCH
        rows, labels = _rows(n, i), [(i + j) % 10 for j in range(n)]
        _write_pickle(folder / name, {b"data": rows, b"labels": labels})
        written[name] = (rows, labels)
    _write_pickle(folder / layout.meta_file, {b"label_names": [b"c%d" % i for i in range(10)]})
    return written


def test_reads_tiny_archive(tmp_path):
    written = _write_cifar10(tmp_path)
    splits = load_cifar(tmp_path, TINY10, download=False)
    assert splits.train_x.shape == (10, 3, 32, 32) and splits.test_x.shape == (3, 3, 32, 32)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    assert splits.dataset_shape == dataset_shape("cifar10")  # what is known without the files
    # Layout from the CIFAR page: each row is 1024 red, 1024 green, 1024 blue values, row-major.
    rows, labels = written["data_batch_2"]
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert splits.train_x[PER_BATCH, c, h, w].item() == rows[0, c * 1024 + h * 32 + w]
    assert splits.train_y[PER_BATCH : 2 * PER_BATCH].tolist() == labels
    assert splits.test_y.tolist() == written["test_batch"][1]
    assert splits.classes[3] == "c3"
    all_train = np.concatenate([written[f][0] for f in TINY10.train_files]).reshape(-1, 3, 1024)
    np.testing.assert_allclose(splits.mean, all_train.mean(axis=(0, 2)) / 255, rtol=1e-12)


def test_cifar100_reads_the_fine_labels_and_their_names(tmp_path):
    """CIFAR-100's files hold 100 fine and 20 coarse labels; the 100-class task reads the fine
    ones (the coarse ones are in range too, so only their values tell them apart)."""
    layout = dataclasses.replace(
        CIFAR_LAYOUTS["cifar100"], md5=None, train_size=4, test_size=2, file_md5=()
    )
    folder = tmp_path / layout.folder
    folder.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        fine, coarse = [99 - 7 * i for i in range(n)], [19 - i for i in range(n)]
        _write_pickle(folder / name, {b"data": _rows(n, n), b"fine_labels": fine,
                                      b"coarse_labels": coarse})  # fmt: skip
    names = {b"fine_label_names": [b"f%d" % i for i in range(100)],
             b"coarse_label_names": [b"c%d" % i for i in range(20)]}  # fmt: skip
    _write_pickle(folder / layout.meta_file, names)
    splits = load_cifar(tmp_path, layout, download=False)
    assert splits.train_y.tolist() == [99, 92, 85, 78] and splits.test_y.tolist() == [99, 92]
    assert splits.num_classes == 100 and len(splits.classes) == 100 and splits.classes[7] == "f7"
    assert splits.dataset_shape == dataset_shape("cifar100")


def test_source_is_the_absolute_folder_read(tmp_path, monkeypatch):
    """A relative data_dir is recorded absolute, as Fashion-MNIST's: the run's records name the
    folder wherever they are read from."""
    _write_cifar10(tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    splits = load_cifar(Path("rel"), TINY10, download=False)
    assert splits.source == str(tmp_path.resolve() / "rel" / TINY10.folder)


def test_extracts_tar_gz_once_complete(tmp_path):
    src = tmp_path / "src"
    _write_cifar10(src)
    archive = tmp_path / TINY10.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / TINY10.folder, arcname=TINY10.folder)
    splits = load_cifar(tmp_path, TINY10, download=False)
    assert splits.num_train == 10
    assert (tmp_path / TINY10.folder / "data_batch_5").is_file()
    assert not list(tmp_path.glob(".extract-*"))  # the temporary folder is gone
    # A second process that found no folder before the first renamed its own into place (two
    # torchrun ranks): it uses the first's, complete, instead of failing in the rename.
    from stablerank.data import cifar

    cifar._extract(TINY10, archive)
    assert load_cifar(tmp_path, TINY10, download=False).num_train == 10
    assert not list(tmp_path.glob(".extract-*"))


def test_archive_with_wrong_md5_is_rejected(tmp_path):
    (tmp_path / TINY10.archive).write_bytes(b"not a tarball")
    layout = dataclasses.replace(TINY10, md5="0" * 32)
    with pytest.raises(CorruptDatasetError, match="md5 differs"):
        load_cifar(tmp_path, layout, download=False)
    assert not (tmp_path / TINY10.folder).exists()


def test_download_from_local_url(tmp_path):
    src = tmp_path / "src"
    _write_cifar10(src)
    archive = src / TINY10.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / TINY10.folder, arcname=TINY10.folder)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    layout = dataclasses.replace(TINY10, url=archive.as_uri(), md5=md5)
    dest = tmp_path / "dest"
    splits = load_cifar(dest, layout, download=True)
    assert splits.num_test == N_TEST
    assert (dest / TINY10.archive).is_file() and not list(dest.glob("*.part"))


def test_download_failure_says_where_to_put_files(tmp_path):
    layout = dataclasses.replace(TINY10, url=(tmp_path / "absent.tar.gz").as_uri())
    with pytest.raises(DatasetNotFoundError, match=r"download of .* failed.*cifar-10-batches-py"):
        load_cifar(tmp_path / "dest", layout, download=True)


def test_missing_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 not found.*download=True") as err:
        load_dataset("cifar10", tmp_path)
    assert f"in {tmp_path} (--data-dir)" in str(err.value)  # names the argument that was given
    with pytest.raises(DatasetNotFoundError, match=r"cifar100 needs a data folder.*--data-dir"):
        load_dataset("cifar100")


def test_truncated_batch_is_reported(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / TINY10.folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptDatasetError, match="data_batch_3"):
        load_cifar(tmp_path, TINY10, download=False)


def test_missing_batch_file(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / TINY10.folder / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4 is missing"):
        load_cifar(tmp_path, TINY10, download=False)


def test_split_size_checked_against_official(tmp_path):
    _write_cifar10(tmp_path)  # every file is consistent, but the split has 10 images
    official_sizes = dataclasses.replace(CIFAR_LAYOUTS["cifar10"], file_md5=())
    with pytest.raises(CorruptDatasetError, match=r"10 examples .* expected 50000"):
        load_cifar(tmp_path, official_sizes, download=False)


def test_files_checked_against_official_md5(tmp_path):
    _write_cifar10(tmp_path)  # not the official bytes
    expected = r"data_batch_1: md5 [0-9a-f]{32} differs from the official cifar10 file's c99caf"
    with pytest.raises(CorruptDatasetError, match=expected):
        load_dataset("cifar10", tmp_path)


def test_python2_style_pickles_are_read(tmp_path):
    """Protocol 2 (what the official Python 2 files use): bytes via _codecs.encode, arrays via
    numpy's _reconstruct; both are on the unpickler's allow-list."""
    written = _write_cifar10(tmp_path)
    folder = tmp_path / TINY10.folder
    for name, (rows, labels) in written.items():
        _write_pickle(folder / name, {b"data": rows, b"labels": labels, b"batch_label": b"x"}, 2)
    splits = load_cifar(tmp_path, TINY10, download=False)
    np.testing.assert_array_equal(
        splits.test_x.reshape(N_TEST, -1).numpy(), written["test_batch"][0]
    )


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it creates a file, as an attack would run a
    command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["top", "data"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, where):
    _write_cifar10(tmp_path)
    # The payload works: a plain pickle.load runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()
    marker = tmp_path / "pwned"
    evil = _Payload(marker)
    obj = evil if where == "top" else {b"data": evil, b"labels": [0] * N_TEST}
    _write_pickle(tmp_path / TINY10.folder / "test_batch", obj)
    with pytest.raises(CorruptDatasetError, match=r"test_batch: .*refusing to load the global"):
        load_cifar(tmp_path, TINY10, download=False)
    assert not marker.exists()


def test_malicious_meta_file_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _write_pickle(tmp_path / TINY10.folder / TINY10.meta_file, _Payload(marker))
    with pytest.raises(CorruptDatasetError, match=r"batches\.meta: .*refusing"):
        load_cifar(tmp_path, TINY10, download=False)
    assert not marker.exists()


def test_bad_rows_and_labels(tmp_path):
    _write_cifar10(tmp_path)
    folder = tmp_path / TINY10.folder
    _write_pickle(folder / "test_batch", {b"data": _rows(N_TEST, 0)[:, :100], b"labels": [0] * 3})
    with pytest.raises(CorruptDatasetError, match=r"test_batch: data is uint8 \(3, 100\)"):
        load_cifar(tmp_path, TINY10, download=False)
    _write_pickle(folder / "test_batch", {b"data": _rows(N_TEST, 0), b"labels": [0, 1, 10]})
    with pytest.raises(CorruptDatasetError, match=r"labels outside \[0, 10\)"):
        load_cifar(tmp_path, TINY10, download=False)
