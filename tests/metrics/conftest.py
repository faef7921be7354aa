"""Metrics tests run single-threaded: their tensors are tiny, and on a shared, oversubscribed CPU
intra-op threads spin-wait (measured: the divergence test takes 4 s on 1 thread, 110 s on 2)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
