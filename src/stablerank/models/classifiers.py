"""Image classifiers of the paper's CIFAR experiments, plus a small CNN and an MLP for CPU runs.

One parameterized class per family, built by :func:`build_classifier` from a name in
:data:`CLASSIFIERS`; fixed-size names (``resnet110``, ``wrn28_10``, ...) are the family with its
depth/width pinned. Every model

* takes ``num_classes``, ``in_channels`` and ``image_size`` (28 and 32 are the tested sizes; any
  size >= 8 works; the MLP also takes 1-D signals via ``image_size=None, input_length=L``),
* takes ``width``, a multiplier of every channel/unit count (1.0 = the published model), for
  CPU-scale runs,
* exposes its final ``nn.Linear`` as the attribute ``classifier``, so the normalization can leave
  the head out by the module-name pattern ``"classifier"``.

Parameter counts at CIFAR-10 size (32 px, 3 channels, 10 classes, width 1; published figure in
brackets): ResNet-20 269,722 [0.27M], ResNet-56 853,018 [0.85M], ResNet-110 1,727,962 [1.7M]
(He et al. 2016, option-A shortcuts); WRN-28-10 36,479,194 [36.5M] (Zagoruyko & Komodakis 2016);
DenseNet-BC-100 (k=12) 769,162 [0.8M] (Huang et al. 2017); VGG-19-BN 20,035,018 (no conv biases:
BatchNorm follows each conv); AlexNet (the small CIFAR AlexNet of Zhang et al. 2017) at 28 px
1,387,786 [1.38M].
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLASSIFIERS",
    "MLP",
    "VGG",
    "AlexNet",
    "DenseNetBC",
    "ResNet",
    "SmallCNN",
    "WideResNet",
    "build_classifier",
]

_MIN_IMAGE_SIZE = 8  # every conv family keeps a >= 1x1 map at 8 px (sklearn digits)


def _scaled(channels: int, width: float) -> int:
    """Channel count times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every 3x3 conv here is followed by BatchNorm, whose shift replaces it.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _init_weights(model: nn.Module) -> None:
    """He-normal convs (fan_out, as the ResNet/WRN/DenseNet references), unit BN, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# =============================================================================================
# MLP and small CNN (CPU-scale runs)
# =============================================================================================


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs (images or 1-D signals).

    Args:
        hidden: hidden layer sizes before ``width`` scaling (default (512, 512)).
        input_length: length L of 1-D inputs (N, C, L); required when ``image_size`` is None.
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int | None,
                 hidden: Sequence[int] = (512, 512), width: float = 1.0,
                 input_length: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if image_size is None:
            if input_length is None or input_length < 1:
                raise ValueError(
                    f"input_length must be an int >= 1 when image_size is None (1-D inputs), "
                    f"got {input_length!r}"
                )
            in_features = in_channels * input_length
        else:
            in_features = in_channels * image_size * image_size
        layers: list[nn.Module] = [nn.Flatten()]
        for size in hidden:
            layers += [nn.Linear(in_features, _scaled(size, width)), nn.ReLU(inplace=True)]
            in_features = _scaled(size, width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A VGG-like CNN with BatchNorm: conv stages, each ended by a 2x2 max-pool, one hidden fully
    connected layer, then ``classifier``. 389,482 parameters at 28x28x1 (10 classes).

    Args:
        stages: output channels of the 3x3 convs of each stage (default ((32, 64), (128,), (128,))).
        hidden: units of the hidden fully connected layer (default 128).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 stages: Sequence[Sequence[int]] = ((32, 64), (128,), (128,)), hidden: int = 128,
                 width: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for stage in stages:
            for channels in stage:
                c_out = _scaled(channels, width)
                layers += [_conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
            size //= 2
        if size < 1:
            raise ValueError(
                f"image_size={image_size} is too small for {len(stages)} pooling stages"
            )
        self.features = nn.Sequential(*layers)
        units = _scaled(hidden, width)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, units),
                                nn.ReLU(inplace=True))  # fmt: skip
        self.classifier = nn.Linear(units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


# =============================================================================================
# ResNet for CIFAR (He et al. 2016, section 4.2): depth 6n + 2, basic blocks, 16/32/64 channels
# =============================================================================================


class _PadShortcut(nn.Module):
    """Option A: parameter-free shortcut that subsamples and zero-pads the new channels."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        extra = c_out - c_in  # new channels, split evenly before and after the old ones
        self.stride, self.front, self.back = stride, extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = (
                _PadShortcut(c_in, c_out, stride) if shortcut == "A" else nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (20, 56, 110, ...).

    Args:
        depth: 6n + 2 (default 20).
        shortcut: ``"A"`` (zero-padding identity, the paper's CIFAR choice and published counts)
            or ``"B"`` (1x1 conv + BN projection) where the shape changes (default "A").
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 20,
                 width: float = 1.0, shortcut: str = "A") -> None:  # fmt: skip
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))  # fmt: skip
        blocks, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(_BasicBlock(c_in, c_out, 2 if stage and i == 0 else 1, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


# =============================================================================================
# WideResNet (Zagoruyko & Komodakis 2016): depth 6n + 4, pre-activation blocks, widen factor k
# =============================================================================================


class _WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), _conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), _conv3x3(c_out, c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        # The projection reads the pre-activated input, as in the authors' code.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k.

    Args:
        depth: 6n + 4 (default 28).
        widen_factor: k (default 10).
        dropout: dropout between the two convs of a block (default 0.0).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 28,
                 widen_factor: int = 10, dropout: float = 0.0, width: float = 1.0
                 ) -> None:  # fmt: skip
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (16, 28, 40), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        stem = _scaled(16, width)
        widths = [_scaled(c * widen_factor, width) for c in (16, 32, 64)]
        self.stem = _conv3x3(in_channels, stem)
        blocks, c_in = [], stem
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(_WideBlock(c_in, c_out, 2 if stage and i == 0 else 1, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


# =============================================================================================
# DenseNet-BC (Huang et al. 2017): bottleneck layers, compression 0.5, 3 dense blocks
# =============================================================================================


class _DenseLayer(nn.Module):
    _BOTTLENECK = 4  # the 1x1 conv outputs 4k channels (the paper's "B")

    def __init__(self, c_in: int, growth_rate: int) -> None:
        super().__init__()
        mid = self._BOTTLENECK * growth_rate
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), _conv3x3(mid, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)  # (B, c_in + k, H, W)


class DenseNetBC(nn.Module):
    """DenseNet-BC for CIFAR.

    Args:
        depth: 6n + 4, n layers per dense block (default 100).
        growth_rate: k (default 12), scaled by ``width``.
        compression: channel factor of the transitions (default 0.5, the paper's "C").
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 100,
                 growth_rate: int = 12, compression: float = 0.5, width: float = 1.0
                 ) -> None:  # fmt: skip
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (40, 100, 190), got {depth}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n, k = (depth - 4) // 6, _scaled(growth_rate, width)
        c = 2 * k
        layers: list[nn.Module] = [_conv3x3(in_channels, c)]
        for block in range(3):
            for _ in range(n):
                layers.append(_DenseLayer(c, k))
                c += k
            if block < 2:  # transition: BN-ReLU-1x1 conv (compression)-2x2 average pool
                c_out = math.floor(c * compression)
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                           nn.Conv2d(c, c_out, 1, bias=False), nn.AvgPool2d(2)]  # fmt: skip
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# =============================================================================================
# VGG with BatchNorm and the small CIFAR AlexNet
# =============================================================================================

_VGG_STAGES = {  # convs per stage; channels 64, 128, 256, 512, 512; a max-pool ends each stage
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_VGG_CHANNELS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """VGG-depth with BatchNorm after every conv, global average pooling and one linear head.

    Pools use ``ceil_mode`` so that 28 px inputs keep a 1x1 map after the five stages
    (28 -> 14 -> 7 -> 4 -> 2 -> 1); at 32 px this equals the usual floor pooling.

    Args:
        depth: 11, 13, 16 or 19 (default 19).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, depth: int = 19,
                 width: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if depth not in _VGG_STAGES:
            raise ValueError(f"depth must be one of {sorted(_VGG_STAGES)}, got {depth}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for convs, channels in zip(_VGG_STAGES[depth], _VGG_CHANNELS, strict=True):
            c_out = _scaled(channels, width)
            for _ in range(convs):
                layers += [_conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class AlexNet(nn.Module):
    """The small CIFAR AlexNet of Zhang et al. 2017 (from the TensorFlow CIFAR-10 tutorial).

    Two blocks of 5x5 conv (64 channels) - ReLU - 3x3/2 max-pool - local response norm, then
    fully connected layers of 384 and 192 units and ``classifier``. The local response norm
    matches TensorFlow's ``depth_radius=4, bias=1, alpha=0.001/9, beta=0.75``: torch divides
    ``alpha`` by the window size (9), hence ``alpha=0.001`` here.

    Args:
        hidden: units of the two hidden fully connected layers (default (384, 192)).
        lrn: use local response normalization (default True).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 hidden: Sequence[int] = (384, 192), width: float = 1.0, lrn: bool = True
                 ) -> None:  # fmt: skip
        super().__init__()
        c = _scaled(64, width)
        layers: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 5, padding=2), nn.ReLU(inplace=True),
                       nn.MaxPool2d(3, stride=2, padding=1)]  # fmt: skip
            if lrn:
                layers.append(nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0))
            size, c_in = (size - 1) // 2 + 1, c  # 3x3/2 pool with padding 1: ceil(size / 2)
        layers.append(nn.Flatten())
        units = c * size * size
        for h in hidden:
            layers += [nn.Linear(units, _scaled(h, width)), nn.ReLU(inplace=True)]
            units = _scaled(h, width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(units, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# =============================================================================================
# Registry
# =============================================================================================

_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "resnet": ResNet,
    "wrn": WideResNet,
    "densenet_bc": DenseNetBC,
    "vgg": VGG,
    "alexnet": AlexNet,
}
_FIXED: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet20": ("resnet", {"depth": 20}),
    "resnet56": ("resnet", {"depth": 56}),
    "resnet110": ("resnet", {"depth": 110}),
    "wrn28_10": ("wrn", {"depth": 28, "widen_factor": 10}),
    "densenet_bc100": ("densenet_bc", {"depth": 100, "growth_rate": 12}),
    "vgg19": ("vgg", {"depth": 19}),
}
CLASSIFIERS = (*_FAMILIES, *_FIXED)


def build_classifier(name: str, *, num_classes: int, in_channels: int, image_size: int | None,
                     **kwargs: Any) -> nn.Module:  # fmt: skip
    """Build a classifier by name, initialized (He-normal convs, unit BatchNorm).

    Args:
        name: one of :data:`CLASSIFIERS`. Families (``mlp``, ``small_cnn``, ``resnet``, ``wrn``,
            ``densenet_bc``, ``vgg``, ``alexnet``) take their size arguments from ``kwargs``;
            fixed names (``resnet20/56/110``, ``wrn28_10``, ``densenet_bc100``, ``vgg19``) pin
            them.
        num_classes: outputs of ``classifier`` (>= 1).
        in_channels: input channels (>= 1).
        image_size: input height = width (>= 8; 28 and 32 are tested), or None for 1-D inputs
            (``mlp`` only, with ``input_length``).
        **kwargs: the family's options, e.g. ``width`` (all), ``depth``, ``widen_factor``,
            ``growth_rate``, ``hidden``, ``dropout``, ``shortcut``, ``input_length``.

    Returns:
        The model; its final linear layer is ``model.classifier``.

    Raises:
        ValueError: unknown name, out-of-range size, or a kwarg contradicting a fixed name.
        TypeError: a kwarg the family does not take (the message lists those it takes).
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"name must be one of {CLASSIFIERS}, got {name!r}")
    family, fixed = _FIXED.get(name, (name, {}))
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"{name!r} fixes {key}={value}, got {key}={kwargs[key]!r}; use {family!r} instead"
            )
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    if image_size is None and family != "mlp":
        raise ValueError(f"image_size=None (1-D inputs) is supported by 'mlp' only, not {name!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE):
        raise ValueError(
            f"image_size must be an int >= {_MIN_IMAGE_SIZE} or None, got {image_size!r}"
        )
    if "width" in kwargs and not kwargs["width"] > 0:
        raise ValueError(f"width must be > 0, got {kwargs['width']!r}")
    builder = _FAMILIES[family]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes", "in_channels",
                                                              "image_size"}  # fmt: skip
    unknown = set(kwargs) - accepted
    if unknown:
        raise TypeError(f"{name!r} does not take {sorted(unknown)}; it takes {sorted(accepted)}")
    model = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                    **{**fixed, **kwargs})  # fmt: skip
    _init_weights(model)
    return model
