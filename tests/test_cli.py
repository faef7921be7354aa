"""The command line: generated from the config dataclasses, with --help for every field and the
precedence flags > --config file > --preset > defaults."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from stablerank import cli


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", sorted(cli._COMMANDS))
def test_help_documents_every_config_field(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    config_cls = cli._load(cli._COMMANDS[command].config)
    text = " ".join(out.split())
    for f in dataclasses.fields(config_cls):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert text.count("default: ") >= len(dataclasses.fields(config_cls))


def test_precedence_flags_over_file_over_preset(capsys, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\nlr: 0.05\n")
    code, out, _ = _run(
        capsys,
        "train",
        "--preset",
        "fmnist-cnn",
        "--config",
        str(cfg_file),
        "--lr",
        "0.2",
        "--norm",
        "srn",
        "--print-config",
    )
    assert code == 0
    resolved = json.loads(out)
    assert resolved["epochs"] == 7 and resolved["lr"] == 0.2 and resolved["norm"] == "srn"
    assert resolved["model"] == "small_cnn"  # from the preset


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--rank-ratio", "3"], "--rank-ratio must be > 0.0 and <= 1.0, got 3.0"),
        (["--norm", "bn"], "--norm must be one of ['none', 'sn', 'srn'], got 'bn'"),
        (["--epochs", "x"], "--epochs expects an integer, got 'x'"),
        (["--milestones", "0.5,x"], "--milestones[1] expects a number, got 'x'"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(capsys, argv, match):
    code, _, err = _run(capsys, "train", *argv, "--print-config")
    assert code == 2 and match in err
    # The command's own usage and name, as argparse's type errors give them (not the top level's).
    assert err.startswith("usage: stablerank train") and "\nstablerank train: error:" in err


def test_unknown_key_in_config_file_lists_valid_keys(capsys, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epoch: 3\n")
    code, _, err = _run(capsys, "train", "--config", str(cfg_file), "--print-config")
    assert code == 2 and "c.yaml: unknown key(s) 'epoch' (did you mean 'epochs'?)" in err
    assert "valid keys: ['amp', 'augment', 'batch_size'," in err


def test_python_dash_m_runs_the_same_program():
    proc = subprocess.run(
        [sys.executable, "-m", "stablerank", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "reproduce" in proc.stdout


def test_train_run_name_flag_reaches_the_config(capsys, tmp_path):
    code, out, _ = _run(capsys, "train", "--out-dir", str(tmp_path), "--run-name", "r",
                        "--print-config")  # fmt: skip
    resolved = json.loads(out)
    assert code == 0 and resolved["run_name"] == "r" and resolved["out_dir"] == str(tmp_path)


def test_bare_boolean_flag_means_true(capsys):
    code, out, _ = _run(capsys, "train", "--resume", "--amp", "false", "--print-config")
    assert code == 0
    resolved = json.loads(out)
    assert resolved["resume"] is True and resolved["amp"] is False


@pytest.mark.parametrize(
    ("command", "runner", "hint"),
    [
        # Before the loop there may be no checkpoint: the hint must not promise one.
        ("train", "stablerank.train.classify.run", "or starts from scratch when there is none"),
        ("gan", "stablerank.train.gan.run", "or starts from scratch when there is none"),
        # A rerun while a SLURM sweep's jobs run follows them (test_slurm.py).
        (
            "reproduce",
            "stablerank.repro.pipeline.run",
            "the same command continues (under --executor slurm it follows the jobs still queued "
            "or running)",
        ),
    ],
)
def test_ctrl_c_exits_130_and_says_how_to_continue(capsys, monkeypatch, command, runner, hint):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, interrupted)
    assert cli.main([command]) == 130
    assert hint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "runner", "shown"),
    [
        ("train", "stablerank.train.classify.run", True),
        ("gan", "stablerank.train.gan.run", True),
        # A sequential sweep passes on its run's interrupt, whose "--resume" is no reproduce flag.
        ("reproduce", "stablerank.repro.pipeline.run", False),
    ],
)
def test_ctrl_c_in_a_trainer_names_the_checkpoint_and_the_run_folder(
    capsys, monkeypatch, tmp_path, command, runner, shown
):
    from stablerank.train.runtime import interrupted

    def stopped(*args):
        raise interrupted(tmp_path / "the-run", "the checkpoint of step 43")

    monkeypatch.setattr(runner, stopped)
    assert cli.main([command]) == 130
    err = capsys.readouterr().err
    assert (f"the checkpoint of step 43 kept in {tmp_path / 'the-run'}" in err) is shown
    assert ("continue with resume=True (--resume)" in err) is shown


# ----------------------------------------------------------------------------- no tracebacks


def _numeric_fields(config_cls) -> list[str]:
    import typing

    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        if base is float or (typing.get_origin(base) is tuple and float in typing.get_args(base)):
            out.append(f.name)
    return out


@pytest.mark.parametrize("command", sorted(cli._COMMANDS))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_nan_and_inf(capsys, command, value):
    config_cls = cli._load(cli._COMMANDS[command].config)
    fields = _numeric_fields(config_cls)
    assert fields or command in ("reproduce", "gan-analyze")  # these have no float option
    extra = ["RUN"] if cli._COMMANDS[command].reads_runs_of else []
    for name in fields:
        flag = "--" + name.replace("_", "-")
        code, _, err = _run(capsys, command, *extra, f"{flag}={value}", "--print-config")
        assert code == 2, (command, name, value)
        assert f"{flag} must be a finite number" in err, (command, name)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("epochs: [1, 2\n", "not valid YAML"),
        ("!!python/object:os.system {}\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_bad_config_files_are_one_line_errors(capsys, tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    code, _, err = _run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 2 and match in err and "Traceback" not in err
    # The command's usage, then the error in one line.
    usage, error = err.strip().split("\nstablerank train: error: ")
    assert usage.startswith("usage: stablerank train") and match in error and "\n" not in error


def test_a_flag_overrides_a_dashed_file_key_that_a_preset_also_sets(capsys, tmp_path):
    # The preset sets batch_size, the file batch-size: the flag must still win, not the file.
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 32\n")
    argv = ["train", "--preset", "tiny", "--config", str(path), "--batch-size", "16"]
    code, out, _ = _run(capsys, *argv, "--print-config")
    assert code == 0 and json.loads(out)["batch_size"] == 16


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("lr: 0.1\nlr: 0.2\n", "'lr' given twice"),  # PyYAML kept the last one silently
        ("batch_size: 8\nbatch-size: 16\n", "'batch-size' given twice"),
        ("1: 2\n", "c.yaml: unknown key(s) '1'"),  # was an AttributeError, exit 1
        # The file is named, and a near miss suggested (it named neither).
        (
            "batchsize: 8\nfoo: 1\n",
            "c.yaml: unknown key(s) 'batchsize' (did you mean 'batch_size'?), 'foo'; valid keys: [",
        ),
    ],
)
def test_a_key_given_twice_or_not_a_name_is_a_usage_error(capsys, tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    code, _, err = _run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 2 and match in err


@pytest.mark.parametrize(
    "argv", [("reproduce", "--seed", "3"), ("train", "--prog", "false"), ("gan", "--n-final", "0")]
)
def test_an_abbreviated_flag_is_unknown_not_read_as_the_option_it_starts(capsys, argv):
    # `reproduce --seed 3` read as --seeds 3 (three seeds per arm) without a word.
    code, _, err = _run(capsys, *argv, "--print-config")
    assert code == 2 and f"unrecognized arguments: {argv[1]}" in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("--executor", "sequential", "--workers", "4"), "workers"),
        (("--executor", "slurm", "--workers", "4"), "workers"),
        (("--slurm-partition", "gpu"), "slurm_partition"),
        (("--executor", "submitit-local", "--slurm-gpus-per-run", "2"), "slurm_gpus_per_run"),
        (("--executor", "sequential", "--slurm-time", "30"), "slurm_time"),
        # a torchrun run's processes take a GPU each: fewer GPUs than processes would fail
        # every job on the cluster, at its first CUDA call
        (
            ("--executor", "slurm", "--nproc-per-node", "4", "--slurm-gpus-per-run", "2"),
            "slurm_gpus_per_run must be 0 (DDP over gloo on CPUs) or >= 4, got 2",
        ),
        # SLURM's stop signal comes 90 s before the limit: a job told to stop as it starts
        (("--executor", "slurm", "--slurm-time", "2"), "slurm_time must be >= 3"),
        # jobs without a GPU on --device cuda: every one would fail after its wait in the queue
        (
            ("--executor", "slurm", "--device", "cuda", "--slurm-gpus-per-run", "0"),
            "device='cuda' under executor slurm needs a GPU in each job: slurm_gpus_per_run "
            "must be >= 1, got 0",
        ),
    ],
)
def test_reproduce_refuses_an_option_its_executor_ignores(capsys, argv, match):
    code, _, err = _run(capsys, "reproduce", *argv, "--print-config")
    assert code == 2 and match in err and "executor" in err


def test_reproduce_takes_each_executors_own_options(capsys):
    for argv in (
        ("--executor", "local", "--workers", "3"),
        ("--executor", "submitit-local", "--workers", "2", "--slurm-time", "30"),
        ("--executor", "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-run", "2"),
        ("--executor", "slurm", "--nproc-per-node", "2", "--slurm-gpus-per-run", "0"),
    ):
        assert _run(capsys, "reproduce", *argv, "--print-config")[0] == 0, argv


def test_an_integer_too_large_for_a_float_option_is_a_usage_error_naming_it(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"lr: {10**400}\n")  # YAML reads an int; float() of it overflowed, exit 1
    code, _, err = _run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 2 and f"lr in {path} expects a number" in err  # the key, in its file


def test_config_given_twice_is_refused_not_half_ignored(capsys, tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("lr: 0.2\n")
    second.write_text("epochs: 3\n")
    code, _, err = _run(
        capsys, "train", "--config", str(first), "--config", str(second), "--print-config"
    )
    assert code == 2 and "--config" in err and "once" in err


def test_config_file_that_is_a_folder(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--config", str(tmp_path), "--print-config")
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize("command", ["analyze", "gan-analyze", "layers"])
def test_missing_run_folder_is_one_line(capsys, tmp_path, command):
    code, _, err = _run(capsys, command, str(tmp_path / "nope"))
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "nope does not exist" in err and "reads a run folder" in err
    (tmp_path / "step_0000001.pt").write_bytes(b"")  # a checkpoint, not its run folder
    code, _, err = _run(capsys, command, str(tmp_path / "step_0000001.pt"))
    assert code == 1 and "step_0000001.pt is not a folder" in err


def test_a_run_of_the_other_trainer_is_a_usage_error_naming_the_command_that_reads_it(
    capsys, tmp_path
):
    from stablerank.config import config_to_dict
    from stablerank.config.classify import ClassifyConfig
    from stablerank.config.gan import GanConfig

    for name, cfg in (("classifier", ClassifyConfig()), ("gan", GanConfig())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    code, _, err = _run(capsys, "analyze", str(tmp_path / "gan"))
    assert code == 2 and "is a run of `stablerank gan`; `stablerank gan-analyze` analyses it" in err
    code, _, err = _run(capsys, "gan-analyze", str(tmp_path / "classifier"))
    assert code == 2 and "is a run of `stablerank train`; `stablerank analyze` analyses it" in err


def _no_bare_nan(token: str) -> None:
    raise AssertionError(f"{token} is not strict JSON")


def test_a_gan_run_is_analysed_and_its_layers_listed_from_the_command_line(capsys, tmp_path):
    from stablerank.train.results import GanAnalysis

    tiny = ["--dataset", "digits", "--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size",
            "16", "--g-steps", "2", "--n-final-samples", "0", "--device", "cpu", "--d-norm",
            "srn", "--rank-ratio", "0.5", "--out-dir", str(tmp_path),
            "--run-name", "g"]  # fmt: skip
    code, out, _ = _run(capsys, "gan", *tiny, "--progress", "false", "--json")
    run_dir = tmp_path / "g"
    assert code == 0 and json.loads(out)["run_dir"] == str(run_dir)  # for scripts: where it is
    code, out, _ = _run(capsys, "layers", str(run_dir), "--json")
    rows = json.loads(out, parse_constant=_no_bare_nan)  # strict JSON, which jq reads
    names = [row["name"] for row in rows]
    assert code == 0 and names[0].startswith("D.") and names[-1].startswith("G.")
    assert rows[-1]["sigma_power"] is None  # G's plain layers have no power iteration
    assert {row["norm"] for row in json.loads(out) if row["name"].startswith("D.")} == {"srn"}
    small = ["--nd-critic-steps", "2", "--nd-eval-batches", "1", "--d-el-pairs", "10",
             "--nd-critic-width", "8", "--nd-batch-size", "16", "--device", "cpu"]  # fmt: skip
    code, out, _ = _run(capsys, "gan-analyze", str(run_dir), *small, "--json")
    assert code == 0 and json.loads(out)["neural_divergence"] == pytest.approx(
        GanAnalysis.from_json(run_dir).neural_divergence
    )
    assert json.loads(out)["run_dir"] == str(run_dir)


def test_layers_lists_a_runs_layers_where_its_data_is_not(capsys, tmp_path):
    """Run folders copied off the machine that trained them: the networks are rebuilt from the
    datasets' known shapes, not from their files."""
    data = tmp_path / "data"
    data.mkdir()
    common = ["--dataset", "digits", "--data-dir", str(data), "--device", "cpu", "--out-dir",
              str(tmp_path), "--progress", "false"]  # fmt: skip
    classifier = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--train-subset", "64",
                  "--batch-size", "32", "--norm", "srn", "--rank-ratio", "0.5"]  # fmt: skip
    gan = ["--ngf", "8", "--ndf", "8", "--z-dim", "16", "--batch-size", "16", "--g-steps", "2",
           "--n-final-samples", "0", "--d-norm", "srn", "--rank-ratio", "0.5"]  # fmt: skip
    assert _run(capsys, "train", *common, *classifier, "--run-name", "c")[0] == 0
    assert _run(capsys, "gan", *common, *gan, "--run-name", "g")[0] == 0
    data.rmdir()  # gone: loading the data would now fail
    for name, first in (("c", "features."), ("g", "D.")):
        csv_file = tmp_path / "tables" / f"{name}.csv"  # a folder not made yet
        code, out, err = _run(capsys, "layers", str(tmp_path / name), "--json", "--csv",
                              str(csv_file))  # fmt: skip
        assert code == 0, err
        rows = json.loads(out)
        assert rows[0]["name"].startswith(first) and "srn" in {row["norm"] for row in rows}
        assert len(csv_file.read_text().splitlines()) == len(rows) + 1  # the header, each layer


def test_runner_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    def broken(cfg):
        raise FileNotFoundError("no Fashion-MNIST files in /x: pass --data-dir")

    monkeypatch.setattr("stablerank.train.classify.run", broken)
    code, _, err = _run(capsys, "train")
    assert code == 1 and err.strip().startswith("stablerank train: error: no Fashion-MNIST")
    with pytest.raises(FileNotFoundError):
        cli.main(["train", "--debug"])


def test_reproduce_json_is_one_document_even_for_a_dry_run(capsys, tmp_path):
    code, out, err = _run(capsys, "reproduce", "--sweep", "tiny", "--dry-run", "--json",
                          "--out-dir", str(tmp_path))  # fmt: skip
    planned = json.loads(out)  # the run list went to stderr
    assert code == 0 and "runs (" in err and set(planned["runs"].values()) == {"new"}
    assert planned["report"] is None and planned["verdicts"] == {}


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("stablerank ")


def test_reproduce_help_shows_the_executors(capsys):
    _, out, _ = _run(capsys, "reproduce", "--help")
    text = " ".join(out.split())
    for name in ("local", "sequential", "submitit-local", "slurm"):
        assert name in text
    assert "--workers" in text and "--slurm-partition" in text


def test_help_does_not_import_torch():
    code = (
        "import sys; from stablerank import cli; cli.build_parser(); print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_a_warning_is_one_line_and_the_hook_is_restored(capsys, monkeypatch):
    # Python's format added the file, line and source line of the library's warn() call.
    before = warnings.showwarning

    def warn_and_succeed(args):
        warnings.warn("the target stable rank is 1", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_run", warn_and_succeed)
    assert cli.main(["train", "--preset", "tiny"]) == 0
    assert capsys.readouterr().err == "warning: the target stable rank is 1 (UserWarning)\n"
    assert warnings.showwarning is before


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [(["train", "--bogus", "1"], "--bogus 1"), (["layers", "run", "--config", "x"], "--config x")],
)
def test_an_unknown_flag_shows_the_subcommands_usage(argv, unknown, capsys):
    # It showed the top-level usage, which lists no option of the subcommand.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: stablerank {argv[0]} ")
    assert f"stablerank {argv[0]}: error: unrecognized arguments: {unknown}" in err


def test_the_tiny_gan_preset_trains_offline_in_seconds(capsys, tmp_path):
    """The README's first look at the GAN trainer: 8x8 digits, no feature network to fetch."""
    argv = ["gan", "--preset", "tiny", "--g-steps", "4", "--out-dir", str(tmp_path), "--device",
            "cpu", "--progress", "false", "--json"]  # fmt: skip
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 4 and result["fid"] is None  # digits: no FID
    assert Path(result["run_dir"], "metrics.json").is_file()


@pytest.mark.slow
def test_sigterm_stops_a_trainer_as_ctrl_c_does_with_a_checkpoint_of_its_step(tmp_path):
    """``kill`` / ``timeout`` (SIGTERM) end a run as Ctrl-C does: the step reached is checkpointed
    and the run resumes from it, here where Ctrl-C is ignored (a background job)."""
    import signal
    import time

    from stablerank.train.rundir import RunDir

    argv = [sys.executable, "-m", "stablerank", "gan", "--preset", "tiny", "--g-steps", "1000000",
            "--out-dir", str(tmp_path), "--run-name", "g", "--device", "cpu", "--progress",
            "false"]  # fmt: skip
    ignore_ctrl_c = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, preexec_fn=ignore_ctrl_c)
    try:
        deadline = time.monotonic() + 60
        log = tmp_path / "g" / "log.jsonl"
        while not (log.is_file() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "SIGTERM: stopping as on Ctrl-C" in stderr and "interrupted; the checkpoint" in stderr
    assert RunDir(tmp_path / "g").read_status()["status"] == "interrupted"
    assert RunDir(tmp_path / "g").checkpoints()  # the step reached


def test_the_command_leaves_sigterm_as_it_found_it(capsys):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert _run(capsys, "train", "--print-config")[0] == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_option_that_has_no_effect_is_named_with_why(capsys, tmp_path):
    """``--norm none --rank-ratio 0.3`` trains what ``--norm none`` trains, in a folder of its
    own: the user is told, for a flag or a config file's key, never for the defaults or a
    preset's values."""
    code, _, err = _run(capsys, "train", "--norm", "none", "--rank-ratio", "0.3", "--print-config")
    assert code == 0 and "--rank-ratio has no effect here (norm='none': only SRN reads it)" in err
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: adam\nmomentum: 0.5\n")
    code, _, err = _run(capsys, "train", "--config", str(path), "--print-config")
    assert code == 0 and f"momentum in {path} has no effect here (optimizer='adam')" in err
    for argv in (
        ("train", "--norm", "srn", "--rank-ratio", "0.3"),
        ("train", "--preset", "tiny"),
        ("gan", "--d-norm", "srn", "--rank-ratio", "0.3"),
        ("gan", "--preset", "tiny"),
    ):
        code, _, err = _run(capsys, *argv, "--print-config")
        assert code == 0 and "no effect" not in err, argv
    code, _, err = _run(capsys, "gan", "--rank-ratio", "0.3", "--print-config")
    assert "--rank-ratio has no effect here (d_norm='sn': only SRN reads it)" in err
    code, _, err = _run(capsys, "train", "--head", "sn", "--momentum", "0", "--nesterov", "false",
                        "--print-config")  # fmt: skip
    assert "--head has no effect here (norm='none'" in err
    assert "--nesterov has no effect here (no SGD momentum)" in err
    # A complete config file (a run's config.json, torchrun's launch file) holds every key: only
    # a value other than the default or the preset's is said.
    full = tmp_path / "config.json"
    full.write_text(_run(capsys, "train", "--preset", "tiny", "--print-config")[1])
    code, _, err = _run(capsys, "train", "--preset", "tiny", "--config", str(full),
                        "--print-config")  # fmt: skip
    assert code == 0 and "no effect" not in err


def test_a_preset_whose_every_key_a_flag_replaces_is_refused(capsys):
    # `reproduce --preset tiny --sweep quick` ran the quick sweep (9 minutes) without a word.
    code, _, err = _run(capsys, "reproduce", "--preset", "tiny", "--sweep", "quick", "--dry-run")
    assert code == 2 and "--preset tiny sets only --sweep, which the flags replace" in err
    same = ("--preset", "tiny", "--sweep", "tiny", "--print-config")
    assert _run(capsys, "reproduce", *same)[0] == 0
    assert _run(capsys, "train", "--preset", "tiny", "--epochs", "3", "--print-config")[0] == 0


def test_sigterm_while_ctrl_c_is_ignored_and_held_still_stops_the_command():
    """A background job ignores Ctrl-C; the pool holds it (blocked) while it starts its workers:
    a SIGTERM then must stop the command once the block ends, not be dropped."""
    import signal
    import time

    from stablerank import cli
    from stablerank.repro.executors import _sigint_blocked

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), cli._sigterm_as_ctrl_c():
            with _sigint_blocked():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            time.sleep(2)  # the command would go on here
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``stablerank layers RUN --json | head``: no "error: [Errno 32] Broken pipe" line, no
    traceback at exit, exit status 0 (a ``set -o pipefail`` script goes on)."""
    code = ("import sys; from stablerank import cli; "
            "cli._layers = lambda args: ['x' * 10**6]; "
            "sys.exit(cli.main(['layers', 'r', '--json']))")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == ""
