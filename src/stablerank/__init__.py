"""stablerank: Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020) for PyTorch.

The public API is re-exported here, resolved on first access (PEP 562): importing the package
has no side effects and does not import torch, so ``stablerank --help`` stays fast.

Example:
    >>> import torch, stablerank as sr
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)  # the last: the head
    ... )
    >>> net = sr.apply_stable_rank_norm(net, rank_ratio=0.2)  # SRN on every layer but the head
    >>> round(sr.srn_active_fraction(net), 2)  # the share of SRN layers whose cap binds
    1.0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_RANK_RATIO",
    "HEADS",
    "NORMS",
    "LayerRecord",
    "LayerReport",
    "RankOneWarning",
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
    from stablerank.srn import (
        DEFAULT_RANK_RATIO,
        RankOneWarning,
        remove_stable_rank_norm,
        stable_rank_norm,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in ("linalg", "srn", "apply", "layers"):  # the modules imported above
            found = importlib.import_module(f"stablerank.{module}")
            if hasattr(found, name):
                globals()[name] = getattr(found, name)  # later accesses skip this function
                return globals()[name]
    raise AttributeError(f"module 'stablerank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
