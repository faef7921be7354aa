"""Pipeline behaviour with fake runners: skip finished runs, resume interrupted ones, record a
failure without stopping the others, re-analyse when only the analysis settings change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stablerank.repro import pipeline
from stablerank.repro.plan import build_plan, run_dir_of, run_state


def _status(spec) -> dict:
    return json.loads((run_dir_of(spec) / "status.json").read_text())


def test_rerun_skips_finished_runs(small_config, fake, no_report):
    cfg = small_config()
    specs = build_plan(cfg)
    report = pipeline.run(cfg, runners=fake.runners())
    assert report.name == "report.md"
    assert sorted(fake.trained()) == sorted(s.name for s in specs)
    assert all(_status(s)["status"] == "done" for s in specs)
    assert all(run_state(s) == "done" for s in specs)
    fake.calls.clear()
    pipeline.run(cfg, runners=fake.runners())
    assert fake.calls == []  # nothing trained, analysed or evaluated again


def test_interrupted_run_resumes_and_only_the_rest_runs(small_config, fake, no_report):
    cfg = small_config()
    specs = build_plan(cfg)
    victim = specs[4]  # mid-plan: runs 0-3 finish, 4 is interrupted, 5+ never start
    fake.interrupt = {victim.slug}
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, runners=fake.runners())
    assert _status(victim)["status"] == "interrupted" and run_state(victim) == "partial"
    assert [run_state(s) for s in specs[5:]] == ["new"] * len(specs[5:])
    fake.calls.clear()
    pipeline.run(cfg, runners=fake.runners())
    trained = fake.calls
    # Only the interrupted run (resumed from its checkpoint) and the never-started ones ran.
    assert [n for k, n, _ in trained if k == "train"] == [s.name for s in specs[4:]]
    assert ("train", victim.name, True) in trained
    assert all(resume is False for k, n, resume in trained if n != victim.name)
    status = _status(victim)
    assert status["status"] == "done" and status["attempts"] == 2
    assert status["wall_time_s"] >= 0


def test_failure_is_recorded_and_the_others_finish(small_config, fake, no_report):
    cfg = small_config()
    specs = build_plan(cfg)
    victim = specs[1]
    fake.fail = {victim.slug}
    pipeline.run(cfg, runners=fake.runners())
    status = _status(victim)
    assert status["status"] == "failed" and "synthetic failure" in status["error"]
    assert "RuntimeError: synthetic failure" in (run_dir_of(victim) / "error.txt").read_text()
    assert all(_status(s)["status"] == "done" for s in specs if s is not victim)
    # A rerun retries only the failed run.
    fake.fail, fake.calls = set(), []
    pipeline.run(cfg, runners=fake.runners())
    assert fake.trained() == [victim.name]


def test_failure_stops_the_plan_when_asked(small_config, fake):
    cfg = small_config(continue_on_error=False)
    specs = build_plan(cfg)
    fake.fail = {specs[0].slug}
    with pytest.raises(RuntimeError, match="synthetic failure"):
        pipeline.run(cfg, runners=fake.runners())
    assert fake.trained() == [specs[0].name]


def test_new_analysis_settings_reanalyse_without_retraining(small_config, fake, no_report):
    pipeline.run(small_config(), runners=fake.runners())
    fake.calls.clear()
    pipeline.run(small_config(n_pairs=30), runners=fake.runners())
    kinds = {k for k, _, _ in fake.calls}
    assert kinds == {"analyze"}  # same training folders (hash unchanged), analysis redone
    assert len(fake.calls) == 6  # the 6 clean-label runs


def test_refuses_to_run_under_torchrun(small_config, fake, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="nproc-per-node"):
        pipeline.run(small_config(), runners=fake.runners())


def test_torchrun_launcher_command(small_config, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        pipeline.subprocess, "run", lambda argv, check: seen.setdefault("argv", argv)
    )
    spec = build_plan(small_config(nproc_per_node=2))[0]
    runners = pipeline.default_runners(small_config(nproc_per_node=2))
    runners.train_classifier(spec.config)
    argv = seen["argv"]
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert argv[6:8] == ["stablerank", "train"]
    launch = json.loads(Path(argv[-1]).read_text())
    assert launch["run_dir"] == spec.config.run_dir and launch["seed"] == spec.config.seed
