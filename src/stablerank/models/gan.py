"""SN-GAN generators and discriminators (Miyato et al. 2018), one parameterized builder per family.

Two families, each built for any supported resolution and with or without class conditioning:

* ``"cnn"``: the SN-GAN "standard CNN" (DCGAN-like; Miyato et al. 2018, Table 3).
* ``"resnet"``: the SN-GAN ResNet (Miyato et al. 2018, Table 4 / Figure 8, 32x32 layout).

The resolution only sets how many times the feature maps are halved (see
:func:`_num_halvings`): 32 -> 4x4 base (3 up-samplings) and 28 -> 7x7 base (2 up-samplings) for
the generators and the CNN discriminator; the ResNet discriminator halves while the map stays
>= 7 (32 -> 8x8, 28 -> 7x7), as the SN-GAN 32x32 ResNet does.

Conditional variants (``num_classes`` given): conditional BatchNorm in the generator (a per-class
gain and bias from an embedding, de Vries et al. 2017) and a projection discriminator
(Miyato & Koyama 2018): ``D(x, y) = psi(h(x)) + <embed(y), h(x)>``.

.. note::
    Weight normalization is **not** built in. The trainer applies
    ``stablerank.normalize_model(D, "none" | "sn" | "srn", ...)`` afterwards, which touches every
    Linear / ConvNd / ConvTransposeNd. The projection embedding (``D.embed``, an ``nn.Embedding``)
    is therefore left plain by default; Miyato & Koyama normalize it too, which the trainer does
    only when asked (``GanConfig.d_norm_embedding``).

Where these differ from the authors' code, which Tables 3 and 4 of Miyato et al. leave open (kept
as they are: the GAN runs on record, ``"cnn"``, used them): the ``"cnn"`` layers keep torch's
default initialization (chainer-gan-lib's SN-DCGAN draws every weight from N(0, 0.02)); the
``"cnn"`` generator batch-normalizes its dense output per channel after the reshape
(chainer-gan-lib: per unit, before it); the ``"cnn"`` discriminator follows Table 3's widths
(64, 64, 128, 128, 256, 256, 512) and leaky-ReLU slope 0.1 (chainer-gan-lib's SNDCGANDiscriminator
doubles the width at each stride-2 convolution and uses slope 0.2: about twice the parameters); the
ResNet discriminator's final Linear has a bias (sngan_projection's has none); D's fakes and G's
update both use the batch size (sngan_projection's CIFAR config updates G on 128 samples).

The models own their losses: :func:`compute_d_loss` and :func:`compute_g_loss` (``"hinge"`` or
``"ns"``, the non-saturating loss of Goodfellow et al. 2014). Only torch is imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "LOSSES",
    "Discriminator",
    "Generator",
    "build_discriminator",
    "build_generator",
    "compute_d_loss",
    "compute_g_loss",
]

ARCHS = ("cnn", "resnet")
LOSSES = ("hinge", "ns")

# Smallest base feature map of the generators / CNN discriminator (SN-GAN: 4x4 for 32x32).
_MIN_BASE_SIZE = 4
# The ResNet discriminator halves while its map stays >= this (SN-GAN 32x32 ends at 8x8, 28 at 7x7).
_D_RESNET_MIN_SIZE = 7
# Leaky-ReLU slope of the SN-GAN standard CNN discriminator (Miyato et al. 2018, Table 3).
_LEAKY_SLOPE = 0.1
# Xavier gains of the SN-GAN ResNet (chainer reference): sqrt(2) inside residual branches.
_RESIDUAL_GAIN = 2.0**0.5


def _num_halvings(size: int, min_size: int) -> int:
    """How often ``size`` halves exactly while the result stays >= ``min_size``."""
    n = 0
    while size % 2 == 0 and size // 2 >= min_size:
        size //= 2
        n += 1
    return n


def _check_common(arch: str, image_size: int, channels: int, num_classes: int | None) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    if not isinstance(image_size, int) or _num_halvings(image_size, _MIN_BASE_SIZE) < 1:
        raise ValueError(
            f"image_size must be an int that halves at least once to a map >= {_MIN_BASE_SIZE} "
            f"(e.g. 28 or 32), got {image_size!r}"
        )
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes must be None or an int >= 2, got {num_classes!r}")


def _check_width(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class _ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine part, followed by a per-class gain and bias.

    With ``num_classes=None`` it is a plain ``BatchNorm2d`` (``y`` is ignored), so the blocks below
    are written once for both variants.
    """

    def __init__(self, num_features: int, num_classes: int | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, affine=num_classes is None)
        if num_classes is not None:
            # (num_classes, C) each; gain starts at 1 and bias at 0, i.e. plain BatchNorm.
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if self.num_classes is None:
            return h
        if y is None:
            raise ValueError("a conditional generator needs class labels y")
        return self.gain(y)[:, :, None, None] * h + self.bias(y)[:, :, None, None]


def _xavier(module: nn.Module, gain: float) -> nn.Module:
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class _GBlock(nn.Module):
    """ResNet generator block: BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1."""

    def __init__(self, c_in: int, c_out: int, num_classes: int | None) -> None:
        super().__init__()
        self.bn1 = _ConditionalBatchNorm2d(c_in, num_classes)
        self.conv1 = _xavier(nn.Conv2d(c_in, c_out, 3, padding=1), _RESIDUAL_GAIN)
        self.bn2 = _ConditionalBatchNorm2d(c_out, num_classes)
        self.conv2 = _xavier(nn.Conv2d(c_out, c_out, 3, padding=1), _RESIDUAL_GAIN)
        self.shortcut = _xavier(nn.Conv2d(c_in, c_out, 1), 1.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)  # (B, C_in, 2H, 2W)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class _DBlock(nn.Module):
    """ResNet discriminator block; ``first`` is SN-GAN's "optimized" block (no leading ReLU, the
    shortcut pools before its 1x1 conv)."""

    def __init__(self, c_in: int, c_out: int, *, downsample: bool, first: bool) -> None:
        super().__init__()
        self.downsample, self.first = downsample, first
        self.conv1 = _xavier(nn.Conv2d(c_in, c_out, 3, padding=1), _RESIDUAL_GAIN)
        self.conv2 = _xavier(nn.Conv2d(c_out, c_out, 3, padding=1), _RESIDUAL_GAIN)
        learnable = first or downsample or c_in != c_out
        self.shortcut = _xavier(nn.Conv2d(c_in, c_out, 1), 1.0) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # pool before the 1x1 conv (cheaper; SN-GAN's optimized block)
            s = self.shortcut(F.avg_pool2d(s, 2) if self.downsample else s)
        elif self.shortcut is not None:
            s = self.shortcut(s)
            if self.downsample:
                s = F.avg_pool2d(s, 2)
        return h + s


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """SN-GAN generator: ``z`` (B, z_dim) [, ``y`` (B,) long] -> images (B, C, H, W) in [-1, 1].

    Build it with :func:`build_generator`. ``z`` is standard normal (SN-GAN, Table 3).
    """

    def __init__(
        self,
        arch: str,
        *,
        image_size: int,
        channels: int,
        z_dim: int,
        ngf: int,
        num_classes: int | None,
    ) -> None:
        super().__init__()
        self.arch, self.image_size, self.channels = arch, image_size, channels
        self.z_dim, self.ngf, self.num_classes = z_dim, ngf, num_classes
        n_up = _num_halvings(image_size, _MIN_BASE_SIZE)
        self.base_size = image_size >> n_up
        if arch == "cnn":
            # Widths ngf * 2^n_up at the base map, halving at each up-sampling down to ngf.
            widths = [ngf * 2 ** (n_up - i) for i in range(n_up + 1)]
            self.base_channels = widths[0]
            self.linear = nn.Linear(z_dim, self.base_size**2 * widths[0])
            self.bn0 = _ConditionalBatchNorm2d(widths[0], num_classes)
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1)
                for i in range(n_up)
            )
            self.bns = nn.ModuleList(
                _ConditionalBatchNorm2d(widths[i + 1], num_classes) for i in range(n_up)
            )
            self.to_image = nn.Conv2d(widths[-1], channels, 3, padding=1)
        else:
            # SN-GAN ResNet: constant width ngf (256 for 32x32), the last BN is unconditional.
            self.base_channels = ngf
            self.linear = _xavier(nn.Linear(z_dim, self.base_size**2 * ngf), 1.0)
            self.blocks = nn.ModuleList(_GBlock(ngf, ngf, num_classes) for _ in range(n_up))
            self.bn_out = nn.BatchNorm2d(ngf)
            self.to_image = _xavier(nn.Conv2d(ngf, channels, 3, padding=1), 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.base_channels, self.base_size, self.base_size)
        if self.arch == "cnn":
            h = F.relu(self.bn0(h, y))
            for up, bn in zip(self.ups, self.bns, strict=True):
                h = F.relu(bn(up(h), y))  # (B, C_i+1, 2H, 2W)
        else:
            for block in self.blocks:
                h = block(h, y)
            h = F.relu(self.bn_out(h))
        return torch.tanh(self.to_image(h))

    def sample_z(
        self,
        n: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` latent vectors from N(0, I), drawn from ``generator`` when given."""
        # Not self.linear.weight: on a normalized G in training mode that runs a power iteration.
        dev = device if device is not None else next(self.parameters()).device
        return torch.randn(n, self.z_dim, device=dev, generator=generator)


def build_generator(
    arch: str,
    *,
    image_size: int,
    channels: int,
    z_dim: int = 128,
    ngf: int,
    num_classes: int | None = None,
) -> Generator:
    """Build an SN-GAN generator.

    Args:
        arch: ``"cnn"`` (standard CNN; ``ngf=64`` in SN-GAN) or ``"resnet"`` (``ngf=256``).
        image_size: side of the square output, e.g. 28 or 32 (must halve at least once to >= 4).
        channels: output image channels (1 for Fashion-MNIST, 3 for CIFAR).
        z_dim: latent size (default 128).
        ngf: base width (see above).
        num_classes: number of classes for conditional BatchNorm; None (default) = unconditional.

    Returns:
        The generator; its output is ``tanh``, in [-1, 1].

    Raises:
        ValueError: on an unknown ``arch`` or an out-of-range size, width or class count.
    """
    _check_common(arch, image_size, channels, num_classes)
    _check_width("z_dim", z_dim)
    _check_width("ngf", ngf)
    return Generator(
        arch,
        image_size=image_size,
        channels=channels,
        z_dim=z_dim,
        ngf=ngf,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """SN-GAN discriminator: ``x`` (B, C, H, W) [, ``y`` (B,)] -> logits (B,).

    Build it with :func:`build_discriminator`. It has no BatchNorm, so running it once on a
    concatenated real+fake batch equals two separate forwards (the trainer relies on this).
    """

    def __init__(
        self, arch: str, *, image_size: int, channels: int, ndf: int, num_classes: int | None
    ) -> None:
        super().__init__()
        self.arch, self.image_size, self.channels = arch, image_size, channels
        self.ndf, self.num_classes = ndf, num_classes
        if arch == "cnn":
            n_down = _num_halvings(image_size, _MIN_BASE_SIZE)
            layers: list[nn.Module] = []
            c_in = channels
            for i in range(n_down):  # conv3x3 s1 then conv4x4 s2, width ndf * 2^i (Table 3)
                width = ndf * 2**i
                layers += [
                    nn.Conv2d(c_in, width, 3, padding=1),
                    nn.Conv2d(width, width, 4, stride=2, padding=1),
                ]
                c_in = width
            self.features_out = ndf * 2**n_down
            layers.append(nn.Conv2d(c_in, self.features_out, 3, padding=1))
            self.convs = nn.ModuleList(layers)
            # The standard CNN flattens the last map into a dense layer; the projection therefore
            # acts on the flattened features too.
            self.feature_dim = self.features_out * (image_size >> n_down) ** 2
            self.linear = nn.Linear(self.feature_dim, 1)
        else:
            n_down = _num_halvings(image_size, _D_RESNET_MIN_SIZE)
            n_blocks = n_down + 2  # SN-GAN 32x32: 2 down-sampling + 2 plain blocks
            self.blocks = nn.ModuleList(
                _DBlock(channels if i == 0 else ndf, ndf, downsample=i < n_down, first=i == 0)
                for i in range(n_blocks)
            )
            self.feature_dim = ndf  # global sum pooling over the map
            self.linear = _xavier(nn.Linear(ndf, 1), 1.0)
        if num_classes is not None:
            self.embed = nn.Embedding(num_classes, self.feature_dim)
            nn.init.xavier_uniform_(self.embed.weight)

    @property
    def input_layers(self) -> list[str]:
        """The names of the layers that read the image itself: the cnn's first conv, the first
        ResNet block's conv1 and shortcut."""
        return ["convs.0"] if self.arch == "cnn" else ["blocks.0.conv1", "blocks.0.shortcut"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features h(x), (B, feature_dim)."""
        if self.arch == "cnn":
            h = x
            for conv in self.convs:
                h = F.leaky_relu(conv(h), _LEAKY_SLOPE)
            return h.flatten(1)
        h = x
        for block in self.blocks:
            h = block(h)
        return F.relu(h).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.linear(h).squeeze(1)  # (B,)
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a projection discriminator needs class labels y")
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def build_discriminator(
    arch: str, *, image_size: int, channels: int, ndf: int, num_classes: int | None = None
) -> Discriminator:
    """Build an SN-GAN discriminator (unnormalized; see the module note on SN / SRN).

    Args:
        arch: ``"cnn"`` (standard CNN; ``ndf=64`` in SN-GAN) or ``"resnet"`` (``ndf=128``).
        image_size: side of the square input, e.g. 28 or 32.
        channels: input image channels.
        ndf: base width.
        num_classes: number of classes for the projection discriminator; None (default) =
            unconditional.

    Returns:
        The discriminator, mapping (B, C, H, W) images [and (B,) labels] to (B,) logits.

    Raises:
        ValueError: on an unknown ``arch`` or an out-of-range size, width or class count.
    """
    _check_common(arch, image_size, channels, num_classes)
    _check_width("ndf", ndf)
    return Discriminator(
        arch, image_size=image_size, channels=channels, ndf=ndf, num_classes=num_classes
    )


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


def compute_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor, loss: str) -> torch.Tensor:
    """Discriminator loss on logits of real and generated samples (mean over the batch).

    .. math::
        \\text{hinge: } E[\\max(0, 1 - D(x))] + E[\\max(0, 1 + D(G(z)))] \\qquad
        \\text{ns: } E[\\operatorname{softplus}(-D(x))] + E[\\operatorname{softplus}(D(G(z)))]

    Args:
        d_real: logits on real samples, (B,).
        d_fake: logits on generated samples, (B,).
        loss: ``"hinge"`` or ``"ns"`` (non-saturating / binary cross-entropy on logits).

    Raises:
        ValueError: on an unknown ``loss``.
    """
    _check_loss(loss)
    if loss == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    # softplus(-t) = -log sigmoid(t): BCE with target 1 on real, target 0 on fake.
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def compute_g_loss(d_fake: torch.Tensor, loss: str) -> torch.Tensor:
    """Generator loss on the discriminator's logits of generated samples.

    ``hinge``: ``-E[D(G(z))]``; ``ns``: ``E[softplus(-D(G(z)))]`` (= ``-E[log sigmoid D(G(z))]``).

    Raises:
        ValueError: on an unknown ``loss``.
    """
    _check_loss(loss)
    if loss == "hinge":
        return -d_fake.mean()
    return F.softplus(-d_fake).mean()
