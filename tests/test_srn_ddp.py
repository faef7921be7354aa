"""DDP (2 gloo processes on CPU, launched by torchrun): the SRN vectors stay identical across
ranks and training matches between ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    import stablerank as sr
    from stablerank.train.runtime import end_worker, init_distributed

    info, device = init_distributed("cpu")
    torch.manual_seed(0)  # same init on both ranks
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    sr.apply_stable_rank_norm(net, 0.5)
    model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + info.rank)  # different data per rank
    for _ in range(5):
        x = torch.randn(8, 6, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    state = {k: v.tolist() for k, v in net.state_dict().items()}
    with open(os.path.join(sys.argv[1], f"rank{info.rank}.json"), "w") as fh:
        json.dump(state, fh)
    end_worker(info)
    """
)


@pytest.mark.slow
def test_ddp_two_ranks_keep_identical_vectors_and_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0.keys() == r1.keys() and any(k.endswith("_u") for k in r0)
    for k in r0:
        assert r0[k] == r1[k], k
