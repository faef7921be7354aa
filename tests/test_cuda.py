"""CUDA paths: the SRN eager path on the GPU against the same path on the CPU,
no host synchronisation in a training step, autocast and half weights, torch.compile, and the two
trainers end to end with AMP. Skipped where no GPU is present (CI); run on a GPU machine with
``pytest -m gpu``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from stablerank import stable_rank_norm
from stablerank.linalg import spectral_norm_exact, stable_rank, weight_to_matrix
from stablerank.train.rundir import RunDir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _pair(module: nn.Module, **kw) -> tuple[nn.Module, nn.Module]:
    """The same SRN layer (same raw weight and u, v) on the CPU and on the GPU."""
    torch.manual_seed(0)
    stable_rank_norm(module, **kw)
    return module, copy.deepcopy(module).to(CUDA)


def test_gpu_path_matches_cpu_path_in_values_and_gradients():
    cpu, gpu = _pair(nn.Linear(48, 32, dtype=torch.float64), rank_ratio=0.2)
    for _ in range(4):  # training-mode forwards: each runs one power-iteration step
        w_cpu, w_gpu = cpu.weight, gpu.weight
        torch.testing.assert_close(w_gpu.cpu(), w_cpu, rtol=1e-10, atol=1e-12)
    g = torch.randn(32, 48, dtype=torch.float64)
    (cpu.weight * g).sum().backward()
    (gpu.weight * g.to(CUDA)).sum().backward()
    raw_cpu = cpu.parametrizations.weight.original.grad
    raw_gpu = gpu.parametrizations.weight.original.grad
    torch.testing.assert_close(raw_gpu.cpu(), raw_cpu, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("c", [0.3, 1.0])
def test_eval_with_a_negative_sigma_on_gpu_matches_the_cpu_path(c):
    # Note [srn sigma sign]: frozen u, v, and a weight whose sign flipped since (u^T W v < 0)
    cpu, gpu = _pair(nn.Linear(9, 6, dtype=torch.float64), rank_ratio=c)
    with torch.no_grad():
        cpu.parametrizations.weight.original.neg_()
        gpu.parametrizations.weight.original.neg_()
    cpu.eval(), gpu.eval()
    g = torch.randn(6, 9, dtype=torch.float64)
    (cpu.weight * g).sum().backward()
    (gpu.weight * g.to(CUDA)).sum().backward()
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-10, atol=1e-12)
    raw_cpu = cpu.parametrizations.weight.original.grad
    raw_gpu = gpu.parametrizations.weight.original.grad
    torch.testing.assert_close(raw_gpu.cpu(), raw_cpu, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("c", [0.1, 0.5])
def test_converged_layer_on_gpu_has_unit_spectral_norm_and_the_target_stable_rank(c):
    torch.manual_seed(1)
    conv = stable_rank_norm(nn.Conv2d(16, 32, 3).to(CUDA), rank_ratio=c)
    with torch.no_grad():
        for _ in range(200):
            conv.weight  # noqa: B018  (each access is one power-iteration step)
    conv.eval()
    w = weight_to_matrix(conv.weight.detach().double(), 0)
    raw = weight_to_matrix(conv.parametrizations.weight.original.detach().double(), 0)
    target = c * min(w.shape)
    assert spectral_norm_exact(w).item() == pytest.approx(1.0, rel=1e-3)
    assert stable_rank(w).item() == pytest.approx(min(stable_rank(raw).item(), target), rel=1e-3)


def test_training_step_on_gpu_never_synchronizes_with_the_host():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(CUDA)
    for layer in (model[0], model[2]):
        stable_rank_norm(layer, rank_ratio=0.3)
    x = torch.randn(16, 32, device=CUDA)
    model(x).sum().backward()  # warm-up: allocator and kernels, outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_zero_and_huge_weights_on_gpu():
    layer = stable_rank_norm(nn.Linear(32, 24).to(CUDA), rank_ratio=0.3)
    w0 = layer.parametrizations.weight.original.detach().clone()
    with torch.no_grad():
        layer.parametrizations.weight.original.zero_()
        layer.weight  # noqa: B018  (u, v must survive a zero weight)
        layer.parametrizations.weight.original.copy_(w0 * 1e20)
        for _ in range(100):
            w = layer.weight
    assert torch.isfinite(w).all()
    assert spectral_norm_exact(w.double()).item() == pytest.approx(1.0, rel=1e-3)


def test_kernels_per_training_step_on_gpu():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_srn.py"
    spec = importlib.util.spec_from_file_location("bench_srn", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.kernels_table(CUDA)  # printed (pytest -s) for docs/benchmarks.md


def test_bf16_autocast_keeps_the_normalization_in_float32():
    layer = stable_rank_norm(nn.Linear(64, 64).to(CUDA), rank_ratio=0.3)
    x = torch.randn(8, 64, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
        weight = layer.weight
    assert out.dtype == torch.bfloat16
    assert weight.dtype == torch.float32
    out.float().sum().backward()
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_on_gpu_use_float32_vectors(dtype):
    layer = stable_rank_norm(nn.Linear(64, 48).to(CUDA, dtype), rank_ratio=0.3)
    srn = layer.parametrizations.weight[0]
    assert srn._u.dtype == torch.float32
    with torch.no_grad():
        for _ in range(100):
            layer.weight  # noqa: B018
    w = layer.weight.detach()
    assert w.dtype == dtype
    assert spectral_norm_exact(w.double()).item() == pytest.approx(1.0, rel=2e-2)


def test_compiled_training_forward_on_gpu_matches_eager():
    eager, _ = _pair(nn.Linear(40, 24), rank_ratio=0.3)
    eager = eager.to(CUDA)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    x = torch.randn(8, 40, device=CUDA)
    for _ in range(3):
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    srn_e = eager.parametrizations.weight[0]
    srn_c = compiled_module.parametrizations.weight[0]
    torch.testing.assert_close(srn_c._u, srn_e._u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["sn", "srn"])
def test_classifier_trains_on_gpu_with_amp_and_channels_last(tmp_path, norm):
    from stablerank.config.classify import classify_preset
    from stablerank.train import classify

    cfg = classify_preset(
        "tiny", out_dir=str(tmp_path), run_name="run", progress=False, device="cuda", amp=True,
        norm=norm, epochs=3, lr=0.1,
    )  # fmt: skip
    result = classify.run(cfg)
    assert result.test_acc > 0.5  # chance is 0.1; CPU runs reach ~0.9
    assert not result.diverged


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_gan_trains_on_gpu_with_amp_conditional_srn(tmp_path, arch):
    from stablerank.config import config_from_dict
    from stablerank.config.gan import GanConfig
    from stablerank.train import gan as gan_train

    cfg = config_from_dict(GanConfig, {
        "dataset": "digits", "arch": arch, "ngf": 8, "ndf": 8, "z_dim": 16, "batch_size": 16,
        "device": "cuda", "amp": True, "conditional": True, "d_norm": "srn", "ema": 0.9,
        "g_steps": 4, "n_dis": 2, "n_final_samples": 0, "progress": False, "log_every": 1,
        "sample_every": 2, "out_dir": str(tmp_path),
    })  # fmt: skip
    gan_train.run(cfg)
    run_dir = RunDir.for_config(cfg).path
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert logged, "no training record written"
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in logged)
