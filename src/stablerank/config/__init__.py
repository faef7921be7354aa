"""Experiment configs: the generic machinery lives in ``_base``; each experiment defines its frozen
dataclass in its own module here (``classify``, ``gan``, ``reproduce``)."""

from stablerank.config._base import (
    RUNTIME_KEYS,
    add_config_arguments,
    check_config,
    check_device,
    config_from_dict,
    config_hash,
    config_to_dict,
    diff_configs,
    option,
    read_yaml,
)

__all__ = [
    "RUNTIME_KEYS", "add_config_arguments", "check_config", "check_device", "config_from_dict",
    "config_hash", "config_to_dict", "diff_configs", "option", "read_yaml",
]  # fmt: skip
