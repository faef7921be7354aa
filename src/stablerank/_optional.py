"""Imports of the packages in the ``experiments`` extra, done when a function needs them.

``pip install stablerank`` brings only torch, numpy, pyyaml and tqdm; the data sets, metrics and
plots that need more (scikit-learn's digits, MNIST-1D, torchmetrics, matplotlib) import their
package on first use through :func:`import_optional`, which turns a missing package into an
error that says how to install it. A leaf module (standard library only): every layer of the
package may import it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXPERIMENTS_INSTALL", "import_optional"]

EXPERIMENTS_INSTALL = 'pip install "stablerank[experiments]"'


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or explain which extra provides it.

    Args:
        module: dotted module name (e.g. ``"sklearn.datasets"``).
        purpose: what needs it, for the message (e.g. ``"the digits dataset"``).

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: the package (or one it needs) is not installed; the message names
            it and the install command.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module.split(".")[0]
        raise ModuleNotFoundError(
            f"{purpose} needs the package {missing!r}, which is not installed: "
            f"run `{EXPERIMENTS_INSTALL}`",
            name=missing,
        ) from err
