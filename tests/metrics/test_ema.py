"""The one EMA update (GAN trainer's EMA generator, neural-divergence critic): parameters move by
exactly (1 - decay) of the gap, buffers are copied, parametrized weights average their originals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from stablerank.metrics import ema_update


def _pair(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    parametrizations.spectral_norm(model[2])
    ema = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    parametrizations.spectral_norm(ema[2])
    model.train()
    model(torch.randn(8, 3))  # BatchNorm statistics and SN vectors move away from ema's
    return ema, model


def test_parameters_lerp_and_buffers_copy():
    ema, model = _pair(0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    ema_update(ema, model, 0.75)
    after = ema.state_dict()
    params = {n for n, _ in ema.named_parameters()}
    assert "2.parametrizations.weight.original" in params  # the SN original is what is averaged
    for name, value in after.items():
        if name in params:
            expected = before[name] + 0.25 * (model_state[name] - before[name])
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
        else:  # running_mean/var, num_batches_tracked, SN _u/_v: copies of the model's
            assert torch.equal(value, model_state[name]), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, model_state[name]), f"model changed: {name}"


def test_decay_ends():
    ema, model = _pair(1)
    start = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 1.0)
    assert all(torch.equal(p, s) for p, s in zip(ema.parameters(), start, strict=True))
    ema_update(ema, model, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(ema.parameters(), model.parameters(), strict=True))


def test_errors():
    ema, model = _pair(2)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\], got 1.5"):
        ema_update(ema, model, 1.5)
    with pytest.raises(ValueError):  # a different architecture cannot be paired up
        ema_update(nn.Linear(3, 4), model, 0.5)


@pytest.mark.parametrize(
    ("ema", "model", "message"),
    [
        (  # a shape differs
            nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
            nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3)),
            r"parameters do not pair up at parameter 2: ema has 1.weight \(2, 4\), "
            r"model has 1.weight \(3, 4\)",
        ),
        (  # model has more parameters
            nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)),
            nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 2)),
            r"parameters do not pair up at parameter 4: ema has none, model has 2.weight \(2, 2\)",
        ),
        (  # parameters pair up, buffers do not
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)),
            r"buffers do not pair up at buffer 0: ema has 1.running_mean \(4,\), model has none",
        ),
    ],
    ids=["shape", "count", "buffers"],
)
def test_models_that_do_not_pair_up_are_refused_before_ema_changes(ema, model, message):
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        ema_update(ema, model, 0.5)
    after = ema.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
