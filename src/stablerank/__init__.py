"""stablerank: Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020) for PyTorch.

The public API is re-exported here; importing the package has no side effects.

Example:
    >>> import torch, stablerank as sr
    >>> _ = torch.manual_seed(0)
    >>> net = sr.apply_stable_rank_norm(torch.nn.Sequential(torch.nn.Linear(8, 16)), rank_ratio=0.5)
"""

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
from stablerank.linalg import (
    matrix_to_weight,
    spectral_norm_exact,
    srn_optimal,
    stable_rank,
    weight_to_matrix,
)
from stablerank.report import LayerRecord, LayerReport, layer_report
from stablerank.srn import DEFAULT_RANK_RATIO, remove_stable_rank_norm, stable_rank_norm

__version__ = "0.1.0"

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
