"""scripts/train_feature_net.py: a one-epoch run on a small subset writes loadable weights, and
the shipped network's features rank real-vs-real far below real-vs-noise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from stablerank.metrics.features import FMNIST_CNN_WEIGHTS, load_fmnist_cnn
from stablerank.metrics.gan import KEY_FID, KEY_IS_MEAN, compute_gan_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_feature_net.py"


@pytest.fixture(scope="module")
def fashion():
    datasets = pytest.importorskip("stablerank.data.datasets")
    try:
        return datasets.load_dataset("fashion-mnist")
    except datasets.DatasetNotFoundError:
        pytest.skip("Fashion-MNIST not installed")


def _script():
    spec = importlib.util.spec_from_file_location("train_feature_net", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_script_writes_loadable_weights_and_sidecar(tmp_path, fashion):
    script = _script()
    argv = ["--epochs", "1", "--max-train", "256", "--max-test", "100", "--batch-size", "16"]
    argv += ["--out-dir", str(tmp_path)]
    assert script.main(argv) == 0
    meta = json.loads((tmp_path / "fmnist_cnn.json").read_text())
    assert meta["command"] == "python scripts/train_feature_net.py " + " ".join(argv)
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    ext = load_fmnist_cnn(tmp_path / "fmnist_cnn.pt")
    assert ext.weights_sha256 == meta["sha256"]


def test_augment_keeps_shape_and_pixels():
    script = _script()
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    out = script.augment(x, 0, torch.Generator().manual_seed(0))
    for a, b in zip(out, x, strict=True):  # shift 0: identity or a horizontal flip
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    shifted = script.augment(x, 1, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape


@pytest.mark.skipif(not FMNIST_CNN_WEIGHTS.is_file(), reason="fmnist-cnn weights not built yet")
def test_shipped_features_separate_real_from_noise(fashion):
    n = 500
    train, test = fashion.train_x[:n], fashion.test_x[:n]
    kw = dict(reference_split="train", metrics=["fid", "is"], is_splits=5, batch_size=n)
    real = compute_gan_metrics(test, train, **kw)
    noise = compute_gan_metrics(torch.rand(n, 1, 28, 28) * 2 - 1, train, **kw)
    # Noise images fall far from every garment class: FID must exceed the real-vs-real value
    # (a sample-size bias only) many times over; the real test images are spread over the 10
    # classes, so their IS is far above that of any single-mode set (>= 5 of at most 10).
    assert noise[KEY_FID] > 10 * real[KEY_FID]
    assert real[KEY_IS_MEAN] > 5.0


def test_bad_arguments_are_refused_before_any_work(capsys):
    script = _script()
    for argv, said in (
        (["--epochs", "1"], "the following arguments are required: --out-dir"),  # no default
        (["--epochs", "0", "--out-dir", "x"], "--epochs must be >= 1, got 0"),
        (["--shift", "-1", "--out-dir", "x"], "--shift must be >= 0, got -1"),
        (["--epochs", "1", "--max-train", "512", "--out-dir", "x"], "too few for the one-cycle"),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert said in capsys.readouterr().err
