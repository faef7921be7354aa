"""``stablerank reproduce`` end to end on the tiny sweep: the three executors give bitwise-equal
results, reruns skip finished runs, failures are recorded while the others go on, a locked run is
left to its owner, and the report and claims.json are written from what finished."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from stablerank.config.reproduce import SWEEP_NAMES, ReproduceConfig
from stablerank.repro import execute as execute_module
from stablerank.repro import executors, pipeline, sweeps
from stablerank.repro.execute import execute, run_state
from stablerank.train.results import ClassifierResult
from stablerank.train.rundir import HELD_LOCKS_ENV, RunDir

pytestmark = pytest.mark.slow


def _cfg(out: Path, **kw) -> ReproduceConfig:
    return ReproduceConfig(**{"sweep": "tiny", "out_dir": str(out), "seeds": 1, "progress": False,
                              "device": "cpu", **kw})  # fmt: skip


def test_sweep_names_match_the_config_choices():
    assert set(sweeps.SWEEPS) == set(SWEEP_NAMES)


def test_the_trainer_table_matches_the_cli_and_the_configs():
    """Each trainer's command starts its config class, its trainer and its analysis, and its norm
    field is what the sweeps vary (the one place that tells a classifier run from a GAN)."""
    from stablerank import cli

    for config_cls, trainer in sweeps.TRAINERS.items():
        command = cli._COMMANDS[trainer.command]
        assert command.config.endswith(":" + config_cls.__name__)
        assert command.runner == f"{trainer.train_module}:run"
        assert trainer.norm_field in config_cls.__dataclass_fields__
        assert trainer.result.FILE == "metrics.json"
    runs = sweeps.tiny()
    assert {r.norm for r in runs} == {"none", "sn", "srn"}
    assert {r.trainer.result.__name__ for r in runs} == {"ClassifierResult", "GanResult"}


def test_every_sweep_builds_with_distinct_folders():
    for name, make in sweeps.SWEEPS.items():
        runs = make()
        assert len({r.name for r in runs}) == len(runs), name
        assert sweeps._compared_unlike(runs) == "", name  # arms differ in norm, c, seed alone
        # seeds and arms: each setting has vanilla (classifiers), SN and SRN on every seed
        for kind in {r.kind for r in runs}:
            arms = {r.arm for r in runs if r.kind == kind}
            assert "sn" in arms and any(a.startswith("srn") for a in arms), (name, kind)


def test_the_first_layer_sweep_keeps_quicks_folders_and_a_setting_mixing_first_layers_is_refused():
    script = Path(__file__).parents[2] / "scripts" / "sweep_gan_first_sn.py"
    runs = sweeps._own_sweep(f"{script}:gan_first_sn")(gan_seeds=1)
    assert sweeps._compared_unlike(runs) == ""
    quick_gan = {r.name for r in sweeps.quick(seeds=1, gan_seeds=1) if r.kind == sweeps.KIND_GAN}
    assert quick_gan < {r.name for r in runs}  # the same folders as quick's: copied, not redone
    mixed = [dataclasses.replace(r, setting="one") for r in runs if r.norm == "srn"]
    assert "differ in d_first_norm: 'same' -> 'sn'" in sweeps._compared_unlike(mixed)


def test_fields_one_arm_leaves_unread_may_differ_but_not_between_arms_that_read_them(monkeypatch):
    base = sweeps.tiny(seeds=1)[0].config  # vanilla: head and n_power_iterations unread
    runs = sweeps.comparison("classify", "digits/mlp", base, (0.3,), 2)
    assert sweeps._compared_unlike(runs) == ""
    head = [dataclasses.replace(r, config=dataclasses.replace(r.config, head="sn"))
            if r.norm != "none" else r for r in runs]  # fmt: skip
    assert sweeps._compared_unlike(head) == ""  # vanilla never reads head
    srn_only = [dataclasses.replace(r, config=dataclasses.replace(r.config, head="sn"))
                if r.norm == "srn" else r for r in runs]  # fmt: skip
    assert "differ in head: " in sweeps._compared_unlike(srn_only)  # SN reads it too
    # Two settings whose names differ only in "/" vs "-" would share run folders: refused.
    slashed = sweeps.comparison("classify", "digits-mlp", base, (0.3,), 1)
    monkeypatch.setitem(sweeps.SWEEPS, "tiny", lambda seeds=1, gan_seeds=1: runs[:3] + slashed)
    with pytest.raises(ValueError, match=r"holds runs of one folder: .*differ only in '/'"):
        sweeps.build_sweep(ReproduceConfig(sweep="tiny", out_dir="/tmp/unused"))


# Folder names of runs on disk: the quick demo's and the standard sweep's 100 runs behind
# docs/results/standard. A change to a trainer config's fields or defaults, to the analysis
# settings or to the hash renames every folder, and `reproduce` then trains everything again
# beside the old runs: change these only on purpose, and say so in the CHANGELOG.
_FOLDERS_ON_DISK = {
    "quick": ("classify-fashion-mnist-mlp-none-s0-95a202fd5070",
              "shatter-fashion-mnist-mlp-srn0.05-s0-e33728d05622",
              "gan-fashion-mnist-gan-cnn16-sn-s0-f0b9dca0d62d"),
    "standard": ("classify-fashion-mnist-small_cnn-bn-srn0.1-s0-260efc92bd95",
                 "classify-fashion-mnist-alexnet-srn0.2-s0-3c88fe4a1f74",
                 "shatter-fashion-mnist-mlp-none-s0-7c0bc9ae2d4f",
                 "gan-fashion-mnist-gan-cnn32-srn0.2-s0-b7adfc846d43"),
}  # fmt: skip


def test_a_ddp_run_has_its_own_folder(tmp_path):
    """Under torchrun each rank's BatchNorm normalizes its share of the batch and the gradients
    sum in another order (another computation, for a GAN and a classifier alike): a DDP run must
    not be taken for, or resumed as, the single-process one."""

    def names(nproc: int) -> set[str]:
        return {r.name for r in sweeps.build_sweep(_cfg(tmp_path, nproc_per_node=nproc))}

    one, two = names(1), names(2)
    assert one.isdisjoint(two) and len(two) == len(one)


def test_the_sweeps_keep_the_folder_names_of_the_runs_on_disk():
    for sweep, names in _FOLDERS_ON_DISK.items():
        assert set(names) <= {r.name for r in sweeps.SWEEPS[sweep]()}, sweep


def test_runtime_settings_reach_every_run_and_leave_its_folder_name():
    plain = sweeps.build_sweep(_cfg(Path("out"), seeds=0))
    placed = sweeps.build_sweep(_cfg(Path("out"), seeds=0, threads=2, deterministic=True))
    assert [r.name for r in placed] == [r.name for r in plain]
    assert all(r.config.deterministic and r.config.num_threads == 2 for r in placed)
    assert all(r.analysis.deterministic for r in placed if r.analysis)
    assert not any(r.config.deterministic for r in plain)


def _seeds_per_arm(runs: list[sweeps.Run]) -> dict[tuple[str, str, str], set[int]]:
    seeds: dict[tuple[str, str, str], set[int]] = {}
    for r in runs:
        seeds.setdefault((r.kind, r.setting, r.arm), set()).add(r.seed)
    return seeds


def test_every_setting_of_the_paper_sweep_trains_and_is_analysed(tmp_path, monkeypatch):
    """Each model, shattering run and GAN of the ``paper`` sweep (SRN, its smallest c) runs its
    real config, shrunk to a step or two, through ``execute`` on CIFAR-10-shaped data (none is
    here): a config that cannot train or be analysed would otherwise surface on a cluster, hours
    in. Not checked here: CUDA, and Inception scoring (no torch-fidelity; scores are off)."""
    from stablerank.data import DatasetSplits
    from stablerank.data.splits import channel_stats
    from stablerank.train import classify, gan, gan_analysis

    gen = torch.Generator().manual_seed(0)

    def cifar_shaped(name, data_dir=None):
        x, tx = (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
                 for n in (32, 16))  # fmt: skip
        y, ty = (torch.randint(0, 10, (n,), generator=gen) for n in (32, 16))
        return DatasetSplits(name, x, y, tx, ty, 10, 3, 32, *channel_stats(x, 255.0))

    for module in (classify, gan, gan_analysis):
        monkeypatch.setattr(module, "load_dataset", cifar_shaped)
    runs = sweeps.build_sweep(
        dataclasses.replace(_cfg(tmp_path), sweep="paper", threads=1, progress=False)
    )
    first_srn = {}
    for run in runs:
        if run.norm == "srn":
            first_srn.setdefault((run.kind, run.setting), run)
    assert len(first_srn) == 7  # five classifiers, shattering, the GAN
    for run in first_srn.values():
        if run.kind == sweeps.KIND_GAN:
            config = dataclasses.replace(
                run.config, g_steps=2, batch_size=16, log_every=1, eval_every=0,
                n_final_samples=0, sample_every=0,
            )  # fmt: skip
            analysis = dataclasses.replace(run.analysis, nd_critic_steps=2, nd_eval_batches=1,
                                           d_el_pairs=4, nd_batch_size=16)  # fmt: skip
        else:
            config = dataclasses.replace(run.config, epochs=1, batch_size=16, train_subset=0,
                                         train_eval_size=0, test_eval_size=0)  # fmt: skip
            analysis = run.analysis and dataclasses.replace(
                run.analysis, n_pairs=4, n_jacobian=1, n_interpolated=1, jacobian_iterations=1,
                n_margin=16, batch_size=16,
            )  # fmt: skip
        outcome = execute(dataclasses.replace(run, config=config, analysis=analysis))
        assert outcome.state == "done", (run.name, outcome.error)


def test_a_sweep_of_your_own_runs_from_its_file_and_a_bad_one_is_refused_before_any_run(
    tmp_path,
):
    sweep_file = tmp_path / "my sweeps" / "my_sweeps.py"  # a folder with a space in its name
    sweep_file.parent.mkdir()
    sweep_file.write_text(
        "from __future__ import annotations\n"
        "import dataclasses\n"
        "from stablerank.config.classify import classify_preset\n"
        "from stablerank.repro import sweeps\n\n"
        "def mine(seeds=1, gan_seeds=1):\n"
        "    base = classify_preset('tiny', epochs=1, train_subset=128, test_eval_size=0)\n"
        "    return sweeps.comparison('classify', 'digits/mlp-mine', base, (0.1,), seeds)\n\n"
        "def empty(seeds=1, gan_seeds=1):\n"
        "    return []\n\n"
        "def configs(seeds=1, gan_seeds=1):\n"
        "    return [run.config for run in mine()]\n\n"
        "def no_gan_seeds(seeds=1):\n"
        "    return mine(seeds)\n\n"
        "def twice(seeds=1, gan_seeds=1):\n"
        "    return mine() + mine()\n\n"
        "def per_c(seeds=1, gan_seeds=1):\n"  # one comparison per c: vanilla, SN twice
        "    base = classify_preset('tiny', epochs=1, train_subset=128, test_eval_size=0)\n"
        "    return [r for c in (0.1, 0.3) for r in sweeps.comparison('classify',\n"
        "        'digits/mlp-mine', dataclasses.replace(base, rank_ratio=c), (c,), seeds)]\n\n"
        "def per_c_one_base(seeds=1, gan_seeds=1):\n"  # the same vanilla and SN runs twice
        "    base = classify_preset('tiny', epochs=1, train_subset=128, test_eval_size=0)\n"
        "    return [r for c in (0.1, 0.3) for r in sweeps.comparison('classify',\n"
        "        'digits/mlp-mine', base, (c,), seeds)]\n\n"
        "def gan_of_classifiers(seeds=1, gan_seeds=1):\n"
        "    return [dataclasses.replace(r, kind='gan') for r in mine()]\n\n"
        "def clean_shatter(seeds=1, gan_seeds=1):\n"  # claim 2 without random labels
        "    return [dataclasses.replace(r, kind='shatter') for r in mine()]\n\n"
        "def vanilla_head(seeds=1, gan_seeds=1):\n"  # a field vanilla never reads may differ
        "    return [dataclasses.replace(r, config=dataclasses.replace(r.config, head='sn'))\n"
        "            if r.norm == 'none' else r for r in mine()]\n\n"
        "def broken(seeds=1, gan_seeds=1):\n"
        "    return {}['boom']\n\n"
        "def unlike(seeds=1, gan_seeds=1):\n"  # SRN trained longer: not the claims' comparison
        "    return [dataclasses.replace(r, config=dataclasses.replace(r.config, epochs=3))\n"
        "            if r.norm == 'srn' else r for r in mine()]\n\n"
        "@dataclasses.dataclass\n"  # needs its module in sys.modules as the file is read
        "class Grid:\n"
        "    c: float = 0.1\n"
    )

    def own(out, spec):
        return dataclasses.replace(_cfg(out), sweep=spec)

    done = pipeline.run(own(tmp_path / "out", f"{sweep_file}:mine"))
    assert list(done.runs.values()) == ["done"] * 3  # vanilla, SN, SRN at c = 0.1; one seed
    assert "digits/mlp-mine" in done.report.read_text()
    for spec, error in (
        (f"{sweep_file}:empty", r"got an empty list"),
        (f"{sweep_file}:configs", r"got a list holding ClassifyConfig"),  # not wrapped in Runs
        (f"{sweep_file}:no_gan_seeds", r"cannot be called with {'seeds': 1, 'gan_seeds': 1}"),
    ):
        with pytest.raises(TypeError, match=error):
            pipeline.run(own(tmp_path / "bad", spec))
    with pytest.raises(RuntimeError, match=r"sweep '.*my_sweeps.py:broken' raised KeyError"):
        pipeline.run(own(tmp_path / "bad", f"{sweep_file}:broken"))
    with pytest.raises(ValueError, match=r"differ in epochs: 1 -> 3; the claims compare"):
        pipeline.run(own(tmp_path / "bad", f"{sweep_file}:unlike"))
    for spec, error in (
        ("per_c", r"two runs of one arm and seed .*'classify/digits/mlp-mine/none/0'"),
        ("per_c_one_base", r"two runs of one arm and seed .*one comparison\(\) with every c"),
        ("gan_of_classifiers", r"a run of kind 'gan' needs a GanConfig, got a ClassifyConfig"),
        ("clean_shatter", r"kind 'shatter' \(claim 2: fitting random labels\) needs label_noise"),
    ):
        with pytest.raises(ValueError, match=error):
            pipeline.run(own(tmp_path / "bad", f"{sweep_file}:{spec}"))
    cfg = own(tmp_path / "out", f"{sweep_file}:vanilla_head")
    assert len(sweeps.build_sweep(cfg)) == 3
    for spec, error in (
        (f"{sweep_file}:twice", ValueError),
        (f"{sweep_file}:nope", ValueError),
        (f"{tmp_path / 'missing.py'}:mine", FileNotFoundError),
        ("no_such_module:mine", ModuleNotFoundError),
    ):
        with pytest.raises(error):
            pipeline.run(own(tmp_path / "bad", spec))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match=r"MODULE:FUNCTION or FILE\.py:FUNCTION"):
        ReproduceConfig(sweep="mine")
    out = ReproduceConfig(sweep=f"{sweep_file}:mine").resolved_out_dir
    assert out == "runs/reproduce-my_sweeps-mine"  # not the built-in sweep of the same name


def test_sweeps_have_the_seeds_per_arm_the_issue_asks_and_gans_ten():
    for make, n in ((sweeps.quick, 3), (sweeps.standard, 5)):
        for (kind, *_), seeds in _seeds_per_arm(make()).items():
            assert len(seeds) >= (10 if kind == sweeps.KIND_GAN else n)


def test_the_gan_c_sweep_reuses_quicks_gan_runs(tmp_path):
    """scripts/sweep_gan_c.py (docs/results/gan-c/) read quick's SN and c = 0.1 runs from their
    folders: its runs must stay quick's GAN runs with c and seed replaced."""
    script = Path(__file__).parents[2] / "scripts" / "sweep_gan_c.py"

    def names(sweep, **kw):
        cfg = ReproduceConfig(sweep=sweep, out_dir=str(tmp_path), **kw)
        return {r.name for r in sweeps.build_sweep(cfg) if r.kind == sweeps.KIND_GAN}

    gan_c = names(f"{script}:gan_c", gan_seeds=3)
    assert len(gan_c) == 3 * 5  # SN and four c, three seeds each
    assert names("quick", gan_seeds=3) < gan_c  # quick's SN and c = 0.1 runs among them


def test_seeds_option_sets_every_arm_gans_included_and_gan_seeds_the_gans_alone(tmp_path):
    def seeds_per_kind(**kw):
        runs = sweeps.build_sweep(ReproduceConfig(sweep="quick", out_dir=str(tmp_path), **kw))
        return {(kind, len(s)) for (kind, *_), s in _seeds_per_arm(runs).items()}

    gan, classify, shatter = sweeps.KIND_GAN, sweeps.KIND_CLASSIFY, sweeps.KIND_SHATTER
    assert seeds_per_kind() == {(classify, 5), (gan, 10), (shatter, 5)}  # the sweep's own
    assert seeds_per_kind(seeds=3) == {(classify, 3), (gan, 3), (shatter, 3)}
    # The seeds a report says would decide claim 4, without as many of every classifier arm.
    assert seeds_per_kind(gan_seeds=41) == {(classify, 5), (gan, 41), (shatter, 5)}
    assert seeds_per_kind(seeds=2, gan_seeds=12) == {(classify, 2), (gan, 12), (shatter, 2)}


def test_executors_give_bitwise_equal_results_and_rerun_skips(tmp_path, sweep_results):
    outs = {}
    for executor, extra in (("sequential", {}), ("local", {"workers": 2}),
                            ("submitit-local", {"workers": 2})):  # fmt: skip
        out = tmp_path / executor
        done = pipeline.run(_cfg(out, executor=executor, **extra))
        assert done.report == out / "report.md" and done.report.is_file()
        assert set(done.runs.values()) == {"done"} and set(done.verdicts) == {1, 2, 3, 4, 5}
        outs[executor] = sweep_results(out)
    assert outs["sequential"] and outs["sequential"] == outs["local"] == outs["submitit-local"]
    claims = json.loads((tmp_path / "sequential" / "claims.json").read_text())
    assert [c["number"] for c in claims["claims"]] == [1, 2, 3, 4, 5]
    # A rerun finds everything finished.
    runs = sweeps.build_sweep(_cfg(tmp_path / "sequential"))
    assert all(execute(r).state == "skipped" for r in runs)
    # A finished run whose result or analysis file was damaged or deleted is not counted (the
    # report says why), and a rerun makes the file again: the same numbers, scored again from
    # the final checkpoint, or analysed again. (Reruns used to skip such a run: the claims
    # silently lost a seed.)
    analysed = next(r for r in runs if r.analysis is not None and r.kind != runs[0].kind)
    (runs[0].run_dir / "metrics.json").write_text("{")
    (analysed.run_dir / analysed.trainer.analysis.FILE).unlink()
    assert run_state(runs[0]) == run_state(analysed) == "partial"
    report = pipeline.run(_cfg(tmp_path / "sequential", report_only=True)).report.read_text()
    assert report.count("a rerun scores its final checkpoint again") == 1
    assert report.count("a rerun analyses it again") == 1
    done = pipeline.run(_cfg(tmp_path / "sequential"))
    assert {done.runs[r.name] for r in (runs[0], analysed)} == {"done"}
    assert sweep_results(tmp_path / "sequential") == outs["sequential"]
    # Finished runs need no data: a rerun where the data is gone still writes the report.
    gone = _cfg(tmp_path / "sequential", data_dir=str(tmp_path / "gone"))
    assert pipeline.run(gone).report.is_file()


def _differences(a, b, path: str = "") -> list[str]:
    """The leaves where two JSON values differ, named by their path."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for k, (x, y) in pairs for d in _differences(x, y, f"{path}/{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_executors_on_a_gpu_train_each_run_there_with_equal_results(tmp_path, sweep_results):
    """The test above on a GPU: the pool's default (one worker per GPU, which it sees through
    CUDA_VISIBLE_DEVICES), two workers sharing one GPU, and submitit's local jobs, with
    deterministic kernels (without them cuDNN's kernels make GAN runs differ by rounding, whatever
    the executor: docs/reproduction.md)."""
    import importlib.util

    setups = [("sequential", {}), ("local", {}), ("local", {"workers": 2})]
    if importlib.util.find_spec("submitit"):
        setups.append(("submitit-local", {}))
    outs = {}
    for executor, extra in setups:
        out = tmp_path / f"{executor}{extra.get('workers', '')}"
        done = pipeline.run(
            _cfg(out, executor=executor, device="cuda", deterministic=True, **extra)
        )
        assert set(done.runs.values()) == {"done"}, (out.name, done.runs)
        for run_dir in (out / sweeps.RUNS_DIR).iterdir():
            env = json.loads((run_dir / "env.json").read_text())
            assert env["device"].startswith("cuda") and env["cuda_device"], (run_dir, env)
        outs[out.name] = sweep_results(out)
    reference = outs.pop("sequential")
    for name, found in outs.items():
        differences = _differences(reference, found)
        files = sorted({"/".join(d.split("/")[1:3]) for d in differences})  # run/file
        assert not differences, f"{name}: {len(differences)} in {files}: {differences[:5]}"


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    runs = sweeps.build_sweep(_cfg(tmp_path))
    victim = runs[0]
    real = execute_module._train

    def failing(run):
        if run.name == victim.name:
            raise RuntimeError("boom")
        return real(run)

    monkeypatch.setattr(execute_module, "_train", failing)
    report = pipeline.run(_cfg(tmp_path, executor="sequential")).report
    status = RunDir(victim.run_dir).read_status()
    assert status["status"] == "failed" and "boom" in status["error"]
    assert "boom" in (victim.run_dir / "error.txt").read_text()
    # Listed under the runs not counted, with the error and the stage it happened in.
    assert f"| {victim.name} | failed | in train: RuntimeError: boom |" in report.read_text()
    others = [r for r in runs if r.name != victim.name]
    assert all(RunDir(r.run_dir).read_status()["status"] == "done" for r in others)
    # The command's last line counts it too, not only its line among the others'.
    last = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("ran "))
    assert last.startswith(f"ran {len(runs)} runs (") and "1 failed" in last, last
    assert f"{len(others)} done" in last, last
    # The same command retries the failed run only.
    monkeypatch.setattr(execute_module, "_train", real)
    assert execute(victim).state == "done"
    pipeline.run(_cfg(tmp_path, executor="sequential"))  # all finished: no time on their lines
    skipped = [line for line in capsys.readouterr().err.splitlines() if " skipped " in line]
    assert len(skipped) == len(runs) and not any(line.endswith(" s)") for line in skipped)


def test_a_locked_run_is_left_to_its_owner(tmp_path):
    run = sweeps.build_sweep(_cfg(tmp_path))[0]
    run.run_dir.mkdir(parents=True)
    # Another process holds the run's lock (the lock is re-entrant within one process tree).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(run.run_dir / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert execute(run).state == "busy"
    finally:
        holder.kill()
        holder.wait()
    assert execute(run).state == "done"


def test_a_run_another_process_finished_before_the_lock_was_taken_is_skipped(tmp_path, monkeypatch):
    """Another ``reproduce`` may finish a run between this one's look at its status and its
    taking the lock: the status is read again under the lock, and the run is not redone."""
    run = sweeps.build_sweep(_cfg(tmp_path))[0]
    assert execute(run).state == "done"  # by the other
    first_look = iter(["partial"])  # what this process saw before the other one finished
    real_state = execute_module.run_state
    monkeypatch.setattr(execute_module, "run_state", lambda r: next(first_look, real_state(r)))

    def train_again(run):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(execute_module, "_train", train_again)
    assert execute(run).state == "skipped"


def test_an_unexpected_error_outside_the_run_still_releases_its_lock(tmp_path, monkeypatch):
    run = sweeps.build_sweep(_cfg(tmp_path))[0]
    RunDir(run.run_dir).write_status(attempts="not a number")  # a hand-edited status.json

    with pytest.raises(ValueError):
        execute(run)
    assert str(run.run_dir.resolve()) not in os.environ.get(HELD_LOCKS_ENV, "")
    RunDir(run.run_dir).write_status(attempts=0)
    assert execute(run).state == "done"  # the lock was released: the run is not "busy"


def test_a_run_reads_running_while_its_analysis_runs(tmp_path, monkeypatch):
    # The trainer writes `done` when training ends; the analysis that follows is still work.
    run = next(r for r in sweeps.build_sweep(_cfg(tmp_path)) if r.analysis is not None)
    seen = []
    real = sweeps.Trainer.analyse

    def spy(self, settings, run_dir):
        seen.append(RunDir(run_dir).read_status())
        return real(self, settings, run_dir)

    monkeypatch.setattr(sweeps.Trainer, "analyse", spy)
    assert execute(run).state == "done"
    assert seen[0]["status"] == "running" and seen[0]["stage"] == "analysis"
    assert RunDir(run.run_dir).read_status()["status"] == "done"


def _classify_run_with_analysis(tmp_path):
    runs = sweeps.build_sweep(_cfg(tmp_path))
    return next(r for r in runs if r.kind == sweeps.KIND_CLASSIFY and r.analysis is not None)


def test_a_run_whose_analysis_settings_changed_is_not_finished(tmp_path):
    run = _classify_run_with_analysis(tmp_path)
    assert execute(run).state == "done"
    folder = RunDir(run.run_dir)
    folder.write_status(analysis_key="the digest of other analysis settings")
    assert execute_module.run_state(run) == "partial"  # its analysis runs again
    folder.write_status(analysis_key=run.digest)
    assert execute_module.run_state(run) == "done"


def test_a_run_analysed_by_hand_with_other_settings_is_analysed_again_not_counted(tmp_path, capsys):
    """``analyze`` / ``gan-analyze`` run by hand in a sweep's run folder replace its analysis file
    with numbers of other settings (status.json still says done): the report must not compare
    them with the other runs', and a rerun analyses the run again with the sweep's settings."""
    from stablerank.config.classify import AnalyzeConfig
    from stablerank.config.gan import GanAnalysisConfig

    cfg = dataclasses.replace(_cfg(tmp_path), executor="sequential")
    pipeline.run(cfg)
    runs = [r for r in sweeps.build_sweep(cfg) if r.analysis is not None]
    by_kind = {r.kind: r for r in runs}  # a classifier, a shatter and a GAN run
    before = {k: r.trainer.analysis.from_json(r.run_dir) for k, r in by_kind.items()}
    assert all(a.settings for a in before.values())  # each file says what it was made with
    # By hand, with the commands' defaults (more pairs and critic steps than the tiny sweep's).
    hand = {AnalyzeConfig: AnalyzeConfig(plots=False), GanAnalysisConfig: GanAnalysisConfig()}
    for run in by_kind.values():
        run.trainer.analyse(hand[type(run.analysis)], run.run_dir)
        assert execute_module.run_state(run) == "partial"

    capsys.readouterr()
    outcome = pipeline.run(dataclasses.replace(cfg, report_only=True))
    assert {outcome.runs[r.name] for r in by_kind.values()} == {"partial"}
    report = (tmp_path / "report.md").read_text()
    assert report.count("analysed under other settings than the sweep's: a rerun analyses it "
                        "again") == len(by_kind)  # fmt: skip

    outcome = pipeline.run(cfg)  # analysed again, with the sweep's settings
    assert {outcome.runs[r.name] for r in by_kind.values()} == {"done"}
    for kind, run in by_kind.items():
        assert run.trainer.analysis.from_json(run.run_dir) == before[kind], kind


def test_a_run_whose_files_do_not_read_back_is_failed_not_finished(tmp_path, monkeypatch):
    # Recorded as done, such a run would be made again by every rerun and reported finished
    # each time.
    run = _classify_run_with_analysis(tmp_path)
    why = "metrics.json is not a valid ClassifierResult file: a rerun scores its final checkpoint"
    monkeypatch.setattr(execute_module, "read_finished", lambda *a, **k: (None, None, why))
    outcome = execute(run)
    assert outcome.state == "failed" and f"its files do not read back: {why}" in outcome.error
    status = RunDir(run.run_dir).read_status()
    assert status["status"] == "failed" and status["stage"] == "analysis"  # the last stage run
    assert "its files do not read back" in RunDir(run.run_dir).error_file.read_text()


def test_each_attempt_is_counted_and_the_wall_time_adds_up(tmp_path, monkeypatch):
    import time

    run = _classify_run_with_analysis(tmp_path)

    def slow_failure(run):
        time.sleep(0.2)
        raise RuntimeError("boom")

    monkeypatch.setattr(execute_module, "_train", slow_failure)
    assert [execute(run).state for _ in range(2)] == ["failed", "failed"]
    status = RunDir(run.run_dir).read_status()
    assert status["attempts"] == 2 and status["wall_time_s"] >= 0.4  # both attempts' time


def test_a_diverged_run_is_not_analysed_and_is_read_as_diverged(tmp_path, monkeypatch):
    from stablerank.repro.records import collect

    run = _classify_run_with_analysis(tmp_path)

    def diverge(run):
        ClassifierResult(train_acc=0.1, test_acc=0.1, train_loss=math.nan, test_loss=math.nan,
                         gap_acc=0.0, gap_loss=math.nan, epochs=1, diverged=True,
                         divergence="non-finite loss at epoch 1").to_json(run.run_dir)  # fmt: skip
        return True

    def analyse(self, settings, run_dir):
        raise AssertionError("a diverged run was analysed")

    monkeypatch.setattr(execute_module, "_train", diverge)
    monkeypatch.setattr(sweeps.Trainer, "analyse", analyse)
    assert execute(run).state == "diverged"
    (record,) = collect([run])
    assert (record.state, record.analysis, record.problem) == ("diverged", None, "")
    assert record.result.diverged and not record.usable


def test_report_only_on_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        pipeline.run(_cfg(tmp_path, report_only=True))


def test_reports_on_one_out_dir_are_read_and_written_one_after_the_other(
    tmp_path, monkeypatch, capsys
):
    # Another reproduce process holds the report lock (writing its report): this one reads the
    # run folders only once it is released, so the report written last was read last.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / pipeline.REPORT_LOCK)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    read = threading.Event()
    real_collect = pipeline.collect

    def collect(runs):
        read.set()
        return real_collect(runs)

    monkeypatch.setattr(pipeline, "collect", collect)
    errors = []

    def report() -> None:
        try:
            pipeline.run(_cfg(tmp_path, report_only=True))
        except FileNotFoundError as err:  # the folder holds no run
            errors.append(err)

    reader = threading.Thread(target=report)
    try:
        assert holder.stdout.readline().strip() == "held"
        reader.start()
        assert not read.wait(timeout=3.0)  # the folders are not read while the lock is held
    finally:
        holder.kill()
        holder.wait()
    assert read.wait(timeout=30)
    reader.join(timeout=30)
    assert "no finished run" in str(errors[0])
    assert "waiting for another reproduce writing its report" in capsys.readouterr().err
    # A report-only on an out dir that does not exist creates nothing (not even the lock file).
    with pytest.raises(FileNotFoundError, match="no finished run"):
        pipeline.run(_cfg(tmp_path / "typo", report_only=True))
    assert not (tmp_path / "typo").exists()


def test_cuda_without_a_visible_gpu_is_an_error_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "visible_gpus", lambda: [])  # as on a CPU-only machine
    with pytest.raises(RuntimeError, match="--device cuda, but no CUDA device is visible"):
        pipeline.run(dataclasses.replace(_cfg(tmp_path), device="cuda", executor="local"))
    assert not (tmp_path / sweeps.RUNS_DIR).exists()
    # A SLURM submission may come from a machine without GPUs: it reaches the executor.
    monkeypatch.setattr(pipeline, "make_executor", lambda *a: executors.SequentialExecutor())
    monkeypatch.setattr(executors.SequentialExecutor, "map", lambda self, runs, report: [])
    pipeline.run(dataclasses.replace(_cfg(tmp_path), device="cuda", executor="slurm"))


def test_data_or_a_feature_network_the_runs_cannot_read_stops_the_sweep_before_any_run(
    tmp_path, capsys, monkeypatch
):
    """It would fail every run alike, under SLURM each after its wait in the queue: said once."""
    from stablerank.data import DatasetNotFoundError

    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(DatasetNotFoundError, match="no-such-folder"):
        pipeline.run(_cfg(tmp_path, data_dir=missing))
    assert not (tmp_path / sweeps.RUNS_DIR).exists()
    # A dry run still lists the runs, and says each reason they cannot start here.
    monkeypatch.setattr(executors, "visible_gpus", lambda: [])
    cuda = dataclasses.replace(_cfg(tmp_path, data_dir=missing, dry_run=True), device="cuda")
    planned = pipeline.run(cuda)
    assert set(planned.runs.values()) == {"new"}
    err = capsys.readouterr().err
    assert "warning: the runs to train cannot start here: " in err and "no-such-folder" in err
    assert "warning: the runs cannot start here: --device cuda, but no CUDA device" in err
    # Left to the runs (e.g. data only the SLURM nodes see): each run fails on its own.
    unchecked = pipeline.run(_cfg(tmp_path, data_dir=missing, check_inputs=False))
    assert set(unchecked.runs.values()) == {"failed"}
    # The paper sweep's GAN runs score with InceptionV3: its package and weights file (none in
    # this TORCH_HOME) are looked for before any run too.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    gan = next(r for r in sweeps.tiny() if r.kind == sweeps.KIND_GAN)
    inception = dataclasses.replace(gan.config, feature_net="inception-v3", n_final_samples=2)
    silent = dataclasses.replace(inception, n_final_samples=0, eval_every=0)  # scores nothing
    with pytest.raises((ModuleNotFoundError, FileNotFoundError), match="inception-v3"):
        pipeline.check_inputs([dataclasses.replace(gan, config=c) for c in (inception, silent)])
    pipeline.check_inputs([gan])  # scores nothing: no feature network needed
    # Several missing: each is named, so that one command says all there is to fix.
    unreadable = sweeps.build_sweep(_cfg(tmp_path, data_dir=missing))[0]
    both = [unreadable, dataclasses.replace(gan, config=inception)]
    named = r"^2 inputs .*\(1\) .*no-such-folder.*\(2\) .*inception"
    with pytest.raises(RuntimeError, match=named):
        pipeline.check_inputs(both)
    # Whatever a later input raises (a corrupt weights file: torch's own error), the earlier
    # ones are still named.
    monkeypatch.setattr("stablerank.train.gan_scores.scoring_network",
                        lambda cfg: {}["sha256"])  # fmt: skip
    with pytest.raises(RuntimeError, match=r"^2 inputs .*no-such-folder.*'sha256'"):
        pipeline.check_inputs(both)


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    planned = pipeline.run(_cfg(tmp_path, dry_run=True))
    captured = capsys.readouterr()
    # The list is for people (stderr); stdout stays free for --json.
    assert "runs (" in captured.err and "new" in captured.err and captured.out == ""
    assert "\nexecutor local: " in captured.err  # how they would run
    assert set(planned.runs.values()) == {"new"} and planned.report is None
    # In the order they will run: GANs (the longest) first.
    runs = sweeps.build_sweep(_cfg(tmp_path))
    gans_first = [r.name for r in runs if r.kind == sweeps.KIND_GAN]
    assert list(planned.runs) == gans_first + [r.name for r in runs if r.kind != sweeps.KIND_GAN]
    assert not (tmp_path / sweeps.RUNS_DIR).exists()
    # The submitit executors make their folder only once they submit.
    pipeline.run(_cfg(tmp_path, dry_run=True, executor="submitit-local"))
    assert "executor submitit-local: submitit's local cluster" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_finished_runs_the_sweep_does_not_list_are_named_before_its_report_leaves_them_out(
    tmp_path, capsys
):
    """A rerun without the --seeds or --gan-seeds that trained some runs would report without
    them, silently: it says so."""
    listed = sweeps.build_sweep(_cfg(tmp_path))
    other = RunDir(Path(listed[0].run_dir).with_name("gan-digits-gan-sn-s7-0123456789ab"))
    other.write_status(status="done")
    RunDir(Path(listed[0].run_dir).with_name("gan-digits-gan-sn-s8-0123456789ab")).write_status(
        status="failed"  # not finished: nothing left out
    )
    pipeline.run(_cfg(tmp_path, dry_run=True))
    err = capsys.readouterr().err
    assert f"warning: 1 finished run folder(s) in {other.path.parent} are not in this sweep" in err
    other.write_status(status="failed")
    pipeline.run(_cfg(tmp_path, dry_run=True))
    assert "are not in this sweep" not in capsys.readouterr().err


def test_a_run_can_train_with_torchrun_ddp(tmp_path):
    cfg = _cfg(tmp_path, executor="sequential", nproc_per_node=2)
    run = next(r for r in sweeps.build_sweep(cfg) if r.kind == "classify")
    assert run.nproc_per_node == 2
    assert execute(run).state == "done"
    result = ClassifierResult.from_json(run.run_dir)
    assert result.protocol.world_size == 2 and (run.run_dir / "analysis.json").is_file()


def test_a_submitit_job_does_not_start_its_run_once_its_stop_file_exists(tmp_path):
    from stablerank.repro.executors import _requeueable_job

    run = sweeps.build_sweep(_cfg(tmp_path))[0]
    stop_file = tmp_path / "STOP.1"
    stop_file.touch()  # what the command writes on Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        _requeueable_job(stop_file, 15)(run)
    assert not run.run_dir.exists()  # not started
    stop_file.unlink()
    assert _requeueable_job(stop_file, 15)(run).state == "done"


def _live_processes(group: int) -> list[str]:
    """``pid command line`` of each process of a process group that still runs (an exited one
    awaiting its reaper excepted), from /proc."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it exited meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            live.append(f"{stat.parent.name} {cmdline}")
    return live


def test_a_ctrl_c_while_the_pool_starts_its_workers_is_not_lost(tmp_path, monkeypatch):
    """The pool starts its workers with Ctrl-C blocked, not ignored: a Ctrl-C that arrives
    meanwhile stops the command once they have started, and no run begins."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import signal

    from stablerank.repro.executors import LocalExecutor

    runs = sweeps.build_sweep(_cfg(tmp_path))[:3]
    submit = cf.ProcessPoolExecutor.submit

    def submit_then_ctrl_c(self, *args, **kwargs):
        future = submit(self, *args, **kwargs)  # spawns a worker
        os.kill(os.getpid(), signal.SIGINT)
        return future

    monkeypatch.setattr(cf.ProcessPoolExecutor, "submit", submit_then_ctrl_c)
    # A command takes Ctrl-C, even where this test runs with it ignored (a background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            LocalExecutor(2, 1, []).map(runs, lambda *_: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [RunDir(r.run_dir).read_status() for r in runs] == [{}] * len(runs)
    assert mp.active_children() == []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    ("executor", "stop"),
    [("local", "ctrl-c"), ("submitit-local", "ctrl-c"), ("local", "sigterm"),
     ("submitit-local", "sigterm"), ("local", "timeout")],
)  # fmt: skip
def test_ctrl_c_stops_the_workers_and_the_same_command_finishes(tmp_path, executor, stop):
    """Ctrl-C in a terminal signals the whole process group: the workers (the pool's, or
    submitit's local jobs and their controllers) record ``interrupted`` in the runs they hold and
    stop, the command exits 130 saying how to continue, and the same command then finishes every
    run. SIGTERM to the command alone (``kill``, ``timeout``) does the same, even where Ctrl-C is
    ignored (a background job). ``timeout -s INT`` signals the command, then its group: the
    second SIGINT, raised inside the pool's shutdown, left the command waiting forever for its
    idle workers (4 of 7 tries in a review)."""
    import signal
    import time

    argv = [sys.executable, "-m", "stablerank", "reproduce", "--preset", "tiny", "--seeds", "1",
            "--out-dir", str(tmp_path), "--executor", executor, "--workers", "2", "--threads",
            "1", "--device", "cpu", "--progress", "false"]  # fmt: skip
    runs = sweeps.build_sweep(_cfg(tmp_path))

    def states() -> list[str]:
        return [RunDir(r.run_dir).read_status().get("status", "new") for r in runs]

    # A terminal's command takes Ctrl-C even when this test runs where it is ignored (a background
    # job of a non-interactive shell inherits SIGINT ignored).
    def takes_ctrl_c() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if stop == "sigterm" else signal.SIG_DFL)

    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=takes_ctrl_c)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "running" not in states() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before a run could be interrupted"
        before = states()
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        elif stop == "timeout":
            os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.002)  # the review's hang: the second signal inside the first's handling
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted: finished runs are kept and interrupted ones resume" in stderr
    assert "Traceback" not in stderr  # the workers stop quietly
    # No worker of the pool is left behind (multiprocessing's resource tracker, which ends when
    # it sees the command's end, may take a moment).
    deadline = time.monotonic() + 10
    while _live_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_processes(proc.pid) == []
    after = states()
    assert "running" not in after and "interrupted" in after
    # The runs stopped partway, which get no line of their own, are named, each once.
    said = stderr.partition("now: ")[2].splitlines()
    assert f"{after.count('interrupted')} partial" in said[0], stderr
    stopped = [r.name for r, state in zip(runs, after, strict=True) if state == "interrupted"]
    named = [line.split()[1] for line in said[1:] if line.startswith("  partial ")]
    assert sorted(named) == sorted(stopped)
    # The runs the pool had queued but not started stay unstarted (one that started in the
    # instant between the two readings is interrupted): none runs to the end after Ctrl-C.
    queued = [a for b, a in zip(before, after, strict=True) if b == "new"]
    assert all(a in ("new", "interrupted") for a in queued)

    rerun = subprocess.run(argv, stderr=subprocess.PIPE, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert states() == ["done"] * len(runs)
    assert (tmp_path / "report.md").is_file()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_a_preempted_job_checkpoints_its_step_and_the_requeued_run_ends_as_if_never_stopped(
    tmp_path, without_timings
):
    """The signal SLURM sends before it preempts a job (here sent to a submitit-local job, which
    handles it the same way) acts as a Ctrl-C: the trainer checkpoints the step it reached,
    submitit requeues the job, and the run resumes from that step to the uninterrupted run's
    result, bitwise."""
    import re
    import signal
    import threading
    import time

    import submitit

    from stablerank.config.classify import classify_preset
    from stablerank.repro.executors import SubmititExecutor

    config = classify_preset("tiny", epochs=40)  # 21 steps per epoch on digits: seconds of work
    cfg = _cfg(tmp_path / "job", executor="submitit-local")
    run = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", config).placed(cfg)
    executor = SubmititExecutor(tmp_path / "job" / "submitit", "local", cfg, wave=1)
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.extend(executor.map([run], print)))
    worker.start()
    log, deadline = run.run_dir / "log.jsonl", time.monotonic() + 120
    while (not log.is_file() or log.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)  # three epochs trained: the job is inside its training loop
    jobs = [p for p in _live_processes(os.getpgid(0)) if "submitit.core._submit" in p]
    assert len(jobs) == 1, jobs
    pid = int(jobs[0].split()[0])
    os.kill(pid, getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))
    worker.join(timeout=300)
    assert [o.state for o in outcomes] == ["done"]
    assert RunDir(run.run_dir).read_status()["attempts"] == 2

    # The first attempt stopped with a checkpoint at the step it reached, the second resumed there.
    errors = "".join(p.read_text() for p in (tmp_path / "job" / "submitit").rglob("*.err"))
    step = int(re.search(r"preempted \(interrupted; the checkpoint of step (\d+) kept", errors)[1])
    output = (run.run_dir / "output.log").read_text()
    assert f"resume: continuing from {run.run_dir / 'checkpoints'}/step_{step:07d}.pt" in output

    reference = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", config).placed(_cfg(tmp_path / "r"))
    assert execute(reference).state == "done"
    a, b = (
        without_timings(json.loads((r.run_dir / "metrics.json").read_text()))
        for r in (run, reference)
    )
    a.pop("protocol"), b.pop("protocol")  # they name their folders
    assert a == b


def _long_runs(out: Path, n: int, epochs: int) -> list[sweeps.Run]:
    """``n`` digits MLP runs of ``epochs`` epochs (21 steps each): seconds of work per epoch."""
    from stablerank.config.classify import classify_preset

    config = classify_preset("tiny", epochs=epochs)
    cfg = _cfg(out)
    return [sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", dataclasses.replace(config, seed=s))
            .placed(cfg) for s in range(n)]  # fmt: skip


def _wait_until_running(runs: list[sweeps.Run], timeout_s: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(RunDir(r.run_dir).read_status().get("status") == "running" for r in runs):
            return
        time.sleep(0.05)
    raise AssertionError("the runs did not start")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_a_killed_worker_fails_only_the_runs_in_progress_and_the_others_go_on(tmp_path):
    """A pool worker killed (``kill -9``, the out-of-memory killer) breaks the pool, which ends
    the other workers too: the runs in progress are failed (a rerun resumes them), and the runs
    not started go on in a new pool instead of being reported failed."""
    import signal
    import threading

    from stablerank.repro.executors import LocalExecutor

    long = _long_runs(tmp_path, 2, epochs=400)
    short = [r for r in sweeps.build_sweep(_cfg(tmp_path)) if r.kind != sweeps.KIND_GAN][:3]
    outcomes = []
    worker = threading.Thread(
        target=lambda: outcomes.extend(LocalExecutor(2, 1, []).map(long + short, lambda *_: None))
    )
    worker.start()
    try:
        _wait_until_running(long)
        pids = [int(p.split()[0]) for p in _live_processes(os.getpgid(0))
                if "multiprocessing.spawn" in p and int(p.split()[0]) != os.getpid()]  # fmt: skip
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        worker.join(timeout=300)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert [o.state for o in outcomes[:2]] == ["failed"] * 2
    assert all("worker died" in o.error for o in outcomes[:2])
    assert [o.state for o in outcomes[2:]] == ["done"] * 3


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_the_pools_workers_end_when_the_command_is_killed(tmp_path):
    """``kill -9`` of a ``local`` command ends its pool's workers: none trains on, holding its
    run's lock (a rerun would find it busy), or waits forever for work that never comes."""
    import signal
    import time

    runs = _long_runs(tmp_path, 2, epochs=400)
    script = (
        "import pickle, sys\n"
        "from stablerank.repro.executors import LocalExecutor\n"
        "if __name__ == '__main__':\n"
        "    LocalExecutor(2, 1, []).map(pickle.loads(bytes.fromhex(sys.argv[1])), print)\n"
    )
    import pickle

    proc = subprocess.Popen([sys.executable, "-c", script, pickle.dumps(runs).hex()],
                            start_new_session=True)  # fmt: skip
    try:
        _wait_until_running(runs)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _live_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _live_processes(proc.pid) == []
        assert not any(RunDir(r.run_dir).is_locked() for r in runs)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _processes_naming(text: str) -> list[str]:
    """``pid command line`` of each live process whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode()
            state = (cmdline.parent / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # it exited meanwhile
            continue
        if text in line and state != "Z":
            found.append(f"{cmdline.parent.name} {line}")
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_killing_the_command_ends_a_runs_torchrun(tmp_path):
    """``kill -9`` of ``reproduce`` while a run trains under ``torchrun`` ends the torchrun agent
    and its workers: they pass through the run's lock, so left running they would train on
    unlocked while a rerun trains the same run into the same folder."""
    import signal
    import time

    from stablerank.config.classify import classify_preset

    config = classify_preset("tiny", epochs=400, num_threads=1)
    cfg = dataclasses.replace(_cfg(tmp_path), nproc_per_node=2)
    run = sweeps.Run(sweeps.KIND_CLASSIFY, "digits/mlp", config).placed(cfg)
    script = (
        "import pickle, sys\n"
        "from stablerank.repro.executors import SequentialExecutor\n"
        "SequentialExecutor().map([pickle.loads(bytes.fromhex(sys.argv[1]))], print)\n"
    )
    import pickle

    proc = subprocess.Popen([sys.executable, "-c", script, pickle.dumps(run).hex()],
                            start_new_session=True)  # fmt: skip
    launch = str(run.run_dir / "launch.json")
    try:
        deadline = time.monotonic() + 120
        log = run.run_dir / "log.jsonl"
        while (not log.is_file() or not log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)  # an epoch trained: the workers are in their training loop
        assert len(_processes_naming(launch)) == 3  # the agent and two workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while _processes_naming(launch) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_naming(launch) == []
    finally:
        for line in _processes_naming(launch):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)


def test_a_sweeps_data_dir_reaches_the_analyses_too(tmp_path):
    # A run trained before reads its config.json's folder; a later --data-dir must reach its
    # analysis (a runtime key: the folder names stay).
    base = ReproduceConfig(sweep="tiny", out_dir=str(tmp_path))
    moved = dataclasses.replace(base, data_dir=str(tmp_path / "moved"))
    runs, again = sweeps.build_sweep(base), sweeps.build_sweep(moved)
    assert [r.name for r in runs] == [r.name for r in again]
    analysed = [r for r in again if r.analysis is not None]
    assert analysed and all(r.analysis.data_dir == str(tmp_path / "moved") for r in analysed)
    assert all(r.analysis.data_dir is None for r in runs if r.analysis is not None)
