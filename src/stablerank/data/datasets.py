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
  ``data_dir/fashion-mnist`` and ``data_dir/FashionMNIST/raw`` (torchvision's layout); only when
  no ``data_dir`` is given, in ``/usr/share/datasets/fashion-mnist`` (Debian package
  ``dataset-fashion-mnist``). A given folder that does not exist or lacks the files is an error,
  never a fallback to the system folder. The folder actually read (absolute) is recorded in
  ``DatasetSplits.source``. Magic numbers, dimensions, byte counts,
  the standard split sizes and the label range are checked before anything is returned.
* CIFAR-10/100: the python pickle folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` in
  ``data_dir``, or their ``.tar.gz`` archive there (checked against its md5 and extracted next to
  it), or downloaded from the authors' site when ``download=True`` (see :mod:`.cifar`).
* ``digits``: scikit-learn's bundled 8x8 digits (17 grey levels 0..16 scaled to 0..255 and rounded),
  split by a fixed seeded stratified 75/25 split (the set has no official split).
* ``mnist1d``: generated locally by ``mnist1d.data.make_dataset`` with the package's default
  arguments (seed 42, 4000 train / 1000 test); the global ``random``/``numpy`` RNG states that it
  reseeds are restored afterwards.
"""

from __future__ import annotations

import gzip
import random
import zlib
from pathlib import Path

import numpy as np
import torch

from stablerank._optional import import_optional
from stablerank.data.cifar import CIFAR_LAYOUTS, load_cifar
from stablerank.data.splits import (
    PIXEL_MAX,
    CorruptDatasetError,
    DatasetNotFoundError,
    DatasetShape,
    DatasetSplits,
    channel_stats,
)

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DatasetShape",
    "DatasetSplits",
    "dataset_shape",
    "load_dataset",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits", "mnist1d")
# Known without reading a file, so that a trained network can be rebuilt where its data is not
# (a test holds each equal to what load_dataset returns).
_SHAPES = {
    "fashion-mnist": DatasetShape(in_channels=1, image_size=28, num_classes=10),
    "cifar10": DatasetShape(in_channels=3, image_size=32, num_classes=10),
    "cifar100": DatasetShape(in_channels=3, image_size=32, num_classes=100),
    "digits": DatasetShape(in_channels=1, image_size=8, num_classes=10),
    "mnist1d": DatasetShape(in_channels=1, image_size=None, num_classes=10, length=40),
}
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    return key


def dataset_shape(name: str) -> DatasetShape:
    """The input geometry and class count of dataset ``name``, without reading its files.

    Raises:
        ValueError: unknown ``name``.
    """
    return _SHAPES[_canonical(name)]


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False
                 ) -> DatasetSplits:  # fmt: skip
    """Load a dataset whole into memory.

    Args:
        name: one of :data:`DATASETS` (``_`` is accepted for ``-``: ``fashion_mnist``).
        data_dir: folder holding the dataset's files (default None: Fashion-MNIST's system folder
            ``/usr/share/datasets/fashion-mnist``; required for CIFAR; unused by ``digits`` and
            ``mnist1d``, but must exist when given). A folder that is given is the only place
            looked in.
        download: CIFAR only: fetch the archive into ``data_dir`` when it is not there
            (default False; never done implicitly).

    Returns:
        The :class:`DatasetSplits`; its ``source`` names the folder actually read (or the
        generator), for the run's records.

    Raises:
        ValueError: unknown ``name``.
        DatasetNotFoundError: ``data_dir`` missing or lacking the files (the message names the
            folder, the files and how to get them).
        CorruptDatasetError: a file is truncated, corrupt or has unexpected contents (a
            ValueError naming the file).
        ModuleNotFoundError: ``digits`` or ``mnist1d`` without the ``experiments`` extra.
    """
    key = _canonical(name)
    root = None if data_dir is None else Path(data_dir).expanduser()
    if key == "fashion-mnist":
        return _load_fashion_mnist(root)
    if key in CIFAR_LAYOUTS:
        return load_cifar(root, CIFAR_LAYOUTS[key], download=download)
    if root is not None and not root.is_dir():  # nothing to read, but a typo must not pass
        raise DatasetNotFoundError(
            f"{key} reads no files, yet data_dir (--data-dir) {root} does not exist: fix it "
            "or leave it out"
        )
    if key == "digits":
        return _load_digits()
    return _load_mnist1d()


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
            if decomp.unused_data:  # several gzip members (legal, rare): let gzip join them
                data = gzip.decompress(raw)
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
    """Folders searched, in order: the given one (and the layouts people unpack into), or, only
    when no folder is given, the Debian package's system folder."""
    if root is None:
        return [DEFAULT_FASHION_MNIST_DIR]
    return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_not_found(root: Path | None, searched: list[Path]) -> DatasetNotFoundError:
    expected = ", ".join(s + "[.gz]" for s, _, _ in _FASHION_FILES.values())
    how = (
        "Install them with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; puts "
        f"them in {DEFAULT_FASHION_MNIST_DIR}, read when no folder is given), or download them "
        "from https://github.com/zalandoresearch/fashion-mnist and pass their folder as "
        "--data-dir DIR (data_dir=DIR)."
    )
    if root is not None and not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        return DatasetNotFoundError(
            f"Fashion-MNIST: the data folder {root} {what} (expected it to hold the four "
            f"idx files {expected}). {how}"
        )
    lines = []
    for folder in searched:
        missing = [s for s, _, _ in _FASHION_FILES.values() if _find_idx(folder, s) is None]
        if folder.is_dir():
            lines.append(f"{folder} lacks {', '.join(m + '[.gz]' for m in missing)}")
        else:
            lines.append(f"{folder} does not exist")
    return DatasetNotFoundError(
        f"Fashion-MNIST not found: looked for the four idx files ({expected}): "
        f"{'; '.join(lines)}. {how}"
    )


def _load_fashion_mnist(root: Path | None) -> DatasetSplits:
    searched = _fashion_mnist_candidates(root)
    folder = next(
        (d for d in searched if all(_find_idx(d, s) for s, _, _ in _FASHION_FILES.values())), None
    )
    if folder is None:
        raise _fashion_mnist_not_found(root, searched)
    arrays = {}
    for key, (stem, ndim, shape) in _FASHION_FILES.items():
        path = _find_idx(folder, stem)
        assert path is not None  # Precondition: checked by the search above.
        arrays[key] = _read_idx(path, ndim, shape)
        if key.endswith("_y") and arrays[key].max() >= _FASHION_NUM_CLASSES:
            bad = int((arrays[key] >= _FASHION_NUM_CLASSES).sum())
            raise CorruptDatasetError(
                f"{path}: {bad} labels outside 0..{_FASHION_NUM_CLASSES - 1} (largest "
                f"{arrays[key].max()}): not a Fashion-MNIST labels file"
            )
    train_x = torch.from_numpy(arrays["train_x"]).unsqueeze(1)  # (N, 1, 28, 28)
    mean, std = channel_stats(train_x, PIXEL_MAX)
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
        source=str(folder.resolve()),
    )


# ---------------------------------------------------------------------------------------------
# Generated / bundled tiny sets
# ---------------------------------------------------------------------------------------------

_DIGITS_LEVELS = 16  # sklearn digits take the values 0..16
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0


def _load_digits() -> DatasetSplits:
    # scikit-learn is in the "experiments" extra (and a heavy import): only when asked.
    load_digits = import_optional("sklearn.datasets", "the digits dataset").load_digits
    train_test_split = import_optional(
        "sklearn.model_selection", "the digits dataset"
    ).train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (PIXEL_MAX / _DIGITS_LEVELS)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=_DIGITS_TEST_FRACTION, random_state=_DIGITS_SPLIT_SEED,
        stratify=labels,
    )  # fmt: skip
    train_x = torch.from_numpy(np.ascontiguousarray(tr_x))
    mean, std = channel_stats(train_x, PIXEL_MAX)
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
    # The local generator (never get_dataset, which downloads); in the "experiments" extra.
    mnist1d_data = import_optional("mnist1d.data", "the mnist1d dataset")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

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
    mean, std = channel_stats(train_x, 1.0)
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
