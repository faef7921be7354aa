"""Per-layer report of spectral norms and stable ranks (the diagnostic of docs/math.md §1.1, §1.3).

:func:`layer_report` reads every Linear / ConvNd / ConvTransposeNd weight as the layer uses it
(the normalized weight when SN or SRN is registered: SRN, torch's parametrization and the
hook-based ``torch.nn.utils.spectral_norm``) without changing any state: parametrizations are
switched to eval mode for the read, so no power iteration runs.

The ``active`` column says whether SRN's cap binds (raw stable rank above the target r); the
per-epoch check is :func:`stablerank.apply.srn_active_fraction`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from stablerank.linalg import _sigma_max_and_frobenius, weight_to_matrix
from stablerank.srn import _find_srn, _input_of, _old_style_spectral_norm

__all__ = ["LayerRecord", "LayerReport", "layer_report", "weight_as_used"]


@dataclass(frozen=True)
class LayerRecord:
    """One weight of a model.

    Attributes:
        name: qualified module name.
        norm: ``"srn"``, ``"sn"`` or ``"none"``.
        shape: the weight's shape; ``matrix_shape`` the (m, n) it is reshaped to.
        sigma_max: exact largest singular value of the weight as used (SVD).
        sigma_power: the power-iteration estimate ``u^T W v`` of the *raw* weight's spectral norm
            (NaN without SN/SRN).
        raw_sigma_max: exact spectral norm of the raw (unnormalized) weight.
        frobenius: Frobenius norm of the weight as used.
        srank: exact stable rank of the weight as used; ``raw_srank`` of the raw weight.
        target_srank: SRN's r (NaN for SN and none: no cap acts on them).
        active: whether SRN's cap binds (``raw_srank > target_srank``); None where no cap can
            act: SN, none, and SRN with r >= min(m, n) (exactly SN there).
    """

    name: str
    norm: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    sigma_max: float
    sigma_power: float
    raw_sigma_max: float
    frobenius: float
    srank: float
    raw_srank: float
    target_srank: float
    active: bool | None = None


class LayerReport(list):
    """A list of :class:`LayerRecord` that prints as a table and exports to CSV/JSON."""

    COLUMNS = (
        "name",
        "norm",
        "matrix_shape",
        "sigma_max",
        "sigma_power",
        "raw_sigma_max",
        "srank",
        "target_srank",
        "raw_srank",
        "active",
        "frobenius",
    )

    def to_rows(self) -> list[dict[str, object]]:
        return [asdict(r) for r in self]

    def to_json(self, path: str | Path) -> None:
        """Strict JSON: a NaN (``sigma_power`` of a layer without SN/SRN, ``target_srank``
        without SRN) is written as null."""

        def strict(v: object) -> object:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        rows = [{k: strict(v) for k, v in row.items()} for row in self.to_rows()]
        Path(path).write_text(json.dumps(rows, indent=2, allow_nan=False))

    def to_csv(self, path: str | Path) -> None:
        """One row per layer: the table's columns in its order, with the weight's ``shape``
        (not in the table) before ``matrix_shape``; shapes written as the table writes them
        (``10x128``)."""
        with Path(path).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["name", "norm", "shape", *self.COLUMNS[2:]])
            writer.writeheader()
            for row in self.to_rows():
                writer.writerow({k: "x".join(map(str, v)) if isinstance(v, tuple) else v
                                 for k, v in row.items()})  # fmt: skip

    def __str__(self) -> str:
        def fmt(v: object) -> str:
            if v is None:  # active where no cap can act
                return "-"
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.4g}"
            if isinstance(v, tuple):
                return "x".join(map(str, v))
            return str(v)

        table = [list(self.COLUMNS)] + [[fmt(getattr(r, c)) for c in self.COLUMNS] for r in self]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.COLUMNS))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _norm_kind(module: nn.Module) -> tuple[str, Any]:
    srn = _find_srn(module, "weight")
    if srn is not None:
        return "srn", srn
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations["weight"]:
            if isinstance(p, _SpectralNorm):
                return "sn", p
    hook = _old_style_spectral_norm(module, "weight")
    if hook is not None:
        return "sn-hook", hook
    return "none", None


def weight_as_used(module: nn.Module) -> torch.Tensor:
    """The ``weight`` that ``module``'s forward uses, in the module's current mode: through an
    SN/SRN parametrization, or, under torch's older hook-based ``spectral_norm``, computed from
    ``weight_orig`` and its u, v without a power-iteration step (its ``module.weight`` holds the
    raw weight's storage until the next forward)."""
    return _weights(module, *_norm_kind(module))[0]


def _weights(module: nn.Module, kind: str, p: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight as used in eval mode, raw weight)."""
    if kind == "sn-hook":  # torch.nn.utils.spectral_norm: weight_orig, weight_u, weight_v
        return p.compute_weight(module, do_power_iteration=False), module.weight_orig
    if kind in ("srn", "sn"):
        return module.weight, _input_of(module.parametrizations["weight"], p)
    return module.weight, module.weight


def _parametrizations(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                yield from plist


@torch.no_grad()
def layer_report(model: nn.Module) -> LayerReport:
    """One :class:`LayerRecord` per Linear / ConvNd / ConvTransposeNd weight of ``model``, and per
    weight of any other module that has SN or SRN (a normalized ``nn.Embedding``, as a conditional
    discriminator's projection).

    Exact values come from the float64 Gram matrix of each reshaped weight (its top eigenvalue is
    sigma_max^2). The model's state (u, v, training flags) is unchanged.

    Raises:
        ValueError: the model has weights on the ``meta`` device (no values to measure).
    """
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "layer_report needs the weights' values, but the model has tensors on the meta "
            "device: materialize it first (to_empty(), then load_state_dict)"
        )
    params = list(_parametrizations(model))
    modes = [p.training for p in params]
    for p in params:
        p.train(False)
    records = LayerReport()
    try:
        layers = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or _norm_kind(m)[0] != "none"
        ]
        for name, module in layers:
            kind, p = _norm_kind(module)
            transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
            dim = getattr(p, "dim", 1 if isinstance(module, transposed) else 0)
            used, raw = _weights(module, kind, p)
            sigma, fro = _sigma_max_and_frobenius(used, dim)
            raw_sigma, raw_fro = _sigma_max_and_frobenius(raw, dim)
            matrix_shape = tuple(weight_to_matrix(raw, dim).shape)
            sigma_power = float("nan")
            if p is not None:
                owner, prefix = (module, "weight") if kind == "sn-hook" else (p, "")
                u, v = getattr(owner, prefix + "_u"), getattr(owner, prefix + "_v")
                sigma_power = torch.dot(
                    u, torch.mv(weight_to_matrix(raw, dim).to(u.dtype), v)
                ).item()
            raw_srank = _srank(raw_sigma, raw_fro)
            target = p.srank if kind == "srn" else float("nan")
            records.append(
                LayerRecord(
                    name=name,
                    norm="sn" if kind == "sn-hook" else kind,
                    shape=tuple(raw.shape),
                    matrix_shape=matrix_shape,
                    sigma_max=sigma.item(),
                    sigma_power=sigma_power,
                    raw_sigma_max=raw_sigma.item(),
                    frobenius=fro.item(),
                    srank=_srank(sigma, fro),
                    raw_srank=raw_srank,
                    target_srank=target,
                    # r >= min(m, n) (a 1 x n layer): the cap can never act, whatever rounding
                    # puts raw_srank at (1 + 1e-15 > 1 for a 1 x n layer).
                    active=raw_srank > target if kind == "srn" and p.clamps_srank else None,
                )
            )
    finally:
        for p, mode in zip(params, modes, strict=True):
            p.train(mode)
    return records


def _srank(sigma_max: torch.Tensor, frobenius: torch.Tensor) -> float:
    return (frobenius / sigma_max).square().item() if sigma_max != 0 else 0.0
