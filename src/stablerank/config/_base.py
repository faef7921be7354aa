"""Typed, frozen experiment configs: one place for defaults, YAML files, CLI flags, validation.

Every config is a frozen dataclass whose fields are declared with :func:`option` (help text and
accepted range). From that one declaration come :func:`config_from_dict` (plain data, every error
naming its key; :func:`read_yaml` reads a file of it), :func:`add_config_arguments` (one
documented ``--flag`` per field), and :func:`config_hash` / :func:`diff_configs` (a run's cache
key and the differences shown when a resume is refused).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    omit_default: bool = False,
) -> Any:
    """Declare a config field with its help text and accepted range (:func:`check_config`).
    ``omit_default=True`` leaves the field out of :func:`config_to_dict` while it holds its
    default, for a field added after runs were made: their hash, folder name and saved config
    stay what they were, so a sweep still finds them and a resume still accepts them."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "omit_default": omit_default,
    }
    if isinstance(default, (list, dict)):
        raise TypeError("option defaults must be immutable; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert plain data (YAML/JSON/CLI strings) to the field's type, or raise naming the key."""
    base, optional = _split_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise TypeError(f"config key {key!r} may not be None (expected {_type_name(base)})")
    if typing.get_origin(base) is tuple:
        item_tp = typing.get_args(base)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"config key {key!r} expects a list of {_type_name(item_tp)}, got {value!r}"
            )
        return tuple(_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise TypeError(f"config key {key!r} expects a boolean, got {value!r}")
    if base in (int, float):
        # bool is an int subclass, and a float is no integer: both are refused, not truncated.
        accepted = (int, str) if base is int else (int, float, str)
        if isinstance(value, accepted) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):  # float(10**400) overflows
                return base(value)
        what = "an integer" if base is int else "a number"
        raise TypeError(f"config key {key!r} expects {what}, got {value!r}")
    if base is str:
        if not isinstance(value, str):
            raise TypeError(f"config key {key!r} expects a string, got {value!r}")
        return value
    raise TypeError(f"config key {key!r} has an unsupported type {tp!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            # NaN passes every comparison below and inf most: refuse both before any work.
            raise ValueError(f"config key {key!r} must be a finite number, got {v!r}")
        if meta.get("choices") and v not in meta["choices"]:
            raise ValueError(
                f"config key {key!r} must be one of {list(meta['choices'])}, got {v!r}"
            )
        lo, hi = meta.get("min"), meta.get("max")
        lo_open, hi_open = meta.get("min_exclusive"), meta.get("max_exclusive")
        below = lo is not None and (v < lo or (lo_open and v == lo))
        above = hi is not None and (v > hi or (hi_open and v == hi))
        if below or above:
            bounds = [f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []
            bounds += [f"{'<' if hi_open else '<='} {hi}"] if hi is not None else []
            raise ValueError(f"config key {key!r} must be {' and '.join(bounds)}, got {v!r}")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Where and how a run executes and what it prints, never what it computes, nor where its data is
# read from: left out of the folder hashes (so a run resumed on another device, with other threads
# or into another out_dir finds its folder), and free to change on resume. On the CPU a resumed run
# is bitwise one never stopped at the same num_threads; another thread count sums in another order.
RUNTIME_KEYS = (
    "resume", "overwrite", "progress", "num_threads", "device", "out_dir", "run_name", "data_dir",
    "deterministic",
)  # fmt: skip
# The help of both analyses' ``data_dir``: where the run's dataset is read from now (a runtime
# key, left out of the saved settings at its default None: where the run read it).
ANALYSIS_DATA_DIR_HELP = (
    "folder holding the run's dataset, if it moved (None = the run's own data_dir)"
)
# The help of every config's ``deterministic`` (train/runtime.py: use_deterministic_kernels).
DETERMINISTIC_HELP = (
    "deterministic CUDA kernels (torch.use_deterministic_algorithms; can be slower): runs repeat "
    "bitwise on one GPU model where every op has such a kernel (torch warns of one that has "
    "not), as they do on the CPU either way"
)


def check_device(device: str) -> None:
    """Refuse a device torch has no backend for here (``tpu:0``, ``cuda:x``) before any work:
    auto, cpu, mps, cuda or cuda:N."""
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {device!r}")


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _ints_to_floats(cfg: Any) -> None:
    """Store an int given to a float field (``lr=1`` in Python) as the float that
    :func:`config_from_dict` makes of it: equal configs then have one dict, one hash and one run
    folder (``1`` and ``1.0`` serialise differently)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        base, _ = _split_optional(hints[f.name])
        value = getattr(cfg, f.name)
        floats = typing.get_origin(base) is tuple and typing.get_args(base)[:1] == (float,)
        if base is float:
            object.__setattr__(cfg, f.name, _as_float(value))
        elif floats and isinstance(value, tuple):
            object.__setattr__(cfg, f.name, tuple(_as_float(v) for v in value))


def check_config(cfg: Any) -> None:
    """Check every field against its declared range and choices, then ``device`` and ``run_name``
    where the config has them; ints given to float fields are stored as floats.

    Call it from ``__post_init__`` so configs built directly in Python are checked too, not only
    those built from YAML or flags.
    """
    _ints_to_floats(cfg)
    for f in dataclasses.fields(cfg):
        _check_range(f.name, getattr(cfg, f.name), f.metadata)
    if hasattr(cfg, "device"):
        check_device(cfg.device)
    if getattr(cfg, "data_dir", None) is not None:
        # As an absolute path: a run's config.json is read again from other folders (analyze,
        # resume, a sweep's workers), where a relative one would name another folder.
        if not cfg.data_dir:
            raise ValueError("data_dir must name a folder, got ''")
        try:
            folder = Path(cfg.data_dir).expanduser().absolute()
        except RuntimeError as err:  # ~user of no such user
            raise ValueError(f"data_dir {cfg.data_dir!r}: {err}") from None
        object.__setattr__(cfg, "data_dir", str(folder))
    # A plain folder name (no "..", no separator, not absolute): the folder stays inside out_dir.
    name = getattr(cfg, "run_name", None)
    if name is not None and (not name or name in (".", "..") or any(c in name for c in "/\\")):
        raise ValueError(f"run_name must be a plain folder name inside out_dir, got {name!r}")


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build ``cls`` from plain data; unknown keys, bad types and out-of-range values raise, each
    key checked in turn (so that a class without a ``__post_init__`` check is checked too)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(key, value, hints[key])
        _check_range(key, kwargs[key], fields[key].metadata)
    return cls(**kwargs)


def config_to_dict(cfg: Any, *, complete: bool = False) -> dict[str, Any]:
    """Plain, JSON-ready dict of a config (tuples become lists), without the ``omit_default``
    fields that hold their default (see :func:`option`) unless ``complete``: the dict that is
    hashed and saved, or with ``complete`` every field (to show or compare two configs)."""
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for f in dataclasses.fields(cfg):
        if not complete and f.metadata.get("omit_default") and getattr(cfg, f.name) == f.default:
            del data[f.name]
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (``lr`` twice, or ``batch_size``
    and ``batch-size``): PyYAML would keep the last one without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if isinstance(key, str) and key != "<<":  # "<<": YAML's merge key
                if key.replace("-", "_") in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark
                    )
                seen.add(key.replace("-", "_"))
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of keys to values a YAML config file holds (empty file: ``{}``), with ``-`` in
    keys read as ``_``, as in flags: a later source (flags) then replaces the key, never sits
    beside it. Keys are returned as strings (``1: 2`` gives ``"1"``, an unknown key later).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, is not valid YAML, sets a key twice (``lr`` twice, or
            ``batch_size`` and ``batch-size``), or holds something other than a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        # PyYAML's message spans several lines (context, snippet, caret): keep one.
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def config_hash(cfg: Any, *, exclude: Sequence[str] = ()) -> str:
    """Short stable hash of a config's resolved values (the cache key of a run)."""
    d = {k: v for k, v in config_to_dict(cfg).items() if k not in exclude}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def diff_configs(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    ignore: Sequence[str] = (),
    cls: type | None = None,
) -> list[str]:
    """Readable differences ``key: saved -> current`` between two config dicts, leaving out the
    keys in ``ignore`` (e.g. a trainer's runtime keys). With the config class ``cls``, a dict
    without one of its ``omit_default`` fields holds that field's default (as it was saved)."""
    fields = dataclasses.fields(cls) if cls is not None else ()
    # JSON-ready like the saved dict (a tuple default is a list there).
    omitted = {
        f.name: json.loads(json.dumps(f.default)) for f in fields if f.metadata.get("omit_default")
    }
    pairs = {
        k: (saved.get(k, omitted.get(k, "<missing>")), current.get(k, omitted.get(k, "<missing>")))
        for k in (saved.keys() | current.keys()) - set(ignore)
    }
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(pairs.items()) if a != b]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of ``cls``; unset flags stay absent (argparse.SUPPRESS) so a
    YAML file's values are only overridden by flags actually given."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        base, _ = _split_optional(hints[f.name])
        meta, default = f.metadata, f.default
        notes = []
        if meta.get("choices"):
            notes.append("one of " + ", ".join(map(str, meta["choices"])))
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None or hi is not None:
            opening = "(" if meta.get("min_exclusive") else "["
            closing = ")" if meta.get("max_exclusive") else "]"
            notes.append(
                f"range {opening}{'-inf' if lo is None else lo}, "
                f"{'inf' if hi is None else hi}{closing}"
            )
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        notes.append(f"default: {shown}")
        if base is bool:  # a bare ``--dry-run`` means true; ``--dry-run false`` is accepted too
            kwargs = {"nargs": "?", "const": "true", "metavar": "{true,false}"}
        elif typing.get_origin(base) is tuple:
            kwargs = {"metavar": _type_name(typing.get_args(base)[0]) + ",..."}
        else:
            kwargs = {"metavar": _type_name(base).upper()}
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{meta.get('help', '')} ({'; '.join(notes)})",
            **kwargs,
        )
