"""CIFAR-10 and CIFAR-100 from the authors' python pickle archives.

Looks for ``cifar-10-batches-py/`` (``cifar-100-python/``) in the data folder, else for the
``.tar.gz`` archive there (checked against the official md5, then extracted next to it into a
temporary folder that is renamed only once complete), else downloads the archive when asked.
Every batch file is checked (md5 against the official value, then dtype, shape, label count and
range) and the split sizes against the official ones, so a truncated or corrupt file raises
instead of half-loading.

Note [safe cifar unpickling]: the batch files are Python pickles, and a plain ``pickle.load``
runs whatever code the file names. They are read with :class:`_CifarUnpickler`, which resolves
only the globals that the official files (and numpy's own pickles of uint8 arrays) contain:
numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``, ``_frombuffer``) and
``_codecs.encode`` restricted to latin-1 (how protocol-2 pickles carry bytes). Anything else
raises :class:`CorruptDatasetError` naming the file and the refused global, before it is called.
The md5 of every official file is checked first, so a replaced file is refused even before that.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # md5 of each extracted file (official values, as the CIFAR page's archives hold them);
    # an empty tuple skips the check (tests).
    file_md5: tuple[tuple[str, str], ...] = ()


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
        file_md5=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
            ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
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
        file_md5=(
            ("train", "16019d7e3df5f24257cddd939b257f8d"),
            ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            ("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
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


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, and nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _numpy_global(modules: tuple[str, ...], name: str) -> Any:
    for module in modules:  # numpy >= 2 keeps the internals in numpy._core, numpy 1 in numpy.core
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in {modules}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")


def _safe_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """(module, name) a CIFAR pickle may reference -> how to get the object (Note [safe cifar
    unpickling]); both numpy spellings are accepted whichever numpy wrote the file."""
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for module in _MULTIARRAY:
        table[(module, "_reconstruct")] = lambda: _numpy_global(_MULTIARRAY, "_reconstruct")
    for module in _NUMERIC:
        table[(module, "_frombuffer")] = lambda: _numpy_global(_NUMERIC, "_frombuffer")
    return table


_SAFE_GLOBALS = _safe_globals()


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_SAFE_GLOBALS` (Note [safe cifar unpickling])."""

    def find_class(self, module: str, name: str) -> Any:
        getter = _SAFE_GLOBALS.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}: a CIFAR batch holds only numpy "
                "arrays, lists, numbers and bytes"
            )
        return getter()


def _load_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`_CifarUnpickler` (``encoding="bytes"``: Python 2 files)."""
    data = path.read_bytes()
    return _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()


def _check_file_md5(path: Path, layout: _CifarLayout) -> None:
    expected = dict(layout.file_md5).get(path.name)
    if expected is None:
        return
    actual = _md5(path)
    if actual != expected:
        raise CorruptDatasetError(
            f"{path}: md5 {actual} differs from the official {layout.name} file's {expected}; "
            f"the file is corrupt, truncated or was replaced: delete {path.parent} and extract "
            f"{layout.archive} (from {layout.url}) again"
        )


def _how_to_get_cifar(layout: _CifarLayout, root: Path | None) -> str:
    where = "--data-dir DIR" if root is None else f"{root} (--data-dir)"
    return (
        f"put the folder {layout.folder}/ (or the archive {layout.archive}, from {layout.url}) "
        f"in {where}, or call stablerank.data.load_dataset(..., download=True) from Python on a "
        "machine with network access"
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
        try:
            extracted.rename(archive.parent / layout.folder)
        except OSError:
            # Another process (a torchrun rank, a parallel run) extracted it first: theirs is the
            # same archive's, complete (it too appeared only once complete).
            if not (archive.parent / layout.folder).is_dir():
                raise


def _read_cifar_pickle(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{layout.name}: {path} is missing; the folder is incomplete (delete it; an archive "
            "beside it is then extracted again). " + _how_to_get_cifar(layout, path.parent.parent)
        )
    _check_file_md5(path, layout)
    try:
        entry = _load_pickle(path)
        data = np.asarray(entry[b"data"])
        labels = np.asarray(entry[layout.label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError,
            AttributeError, ImportError) as err:  # fmt: skip
        raise CorruptDatasetError(f"{path}: not a CIFAR python batch ({err})") from err
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
        _check_file_md5(meta, layout)
        try:
            names = _load_pickle(meta).get(layout.names_key, [])
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
            raise CorruptDatasetError(f"{meta}: not a CIFAR meta file ({err})") from err
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
        source=str(folder.resolve()),
    )
