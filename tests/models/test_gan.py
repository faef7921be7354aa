"""SN-GAN generators/discriminators: shapes, parameter counts against hand counts, conditioning,
one training step of every architecture on CPU, the losses against hand-computed values, and SRN
on a discriminator."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stablerank as sr
from stablerank.models.gan import (
    ARCHS,
    build_discriminator,
    build_generator,
    compute_d_loss,
    compute_g_loss,
)

SIZES = [(28, 1), (32, 3)]  # (image_size, channels): Fashion-MNIST and CIFAR geometry
WIDTH = 16  # tiny widths keep every step well under a second on CPU
NUM_CLASSES = 10
BATCH = 4


def _models(arch: str, size: int, channels: int, conditional: bool):
    k = NUM_CLASSES if conditional else None
    G = build_generator(arch, image_size=size, channels=channels, ngf=WIDTH, num_classes=k)
    D = build_discriminator(arch, image_size=size, channels=channels, ndf=WIDTH, num_classes=k)
    return G, D


def _labels(conditional: bool) -> torch.Tensor | None:
    return torch.arange(BATCH) % NUM_CLASSES if conditional else None


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize(("size", "channels"), SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_range(arch, size, channels, conditional):
    torch.manual_seed(0)
    G, D = _models(arch, size, channels, conditional)
    y = _labels(conditional)
    x = G(G.sample_z(BATCH), y)
    assert x.shape == (BATCH, channels, size, size)
    assert x.abs().max() <= 1.0  # tanh output
    assert D(x, y).shape == (BATCH,)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize(("size", "channels"), SIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_one_d_step_and_one_g_step(arch, size, channels, conditional):
    """A D step moves only D's weights, a G step only G's; losses are finite."""
    torch.manual_seed(0)
    G, D = _models(arch, size, channels, conditional)
    sr.normalize_model(D, "srn", rank_ratio=0.5)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3)
    y = _labels(conditional)
    real = torch.rand(BATCH, channels, size, size) * 2 - 1
    g_before = [p.detach().clone() for p in G.parameters()]
    d_before = [p.detach().clone() for p in D.parameters()]

    with torch.no_grad():
        fake = G(G.sample_z(BATCH), y)
    d_loss = compute_d_loss(D(real, y), D(fake, y), "hinge")
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    assert torch.isfinite(d_loss)
    assert all(torch.equal(a, b) for a, b in zip(g_before, G.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, D.parameters(), strict=True))

    d_after = [p.detach().clone() for p in D.parameters()]
    g_loss = compute_g_loss(D(G(G.sample_z(BATCH), y), y), "hinge")
    opt_g.zero_grad()
    g_loss.backward(inputs=list(G.parameters()))
    opt_g.step()
    assert torch.isfinite(g_loss)
    assert all(torch.equal(a, b) for a, b in zip(d_after, D.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters(), strict=True))


def test_resnet32_matches_sngan_parameter_count():
    """Hand count of Miyato et al.'s 32x32 ResNet (ngf 256, ndf 128); mimicry quotes 4.3M / 1.0M."""
    linear = 128 * 4 * 4 * 256 + 4 * 4 * 256
    conv3 = 256 * 256 * 9 + 256
    gblock = 2 * 256 + conv3 + 2 * 256 + conv3 + (256 * 256 + 256)  # bn1, conv1, bn2, conv2, sc
    g_count = linear + 3 * gblock + 2 * 256 + (256 * 3 * 9 + 3)
    d_conv3 = 128 * 128 * 9 + 128
    first = (3 * 128 * 9 + 128) + d_conv3 + (3 * 128 + 128)
    down = 2 * d_conv3 + (128 * 128 + 128)  # learnable shortcut where it down-samples
    d_count = first + down + 2 * (2 * d_conv3) + (128 + 1)
    G = build_generator("resnet", image_size=32, channels=3, ngf=256)
    D = build_discriminator("resnet", image_size=32, channels=3, ndf=128)
    assert sum(p.numel() for p in G.parameters()) == g_count == 4_276_739
    assert sum(p.numel() for p in D.parameters()) == d_count


def test_cnn32_matches_sngan_table3():
    """Hand count of Miyato et al.'s standard CNN (Table 3; ngf = ndf = 64)."""
    widths = [512, 256, 128, 64]
    g_count = 128 * 4 * 4 * 512 + 4 * 4 * 512 + 2 * 512  # dense + BN
    for a, b in itertools.pairwise(widths):
        g_count += a * b * 16 + b + 2 * b  # 4x4 deconv + BN
    g_count += 64 * 3 * 9 + 3
    d_layers = [
        (3, 64, 3),
        (64, 64, 4),
        (64, 128, 3),
        (128, 128, 4),
        (128, 256, 3),
        (256, 256, 4),
        (256, 512, 3),
    ]
    d_count = sum(i * o * k * k + o for i, o, k in d_layers) + 4 * 4 * 512 + 1
    G = build_generator("cnn", image_size=32, channels=3, ngf=64)
    D = build_discriminator("cnn", image_size=32, channels=3, ndf=64)
    assert sum(p.numel() for p in G.parameters()) == g_count
    assert sum(p.numel() for p in D.parameters()) == d_count


@pytest.mark.parametrize("arch", ARCHS)
def test_projection_discriminator_is_psi_plus_inner_product(arch):
    """D(x, y) = linear(h) + <embed(y), h>: the class term alone differs between labels."""
    torch.manual_seed(0)
    D = build_discriminator(arch, image_size=28, channels=1, ndf=WIDTH, num_classes=NUM_CLASSES)
    x = torch.randn(BATCH, 1, 28, 28)
    y0, y1 = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)
    h = D.features(x)
    expected = (D.embed.weight[0] - D.embed.weight[1]) @ h.T
    # float32 sums of ~10^3 terms: 1e-4 relative covers the accumulation order
    torch.testing.assert_close(D(x, y0) - D(x, y1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_batchnorm_uses_the_label(arch):
    torch.manual_seed(0)
    G = build_generator(arch, image_size=28, channels=1, ngf=WIDTH, num_classes=NUM_CLASSES)
    with torch.no_grad():  # move the per-class gains away from their all-ones start
        for m in G.modules():
            if hasattr(m, "gain"):
                m.gain.weight.normal_(1.0, 0.5)
    z = G.sample_z(1).repeat(2, 1)
    x = G(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])
    with pytest.raises(ValueError, match="labels"):
        G(z)


# ---- reference forwards written from Miyato et al. 2018 (Tables 3 and 4, and the authors'
# chainer code sngan_projection for the ResNet blocks), reading the modules' parameters only


def _up(x: torch.Tensor) -> torch.Tensor:  # nearest-neighbour 2x up-sampling
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _cbn(bn, x, y):
    """(Conditional) BatchNorm in eval mode: running statistics, then BN's own affine
    (unconditional) or the class's gain and bias (conditional, no other affine)."""
    inner = bn.bn
    if y is None:
        return F.batch_norm(x, inner.running_mean, inner.running_var, inner.weight, inner.bias,
                            eps=inner.eps)  # fmt: skip
    h = F.batch_norm(x, inner.running_mean, inner.running_var, eps=inner.eps)
    return bn.gain.weight[y][:, :, None, None] * h + bn.bias.weight[y][:, :, None, None]


def _conv(conv, x, stride=1, padding=0):
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)


def _reference_g(G, z, y):
    h = F.linear(z, G.linear.weight, G.linear.bias).view(z.shape[0], -1, 4, 4)  # 32 px: 4x4
    if G.arch == "cnn":  # dense-BN-ReLU, 3 x (deconv 4x4/2-BN-ReLU), conv 3x3, tanh
        h = F.relu(_cbn(G.bn0, h, y))
        for up, bn in zip(G.ups, G.bns, strict=True):
            h = F.conv_transpose2d(h, up.weight, up.bias, stride=2, padding=1)
            h = F.relu(_cbn(bn, h, y))
    else:  # 3 up-blocks: BN-ReLU-up-conv3-BN-ReLU-conv3 + conv1(up(x)); BN-ReLU-conv3-tanh
        for b in G.blocks:
            r = _conv(b.conv1, _up(F.relu(_cbn(b.bn1, h, y))), padding=1)
            r = _conv(b.conv2, F.relu(_cbn(b.bn2, r, y)), padding=1)
            h = r + _conv(b.shortcut, _up(h))
        bn = G.bn_out
        h = F.relu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                eps=bn.eps))  # fmt: skip
    return torch.tanh(_conv(G.to_image, h, padding=1))


def _reference_d(D, x, y):
    if D.arch == "cnn":  # (conv3x3/1, conv4x4/2) x 3, conv3x3/1, leaky ReLU 0.1 after each
        h = x
        for j, conv in enumerate(D.convs):
            h = F.leaky_relu(_conv(conv, h, stride=2 if j % 2 else 1, padding=1), 0.1)
        h = h.flatten(1)
    else:  # 32 px: optimized down-block, down-block, 2 plain blocks; ReLU, global sum pool
        h = x
        for i, b in enumerate(D.blocks):
            r = h if i == 0 else F.relu(h)
            r = _conv(b.conv2, F.relu(_conv(b.conv1, r, padding=1)), padding=1)
            if i == 0:
                h = F.avg_pool2d(r, 2) + _conv(b.shortcut, F.avg_pool2d(h, 2))
            elif i == 1:
                h = F.avg_pool2d(r, 2) + F.avg_pool2d(_conv(b.shortcut, h), 2)
            else:
                h = r + h
        h = F.relu(h).sum(dim=(2, 3))
    out = F.linear(h, D.linear.weight, D.linear.bias).squeeze(1)
    return out if y is None else out + (D.embed.weight[y] * h).sum(dim=1)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_forward_matches_the_papers_architecture(arch, conditional):
    torch.manual_seed(0)
    G, D = _models(arch, 32, 3, conditional)
    for m in G.modules():  # statistics and affine parts away from their neutral start
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(0.5, 0.5)
    G.eval()
    y = _labels(conditional)
    z = G.sample_z(BATCH)
    x = G(z, y)
    # Same float32 operations, possibly in another order: 1e-5 covers the round-off.
    torch.testing.assert_close(x, _reference_g(G, z, y), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D(x, y), _reference_d(D, x, y), rtol=1e-5, atol=1e-5)


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_generator("dcgan", image_size=32, channels=3, ngf=8)
    with pytest.raises(ValueError, match="image_size"):
        build_discriminator("cnn", image_size=27, channels=3, ndf=8)
    with pytest.raises(ValueError, match="ngf"):
        build_generator("cnn", image_size=32, channels=3, ngf=0)
    with pytest.raises(ValueError, match="ndf must be an int >= 1, got True"):
        build_discriminator("cnn", image_size=32, channels=3, ndf=True)  # True is an int: 1
    with pytest.raises(ValueError, match="num_classes"):
        build_discriminator("resnet", image_size=32, channels=3, ndf=8, num_classes=1)
    with pytest.raises(ValueError, match="labels"):
        build_discriminator("cnn", image_size=28, channels=1, ndf=8, num_classes=3)(
            torch.zeros(1, 1, 28, 28)
        )


# Hand-computed losses on d_real = [2, 0.5, -1], d_fake = [-2, 0, 1.5].
D_REAL = torch.tensor([2.0, 0.5, -1.0])
D_FAKE = torch.tensor([-2.0, 0.0, 1.5])


def _softplus(t: float) -> float:
    return math.log1p(math.exp(t))


def test_hinge_losses_by_hand():
    # relu(1 - d_real) = [0, 0.5, 2], relu(1 + d_fake) = [0, 1, 2.5]
    assert compute_d_loss(D_REAL, D_FAKE, "hinge").item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert compute_g_loss(D_FAKE, "hinge").item() == pytest.approx(0.5 / 3)


def test_non_saturating_losses_by_hand():
    d = (
        sum(_softplus(-t) for t in (2.0, 0.5, -1.0)) / 3
        + sum(_softplus(t) for t in (-2.0, 0.0, 1.5)) / 3
    )
    g = sum(_softplus(-t) for t in (-2.0, 0.0, 1.5)) / 3
    # float32 evaluation of log1p/exp: 1e-6 relative
    assert compute_d_loss(D_REAL, D_FAKE, "ns").item() == pytest.approx(d, rel=1e-6)
    assert compute_g_loss(D_FAKE, "ns").item() == pytest.approx(g, rel=1e-6)


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="loss must be one of"):
        compute_d_loss(D_REAL, D_FAKE, "wasserstein")
    with pytest.raises(ValueError, match="loss must be one of"):
        compute_g_loss(D_FAKE, "lsgan")


@pytest.mark.parametrize("arch", ARCHS)
def test_srn_discriminator_has_unit_spectral_norm_after_training_steps(arch):
    """After a few D updates, every SRN layer of D has sigma_max ~ 1 and srank <= its target."""
    torch.manual_seed(0)
    D = build_discriminator(arch, image_size=28, channels=1, ndf=WIDTH)
    sr.normalize_model(D, "srn", rank_ratio=0.3, head="srn")
    opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    for _ in range(5):
        real, fake = torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 1, 28, 28).clamp(-1, 1)
        loss = compute_d_loss(D(real), D(fake), "hinge")
        opt.zero_grad()
        loss.backward()
        opt.step()
    D(torch.zeros(1, 1, 28, 28))  # one more training forward: u, v track the last update
    report = sr.layer_report(D)
    assert len(report) == len(
        sr.eligible_layers(build_discriminator(arch, image_size=28, channels=1, ndf=WIDTH))
    )
    for rec in report:
        # 15 warm-up + 7 tracking power iterations on slowly moving weights: the power estimate
        # of sigma trails the SVD value slightly (measured worst case 0.07%); 0.5% leaves room
        # for other BLAS orders while still catching a missing normalization (sigma >> 1).
        assert rec.sigma_max == pytest.approx(1.0, abs=5e-3), rec.name
        assert rec.srank <= rec.target_srank * 1.005, rec.name


def test_sample_z_leaves_a_normalized_generators_power_iteration_alone():
    # Reading the device off a parametrized weight in training mode would run a power iteration.
    G = build_generator("cnn", image_size=32, channels=3, ngf=WIDTH).train()
    sr.normalize_model(G, "sn", head="sn")
    before = {k: v.clone() for k, v in G.state_dict().items()}
    z = G.sample_z(3)
    assert z.shape == (3, G.z_dim)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
