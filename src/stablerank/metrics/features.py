"""Feature networks for the GAN metrics, and their registry.

FID and KID compare distributions of a network's features; IS reads its class probabilities.
Standard scores use InceptionV3, whose weights cannot be downloaded here; offline, the default is
``"fmnist-cnn"``, a small classifier this project trains on the Fashion-MNIST training split
(``scripts/train_feature_net.py``; the weights and a JSON sidecar with their test accuracy, sha256
and the reproducing command ship in ``stablerank/metrics/weights/``). Its penultimate layer gives
the features and its softmax the IS probabilities (so its IS is at most 10). Scores computed with
different feature networks are not comparable: every result records the network's name and
weights hash (:class:`stablerank.metrics.gan.Protocol`).

Image contract (all extractors): float tensors (N, C, H, W) with values in [-1, 1] (what a tanh
generator outputs), or uint8 in [0, 255], converted by ``x / 127.5 - 1``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stablerank.metrics._checks import check_finite
from stablerank.srn import _caller_outside_package

__all__ = [
    "DEFAULT_FEATURE_NET",
    "FMNIST_CNN_SIDECAR",
    "FMNIST_CNN_WEIGHTS",
    "FashionCNN",
    "FeatureExtractor",
    "available_feature_extractors",
    "build_feature_extractor",
    "load_fmnist_cnn",
    "register_feature_extractor",
    "sha256_file",
    "to_signed_unit",
]

DEFAULT_FEATURE_NET = "fmnist-cnn"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FMNIST_CNN_WEIGHTS = WEIGHTS_DIR / "fmnist_cnn.pt"
FMNIST_CNN_SIDECAR = WEIGHTS_DIR / "fmnist_cnn.json"
INCEPTION_INSTALL = 'pip install "stablerank[fidelity]"'
# The one InceptionV3 file, under the names pytorch-fid and torch-fidelity download it as into
# torch hub's cache (the suffix is the first hex digits of its sha256 in both).
INCEPTION_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth",
)
_PIXEL_HALF = 127.5  # uint8 -> [-1, 1]: x / 127.5 - 1
# Tolerance on the [-1, 1] range check: generators' tanh and float round-off stay well inside it.
_RANGE_TOL = 1e-3
_HASH_CHUNK = 1 << 20
_FORBIDDEN_NAME_CHARS = ("/", "\\")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_signed_unit(x: Tensor, what: str) -> None:
    """Refuse float images outside [-1, 1] (``what`` names them). One device sync."""
    if not x.numel():
        return
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{what} must be float in [-1, 1] (or uint8 in [0, 255]), got values in "
            f"[{lo:.4g}, {hi:.4g}]"
        )


def warn_if_unsigned(images: Tensor, what: str) -> None:
    """Warn of a set of float images (``what`` names them) none of which has a pixel darker than
    mid-grey: most likely images in [0, 1], which the metrics would read as washed-out [-1, 1]
    images. For sets the caller gives (real images, saved samples), not a generator's batches,
    which may be bright."""
    if images.is_floating_point() and images.numel() and bool(images.min() >= 0):
        warnings.warn(
            f"{what}: float values all in [0, {images.max().item():.3g}] are read as images in "
            "[-1, 1] (none darker than mid-grey); for images in [0, 1] pass x * 2 - 1, or uint8 "
            "in [0, 255]",
            stacklevel=_caller_outside_package(),
        )


def to_signed_unit(images: Tensor) -> Tensor:
    """Images in the metrics' contract: uint8 [0, 255] -> float32 [-1, 1]; float passes through.

    Raises:
        TypeError: for a dtype that is neither uint8 nor floating point.
    """
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / _PIXEL_HALF - 1.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    return images


# ---------------------------------------------------------------------------------------------
# The offline default: a small Fashion-MNIST classifier
# ---------------------------------------------------------------------------------------------


class FashionCNN(nn.Module):
    """Small BatchNorm CNN classifier; ``extract`` returns (penultimate features, logits).

    Three stages of conv3x3-BN-ReLU-maxpool (28 -> 14 -> 7 -> 3 for Fashion-MNIST), then a hidden
    Linear-BN-ReLU layer of ``feature_dim`` units (the FID/KID features) and the classifier.
    Inputs are images in [-1, 1], (N, in_channels, image_size, image_size).

    Args:
        in_channels: image channels (default 1).
        num_classes: classes (default 10).
        widths: channels of the three conv stages (default (32, 64, 128)).
        feature_dim: width of the penultimate layer (default 128).
        image_size: H = W of the input (default 28).
        dropout: dropout before the classifier, training only (default 0.2).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 128,
        image_size: int = 28,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c, size = w, size // 2
        self.stages = nn.Sequential(*layers)
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * size * size, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def extract(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features (N, feature_dim), logits (N, num_classes))."""
        features = self.hidden(self.stages(x))
        return features, self.classifier(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.extract(x)[1]


# ---------------------------------------------------------------------------------------------
# The frozen extractor wrapper
# ---------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """A frozen feature network: always in eval mode, no gradients, checked inputs.

    Wraps any module with an ``extract(x) -> (features (N, d), logits (N, K) or None)`` method.
    ``forward`` returns the features (what torchmetrics' FID/KID expect of a custom module).

    Args:
        name: registry name, recorded in every metric protocol.
        net: the wrapped network.
        input_shape: expected (C, H, W) of one image.
        num_features: d.
        num_classes: K, or None when the network has no classifier (then IS is unavailable).
        weights_sha256: sha256 of the weights file ("" when none).

    .. note::
        ``train(True)`` is ignored: BatchNorm statistics and dropout must never change, so that
        scores are deterministic and comparable.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        *,
        input_shape: tuple[int, int, int],
        num_features: int,
        num_classes: int | None,
        weights_sha256: str,
    ) -> None:
        super().__init__()
        if not callable(getattr(net, "extract", None)):
            raise TypeError(f"net must define extract(x) -> (features, logits), got {type(net)}")
        self.name = name
        self.net = net
        self.input_shape = tuple(input_shape)
        self.num_features = num_features  # read by torchmetrics instead of a dummy forward
        self.num_classes = num_classes
        self.weights_sha256 = weights_sha256
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always eval mode (the argument is ignored; see the class note)."""
        return super().train(False)

    def check_input(self, images: Tensor) -> Tensor:
        """Validate shape and range; return float images in [-1, 1].

        Raises:
            ValueError: when the shape is not (N, *input_shape), values leave [-1, 1] or are
                not finite (NaN/inf).
            TypeError: for a dtype other than uint8 or floating point.
        """
        if images.dim() != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.name} expects images of shape (N, {', '.join(map(str, self.input_shape))}),"
                f" got {tuple(images.shape)}"
            )
        check_finite(images, f"images given to {self.name}")
        x = to_signed_unit(images)
        check_signed_unit(x, f"images given to {self.name}")
        return x

    @torch.no_grad()
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """(features (N, num_features), logits (N, num_classes) or None), both float32.

        Raises:
            ValueError: as :meth:`check_input`, or when the network outputs non-finite values.
        """
        x = self.check_input(images)
        param = next(self.net.parameters(), None)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        features, logits = self.net.extract(x)
        # A network with non-finite weights gives NaN features; refuse them here, before the
        # metrics' covariance and matrix square root (LAPACK) see them.
        check_finite(features, f"features of {self.name}")
        if logits is not None:
            check_finite(logits, f"logits of {self.name}")
        return features.float(), None if logits is None else logits.float()

    def forward(self, images: Tensor) -> Tensor:
        return self.extract(images)[0]


def load_fmnist_cnn(
    weights_path: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """The shipped Fashion-MNIST classifier as a :class:`FeatureExtractor` ("fmnist-cnn").

    Args:
        weights_path: a state-dict file (default: the shipped ``weights/fmnist_cnn.pt``). Its
            sidecar ``<stem>.json`` gives the architecture and the expected sha256.
        device: where to put the network (default "cpu").

    Raises:
        FileNotFoundError: weights or sidecar missing (the message gives the command that
            regenerates them).
        ValueError: the file's sha256 differs from the sidecar's (corrupt or replaced file).
    """
    path = Path(weights_path) if weights_path is not None else FMNIST_CNN_WEIGHTS
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(
            f"fmnist-cnn weights {path} or sidecar {sidecar} missing; regenerate them with "
            f"`python scripts/train_feature_net.py --out-dir {path.parent}` (about 12 CPU-minutes)"
        )
    meta = json.loads(sidecar.read_text())
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest} differs from the sidecar's {meta['sha256']}; "
            "the weights are corrupt or were replaced without updating the sidecar"
        )
    arch: dict[str, Any] = meta["architecture"]
    arch["widths"] = tuple(arch["widths"])
    net = FashionCNN(**arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    size = arch.get("image_size", 28)
    return FeatureExtractor(
        DEFAULT_FEATURE_NET,
        net,
        input_shape=(arch.get("in_channels", 1), size, size),
        num_features=net.feature_dim,
        num_classes=net.num_classes,
        weights_sha256=digest,
    ).to(device)


# ---------------------------------------------------------------------------------------------
# Optional InceptionV3 (torch-fidelity), never downloaded
# ---------------------------------------------------------------------------------------------


class _InceptionAdapter(nn.Module):
    """torch-fidelity's InceptionV3 behind the ``extract`` contract: [-1, 1] -> uint8 -> net."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def extract(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u8 = ((x.float() + 1.0) * _PIXEL_HALF).round().clamp(0, 255).to(torch.uint8)
        features, logits = self.net(u8)
        return features, logits


def inception_weights(weights_path: str | Path | None = None) -> Path:
    """The InceptionV3 weights file to read: ``weights_path``, or when None the file that
    pytorch-fid or torch-fidelity left in torch hub's cache (``torch.hub.get_dir()/checkpoints``,
    under either name of :data:`INCEPTION_FILES`). Nothing is downloaded.

    Raises:
        FileNotFoundError: ``weights_path`` is not a file, or none is given and the cache holds
            neither name (the message lists the paths looked at).
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"inception weights not found at {path}")
        return path
    cached = [Path(torch.hub.get_dir()) / "checkpoints" / name for name in INCEPTION_FILES]
    found = [path for path in cached if path.is_file()]
    if not found:
        raise FileNotFoundError(
            "inception-v3 needs its weights file (never downloaded here): pass its path "
            f"(weights_path, --feature-weights) or put it at {cached[0]} (looked at: "
            f"{', '.join(map(str, cached))})"
        )
    return found[0]


def _build_inception(
    weights_path: str | Path | None = None,
    *,
    image_size: int = 32,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """InceptionV3 ("inception-v3-compat" of torch-fidelity): 2048-d pool features, 1008 logits.

    Args:
        weights_path: the local ``pt_inception-2015-12-05-6726825d.pth``; None = the file in
            torch hub's cache (:func:`inception_weights`).
        image_size: H = W of the RGB images to score (default 32); resized inside the network.
        device: where to put the network.

    Raises:
        ModuleNotFoundError: torch-fidelity missing (the message gives the install command).
        FileNotFoundError: no weights file (:func:`inception_weights`).
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the inception-v3 feature network needs torch-fidelity: `{INCEPTION_INSTALL}`"
        ) from err
    path = inception_weights(weights_path)
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(path),
    )
    return FeatureExtractor(
        "inception-v3",
        _InceptionAdapter(net),
        input_shape=(3, image_size, image_size),
        num_features=2048,
        num_classes=1008,
        weights_sha256=sha256_file(path),
    ).to(device)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_feature_extractor(name: str, builder: Callable[..., FeatureExtractor]) -> None:
    """Register ``builder(**kwargs) -> FeatureExtractor`` under ``name``.

    Raises:
        TypeError: ``name`` not a string or ``builder`` not callable.
        ValueError: empty name, surrounding/inner whitespace, a path separator, or a name taken.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if (
        not name
        or any(ch.isspace() for ch in name)
        or any(s in name for s in _FORBIDDEN_NAME_CHARS)
    ):
        raise ValueError(
            f"name must be non-empty without whitespace or path separators, got {name!r}"
        )
    if name in _REGISTRY:
        raise ValueError(f"feature extractor {name!r} is already registered")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    _REGISTRY[name] = builder


def available_feature_extractors() -> tuple[str, ...]:
    """Registered names, sorted (for CLI choices)."""
    return tuple(sorted(_REGISTRY))


def build_feature_extractor(name: str = DEFAULT_FEATURE_NET, **kwargs: Any) -> FeatureExtractor:
    """Build a registered feature extractor (kwargs go to its builder, e.g. ``weights_path``).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown feature extractor {name!r}; registered: {available_feature_extractors()}"
        )
    extractor = _REGISTRY[name](**kwargs)
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(
            f"builder of {name!r} returned {type(extractor).__name__}, not FeatureExtractor"
        )
    return extractor


register_feature_extractor(DEFAULT_FEATURE_NET, load_fmnist_cnn)
register_feature_extractor("inception-v3", _build_inception)
