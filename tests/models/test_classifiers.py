"""Classifiers: published parameter counts, output shapes at 28/32 px with 1/3 channels, the
``classifier`` head contract, and one SRN training step plus one analysis of every full-size
model."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import stablerank as sr
from stablerank.models import classifiers
from stablerank.models.classifiers import CLASSIFIERS, build_classifier

CIFAR10 = {"num_classes": 10, "in_channels": 3, "image_size": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU torch's spinning worker threads made
    the full-size steps ~30x slower (ResNet-110 step: 0.5 s with 1 thread, up to 37 s with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _count(name: str, **kw) -> int:
    # Shapes only: the meta device allocates nothing, and skipping the init avoids both its cost
    # and the one-off import of torch's meta kernels for normal_ (~3 s of CPU).
    with mock.patch.object(classifiers, "_init_weights", lambda model: None), torch.device("meta"):
        model = build_classifier(name, **{**CIFAR10, **kw})
    return sum(p.numel() for p in model.parameters())


# Published CIFAR-10 sizes, in millions, as printed in the papers. The tolerance is the rounding
# of the printed figure (half a unit of its last digit): 0.27M means [0.265M, 0.275M).
PUBLISHED = {
    "resnet20": (0.27, 0.005),  # He et al. 2016, Table 6
    "resnet56": (0.85, 0.005),  # ibid.
    "resnet110": (1.7, 0.05),  # ibid.
    "wrn28_10": (36.5, 0.05),  # Zagoruyko & Komodakis 2016, Table 1
    "densenet_bc100": (0.8, 0.05),  # Huang et al. 2017, Table 2 (k = 12)
}
# Our exact counts (regression pins; documented in the module docstring).
EXACT = {
    "resnet20": 269_722,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "wrn28_10": 36_479_194,
    "densenet_bc100": 769_162,
    "vgg19": 20_035_018,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    millions, tol = PUBLISHED[name]
    assert abs(_count(name) / 1e6 - millions) <= tol
    assert _count(name) == EXACT[name]


def test_other_parameter_counts():
    assert _count("vgg19") == EXACT["vgg19"]
    # Zhang et al. 2017's small AlexNet: "1,387,786 parameters" on 28x28x3 crops.
    assert _count("alexnet", image_size=28) == 1_387_786
    # The small CNN is sized for Fashion-MNIST: about 390k parameters at 28x28x1.
    assert _count("small_cnn", in_channels=1, image_size=28) == 389_482
    assert _count("resnet20", width=0.5) < _count("resnet20") / 3  # width scales channels


# Tiny but structurally complete versions of each family, for the shape tests.
SMALL = {
    "mlp": {"hidden": (16,)},
    "small_cnn": {"width": 0.25},
    "resnet": {"depth": 8, "width": 0.5},
    "wrn": {"depth": 10, "widen_factor": 1, "width": 0.5},
    "densenet_bc": {"depth": 10, "growth_rate": 4},
    "vgg": {"depth": 11, "width": 0.125},
    "alexnet": {"width": 0.25, "hidden": (16, 8)},
}


@pytest.mark.parametrize("family", sorted(SMALL))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_output_shape_and_head(family, channels, size):
    torch.manual_seed(0)
    model = build_classifier(
        family, num_classes=7, in_channels=channels, image_size=size, **SMALL[family]
    ).eval()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    captured = {}
    model.classifier.register_forward_hook(lambda m, i, o: captured.update(out=o))
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    # Nothing follows the head: the model's output is exactly what `classifier` returned.
    assert captured["out"] is out


def test_head_excluded_by_name_pattern():
    model = build_classifier("resnet20", **CIFAR10, width=0.25)
    sr.normalize_model(model, "srn", rank_ratio=0.5, exclude=["classifier"])
    assert not parametrize.is_parametrized(model.classifier)
    assert parametrize.is_parametrized(model.stem[0])
    assert [n for n, _ in model.named_modules() if n.split(".")[-1] == "classifier"] == [
        "classifier"
    ]


def test_mlp_on_one_dimensional_inputs():
    model = build_classifier("mlp", num_classes=10, in_channels=1, image_size=None, input_length=40)
    assert model(torch.randn(5, 1, 40)).shape == (5, 10)
    assert model.features[1].in_features == 40


def test_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        build_classifier("resnet18", **CIFAR10)
    with pytest.raises(ValueError, match="'resnet20' fixes depth=20, got depth=56"):
        build_classifier("resnet20", **CIFAR10, depth=56)
    with pytest.raises(TypeError, match=r"does not take \['widen_factor'\]; it takes"):
        build_classifier("resnet", **CIFAR10, widen_factor=2)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        build_classifier("resnet", **CIFAR10, depth=21)
    with pytest.raises(ValueError, match="supported by 'mlp' only"):
        build_classifier("vgg19", num_classes=10, in_channels=1, image_size=None)
    with pytest.raises(ValueError, match="input_length must be an int >= 1"):
        build_classifier("mlp", num_classes=10, in_channels=1, image_size=None)
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        build_classifier("small_cnn", num_classes=10, in_channels=1, image_size=4)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_classifier("vgg19", **CIFAR10, width=0)
    # A string failed in the comparison (TypeError naming no argument), infinity in round().
    for width in ("1", math.inf, True):
        with pytest.raises(ValueError, match="width must be > 0 and finite"):
            build_classifier("mlp", **CIFAR10, width=width)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        # `scaled` keeps every size >= 1 for small widths; it must not turn a 0 into a 1 too.
        ("densenet_bc", {"depth": 10, "growth_rate": 0}, "growth_rate must be an int >= 1"),
        ("mlp", {"hidden": (16, 0)}, "hidden sizes must be ints >= 1"),
        ("alexnet", {"hidden": (384, -1)}, "hidden sizes must be ints >= 1"),
        ("small_cnn", {"hidden": 0}, "hidden must be an int >= 1"),
        ("small_cnn", {"stages": ((8, 0),)}, "stages' channels must be ints >= 1"),
        # A transition of c channels keeps floor(c * compression): 0 would leave an empty map.
        ("densenet_bc", {"depth": 10, "compression": 0.01}, "compression must be in"),
        # A float depth passed the 6n + 2 arithmetic and failed later in range().
        ("resnet", {"depth": 20.0}, "depth must be 6n \\+ 2"),
        ("wrn", {"depth": 28.0}, "depth must be 6n \\+ 4"),
        ("densenet_bc", {"depth": 100.0}, "depth must be 6n \\+ 4"),
    ],
)
def test_size_arguments_are_checked(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(name, **CIFAR10, **kwargs)


def test_alexnet_lrn_must_be_a_bool():
    with pytest.raises(TypeError, match="lrn must be a bool, got 'no'"):
        build_classifier("alexnet", **CIFAR10, lrn="no")


# ---- architecture details that parameter counts and output shapes cannot see (parameter-free
# strides, shortcuts, pooling, activations) and the initialization


def _block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    model(x)
    return shapes


@torch.no_grad()
def test_resnet_blocks_are_relu_of_branch_plus_option_a_shortcut():
    """He et al.'s CIFAR ResNet: stages at 32, 16, 8 px (stride 2 in the first block of stages 2
    and 3 only); a block is relu(branch + shortcut); option A subsamples x[:, :, ::2, ::2] and
    zero-pads c_out / 4 channels on each side (the reference code's F.pad(..., planes // 4,
    planes // 4)). With the branch's last BN scaled to 0 a block is exactly relu(shortcut(x))."""
    torch.manual_seed(0)
    model = build_classifier("resnet", **CIFAR10, depth=8).eval()
    assert _block_outputs(model, torch.randn(2, 3, 32, 32)) == [
        (16, 32, 32), (32, 16, 16), (64, 8, 8)
    ]  # fmt: skip
    for block in model.blocks[:2]:
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 32, 32)
    assert torch.equal(model.blocks[0](x), F.relu(x))  # identity shortcut
    zeros = torch.zeros(2, 8, 16, 16)
    padded = torch.cat([zeros, x[:, :, ::2, ::2], zeros], dim=1)
    assert torch.equal(model.blocks[1](x), F.relu(padded))


@torch.no_grad()
def test_wide_resnet_block_adds_the_projection_of_the_preactivated_input():
    """Zagoruyko & Komodakis' pre-activation block: x + conv2(...) where the shape stays, else
    shortcut(relu(bn1(x))) + conv2(...), the 1x1 projection reading the pre-activated input (the
    authors' code). With conv2 zeroed the block is exactly its shortcut term."""
    torch.manual_seed(0)
    model = build_classifier("wrn", **CIFAR10, depth=16, widen_factor=1).eval()
    assert _block_outputs(model, torch.randn(2, 3, 32, 32)) == [
        (16, 32, 32), (16, 32, 32), (32, 16, 16), (32, 16, 16), (64, 8, 8), (64, 8, 8)
    ]  # fmt: skip
    identity, projection = model.blocks[0], model.blocks[2]
    for block in (identity, projection):
        block.bn1.bias.normal_()  # relu(bn1(x)) differs from x
        nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 16, 32, 32)
    assert torch.equal(identity(x), x)
    assert torch.equal(projection(x), projection.shortcut(F.relu(projection.bn1(x))))


def test_densenet_transitions_average_pool():
    """Huang et al.: a transition is BN-ReLU-1x1 conv-2x2 *average* pool, twice."""
    model = build_classifier("densenet_bc", **CIFAR10, depth=10, growth_rate=4)
    pools = [m for m in model.features if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    assert [(type(m), m.kernel_size) for m in pools] == [(nn.AvgPool2d, 2)] * 2


def test_alexnet_local_response_norm_is_tensorflows():
    """tf.nn.lrn(depth_radius=4, bias=1, alpha=0.001 / 9, beta=0.75) of the TensorFlow CIFAR-10
    tutorial: b_c = a_c / (1 + alpha * sum_{|j - c| <= 4} a_j^2)^beta, written out in float64."""
    model = build_classifier("alexnet", **CIFAR10, width=0.25, hidden=(16, 8))
    lrns = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2
    a = torch.rand(2, 16, 3, 3, dtype=torch.float64) * 10  # large enough for alpha to matter
    window = F.pad(a.square(), (0, 0, 0, 0, 4, 4)).unfold(1, 9, 1).sum(-1)  # (2, 16, 3, 3)
    expected = a / (1 + 0.001 / 9 * window) ** 0.75
    for lrn in lrns:  # float64 throughout: 1e-12 relative
        torch.testing.assert_close(lrn(a), expected, rtol=1e-12, atol=0)


def test_hidden_fully_connected_layers_are_followed_by_relu():
    mlp = build_classifier("mlp", **CIFAR10, hidden=(16, 8))
    assert [type(m) for m in mlp.features] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    alexnet = build_classifier("alexnet", **CIFAR10, width=0.25, hidden=(16, 8))
    assert [type(m) for m in alexnet.features[-4:]] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]


def test_init_is_he_normal_fan_out_with_zero_biases():
    """Convs ~ N(0, 2 / fan_out), fan_out = C_out * kh * kw (the ResNet/WRN/DenseNet references),
    biases 0. AlexNet's first conv (3 -> 16 channels, 5x5) tells fan_out (400) from fan_in (75)."""
    torch.manual_seed(0)
    model = build_classifier("alexnet", **CIFAR10, width=0.25, hidden=(16, 8))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        w = conv.weight.detach()
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        # The sample std of n normal draws has relative sd 1 / sqrt(2n): allow 5 of those.
        assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 5 / math.sqrt(2 * w.numel())
        assert not conv.bias.any()


FULL_SIZE = ["resnet20", "resnet110", "wrn28_10", "densenet_bc100", "vgg19", "alexnet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_one_srn_training_step_and_one_analysis_full_size(name):
    """Fake CIFAR-shaped batch of 2, SRN (c = 0.3) on every conv/linear layer but the head:
    finite loss, every parameter gets a finite gradient (no dead branch), an SGD step changes the
    parameters; then the paper's analysis runs on the stepped model: pairwise and Jacobian eL,
    both complexity measures, the layer report."""
    from stablerank.metrics import complexity, lipschitz

    torch.manual_seed(0)
    model = build_classifier(name, **CIFAR10)
    sr.normalize_model(model, "srn", rank_ratio=0.3, exclude=["classifier"])
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([3, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))

    x = torch.randn(3, 3, 32, 32)
    ratios = lipschitz.pairwise_lipschitz(model, x, n_pairs=3, seed=0)
    jac = lipschitz.jacobian_spectral_norm(model, x[:2], n_iters=2, seed=0)
    assert ratios.numel() == 3 and torch.isfinite(ratios).all() and (ratios >= 0).all()
    assert jac.shape == (2,) and torch.isfinite(jac).all() and (jac > 0).all()
    measures = complexity.spectral_complexity(model, margin=1.0)
    assert all(math.isfinite(v) for v in measures.values())
    report = sr.layer_report(model)
    normalized = [r for r in report if r.norm == "srn"]
    assert len(normalized) == len(report) - 1  # every layer but the head
    # One SGD step moved W after u, v were last updated: the caps hold to within a few percent.
    for r in normalized:
        assert abs(r.sigma_max - 1.0) < 0.05 and r.srank <= 1.05 * r.target_srank, (name, r)


def test_names_listed():
    assert {
        "mlp",
        "small_cnn",
        "resnet20",
        "resnet56",
        "resnet110",
        "wrn",
        "wrn28_10",
        "densenet_bc",
        "vgg19",
        "alexnet",
    } <= set(CLASSIFIERS)
