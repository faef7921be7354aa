"""CIFAR-10 and CIFAR-100 from the authors' python pickle archives.

Looks for ``cifar-10-batches-py/`` (``cifar-100-python/``) in the data folder, else for the
``.tar.gz`` archive there (checked against the official md5, then extracted next to it into a
temporary folder that is renamed only once complete), else downloads the archive when asked.
Every batch file is checked (dtype, shape, label count and range) and the split sizes against the
official ones, so a truncated or corrupt file raises instead of half-loading.

.. note::
   The archives are Python pickles: unpickling runs code chosen by whoever wrote the file, so
   read only archives from a source you trust (the md5 check covers the ``.tar.gz``).
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stablerank.data.splits import (
    PIXEL_MAX,
    CorruptDatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    channel_stats,
)

__all__ = ["CIFAR_LAYOUTS", "load_cifar"]


@dataclass(frozen=True)
class _CifarLayout:
    """Where a CIFAR variant lives and what its files must contain."""

    name: str
    folder: str  # extracted folder inside data_dir
    archive: str  # .tar.gz name inside data_dir
    url: str
    md5: str | None  # of the archive; None skips the check (tests)
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes
    num_classes: int
    train_size: int
    test_size: int


_CIFAR_PIXELS = 3 * 32 * 32
CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        name="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key=b"labels",
        meta_file="batches.meta",
        names_key=b"label_names",
        num_classes=10,
        train_size=50000,
        test_size=10000,
    ),
    "cifar100": _CifarLayout(
        name="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        label_key=b"fine_labels",
        meta_file="meta",
        names_key=b"fine_label_names",
        num_classes=100,
        train_size=50000,
        test_size=10000,
    ),
}
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to_get_cifar(layout: _CifarLayout, root: Path | None) -> str:
    where = "--data-dir DIR" if root is None else str(root)
    return (
        f"put the folder {layout.folder}/ (or the archive {layout.archive}, from {layout.url}) "
        f"in {where}, or pass download=True (--download) on a machine with network access"
    )


def _download(layout: _CifarLayout, root: Path) -> Path:
    """Fetch the archive to ``root`` atomically (a .part file renamed once its md5 matches)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / layout.archive
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(layout.url, timeout=_DOWNLOAD_TIMEOUT_S) as response, \
                part.open("wb") as out:  # fmt: skip
            shutil.copyfileobj(response, out, _CHUNK)
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        raise DatasetNotFoundError(
            f"{layout.name}: download of {layout.url} failed ({err}); "
            + _how_to_get_cifar(layout, root)
        ) from err
    if layout.md5 is not None and _md5(part) != layout.md5:
        part.unlink(missing_ok=True)
        raise CorruptDatasetError(f"{layout.url}: downloaded file has the wrong md5")
    part.replace(target)
    return target


def _extract(layout: _CifarLayout, archive: Path) -> None:
    """Extract ``archive`` next to itself; the folder appears only once complete."""
    if layout.md5 is not None and _md5(archive) != layout.md5:
        raise CorruptDatasetError(
            f"{archive}: md5 differs from the official {layout.archive} ({layout.md5}); "
            "the file is corrupt or truncated: delete it and fetch it again"
        )
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise CorruptDatasetError(f"{archive}: cannot be extracted ({err})") from err
        extracted = Path(tmp) / layout.folder
        if not extracted.is_dir():
            raise CorruptDatasetError(f"{archive}: does not contain the folder {layout.folder}/")
        extracted.rename(archive.parent / layout.folder)


def _read_cifar_pickle(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{layout.name}: {path} is missing; the folder is incomplete. "
            + _how_to_get_cifar(layout, path.parent.parent)
        )
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"])
        labels = np.asarray(entry[layout.label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise CorruptDatasetError(f"{path}: not a CIFAR python batch ({err!r})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise CorruptDatasetError(
            f"{path}: data is {data.dtype} {data.shape}, expected uint8 (n, {_CIFAR_PIXELS})"
        )
    if labels.shape != (data.shape[0],):
        raise CorruptDatasetError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise CorruptDatasetError(f"{path}: labels outside [0, {layout.num_classes})")
    return data, labels


def _read_cifar_split(folder: Path, files: tuple[str, ...], size: int, layout: _CifarLayout
                      ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    parts = [_read_cifar_pickle(folder / f, layout) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if data.shape[0] != size:
        raise CorruptDatasetError(f"{folder}: {data.shape[0]} examples in {files}, expected {size}")
    # Rows are the 1024 red, then green, then blue values of a 32x32 image in row-major order.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def load_cifar(root: Path | None, layout: _CifarLayout, *, download: bool) -> DatasetSplits:
    if root is None:
        raise DatasetNotFoundError(f"{layout.name} needs a data folder: " + _how_to_get_cifar(
            layout, None))  # fmt: skip
    folder = root / layout.folder
    if not folder.is_dir():
        archive = root / layout.archive
        if not archive.is_file():
            if not download:
                raise DatasetNotFoundError(
                    f"{layout.name} not found in {root}: " + _how_to_get_cifar(layout, root)
                )
            archive = _download(layout, root)
        _extract(layout, archive)
    train_x, train_y = _read_cifar_split(folder, layout.train_files, layout.train_size, layout)
    test_x, test_y = _read_cifar_split(folder, layout.test_files, layout.test_size, layout)
    classes: tuple[str, ...] = ()
    meta = folder / layout.meta_file
    if meta.is_file():
        with meta.open("rb") as f:
            names = pickle.load(f, encoding="bytes").get(layout.names_key, [])
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    mean, std = channel_stats(train_x, PIXEL_MAX)
    return DatasetSplits(
        name=layout.name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=layout.num_classes,
        in_channels=3,
        image_size=32,
        mean=mean,
        std=std,
        classes=classes,
        source=str(folder),
    )
