"""The trainer under torchrun with 2 gloo processes on the CPU: one set of logs, identical models
on both ranks, and the same result as one process with the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from stablerank.config.classify import classify_preset
from stablerank.train import classify
from stablerank.train.checkpoint import load_checkpoint
from stablerank.train.results import ClassifierResult
from stablerank.train.rundir import RunDir

# Every rank saves the state it evaluates with, so the test can compare the ranks.
WORKER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from stablerank.config.classify import classify_preset
    from stablerank.train import classify

    run_dir, out = sys.argv[1], sys.argv[2]
    real_evaluate = classify.evaluate

    def recording_evaluate(model, loader, device, info, **kw):
        torch.save(model.state_dict(), f"{out}/rank{info.rank}.pt")
        return real_evaluate(model, loader, device, info, **kw)

    classify.evaluate = recording_evaluate
    run_dir = Path(run_dir)
    cfg = {**eval(sys.argv[3]), "out_dir": str(run_dir.parent), "run_name": run_dir.name}
    stop_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    classify.run(classify_preset("tiny", **cfg), stop_at=stop_at)
    """
)
# MLP without BatchNorm or dropout: with the same global batch the only difference between 1 and
# 2 processes is the float summation order of the gradient mean (all-reduce of two halves).
SETTINGS = dict(norm="srn", rank_ratio=0.5, epochs=2, batch_size=64, progress=False, num_threads=1)


def _torchrun(tmp_path, run_dir, settings, *stop_at):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(run_dir), str(tmp_path), repr(settings), *map(str, stop_at)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    _torchrun(tmp_path, tmp_path / "ddp", SETTINGS)

    # Both ranks evaluated (and rank 0 saved) the same parameters and buffers: SRN's u, v too.
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys() and any(k.endswith("_u") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

    # One set of logs, written by rank 0 only.
    ddp_dir = tmp_path / "ddp"
    lines = (ddp_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    ddp = ClassifierResult.from_json(ddp_dir)
    assert ddp.protocol.world_size == 2
    assert json.loads((ddp_dir / "env.json").read_text())["world_size"] == 2
    # Not the single-process run (each rank's BatchNorm would normalize half the batch), so one
    # process neither takes its result nor continues it, and says why.
    alone = classify_preset("tiny", out_dir=str(tmp_path), run_name=ddp_dir.name, **SETTINGS)
    for cfg in (alone, dataclasses.replace(alone, resume=True)):
        with pytest.raises(FileExistsError, match="trained by 2 process"):
            classify.run(cfg)

    single_dir = tmp_path / "one"
    one = classify.run(
        classify_preset("tiny", out_dir=str(tmp_path), run_name=single_dir.name, **SETTINGS)
    )
    assert one.protocol.world_size == 1
    # Same batches, same init; summation order changes weights by ~1e-7 relative per step, which
    # can flip at most a borderline prediction or two of the 450 test digits (measured: none).
    assert abs(ddp.test_acc - one.test_acc) <= 2 / 450
    a = load_checkpoint(RunDir(ddp_dir).checkpoints()[-1])["model"]
    b = load_checkpoint(RunDir(single_dir).checkpoints()[-1])["model"]
    for k in a:
        # Measured max difference 1.3e-7 (float32 rounding drift over 42 steps); 1e-5 leaves a
        # 100x margin yet is far below what one SGD step changes (lr 0.05 x gradients ~1e-2).
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.slow
def test_stopped_inside_an_epoch_two_ranks_resume_bitwise(tmp_path):
    # Step 30 is batch 9 of epoch 2 (21 global batches of 64 per epoch): the checkpoint holds the
    # epoch's running sums reduced over both ranks, which rank 0 alone carries on resume.
    _torchrun(tmp_path, tmp_path / "straight", SETTINGS)
    _torchrun(tmp_path, tmp_path / "cut", SETTINGS, 30)
    cut = RunDir(tmp_path / "cut")
    assert cut.checkpoints()[-1].name == "step_0000030.pt"
    assert load_checkpoint(cut.checkpoints()[-1])["epoch_sums"][2] == 9 * 64
    _torchrun(tmp_path, cut.path, {**SETTINGS, "resume": True})
    a = load_checkpoint(RunDir(tmp_path / "straight").checkpoints()[-1])["model"]
    b = load_checkpoint(cut.checkpoints()[-1])["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logs = [
        [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")}
         for line in (path / "log.jsonl").read_text().splitlines()]
        for path in (tmp_path / "straight", cut.path)
    ]  # fmt: skip
    # Running train numbers included: the resumed epoch adds the same float32 terms in another
    # order (rank 0 carries the reduced prefix), which float64 sums of ~20 such terms absorb.
    assert logs[0] == logs[1] and len(logs[0]) == 2


@pytest.mark.slow
def test_killing_the_torchrun_agent_ends_its_workers(tmp_path):
    import signal
    import time

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    long = dict(SETTINGS, epochs=200)  # minutes of work: still running when the agent dies
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path / "ddp"), str(tmp_path), repr(long)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    log = tmp_path / "ddp" / "log.jsonl"
    deadline = time.time() + 120
    while not log.exists() and time.time() < deadline:  # the workers are training
        time.sleep(0.5)
    assert log.exists()
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    time.sleep(5)  # SIGTERM reaches the workers at once; give them time to exit
    size = log.stat().st_size
    time.sleep(5)
    assert log.stat().st_size == size  # nobody writes into the run folder any more
