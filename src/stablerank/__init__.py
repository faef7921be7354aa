"""stablerank: Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020) for PyTorch.

The public API is re-exported here, resolved on first access (PEP 562): importing the package
has no side effects and does not import torch, so ``stablerank --help`` stays fast.

Example:
    >>> import torch, stablerank as sr
    >>> _ = torch.manual_seed(0)
    >>> net = sr.apply_stable_rank_norm(torch.nn.Sequential(torch.nn.Linear(8, 16)), rank_ratio=0.5)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the core module that defines it
_EXPORTS = {
    "HEADS": "apply",
    "NORMS": "apply",
    "SrnActivity": "apply",
    "SrnInactiveWarning": "apply",
    "apply_stable_rank_norm": "apply",
    "bake_stable_rank_norm": "apply",
    "convert_spectral_norm_state_dict": "apply",
    "convert_to_spectral_norm_state_dict": "apply",
    "eligible_layers": "apply",
    "head_layers": "apply",
    "normalize_model": "apply",
    "srn_active_fraction": "apply",
    "srn_activity": "apply",
    "matrix_to_weight": "linalg",
    "spectral_norm_exact": "linalg",
    "srn_optimal": "linalg",
    "stable_rank": "linalg",
    "weight_to_matrix": "linalg",
    "LayerRecord": "layers",
    "LayerReport": "layers",
    "layer_report": "layers",
    "DEFAULT_RANK_RATIO": "srn",
    "remove_stable_rank_norm": "srn",
    "stable_rank_norm": "srn",
}

__all__ = [
    "DEFAULT_RANK_RATIO",
    "HEADS",
    "NORMS",
    "LayerRecord",
    "LayerReport",
    "SrnActivity",
    "SrnInactiveWarning",
    "__version__",
    "apply_stable_rank_norm",
    "bake_stable_rank_norm",
    "convert_spectral_norm_state_dict",
    "convert_to_spectral_norm_state_dict",
    "eligible_layers",
    "head_layers",
    "layer_report",
    "matrix_to_weight",
    "normalize_model",
    "remove_stable_rank_norm",
    "spectral_norm_exact",
    "srn_active_fraction",
    "srn_activity",
    "srn_optimal",
    "stable_rank",
    "stable_rank_norm",
    "weight_to_matrix",
]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ resolves the same names
    from stablerank.apply import (
        HEADS,
        NORMS,
        SrnActivity,
        SrnInactiveWarning,
        apply_stable_rank_norm,
        bake_stable_rank_norm,
        convert_spectral_norm_state_dict,
        convert_to_spectral_norm_state_dict,
        eligible_layers,
        head_layers,
        normalize_model,
        srn_active_fraction,
        srn_activity,
    )
    from stablerank.layers import LayerRecord, LayerReport, layer_report
    from stablerank.linalg import (
        matrix_to_weight,
        spectral_norm_exact,
        srn_optimal,
        stable_rank,
        weight_to_matrix,
    )
    from stablerank.srn import DEFAULT_RANK_RATIO, remove_stable_rank_norm, stable_rank_norm


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stablerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stablerank.{module}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
