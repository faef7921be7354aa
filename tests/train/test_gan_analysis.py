"""Post-training GAN measures on tiny real runs (8x8 digits, widths 8): the discriminator's eL of a
conditional (projection) D with the class held fixed per pair, checked by hand."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import stablerank.train.gan as gan_train
from stablerank.config import config_from_dict
from stablerank.config.gan import GanAnalysisConfig, GanConfig
from stablerank.data import load_dataset
from stablerank.metrics.features import to_signed_unit
from stablerank.metrics.lipschitz import jacobian_spectral_norm, pairwise_lipschitz
from stablerank.train import gan_analysis
from stablerank.train.checkpoint import CorruptCheckpointError
from stablerank.train.gan_models import load_gan_run
from stablerank.train.results import GanAnalysis, to_dict

# A 2-step critic and 20 pairs per pair type: enough to exercise every code path in ~1 s.
SETTINGS = GanAnalysisConfig(nd_critic_steps=2, nd_eval_batches=2, d_el_pairs=20,
                             nd_critic_width=4, nd_batch_size=16, device="cpu")  # fmt: skip


def _train(tmp: Path, name: str, **over: object) -> Path:
    cfg = {"dataset": "digits", "arch": "cnn", "ngf": 8, "ndf": 8, "z_dim": 16, "batch_size": 16,
           "device": "cpu", "n_final_samples": 0, "progress": False, "g_steps": 2,
           "d_norm": "sn", "out_dir": str(tmp), "run_name": name, **over}  # fmt: skip
    gan_train.run(config_from_dict(GanConfig, cfg))
    return tmp / name


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> tuple[Path, GanAnalysis]:
    run_dir = _train(tmp_path_factory.mktemp("gan_eval"), "cond", conditional=True, ema=0.9)
    return run_dir, gan_analysis.run(SETTINGS, run_dir)


def test_conditional_d_el_is_measured_and_finite(conditional_run):
    run_dir, result = conditional_run
    assert to_dict(GanAnalysis.from_json(run_dir)) == to_dict(result)
    assert json.loads((run_dir / GanAnalysis.FILE).read_text())["d_el_values"]
    assert set(result.d_el) == set(gan_analysis.PAIR_TYPES)
    for kind in gan_analysis.PAIR_TYPES:
        values = result.d_el_values[kind]
        assert len(values) == SETTINGS.d_el_pairs  # no duplicate pairs among distinct images
        assert all(math.isfinite(v) and v > 0 for v in values), kind
    for point in ("real", "fake"):
        assert math.isfinite(result.d_jacobian[point].max)
        # the points measured, as recorded (fewer than 64 when the pool of 2 * pairs is smaller)
        assert result.d_jacobian[point].n == result.protocol.d_el.jacobian_points
    labels = result.protocol.d_el.labels
    assert "first point's label" in labels and "generated with" in labels
    assert (run_dir / "d_el_hist.png").is_file()
    # The critic compares samples with the test split: its two parts are the whole split.
    nd = result.protocol.neural_divergence
    assert nd.reference_split == "test"
    assert nd.n_real_train + nd.n_real_eval == len(load_dataset("digits").test_x)


def test_each_pair_type_and_point_set_is_measured_on_its_own_images(conditional_run):
    # Real pool: seeded test images with their labels; fake pool: the generator's next samples
    # with the labels they were generated with. Jacobians: the first points of each pool.
    D = load_gan_run(conditional_run[0]).D
    splits = load_dataset("digits")
    gen = torch.Generator().manual_seed(3)
    fake, y_fake = torch.rand(20, 1, 8, 8, generator=gen) * 2 - 1, torch.randint(10, (20,))
    ratios, jac, protocol = gan_analysis._discriminator_el(
        D, splits, lambda k: (fake[:k], y_fake[:k]), n_pairs=10, seed=4,
        device=torch.device("cpu"), conditional=True,
    )  # fmt: skip
    idx = gan_analysis._subset_indices(len(splits.test_x), 20, 4)
    real, y_real = to_signed_unit(splits.test_x[idx]), splits.test_y[idx]
    el = functools.partial(pairwise_lipschitz, D, n_pairs=10, seed=4)
    expected = {"real-real": el(real, y=y_real), "fake-fake": el(fake, y=y_fake),
                "real-fake": el(real, y=y_real, x_other=fake)}  # fmt: skip
    for kind in gan_analysis.PAIR_TYPES:
        torch.testing.assert_close(ratios[kind], expected[kind], msg=kind)
    for name, x, y in (("real", real, y_real), ("fake", fake, y_fake)):
        norms = jacobian_spectral_norm(D, x, n_iters=10, seed=4, y=y)
        torch.testing.assert_close(jac[name], norms, msg=name)
    assert protocol.jacobian_points == 20  # fewer than 64: the pool of 2 x 10


def test_conditional_pair_ratio_equals_the_hand_computed_one(conditional_run):
    run_dir, result = conditional_run
    run = load_gan_run(run_dir)
    D = run.D
    splits = load_dataset("digits")
    x, y = to_signed_unit(splits.test_x[:2]), splits.test_y[:2]
    assert y[0] != y[1]  # so that holding the first label differs from using each point's own
    dist = torch.linalg.vector_norm(x[0] - x[1])
    with torch.no_grad():
        by_hand = (D(x[:1], y[:1]) - D(x[1:], y[:1])).abs() / dist  # |D(x1,y1) - D(x2,y1)|
        per_point = (D(x[:1], y[:1]) - D(x[1:], y[1:])).abs() / dist  # each its own label
    ratio = pairwise_lipschitz(D, x[:1], y=y[:1], x_other=x[1:], n_pairs=1)
    # float32 forwards, float64 differences: the same numbers up to float32 round-off.
    torch.testing.assert_close(ratio, by_hand.double(), rtol=1e-6, atol=0)
    assert not torch.isclose(ratio, per_point.double(), rtol=1e-3)
    # The stored real-real ratios are those of the test-image pool with its true labels.
    seed = run.config.seed + SETTINGS.seed
    idx = gan_analysis._subset_indices(len(splits.test_x), 2 * SETTINGS.d_el_pairs, seed)
    real, y_real = to_signed_unit(splits.test_x[idx]), splits.test_y[idx]
    again = pairwise_lipschitz(D, real, y=y_real, n_pairs=SETTINGS.d_el_pairs, seed=seed)
    stored = torch.tensor(result.d_el_values["real-real"], dtype=torch.float64)
    torch.testing.assert_close(stored, again, rtol=1e-5, atol=0)  # stored with 6 digits


def test_the_real_vs_real_baseline_draws_fresh_training_images(
    conditional_run, tmp_path, monkeypatch
):
    # Each call of its sampler continues through the training split: the critic would otherwise
    # see the same few images at every step.
    run_dir = tmp_path / "copy"
    shutil.copytree(conditional_run[0], run_dir)
    samplers = []
    real_nd = gan_analysis.neural_divergence

    def spy(generate, real_images, **kwargs):
        samplers.append(generate)
        return real_nd(generate, real_images, **kwargs)

    monkeypatch.setattr(gan_analysis, "neural_divergence", spy)
    gan_analysis.run(SETTINGS, run_dir)
    real_train = samplers[1]
    first, second = real_train(5), real_train(5)
    assert not torch.equal(first, second)
    train = to_signed_unit(load_dataset("digits").train_x).flatten(1)
    for image in torch.cat([first, second]).flatten(1):
        assert (train == image).all(1).any()


def test_unconditional_run_is_measured_without_labels(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic=True sets it
    run_dir = _train(tmp_path, "uncond")
    threads = torch.get_num_threads()
    try:  # --num-threads, as analyze's; --deterministic, as the trainers'
        settings = dataclasses.replace(SETTINGS, num_threads=1, deterministic=True)
        result = gan_analysis.run(settings, run_dir)
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert result.settings["num_threads"] == 1 and result.settings["deterministic"]
        capsys.readouterr()
        result = gan_analysis.run(SETTINGS, run_dir)
        assert not torch.are_deterministic_algorithms_enabled()  # each analysis sets its own
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    # At their defaults: the settings saved as before they existed.
    assert "num_threads" not in result.settings and "deterministic" not in result.settings
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"gan analysis: {result.summary()}; wrote {run_dir / 'gan_analysis.json'}"
    assert result.summary().startswith(
        f"neural divergence {result.neural_divergence:.4g} (std over evaluation batches "
    )
    assert result.protocol.d_el.labels is None
    assert result.protocol.generator.startswith("raw")
    for kind in gan_analysis.PAIR_TYPES:
        assert all(math.isfinite(v) for v in result.d_el_values[kind]), kind
    assert math.isfinite(result.neural_divergence_real_train)


def test_the_histogram_of_an_srn_discriminator_names_its_rank_ratio(tmp_path, monkeypatch):
    # SRN arms differ by c alone: a title with the norm only did not tell their histograms apart.
    titles = []
    monkeypatch.setattr(gan_analysis.lipschitz, "plot_histogram",
                        lambda values, path, title: titles.append(title))  # fmt: skip
    gan_analysis.run(SETTINGS, _train(tmp_path, "srn", d_norm="srn", rank_ratio=0.5))
    assert titles == ["discriminator eL, d_norm=srn (c=0.5)"]


def test_missing_run_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        gan_analysis.run(SETTINGS, tmp_path / "nope")


def test_a_corrupt_final_checkpoint_is_refused_not_replaced_by_an_older_one(tmp_path):
    # The result is the final step's: an older checkpoint's model would not match it.
    run_dir = _train(tmp_path, "cut", checkpoint_every=1)
    final = run_dir / "checkpoints" / "step_0000002.pt"
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF
    final.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="step_0000002"):
        gan_analysis.run(SETTINGS, run_dir)
    assert not (run_dir / GanAnalysis.FILE).exists()


def test_the_protocol_counts_the_test_images_there_are(tmp_path):
    # digits has fewer test images than a pool of 2 x 300: the record is what was measured.
    run_dir = _train(tmp_path, "small")
    n_test = len(load_dataset("digits").test_x)
    assert n_test < 600
    result = gan_analysis.run(dataclasses.replace(SETTINGS, d_el_pairs=300), run_dir)
    assert result.protocol.d_el.pool == f"{n_test} test images and 600 fresh samples"


def test_an_analysis_seed_beyond_torchs_range_is_refused_by_name():
    with pytest.raises(ValueError, match="seed"):
        GanAnalysisConfig(seed=10**20)
