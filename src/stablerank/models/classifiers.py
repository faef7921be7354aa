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
BatchNorm follows each conv); AlexNet (the small CIFAR AlexNet of Zhang et al. 2017) 1,756,426
at 32 px, as the ``cifar10-alexnet`` preset trains it (no crop), and 1,387,786 [1.38M] at the
28 px crops of Zhang et al.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from stablerank.models.alexnet import AlexNet
from stablerank.models.densenet import DenseNetBC
from stablerank.models.resnet import ResNet, WideResNet
from stablerank.models.small import MLP, SmallCNN
from stablerank.models.vgg import VGG

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
    width = kwargs.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < math.inf:
        raise ValueError(f"width must be > 0 and finite, got {width!r}")
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
