"""The ``stablerank`` command line: the only module that parses argv.

Every experiment subcommand is generated from its frozen config dataclass, so each option has
its ``--help`` text, range and default from one declaration (``stablerank.config``). Values come,
in order of precedence: command-line flags, then the ``--config`` YAML file, then the named
``--preset``, then the dataclass defaults. Logs and progress go to stderr; ``--json`` prints the
result as JSON on stdout.

A user's mistake (a bad value, a missing folder, a corrupt file) ends with one line on stderr and
a non-zero exit, never a traceback (``--debug`` shows it). torch is imported only once a command
runs, so ``--help``, ``--version`` and ``--print-config`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import json
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stablerank import __version__
from stablerank.config import add_config_arguments, config_from_dict, config_to_dict, read_yaml

__all__ = ["build_parser", "main"]

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


@dataclasses.dataclass(frozen=True)
class _Command:
    help: str
    config: str  # "module:Class"
    presets: str | None  # "module:DICT" of named presets
    runner: str  # "module:function", called with the config (and the run dir for analyze)
    on_interrupt: str  # what Ctrl-C leaves behind and how to continue
    reads_runs_of: str = ""  # the trainer command whose run folder it takes ("": none)
    # The runner's KeyboardInterrupt names the checkpoint kept and its run folder (the trainers'
    # runtime.interrupted); on_interrupt is said only when it carries no message.
    says_what_was_kept: bool = False


# Said for a Ctrl-C that the training loop did not take (setup, data, final scores, torchrun),
# when there may be no checkpoint yet: --resume then starts from scratch.
_STOPPED_OUTSIDE_THE_LOOP = (
    "stopped outside the training loop; the same command with --resume continues from the run "
    "folder's newest checkpoint, or starts from scratch when there is none"
)

_COMMANDS = {
    "train": _Command(
        "train a classifier (vanilla / SN / SRN); torchrun-compatible",
        "stablerank.config.classify:ClassifyConfig",
        "stablerank.config.classify:CLASSIFY_PRESETS",
        "stablerank.train.classify:run",
        _STOPPED_OUTSIDE_THE_LOOP,
        says_what_was_kept=True,
    ),
    "analyze": _Command(
        "analyse a trained classifier run: generalization gap, empirical Lipschitz, complexity",
        "stablerank.config.classify:AnalyzeConfig",
        None,
        "stablerank.train.analyze:run",
        "analysis.json was not written; run the command again",
        reads_runs_of="train",
    ),
    "gan": _Command(
        "train an SN-GAN / SRN-GAN and evaluate FID, KID, IS",
        "stablerank.config.gan:GanConfig",
        "stablerank.config.gan:GAN_PRESETS",
        "stablerank.train.gan:run",
        _STOPPED_OUTSIDE_THE_LOOP,
        says_what_was_kept=True,
    ),
    "gan-analyze": _Command(
        "analyse a finished GAN run: neural divergence and the discriminator's empirical "
        "Lipschitz constant",
        "stablerank.config.gan:GanAnalysisConfig",
        None,
        "stablerank.train.gan_analysis:run",
        "gan_analysis.json was not written; run the command again",
        reads_runs_of="gan",
    ),
    "reproduce": _Command(
        "run a sweep of the paper's comparisons and write report.md and claims.json (the main "
        "job); --executor picks where the runs execute",
        "stablerank.config.reproduce:ReproduceConfig",
        "stablerank.config.reproduce:REPRODUCE_PRESETS",
        "stablerank.repro.pipeline:run",
        "finished runs are kept and interrupted ones resume: the same command continues (under "
        "--executor slurm it follows the jobs still queued or running)",
    ),
}


# The commands that train, each into a run folder of its own (the others read those folders).
_TRAINERS = ("train", "gan")


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show an error's full traceback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablerank",
        description="Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020): train, "
        "analyse and reproduce vanilla vs spectral vs stable-rank normalization.",
    )
    parser.add_argument("--version", action="version", version=f"stablerank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in _COMMANDS.items():
        # No prefixes: `reproduce --seed 3` must not be read as --seeds 3 (three seeds per arm).
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, allow_abbrev=False)
        if cmd.reads_runs_of:
            p.add_argument(
                "run_dir",
                metavar="RUN_DIR",
                help=f"a run folder written by `stablerank {cmd.reads_runs_of}`",
            )
        if cmd.presets:
            p.add_argument(
                "--preset",
                choices=sorted(_load(cmd.presets)),
                help="named settings applied before --config and flags (default: none); the "
                "defaults shown below are without a preset: --preset NAME --print-config shows "
                "the preset's values",
            )
        p.add_argument(
            "--config",
            metavar="FILE",
            action="append",  # given twice is refused (_resolve), not the first file ignored
            help="YAML file of config keys (given once); flags given on the command line "
            "override it",
        )
        p.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config as JSON and exit without running",
        )
        _common(p)
        add_config_arguments(p, _load(cmd.config))
        # A bad config value is this command's usage error: its usage line, its name.
        p.set_defaults(usage_error=p.error)
    layers = sub.add_parser(
        "layers",
        help="print the per-layer spectral norm / stable rank report of a run's model",
        description="per-layer report of a run's newest intact checkpoint: spectral norm, "
        "stable rank, SRN target and whether its cap binds (a GAN run: D's layers, then G's)",
    )
    layers.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder of `stablerank train` or `stablerank gan`"
    )
    layers.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    _common(layers)
    layers.set_defaults(usage_error=layers.error)
    return parser


_META = {"command", "preset", "config", "json", "print_config", "debug", "usage_error", "run_dir"}


def _resolve(cmd: _Command, args: argparse.Namespace) -> Any:
    preset = _load(cmd.presets)[args.preset] if getattr(args, "preset", None) else {}
    if args.config and len(args.config) > 1:
        raise ValueError(f"--config may be given once, got {len(args.config)} files")
    from_file = read_yaml(args.config[0]) if args.config else {}
    valid = [f.name for f in dataclasses.fields(_load(cmd.config))]
    if unknown := sorted(set(from_file) - set(valid)):
        near = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        raise ValueError(
            f"{args.config[0]}: unknown key(s) "
            + ", ".join(
                f"{k!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for k, m in near.items()
            )
            + f"; valid keys: {sorted(valid)}"
        )
    flags = {k: v for k, v in vars(args).items() if k not in _META}
    if preset and all(k in flags and str(flags[k]) != str(v) for k, v in preset.items()):
        # `reproduce --preset tiny --sweep quick`: the flags replace all that the preset sets.
        keys = ", ".join(f"--{k.replace('_', '-')}" for k in preset)
        raise ValueError(f"--preset {args.preset} sets only {keys}, which the flags replace: "
                         "give one or the other")  # fmt: skip

    def given(key: str, index: str = "") -> str:
        """``key`` as the user gave it: its flag, or its key in the config file."""
        if key in flags:
            return f"--{key.replace('_', '-')}{index}"
        return f"{key}{index} in {args.config[0]}" if key in from_file else f"{key}{index}"

    try:
        cfg = config_from_dict(_load(cmd.config), {**preset, **from_file, **flags})
    except (ValueError, TypeError) as err:  # "config key 'lr' must be > 0.0": "--lr must be ..."
        named = re.sub(r"config key '(\w+)((?:\[\d+\])?)'",
                       lambda m: given(m[1], m[2]) if m[1] in {*flags, *from_file} else m[0],
                       str(err))  # fmt: skip
        raise type(err)(named) from None
    if not _under_torchrun():  # whose config is a sweep run's launch file, said by every rank
        _warn_unused(cfg, config_from_dict(type(cfg), preset), {*from_file, *flags}, given)
    return cfg


def _warn_unused(cfg: Any, baseline: Any, keys: set[str], given: Callable[[str], str]) -> None:
    """Warn of each of ``keys`` (the user's flags and config file keys) that the other values of
    ``cfg`` leave unread (its ``unused()``), when its value differs from ``baseline`` (the preset
    or the defaults: a complete config file, such as a run's config.json, gives every key)."""
    unused = cfg.unused() if hasattr(cfg, "unused") else {}
    for key in sorted(k for k in unused.keys() & keys if getattr(cfg, k) != getattr(baseline, k)):
        warnings.warn(
            f"{given(key)} has no effect here ({unused[key]}), but a changed value still names a "
            "run folder of its own",
            stacklevel=3,
        )


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _as_json(result: Any, run_dir: str | Path | None = None) -> str:
    """``--json``'s output: strict JSON (NaN, e.g. an SN-free layer's power-iteration sigma, as
    null), which jq and JavaScript's parser read; a run's result first names its ``run_dir``."""
    from stablerank.train.results import to_dict

    data = to_dict(result)
    if run_dir is not None and isinstance(data, dict):
        data = {"run_dir": str(run_dir), **data}
    return json.dumps(data, indent=2, default=str, allow_nan=False)


def _trainer_of(run_dir: str) -> str | None:
    """The trainer command whose config the run folder's ``config.json`` is (None: no such file,
    or neither trainer's), so that a folder given to the wrong command gets a clear error."""
    from stablerank.train.rundir import RunDir

    path = RunDir(run_dir).config_file
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # damaged: the command's own reading of it names the file
        return None
    for name in _TRAINERS:
        fields = {f.name for f in dataclasses.fields(_load(_COMMANDS[name].config))}
        if isinstance(saved, dict) and set(saved) <= fields:
            return name
    return None


def _check_run_kind(command: str, args: argparse.Namespace) -> None:
    """A usage error when ``command`` reads runs of one trainer and RUN_DIR is the other's."""
    wanted = _COMMANDS[command].reads_runs_of
    found = _trainer_of(args.run_dir)
    if found and found != wanted:
        reader = next(n for n, c in _COMMANDS.items() if c.reads_runs_of == found)
        args.usage_error(
            f"{args.run_dir} is a run of `stablerank {found}`; `stablerank {reader}` analyses it"
        )


def _layers(args: argparse.Namespace) -> Any:
    from torch import nn

    from stablerank.layers import layer_report

    _check_run_dir(args)
    if _trainer_of(args.run_dir) == "gan":
        from stablerank.train.gan_models import load_gan_run

        run = load_gan_run(args.run_dir, ema=False)  # the trained G, not its average
        model: nn.Module = nn.ModuleDict({"D": run.D, "G": run.G})
    else:
        from stablerank.train.analyze import load_run_model

        model = load_run_model(args.run_dir)
    report = layer_report(model)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        report.to_csv(args.csv)
    if not args.json:
        _print(report)
    return report.to_rows()


def _check_run_dir(args: argparse.Namespace) -> None:
    """RUN_DIR must be a folder (a checkpoint file is not)."""
    if not Path(args.run_dir).is_dir():
        what = "is not a folder" if Path(args.run_dir).exists() else "does not exist"
        trainer = getattr(_COMMANDS.get(args.command), "reads_runs_of", None)
        of = f"`stablerank {trainer}`" if trainer else "`stablerank train` or `stablerank gan`"
        raise FileNotFoundError(f"{args.run_dir} {what}: `stablerank {args.command}` reads a run "
                                f"folder (config.json, checkpoints/) of {of}")  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    run_dir = None
    if args.command == "layers":
        result = _layers(args)
    else:
        cmd = _COMMANDS[args.command]
        if cmd.reads_runs_of:
            _check_run_kind(args.command, args)
        try:
            cfg = _resolve(cmd, args)
        except (ValueError, TypeError, FileNotFoundError) as err:
            args.usage_error(str(err))  # exits 2 with the command's usage line
        if args.print_config:
            _print(json.dumps(config_to_dict(cfg, complete=True), indent=2))
            return 0
        runner = _load(cmd.runner)
        if cmd.reads_runs_of:
            _check_run_dir(args)
            run_dir = args.run_dir
        elif args.command in _TRAINERS:  # its folder, which --json names (a hash in it)
            from stablerank.train.rundir import RunDir
            from stablerank.train.runtime import launched_world_size

            run_dir = RunDir.for_config(cfg, launched_world_size()).path
        try:
            result = runner(cfg, args.run_dir) if cmd.reads_runs_of else runner(cfg)
        except KeyboardInterrupt as stop:
            said = str(stop) if cmd.says_what_was_kept and stop.args else ""
            print(f"\n{said or 'interrupted: ' + cmd.on_interrupt}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.json:
        _print(_as_json(result, run_dir))
    return 0


def _print(text: object) -> None:
    """``text`` on stdout; a reader that stops early (``stablerank layers RUN --json | head``)
    has had what it wanted: no error then, and stdout goes to /dev/null (Python's recipe) so
    that the flush at exit does not fail either."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _show_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
    """A warning as one line on stderr, without Python's file:line and source line."""
    print(f"warning: {message} ({category.__name__})", file=sys.stderr)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, ``docker stop``) taken as Ctrl-C while the command runs: a
    trainer ends its step with a checkpoint, ``reproduce`` stops its workers so. Where Ctrl-C is
    held (blocked), so is SIGTERM; where it is ignored (a background job), SIGTERM still stops the
    command. Not under torchrun: a rank blocked in a collective must die at once when its agent
    ends it, and a Python handler runs only once that call returns."""

    def stop(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(2, b"\nSIGTERM: stopping as on Ctrl-C\n")
        handler = signal.getsignal(signal.SIGINT)
        if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            if not callable(handler):  # an ignored Ctrl-C would be dropped, not held
                signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)
        elif callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (an embedding program): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, which lists its options, not the top-level one
        args.usage_error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with (
            warnings.catch_warnings(),
            contextlib.nullcontext() if _under_torchrun() else _sigterm_as_ctrl_c(),
        ):
            if not args.debug:
                warnings.showwarning = _show_warning
            return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # SystemExit (argparse's usage errors) is no Exception: it passes
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(
            f"stablerank {args.command}: error: {message} ({type(err).__name__}; --debug "
            "shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
