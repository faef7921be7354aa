"""Helpers shared by the metric modules: argument and finiteness checks, a seeded RNG scope and
an eval-mode scope."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def check_positive_int(name: str, value: int) -> int:
    """``value`` as a Python int; ValueError naming ``name`` unless it is an integer >= 1 (a
    numpy integer too, returned as an int so that it can be written to JSON)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_generated(batch: object, k: int) -> Tensor:
    """What ``generate(k)`` returned, refused unless it is a tensor of ``k`` images."""
    if not isinstance(batch, Tensor):
        raise TypeError(
            f"generate({k}) must return a tensor of images, got {type(batch).__name__} "
            "(make_generate's with_labels=False does)"
        )
    if batch.shape[0] != k:
        raise ValueError(f"generate({k}) returned {batch.shape[0]} images")
    return batch


def described(value: object) -> str:
    """How an error names a value of the wrong kind: a tensor by its dtype, else by its type."""
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__


def check_seed(seed: object) -> int:
    """``seed`` as a Python int; TypeError unless it is an integer (a bool is not)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return int(seed)


class NonFiniteError(ValueError):
    """Samples, features or logits that hold NaN or inf: a diverged network gives no score."""


def check_finite(values: Tensor, what: str) -> None:
    """Raise ValueError naming ``what`` unless every value is finite (no NaN, no inf).

    Called before any BLAS/LAPACK routine sees the data: NaN inputs to eigensolvers can crash
    the process instead of raising. Integer tensors are always finite. One device sync.
    """
    if not values.dtype.is_floating_point and not values.dtype.is_complex:
        return
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        raise NonFiniteError(
            f"{what} contain {n_bad} non-finite values (NaN or inf) out of {values.numel()}; "
            "a diverged generator or network gives no score: check the samples or weights"
        )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state (CPU and CUDA) after it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def eval_mode(model: nn.Module | Callable[..., Tensor]) -> Iterator[None]:
    """Put ``model`` (all submodules) in eval mode, restoring each submodule's own mode on exit.

    A measurement is then repeatable and has no side effects: BatchNorm uses its running
    statistics, and SN/SRN weights are read with frozen u, v (in training mode each read of such
    a weight runs a power-iteration step that updates them). A plain callable is used as it is
    (its modules' modes are the caller's business).
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
