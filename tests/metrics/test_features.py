"""Feature-extractor registry, the frozen wrapper and the shipped fmnist-cnn weights."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

from stablerank.metrics import features as feat
from stablerank.metrics.features import (
    DEFAULT_FEATURE_NET,
    FMNIST_CNN_SIDECAR,
    FMNIST_CNN_WEIGHTS,
    FashionCNN,
    FeatureExtractor,
    available_feature_extractors,
    build_feature_extractor,
    load_fmnist_cnn,
    register_feature_extractor,
    sha256_file,
    to_signed_unit,
)

_MAX_WEIGHTS_BYTES = 2 * 1024 * 1024
_TARGET_TEST_ACC = 0.93


def _small_extractor() -> FeatureExtractor:
    torch.manual_seed(0)
    net = FashionCNN(widths=(4, 4, 4), feature_dim=8)
    return FeatureExtractor("small", net, input_shape=(1, 28, 28), num_features=8, num_classes=10,
                            weights_sha256="")  # fmt: skip


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(feat, "_REGISTRY", dict(feat._REGISTRY))


def test_builtins_registered():
    assert {DEFAULT_FEATURE_NET, "inception-v3"} <= set(available_feature_extractors())


@pytest.mark.parametrize("name", ["", " x", "a b", "a/b", "a\\b", "x\n"])
def test_register_rejects_bad_names(clean_registry, name):
    with pytest.raises(ValueError, match="non-empty without whitespace"):
        register_feature_extractor(name, _small_extractor)


def test_register_rejects_taken_name_and_builds(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_feature_extractor(DEFAULT_FEATURE_NET, _small_extractor)
    with pytest.raises(TypeError, match="name must be a str"):
        register_feature_extractor(3, _small_extractor)  # type: ignore[arg-type]
    register_feature_extractor("small", _small_extractor)
    assert isinstance(build_feature_extractor("small"), FeatureExtractor)
    with pytest.raises(ValueError, match="unknown feature extractor 'nope'"):
        build_feature_extractor("nope")


def test_extractor_is_frozen_and_eval_only():
    ext = _small_extractor()
    ext.train()
    assert not any(m.training for m in ext.modules())
    assert not any(p.requires_grad for p in ext.parameters())
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    f1, logits = ext.extract(x)
    # Eval-mode BN: a sample's features do not depend on its batch (float32 conv round-off).
    f2, _ = ext.extract(x[:1])
    torch.testing.assert_close(f1[:1], f2, rtol=1e-5, atol=1e-6)
    assert f1.shape == (5, 8) and logits.shape == (5, 10)


def test_extractor_validates_input():
    ext = _small_extractor()
    with pytest.raises(
        ValueError, match=r"expects images of shape \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"
    ):
        ext.extract(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got values in \[0, 255\]"):
        ext.extract(torch.tensor([0.0, 255.0]).repeat(392).reshape(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"got values in \[-2, -2\]"):  # the lower end too
        ext.extract(torch.full((1, 1, 28, 28), -2.0))
    with pytest.raises(TypeError, match="uint8 or floating point"):
        ext.extract(torch.zeros(1, 1, 28, 28, dtype=torch.int64))
    u8 = torch.tensor([0, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_signed_unit(u8), torch.tensor([-1.0, 1.0]))


def test_inception_without_torch_fidelity_says_how_to_install():
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match=r'pip install "stablerank\[fidelity\]"'):
            build_feature_extractor("inception-v3", weights_path="/nonexistent.pth")
    else:
        with pytest.raises(FileNotFoundError, match="inception weights not found"):
            build_feature_extractor("inception-v3", weights_path="/nonexistent.pth")


def test_inception_weights_are_the_given_file_or_the_one_in_torch_hubs_cache(tmp_path, monkeypatch):
    from stablerank.metrics.features import INCEPTION_FILES, inception_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=str(cache / INCEPTION_FILES[0])):
        inception_weights()  # nothing downloaded: the error says where to put the file
    with pytest.raises(FileNotFoundError, match="inception weights not found"):
        inception_weights(tmp_path / "missing.pth")
    cache.mkdir(parents=True)
    (cache / INCEPTION_FILES[1]).write_bytes(b"torch-fidelity's download")
    assert inception_weights() == cache / INCEPTION_FILES[1]
    (cache / INCEPTION_FILES[0]).write_bytes(b"pytorch-fid's download")
    assert inception_weights() == cache / INCEPTION_FILES[0]
    given = tmp_path / "mine.pth"
    given.write_bytes(b"x")
    assert inception_weights(str(given)) == given


@pytest.mark.skipif(not FMNIST_CNN_WEIGHTS.is_file(), reason="fmnist-cnn weights not built yet")
def test_shipped_weights_match_sidecar_and_are_small():
    meta = json.loads(FMNIST_CNN_SIDECAR.read_text())
    assert FMNIST_CNN_WEIGHTS.stat().st_size < _MAX_WEIGHTS_BYTES
    assert sha256_file(FMNIST_CNN_WEIGHTS) == meta["sha256"]
    assert meta["test_accuracy"] >= _TARGET_TEST_ACC
    assert meta["command"].startswith("python scripts/train_feature_net.py")
    ext = build_feature_extractor(DEFAULT_FEATURE_NET)
    assert ext.weights_sha256 == meta["sha256"]
    assert (ext.num_features, ext.num_classes) == (128, 10)


@pytest.mark.skipif(not FMNIST_CNN_WEIGHTS.is_file(), reason="fmnist-cnn weights not built yet")
def test_shipped_weights_classify_fashion_mnist_test_images():
    data = pytest.importorskip("stablerank.data.datasets")
    try:
        splits = data.load_dataset("fashion-mnist")
    except data.DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    ext = load_fmnist_cnn()
    n = 1000
    _, logits = ext.extract(splits.test_x[:n])
    acc = (logits.argmax(1) == splits.test_y[:n]).double().mean().item()
    # The sidecar's full-test accuracy is >= 0.93; 1000 images have a binomial std of ~0.8
    # points, so 0.90 leaves ~4 standard deviations of room.
    assert acc >= 0.90


def test_corrupt_weights_are_refused(tmp_path):
    if not FMNIST_CNN_WEIGHTS.is_file():
        pytest.skip("fmnist-cnn weights not built yet")
    bad = tmp_path / "fmnist_cnn.pt"
    bad.write_bytes(FMNIST_CNN_WEIGHTS.read_bytes()[:-10])
    (tmp_path / "fmnist_cnn.json").write_text(FMNIST_CNN_SIDECAR.read_text())
    with pytest.raises(ValueError, match="differs from the sidecar"):
        load_fmnist_cnn(bad)
    with pytest.raises(FileNotFoundError, match=r"train_feature_net\.py"):
        load_fmnist_cnn(tmp_path / "missing.pt")


class _FakeInceptionV3(torch.nn.Module):
    """Stands in for torch-fidelity's FeatureExtractorInceptionV3 (not installable beside the CPU
    torch build): checks the inputs our adapter gives it and returns features from the pixels."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None):
        super().__init__()
        type(self).calls.append(
            {"name": name, "features": features_list, "weights": feature_extractor_weights_path}
        )
        self.proj = torch.nn.Linear(3, 2048, bias=False)
        self.head = torch.nn.Linear(3, 1008, bias=False)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
        type(self).last_input = x
        mean_rgb = x.float().mean(dim=(2, 3)) / 255.0
        return self.proj(mean_rgb), self.head(mean_rgb)


def test_inception_glue_feeds_uint8_pixels_and_records_the_weights(tmp_path, monkeypatch):
    # The adapter between torch-fidelity's InceptionV3 and our FeatureExtractor contract, with a
    # stand-in network: the real one needs torch-fidelity and its weights file (not available
    # offline here), so this checks our side only: pixel mapping, shapes, the protocol's cache key.
    import sys
    import types

    from stablerank.metrics.gan import extract_features

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = _FakeInceptionV3
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not really weights")
    with pytest.raises(FileNotFoundError, match="inception weights not found"):
        build_feature_extractor("inception-v3", weights_path=tmp_path / "missing.pth")
    net = build_feature_extractor("inception-v3", weights_path=weights)
    assert _FakeInceptionV3.calls[-1] == {
        "name": "inception-v3-compat",
        "features": ["2048", "logits_unbiased"],
        "weights": str(weights),
    }
    images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    features, logits = net.extract(images)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert _FakeInceptionV3.last_input[0, :, 0, 0].tolist() == [0, 128, 255]  # [-1, 1] -> uint8
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 32, 32\)"):
        net.extract(torch.zeros(2, 1, 28, 28))

    real = torch.rand(8, 3, 32, 32) * 2 - 1
    cached = extract_features(real, net, split="test", batch_size=4)
    assert cached.features.shape == (8, 2048) and cached.logits.shape == (8, 1008)
    assert (cached.feature_net, cached.weights_sha256) == ("inception-v3", sha256_file(weights))
