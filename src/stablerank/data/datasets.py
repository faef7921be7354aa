"""Datasets of the classification experiments, loaded whole into memory as tensors (no cache).

``load_dataset(name, data_dir)`` returns a :class:`DatasetSplits`: the train and test splits, the
label count, the input geometry and the per-channel mean/std of the training split.

Storage (kept compact so a whole split can live on the training device):

* images (``fashion-mnist``, ``cifar10``, ``cifar100``, ``digits``): ``uint8`` tensors of shape
  (N, C, H, W), values 0..255; :meth:`DatasetSplits.normalize` (or the ``DeviceLoader``) turns
  them into float by ``(x / 255 - mean) / std``;
* ``mnist1d``: ``float32`` (N, 1, 40) signals, used as they are before normalization
  (``pixel_scale`` 1);
* labels: ``int64`` (N,).

Sources (nothing is downloaded unless ``download=True`` is passed, and only for CIFAR):

* Fashion-MNIST: the four idx files (``.gz`` or uncompressed) searched in ``data_dir``,
  ``data_dir/fashion-mnist``, ``data_dir/FashionMNIST/raw`` (torchvision's layout) and finally
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). The folder
  actually read is recorded in ``DatasetSplits.source``. Magic numbers, dimensions, byte counts,
  the standard split sizes and the label range are checked before anything is returned.
* CIFAR-10/100: the python pickle folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` in
  ``data_dir``, or their ``.tar.gz`` archive there (checked against its md5 and extracted next to
  it), or downloaded from the authors' site when ``download=True``.
* ``digits``: scikit-learn's bundled 8x8 digits (17 grey levels 0..16 scaled to 0..255 and rounded),
  split by a fixed seeded stratified 75/25 split (the set has no official split).
* ``mnist1d``: generated locally by ``mnist1d.data.make_dataset`` with the package's default
  arguments (seed 42, 4000 train / 1000 test); the global ``random``/``numpy`` RNG states that it
  reseeds are restored afterwards.

.. note::
   CIFAR archives are Python pickles: unpickling runs code chosen by whoever wrote the file, so
   read only archives from a source you trust (the md5 check covers the downloaded ``.tar.gz``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import random
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

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "load_dataset",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits", "mnist1d")
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PIXEL_MAX = 255.0  # uint8 images are divided by this before mean/std normalization

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated, corrupt or not what its name says."""


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset held in memory as tensors.

    Attributes:
        name: canonical dataset name (one of :data:`DATASETS`).
        train_x: training inputs, uint8 (N, C, H, W) for images, float32 (N, C, L) for 1-D data.
        train_y: training labels, int64 (N,), in [0, num_classes).
        test_x: test inputs, same layout as ``train_x``.
        test_y: test labels, int64.
        num_classes: number of classes.
        in_channels: C.
        image_size: H (= W) for images, None for 1-D signals.
        mean: per-channel mean of the training inputs after division by ``pixel_scale``.
        std: per-channel standard deviation (population, ddof 0) in the same units.
        pixel_scale: 255.0 for uint8 images, 1.0 for float data.
        length: L for 1-D signals, None for images.
        classes: class names (index = label), empty when the dataset has none.
        source: where the data came from (a folder, or the generator and its seed).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float = PIXEL_MAX
    length: int | None = None
    classes: tuple[str, ...] = ()
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) or (C, L)."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_y.numel())

    @property
    def num_test(self) -> int:
        return int(self.test_y.numel())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 copy of ``x`` (any batch of this dataset's inputs) as the models see it:
        ``(x / pixel_scale - mean) / std`` per channel, on ``x``'s device."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x.to(torch.float32) / self.pixel_scale - mean) / std

    def replace(self, **changes: object) -> DatasetSplits:
        """A copy with some fields changed (e.g. ``train_y`` after label corruption).
        ``mean``/``std`` are kept: they describe the full training split."""
        return dataclasses.replace(self, **changes)


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False
                 ) -> DatasetSplits:  # fmt: skip
    """Load a dataset whole into memory.

    Args:
        name: one of :data:`DATASETS` (``_`` is accepted for ``-``: ``fashion_mnist``).
        data_dir: folder holding the dataset's files (default None: Fashion-MNIST's system folder;
            required for CIFAR; unused by ``digits`` and ``mnist1d``).
        download: CIFAR only: fetch the archive into ``data_dir`` when it is not there
            (default False; never done implicitly).

    Returns:
        The :class:`DatasetSplits`.

    Raises:
        ValueError: unknown ``name``.
        DatasetNotFoundError: files missing (the message says how to get them).
        CorruptDatasetError: a file is truncated, corrupt or has unexpected contents.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    root = None if data_dir is None else Path(data_dir).expanduser()
    if key == "fashion-mnist":
        return _load_fashion_mnist(root)
    if key in _CIFAR:
        return _load_cifar(root, _CIFAR[key], download=download)
    if key == "digits":
        return _load_digits()
    return _load_mnist1d()


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def _channel_stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of ``x / scale``.

    uint8 data goes through a 256-bin histogram per channel (fast and exact in float64);
    float data through float64 sums.
    """
    means, stds = [], []
    for c in range(x.shape[1]):
        channel = x[:, c].reshape(-1)
        if x.dtype == torch.uint8:
            counts = torch.bincount(channel, minlength=256).to(torch.float64)
            values = torch.arange(256, dtype=torch.float64) / scale
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = (counts * (values - mean) ** 2).sum() / n
        else:
            channel = channel.to(torch.float64) / scale
            mean = channel.mean()
            var = ((channel - mean) ** 2).mean()
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)
# ---------------------------------------------------------------------------------------------

_IDX_UBYTE = 0x08  # idx type code of unsigned bytes; magic = (0, 0, type, ndim)
_FASHION_FILES = {
    "train_x": ("train-images-idx3-ubyte", 3, (60000, 28, 28)),
    "train_y": ("train-labels-idx1-ubyte", 1, (60000,)),
    "test_x": ("t10k-images-idx3-ubyte", 3, (10000, 28, 28)),
    "test_y": ("t10k-labels-idx1-ubyte", 1, (10000,)),
}
_FASHION_NUM_CLASSES = 10


def _read_idx(path: Path, ndim: int, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed when its name ends in ``.gz``).

    Checks the magic number, the number of dimensions, the byte count implied by the header and,
    when given, the shape.

    Raises:
        CorruptDatasetError: naming ``path`` and what is wrong.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            # zlib with wbits=31 expects a gzip container; ~30% faster than gzip.decompress.
            decomp = zlib.decompressobj(31)
            data = decomp.decompress(raw)
            if not decomp.eof:
                raise CorruptDatasetError(f"{path}: gzip stream is truncated")
        else:
            data = raw
    except (zlib.error, gzip.BadGzipFile, EOFError) as err:
        raise CorruptDatasetError(f"{path}: not a valid gzip file ({err})") from err
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDatasetError(f"{path}: {len(data)} bytes, shorter than an idx header")
    magic = tuple(data[:4])
    if magic != (0, 0, _IDX_UBYTE, ndim):
        raise CorruptDatasetError(
            f"{path}: bad idx magic number {data[:4].hex()}, expected "
            f"0000{_IDX_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dims)"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if expected_shape is not None and shape != expected_shape:
        raise CorruptDatasetError(f"{path}: header shape {shape}, expected {expected_shape}")
    expected_bytes = header + int(np.prod(shape))
    if len(data) != expected_bytes:
        what = "truncated" if len(data) < expected_bytes else "has trailing bytes"
        raise CorruptDatasetError(
            f"{path}: {what}: {len(data)} bytes, header shape {shape} needs {expected_bytes}"
        )
    # frombuffer views immutable bytes; copy so torch gets a writable array it can own.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _fashion_mnist_candidates(root: Path | None) -> list[Path]:
    dirs = [] if root is None else [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return [*dirs, DEFAULT_FASHION_MNIST_DIR]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(root: Path | None) -> DatasetSplits:
    searched = _fashion_mnist_candidates(root)
    folder = next(
        (d for d in searched if all(_find_idx(d, s) for s, _, _ in _FASHION_FILES.values())), None
    )
    if folder is None:
        raise DatasetNotFoundError(
            "Fashion-MNIST not found: looked for the four idx files "
            f"({', '.join(s + '[.gz]' for s, _, _ in _FASHION_FILES.values())}) in "
            f"{', '.join(str(d) for d in searched)}. Install them with "
            "'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; puts them in "
            f"{DEFAULT_FASHION_MNIST_DIR}), or download them from "
            "https://github.com/zalandoresearch/fashion-mnist and pass their folder as --data-dir."
        )
    arrays = {}
    for key, (stem, ndim, shape) in _FASHION_FILES.items():
        path = _find_idx(folder, stem)
        assert path is not None  # Precondition: checked by the search above.
        arrays[key] = _read_idx(path, ndim, shape)
    for key in ("train_y", "test_y"):
        if arrays[key].max() >= _FASHION_NUM_CLASSES:
            raise CorruptDatasetError(
                f"{folder}: {key} has label {arrays[key].max()} >= {_FASHION_NUM_CLASSES}"
            )
    train_x = torch.from_numpy(arrays["train_x"]).unsqueeze(1)  # (N, 1, 28, 28)
    mean, std = _channel_stats(train_x, PIXEL_MAX)
    return DatasetSplits(
        name="fashion-mnist",
        train_x=train_x,
        train_y=torch.from_numpy(arrays["train_y"]).long(),
        test_x=torch.from_numpy(arrays["test_x"]).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_y"]).long(),
        num_classes=_FASHION_NUM_CLASSES,
        in_channels=1,
        image_size=28,
        mean=mean,
        std=std,
        classes=FASHION_MNIST_CLASSES,
        source=str(folder),
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle archives)
# ---------------------------------------------------------------------------------------------


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
_CIFAR = {
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


def _load_cifar(root: Path | None, layout: _CifarLayout, *, download: bool) -> DatasetSplits:
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
    mean, std = _channel_stats(train_x, PIXEL_MAX)
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


# ---------------------------------------------------------------------------------------------
# Generated / bundled tiny sets
# ---------------------------------------------------------------------------------------------

_DIGITS_LEVELS = 16  # sklearn digits take the values 0..16
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0


def _load_digits() -> DatasetSplits:
    from sklearn.datasets import load_digits  # heavy import, only when asked
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (PIXEL_MAX / _DIGITS_LEVELS)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=_DIGITS_TEST_FRACTION, random_state=_DIGITS_SPLIT_SEED,
        stratify=labels,
    )  # fmt: skip
    train_x = torch.from_numpy(np.ascontiguousarray(tr_x))
    mean, std = _channel_stats(train_x, PIXEL_MAX)
    return DatasetSplits(
        name="digits",
        train_x=train_x,
        train_y=torch.from_numpy(tr_y),
        test_x=torch.from_numpy(np.ascontiguousarray(te_x)),
        test_y=torch.from_numpy(te_y),
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=mean,
        std=std,
        classes=tuple(str(d) for d in range(10)),
        source=f"sklearn.datasets.load_digits, stratified split seed {_DIGITS_SPLIT_SEED}",
    )


def _load_mnist1d() -> DatasetSplits:
    from mnist1d.data import get_dataset_args, make_dataset  # local generator, never downloads

    args = get_dataset_args()
    # make_dataset reseeds the global random/numpy RNGs; restore them so loading data does not
    # change the randomness of the caller's run.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    train_x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32)).unsqueeze(1)
    test_x = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32)).unsqueeze(1)
    mean, std = _channel_stats(train_x, 1.0)
    return DatasetSplits(
        name="mnist1d",
        train_x=train_x,
        train_y=torch.from_numpy(np.asarray(data["y"], dtype=np.int64)),
        test_x=test_x,
        test_y=torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64)),
        num_classes=10,
        in_channels=1,
        image_size=None,
        mean=mean,
        std=std,
        pixel_scale=1.0,
        length=int(train_x.shape[-1]),
        classes=tuple(str(d) for d in range(10)),
        source=f"mnist1d.data.make_dataset(seed={args.seed}, num_samples={args.num_samples})",
    )
