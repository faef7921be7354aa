"""The ``stablerank`` command line: the only module that parses argv.

Every experiment subcommand is generated from its frozen config dataclass, so each option has
its ``--help`` text, range and default from one declaration (``stablerank.config``). Values come,
in order of precedence: command-line flags, then the ``--config`` YAML file, then the named
``--preset``, then the dataclass defaults. Logs and progress go to stderr; ``--json`` prints the
result as JSON on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stablerank.config import add_config_arguments, config_from_dict, config_to_dict


@dataclass(frozen=True)
class _Command:
    help: str
    config: str  # "module:Class"
    presets: str | None  # "module:DICT" of named presets
    runner: str  # "module:function", called with the config (and the run dir for analyze)
    on_interrupt: str  # what Ctrl-C leaves behind and how to continue
    takes_run_dir: bool = False


_COMMANDS = {
    "train": _Command(
        "train a classifier (vanilla / SN / SRN); torchrun-compatible",
        "stablerank.config.classify:ClassifyConfig",
        "stablerank.config.classify:CLASSIFY_PRESETS",
        "stablerank.train.classify:run",
        "the run folder keeps the checkpoint of the last finished epoch; the same command with "
        "--resume continues from it",
    ),
    "analyze": _Command(
        "analyse a trained classifier run: generalization gap, empirical Lipschitz, complexity",
        "stablerank.config.classify:AnalyzeConfig",
        None,
        "stablerank.train.analyze:run",
        "analysis.json was not written; run the command again",
        takes_run_dir=True,
    ),
    "gan": _Command(
        "train an SN-GAN / SRN-GAN and evaluate FID, KID, IS, neural divergence",
        "stablerank.config.gan:GanConfig",
        "stablerank.config.gan:GAN_PRESETS",
        "stablerank.train.gan:run",
        "a checkpoint was written at the G step reached; the same command with --resume "
        "continues from it",
    ),
    "reproduce": _Command(
        "run the paper's comparisons at a preset scale and write report.md (the main job)",
        "stablerank.config.reproduce:ReproduceConfig",
        "stablerank.config.reproduce:REPRODUCE_PRESETS",
        "stablerank.repro.pipeline:run",
        "finished runs are kept; the same command skips them and continues with the rest",
    ),
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablerank",
        description="Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020): train, "
        "analyse and reproduce vanilla vs spectral vs stable-rank normalization.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in _COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.takes_run_dir:
            p.add_argument(
                "run_dir", metavar="RUN_DIR", help="a run folder written by `stablerank train`"
            )
        if cmd.presets:
            presets = _load(cmd.presets)
            p.add_argument(
                "--preset",
                choices=sorted(presets),
                default=None,
                help="named settings applied before --config and flags (default: none)",
            )
        p.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML file of config keys; flags given on the command line override it",
        )
        p.add_argument(
            "--json",
            action="store_true",
            help="print the result as JSON on stdout (logs stay on stderr)",
        )
        p.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config as JSON and exit without running",
        )
        add_config_arguments(p, _load(cmd.config))
    layers = sub.add_parser(
        "layers",
        help="print the per-layer spectral norm / stable rank report of a run's final model",
        description="per-layer report of a run",
    )
    layers.add_argument("run_dir", metavar="RUN_DIR")
    layers.add_argument("--csv", metavar="FILE", default=None, help="also write the table as CSV")
    return parser


_META = {"command", "preset", "config", "json", "print_config", "csv"}


def _resolve(cmd: _Command, args: argparse.Namespace) -> Any:
    import yaml

    data: dict[str, Any] = {}
    if getattr(args, "preset", None):
        data.update(_load(cmd.presets)[args.preset])
    if args.config:
        with open(args.config) as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {args.config!r} must hold a mapping of keys to values")
        data.update(loaded)
    # analyze's positional RUN_DIR is not a config key; train's --run-dir is.
    positional = {"run_dir"} if cmd.takes_run_dir else set()
    data.update({k: v for k, v in vars(args).items() if k not in _META | positional})
    return config_from_dict(_load(cmd.config), data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "layers":
        from stablerank.report import layer_report
        from stablerank.train.analyze import load_run_model

        report = layer_report(load_run_model(args.run_dir))
        print(report)
        if args.csv:
            report.to_csv(args.csv)
        return 0
    cmd = _COMMANDS[args.command]
    try:
        cfg = _resolve(cmd, args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    runner = _load(cmd.runner)
    try:
        result = runner(cfg, args.run_dir) if cmd.takes_run_dir else runner(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {cmd.on_interrupt}", file=sys.stderr)
        return 130  # the shell's code for SIGINT
    if args.json:
        print(
            json.dumps(
                result if isinstance(result, dict) else {"run_dir": str(result)},
                indent=2,
                default=str,
            )
        )
    elif result is not None and not isinstance(result, dict):
        print(f"done: {result}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
