"""Neural divergence: a fresh WGAN-GP critic separates real-vs-real from real-vs-noise."""

from __future__ import annotations

import functools

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from stablerank.metrics import NonFiniteError
from stablerank.metrics.divergence import (
    KEY_ND,
    KEY_ND_STD,
    KEY_PROTOCOL,
    _gradient_penalty,
    build_default_critic,
    neural_divergence,
)

# Tiny CPU setting: 8x8 digits, 8-channel critic, 50 steps at lr 1e-3 (calibrated: real-vs-real
# 0.02 +- 0.21 over batches, real-vs-noise 2.4 +- 0.12).
_KW = dict(
    n_critic_steps=50, batch_size=32, seed=0, n_eval_batches=8, lr=1e-3, betas=(0.5, 0.9),
    critic_builder=functools.partial(build_default_critic, width=8),
)  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8), 0..16
    return x / 8.0 - 1.0


def _sampler(pool: torch.Tensor):
    return lambda k: pool[torch.randint(len(pool), (k,))]


@pytest.mark.slow
def test_separates_real_from_noise(digits):
    held, other = digits[:500], digits[500:1000]
    real = neural_divergence(_sampler(other), held, **_KW)
    noise = neural_divergence(lambda k: torch.rand(k, 1, 8, 8) * 2 - 1, held, **_KW)
    # Real-vs-real is only fitting noise; uniform noise is trivially separable. A gap of 1.0
    # is > 4 of the real-vs-real batch standard deviations yet < half the calibrated gap.
    assert noise[KEY_ND] > real[KEY_ND] + 1.0
    assert noise[KEY_ND] > 5 * noise[KEY_ND_STD]
    protocol = real[KEY_PROTOCOL]
    assert protocol["n_real_train"] + protocol["n_real_eval"] == 500
    assert protocol["critic"] == "build_default_critic(width=8)"
    assert protocol["gp_lambda"] == 10.0 and protocol["reference_split"] == "test"


def test_seeded_and_rng_restored(digits):
    held = digits[:100]
    kw = {**_KW, "n_critic_steps": 3, "n_eval_batches": 2}
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a = neural_divergence(_sampler(digits[100:200]), held, **kw)
    assert torch.rand(1) == expected
    b = neural_divergence(_sampler(digits[100:200]), held, **kw)
    assert a == b


def test_default_critic_shapes():
    for shape in ((1, 28, 28), (3, 32, 32)):
        assert build_default_critic(shape, width=4)(torch.zeros(2, *shape)).shape == (2, 1)


def test_errors(digits):
    with pytest.raises(ValueError, match="n_critic_steps must be an integer >= 1, got 0"):
        neural_divergence(_sampler(digits), digits[:10], **{**_KW, "n_critic_steps": 0})
    with pytest.raises(ValueError, match="generated samples must have per-image shape"):
        neural_divergence(lambda k: torch.zeros(k, 1, 4, 4), digits[:10], **_KW)
    with pytest.raises(ValueError, match=r"real_images must be float in \[-1, 1\]"):
        neural_divergence(_sampler(digits), digits[:10] * 8, **_KW)
    labelled = _sampler(digits)
    with pytest.raises(TypeError, match=r"must return a tensor of images, got tuple"):
        neural_divergence(lambda k: (labelled(k), None), digits[:10], **_KW)


def _never_called(*args):
    raise AssertionError("called before the arguments were checked")


def test_non_finite_real_images_are_refused_before_the_critic_is_built(digits):
    real = digits[:10].clone()
    real[3, 0, 2, 2] = float("nan")  # NaN passes the [-1, 1] range comparison
    kw = {**_KW, "critic_builder": _never_called}
    with pytest.raises(NonFiniteError, match="real_images contain 1 non-finite values"):
        neural_divergence(_never_called, real, **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_generated_samples_are_refused(digits, bad):
    # A diverged generator: every sample of the first batch (32 images of 64 pixels) is bad.
    with pytest.raises(NonFiniteError, match="generated samples contain 2048 non-finite values"):
        neural_divergence(lambda k: torch.full((k, 1, 8, 8), bad), digits[:10], **_KW)


@pytest.mark.parametrize(
    ("arg", "value", "message"),
    [
        ("ema_decay", 1.5, r"ema_decay must lie in \[0, 1\], got 1.5"),
        ("ema_decay", -1.0, r"ema_decay must lie in \[0, 1\], got -1.0"),
        ("ema_decay", float("nan"), r"ema_decay must lie in \[0, 1\], got nan"),
        ("gp_lambda", -1.0, "gp_lambda must be a finite number >= 0, got -1.0"),
        ("gp_lambda", float("inf"), "gp_lambda must be a finite number >= 0, got inf"),
        ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
        ("betas", (1.0, 0.9), r"betas must be two numbers in \[0, 1\), got \(1.0, 0.9\)"),
        ("betas", (0.5,), r"betas must be two numbers in \[0, 1\), got \(0.5,\)"),
    ],
)
def test_numeric_arguments_are_checked_before_any_work(digits, arg, value, message):
    kw = {**_KW, "critic_builder": _never_called, arg: value}
    with pytest.raises(ValueError, match=message):
        neural_divergence(_never_called, digits[:10], **kw)


def test_the_gradient_penalty_is_the_squared_distance_of_the_gradient_norm_from_1():
    critic = nn.Linear(4, 1, bias=False)  # gradient w everywhere, ||w|| = 3: (3 - 1)^2 = 4
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[2.0, 2.0, 1.0, 0.0]]))
    penalty = _gradient_penalty(critic, torch.randn(5, 4), torch.randn(5, 4))
    assert penalty.item() == pytest.approx(4.0)


def test_the_value_reads_the_ema_critic_on_held_out_images_and_the_penalty_counts(digits):
    # Unique real images (a per-image offset), so each one seen by the critic can be traced.
    held = digits[:120] * 0.98 + torch.arange(120.0).view(-1, 1, 1, 1) * 1e-4
    seen = []  # (gradients on?, input): training steps run with them, the evaluation without

    class Spy(nn.Module):  # the evaluated EMA copy records into the same list
        def __init__(self, shape):
            super().__init__()
            self.inner = build_default_critic(shape, width=8)

        def forward(self, x):
            seen.append((torch.is_grad_enabled(), x.detach().clone()))
            return self.inner(x)

    kw = {**_KW, "n_critic_steps": 4, "n_eval_batches": 2}
    noise = lambda k: torch.rand(k, 1, 8, 8) * 2 - 1  # noqa: E731  never equal to a real image
    base = neural_divergence(noise, held, **{**kw, "critic_builder": Spy})[KEY_ND]
    real = {img.numpy().tobytes() for img in held}

    def shown(training: bool) -> set[bytes]:
        return {img.numpy().tobytes() for g, x in seen if g == training for img in x} & real

    assert shown(False) and not shown(False) & shown(True)  # evaluated on images not trained on
    assert neural_divergence(noise, held, **{**kw, "critic_builder": Spy, "ema_decay": 0.0})[
        KEY_ND
    ] != pytest.approx(base)  # the EMA critic is the one evaluated
    assert neural_divergence(noise, held, **{**kw, "critic_builder": Spy, "gp_lambda": 0.0})[
        KEY_ND
    ] != pytest.approx(base)
