"""Apply no normalization, spectral normalization or SRN to every eligible layer of a model.

Eligible layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` (their
``weight``). Biases, BatchNorm and embeddings are never touched. The classifier head (by default
the model's last ``nn.Linear``) follows its own rule, ``head`` (Note [srn head rule]). Also here:
:func:`bake_stable_rank_norm` (remove every SN/SRN, keeping the eval weights), the state_dict
conversions between torch's spectral_norm and SRN, and :func:`srn_activity` /
:func:`srn_active_fraction` (on which SRN layers the cap binds: where it binds on none, SRN is
spectral normalization). Depends only on torch, :mod:`stablerank.linalg` and :mod:`stablerank.srn`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm as _HookSpectralNorm

from stablerank.linalg import stable_rank
from stablerank.srn import (
    _caller_outside_package,
    _input_of,
    _old_style_spectral_norm,
    _own_parametrized_class,
    _StableRankNorm,
    check_srn_arguments,
    stable_rank_norm,
)

__all__ = [
    "HEADS",
    "NORMS",
    "SrnActivity",
    "SrnInactiveWarning",
    "apply_stable_rank_norm",
    "bake_stable_rank_norm",
    "convert_spectral_norm_state_dict",
    "convert_to_spectral_norm_state_dict",
    "eligible_layers",
    "head_layers",
    "normalize_model",
    "srn_active_fraction",
    "srn_activity",
]

NORMS = ("none", "sn", "srn")
HEADS = ("none", "sn", "srn")
_ELIGIBLE = (nn.Linear, nn.modules.conv._ConvNd)
_NORM_PARAMETRIZATIONS = (_StableRankNorm, _SpectralNorm)

Exclude = Callable[[str, nn.Module], bool] | Iterable[str] | None


class SrnInactiveWarning(UserWarning):
    """SRN's cap binds on no layer of a model: SRN acts as spectral normalization there.

    Silence it with ``warnings.filterwarnings("ignore", category=SrnInactiveWarning)``.
    """


@dataclass(frozen=True)
class SrnActivity:
    """Whether SRN's cap binds on one SRN-normalized tensor.

    Attributes:
        name: qualified tensor name (``"features.0.weight"``).
        raw_srank: exact stable rank of the raw (unnormalized) weight.
        target_srank: SRN's r.
        active: ``raw_srank > target_srank``: the cap binds (SRN differs from SN).
    """

    name: str
    raw_srank: float
    target_srank: float
    active: bool


@torch.no_grad()
def srn_activity(model: nn.Module) -> list[SrnActivity]:
    """One :class:`SrnActivity` per SRN-normalized tensor of ``model`` (exact stable ranks).

    Skipped: tensors on the meta device (no values), and tensors whose target r is at least
    min(m, n) (e.g. a 1 x n output layer): there the cap can never act and SRN is exactly SN, so
    counting them would only dilute the fraction of layers where SRN differs from SN."""
    out = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if (
                    isinstance(p, _StableRankNorm)
                    and p.clamps_srank
                    and plist.original.device.type != "meta"
                ):
                    raw = stable_rank(_input_of(plist, p), p.dim).item()
                    qualified = f"{name}.{tensor_name}" if name else tensor_name
                    out.append(SrnActivity(qualified, raw, p.srank, raw > p.srank))
    return out


def srn_active_fraction(model: nn.Module) -> float:
    """Fraction of SRN-normalized tensors whose cap binds (raw stable rank > r); NaN without SRN.

    Cheap enough to call each epoch (one small symmetric eigensolve per layer).
    """
    activity = srn_activity(model)
    if not activity:
        return float("nan")
    return sum(a.active for a in activity) / len(activity)


def _excluder(exclude: Exclude, model: nn.Module, what: str) -> Callable[[str, nn.Module], bool]:
    """``exclude`` (None, a predicate, or module-name patterns, each of which must match a module
    of ``model``) as a predicate ``(name, module) -> bool``; ``what`` names the argument. A
    pattern that matches a container covers the modules inside it (``"classifier"`` covers
    ``classifier.0``, ...), as a container itself has no weight to act on."""
    if exclude is None:
        return lambda name, module: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    patterns = list(exclude)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{what} must hold name patterns (str), got {p!r}")
    names = [name for name, _ in model.named_modules() if name]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"{what} pattern(s) {unmatched} match no module name of the model (fnmatch against "
            f"model.named_modules(), e.g. {names[:3]}); pass a predicate (name, module) -> bool "
            "for a rule that may match nothing"
        )

    def matches(name: str, module: nn.Module) -> bool:
        parts = name.split(".")
        within = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # itself and above
        return any(fnmatch.fnmatchcase(n, p) for n in within for p in patterns)

    return matches


def eligible_layers(model: nn.Module, exclude: Exclude = None) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs :func:`normalize_model` would normalize (head included).

    A weight that already has SN or SRN is listed without being read, so u, v do not move.

    Args:
        model: any module.
        exclude: module-name patterns (``fnmatch``, e.g. ``"classifier"`` or ``"*.shortcut.*"``)
            or a predicate ``(name, module) -> bool``; matching layers are skipped, and so are
            the layers inside a matching container.

    Raises:
        ValueError: a pattern of ``exclude`` matches no module name of ``model`` (a typo would
            otherwise normalize the layer it meant to spare).
    """
    skip = _excluder(exclude, model, "exclude")
    # A parametrized weight is not read: reading it in training mode would run SN's or SRN's
    # power iteration, and listing layers must not move their u, v.
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _ELIGIBLE)
        and (
            parametrize.is_parametrized(m, "weight")
            or isinstance(getattr(m, "weight", None), torch.Tensor)
        )
        and not skip(name, m)
    ]


def head_layers(model: nn.Module, head_names: str | Iterable[str] | None = None) -> list[str]:
    """Qualified names of the classifier head (Note [srn head rule]).

    Args:
        model: any module.
        head_names: module-name patterns (``fnmatch``) of the head, a container's covering the
            layers inside it; default None: the model's last ``nn.Linear`` in
            ``named_modules()`` order (none if it has no Linear).

    Raises:
        ValueError: a pattern of ``head_names`` matches no module name of ``model``.
    """
    if head_names is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        return linears[-1:]
    match = _excluder(head_names, model, "head_names")
    return [n for n, m in model.named_modules() if match(n, m)]


def _weight_parametrizations(layer: nn.Module) -> list[str]:
    """What already transforms ``layer.weight``: its parametrizations' class names, and
    ``"torch.nn.utils.spectral_norm"`` for the hook-based API; empty for a plain weight."""
    found = []
    if parametrize.is_parametrized(layer, "weight"):
        found = [type(p).__name__ for p in layer.parametrizations["weight"]]
    if _old_style_spectral_norm(layer, "weight") is not None:
        found.append("torch.nn.utils.spectral_norm")
    return found


def _parameter_uses(model: nn.Module) -> Counter[int]:
    """How many parameter slots of distinct modules hold each parameter (by ``id``): above 1 for
    a weight tied across modules, 1 for a module reused in several places (one module, one
    weight: nothing is tied)."""
    return Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)


def _register(layer: nn.Module, kind: str, kwargs: dict[str, Any]) -> None:
    if kind == "sn":
        _own_parametrized_class(layer)  # its class may be a deep copy's original's too
        spectral_norm(layer, n_power_iterations=kwargs["n_power_iterations"])
    else:
        stable_rank_norm(layer, **kwargs)


def normalize_model(
    model: nn.Module,
    norm: str,
    *,
    rank_ratio: float | None = None,
    srank: float | None = None,
    n_power_iterations: int = 1,
    exclude: Exclude = None,
    exact: bool = False,
    head: str = "none",
    head_names: str | Iterable[str] | None = None,
) -> nn.Module:
    """Normalize the weight of every Linear / ConvNd / ConvTransposeNd layer of ``model``.

    Note [srn head rule]
        The classifier head is the model's last ``nn.Linear`` (or the layers ``head_names``
        names). ``head="none"`` (default) leaves it unnormalized, as the SRN authors' code does;
        ``head="sn"`` puts torch's spectral_norm on it; ``head="srn"`` normalizes it like the body.
        A GAN discriminator whose every layer must be normalized passes ``head=norm``.

    All or nothing: if registering any layer fails, the layers registered so far are restored
    and the error is raised, so the model is unchanged. A layer to normalize whose weight
    already has SN, SRN or another parametrization is refused before any change (it is neither
    skipped nor stacked: a second call with another ``rank_ratio`` must not silently keep the
    first). When SRN's cap binds on no SRN layer at registration (every raw stable rank is
    already <= r, so SRN acts as SN), a :class:`SrnInactiveWarning` is issued (silence it with
    ``warnings.filterwarnings("ignore", category=stablerank.SrnInactiveWarning)``). A call
    that normalizes no layer at all warns too (UserWarning): no eligible layer outside
    ``exclude`` but the head, which ``head="none"`` leaves plain, or none at all (an LSTM). So
    does one that normalizes a weight tied to another module's: each module then has its own
    SN/SRN, and a module left plain reads the raw weight.
    ``rank_ratio``, ``srank`` and ``exact`` act on SRN layers only (they are still checked), so
    one call serves a loop over ``norm`` in ``("none", "sn", "srn")``, as the trainers make.

    Args:
        model: the model, modified in place.
        norm: ``"none"`` (remove every SN/SRN, baking the eval weights: see
            :func:`bake_stable_rank_norm`), ``"sn"``
            (``torch.nn.utils.parametrizations.spectral_norm``) or ``"srn"``
            (:func:`stablerank.stable_rank_norm`) on the body.
        rank_ratio: SRN's c in (0, 1] (default None:
            :data:`stablerank.srn.DEFAULT_RANK_RATIO` unless ``srank`` is given).
        srank: SRN's absolute target instead of ``rank_ratio`` (default None; giving both is
            an error, as in :func:`stablerank.stable_rank_norm`).
        n_power_iterations: power-iteration steps per training forward (default 1).
        exclude: module-name patterns or a predicate, see :func:`eligible_layers` (default None);
            excluded layers are never normalized, head or not.
        exact: SRN by SVD instead of power iteration (default False).
        head: ``"none"`` (default), ``"sn"`` or ``"srn"``: the head's normalization.
        head_names: the head's module-name patterns (default None: the last ``nn.Linear``).

    Returns:
        ``model``.

    Raises:
        ValueError: ``norm`` or ``head`` not one of ``"none"``, ``"sn"``, ``"srn"``, an invalid SRN
            argument, a pattern of ``exclude`` or ``head_names`` that matches no module,
            ``head_names`` patterns that cover no Linear/ConvNd/ConvTransposeNd layer, a layer
            to normalize whose weight is already parametrized (all raised before any layer is
            modified), or any error of a layer's registration (after restoring the model).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if norm == "none":
        return bake_stable_rank_norm(model)
    rank_ratio, srank = check_srn_arguments(rank_ratio, srank, n_power_iterations, 1e-12, exact)
    heads = set(head_layers(model, head_names))
    kwargs = {
        "rank_ratio": rank_ratio,
        "srank": srank,
        "n_power_iterations": n_power_iterations,
        "exact": exact,
    }
    plan = [
        (name, layer, head if name in heads else norm)
        for name, layer in eligible_layers(model, exclude)
    ]
    # Patterns only: a predicate may match nothing on purpose, and an empty list means no head.
    named = head_names is not None and not callable(head_names) and len(list(head_names)) > 0
    if named and not any(name in heads for name, _ in eligible_layers(model)):
        raise ValueError(
            f"head_names {head_names!r} covers no Linear/ConvNd/ConvTransposeNd layer (it "
            f"matches {sorted(heads)[:5]}): the body's normalization would reach the head; name "
            "the output layer itself"
        )
    taken = {
        name or type(layer).__name__: found
        for name, layer, kind in plan
        if kind != "none" and (found := _weight_parametrizations(layer))
    }
    if taken:
        raise ValueError(
            f"normalize_model normalizes plain weights; these layers' weights already have "
            f"{taken}: remove SN/SRN with normalize_model(model, 'none') first, leave the layers "
            "out with exclude=..., or call stable_rank_norm on a parametrized weight yourself"
        )
    uses = _parameter_uses(model)
    tied = [name for name, layer, kind in plan if kind != "none" and uses[id(layer.weight)] > 1]
    if tied:
        warnings.warn(
            f"the weight of {tied} is shared with another module of the model (tied weights): "
            "each normalized module gets its own SN/SRN with its own u, v, and a module left "
            "plain (not eligible, excluded or the head) uses the raw weight; to share one "
            "normalized weight, normalize one module and reuse that module",
            UserWarning,
            stacklevel=_caller_outside_package(),
        )
    done: list[nn.Module] = []
    try:
        for _, layer, kind in plan:
            if kind != "none":
                _register(layer, kind, kwargs)
                done.append(layer)
    except Exception:
        for layer in reversed(done):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        raise
    if not done:  # e.g. a lone Linear (the head) or an LSTM: say so rather than pass silently
        why = (  # a plan of heads only (head="none"), or no eligible layer: head=... can't help
            f"every Linear/ConvNd/ConvTransposeNd weight outside exclude is the head, which "
            f"head={head!r} leaves plain (pass head={norm!r} to normalize it)"
            if plan
            else "the model has no Linear/ConvNd/ConvTransposeNd weight outside exclude"
        )
        warnings.warn(
            f"normalize_model(norm={norm!r}) normalized no layer: {why}",
            UserWarning,
            stacklevel=_caller_outside_package(),
        )
    # No SRN layer that binds: either every raw stable rank is <= its target, or no target is
    # below min(m, n) (rank_ratio=1, 1 x n layers): NaN or 0 both mean SRN == SN here.
    # A model on the meta device has no values to measure: nothing to warn of.
    on_meta = any(p.is_meta for p in model.parameters())
    if (
        any(kind == "srn" for _, _, kind in plan)
        and not on_meta
        and not srn_active_fraction(model) > 0.0
    ):
        warnings.warn(
            "SRN's cap binds on no layer of this model at registration (every raw stable rank is "
            f"<= its target; rank_ratio={rank_ratio}, srank={srank}): SRN acts as spectral "
            "normalization here. Lower rank_ratio to test SRN (stablerank.srn_activity lists the "
            "layers).",
            SrnInactiveWarning,
            stacklevel=_caller_outside_package(),
        )
    return model


def apply_stable_rank_norm(
    model: nn.Module,
    rank_ratio: float | None = None,
    *,
    srank: float | None = None,
    n_power_iterations: int = 1,
    exclude: Exclude = None,
    exact: bool = False,
    head: str = "none",
    head_names: str | Iterable[str] | None = None,
) -> nn.Module:
    """SRN on every Linear / ConvNd / ConvTransposeNd layer, the head by ``head``.

    Same as ``normalize_model(model, "srn", ...)``; see :func:`normalize_model`.
    """
    return normalize_model(
        model,
        "srn",
        rank_ratio=rank_ratio,
        srank=srank,
        n_power_iterations=n_power_iterations,
        exclude=exclude,
        exact=exact,
        head=head,
        head_names=head_names,
    )


def bake_stable_rank_norm(model: nn.Module) -> nn.Module:
    """Remove every SRN and spectral normalization of ``model``, baking the eval weights in.

    Covers SRN, torch's ``parametrizations.spectral_norm`` and the hook-based
    ``torch.nn.utils.spectral_norm``. Each weight becomes the one the layer uses in eval mode
    (frozen u, v; no power iteration), so eval outputs are identical before and after; the
    parameter objects of parametrized weights are kept (same ``id()``). For export or inference.

    Raises:
        ValueError: a tensor whose parametrizations mix SN/SRN with others, or whose raw weight
            is tied to another parameter (nothing is changed).
    """
    todo: list[tuple[nn.Module, str]] = []
    uses = _parameter_uses(model)
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                qualified = f"{name or type(module).__name__}.{tensor_name}"
                kinds = [isinstance(p, _NORM_PARAMETRIZATIONS) for p in plist]
                if any(kinds) and not all(kinds):
                    raise ValueError(
                        f"{qualified} mixes SN/SRN with other "
                        f"parametrizations ({[type(p).__name__ for p in plist]}): remove them first"
                    )
                if all(kinds):
                    if uses[id(plist.original)] > 1:  # removal writes into the raw weight
                        raise ValueError(
                            f"the raw weight of {qualified} is tied to another parameter of the "
                            "model: baking would write its eval weight into the shared tensor, "
                            "changing the other layer too; untie them first"
                        )
                    todo.append((module, tensor_name))
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, _HookSpectralNorm):
                torch.nn.utils.remove_spectral_norm(module, hook.name)
    for module, tensor_name in todo:
        _own_parametrized_class(module)
        plist = module.parametrizations[tensor_name]
        modes = [p.training for p in plist]
        plist.eval()  # no power iteration: the baked weight is the eval weight
        try:
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        finally:
            for p, mode in zip(plist, modes, strict=True):
                p.train(mode)
    return model


def _srn_layers(model: nn.Module) -> list[tuple[str, str, int, _StableRankNorm]]:
    """(module prefix, tensor name, index in the parametrization list, SRN) of every SRN."""
    found = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                for i, p in enumerate(plist):
                    if isinstance(p, _StableRankNorm):
                        found.append((f"{name}." if name else "", tensor_name, i, p))
    return found


def convert_spectral_norm_state_dict(
    state_dict: Mapping[str, Any], model: nn.Module
) -> OrderedDict[str, Any]:
    """A state_dict of spectral normalization made loadable by the SRN ``model``.

    Renames the keys of the hook-based ``torch.nn.utils.spectral_norm`` (``weight_orig``,
    ``weight_u``, ``weight_v``) to the parametrization's (``parametrizations.weight.original``,
    ``...0._u``, ``...0._v``) and adds each SRN layer's target (``...0._srank``, the one ``model``
    was built with) where the state_dict has none: a state_dict of torch's
    ``parametrizations.spectral_norm`` or of SRN before the target was stored. Strict loading
    of the unconverted state_dict raises (missing ``_srank`` keys) instead.

    Args:
        state_dict: the state_dict to convert (not modified).
        model: the SRN model it will be loaded into.

    Returns:
        A new state_dict (``_metadata`` kept).
    """
    out: OrderedDict[str, Any] = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    for prefix, tensor_name, index, srn in _srn_layers(model):
        base = f"{prefix}parametrizations.{tensor_name}."
        for old, new in (("_orig", "original"), ("_u", f"{index}._u"), ("_v", f"{index}._v")):
            if prefix + tensor_name + old in out:
                out[base + new] = out.pop(prefix + tensor_name + old)
        # beside the saved u (a meta model, the route to load with assign=True, has no values)
        u = out.get(f"{base}{index}._u")
        device = u.device if isinstance(u, torch.Tensor) else srn._srank.device
        out.setdefault(
            f"{base}{index}._srank", torch.tensor(srn.srank, dtype=torch.float64, device=device)
        )
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def convert_to_spectral_norm_state_dict(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """An SRN state_dict made loadable by the same model with torch's ``spectral_norm``.

    Drops the targets (``parametrizations.<name>.<i>._srank``); u, v and the raw weight keep their
    keys. Loading the unconverted state_dict into a spectral-norm model with ``strict=True``
    raises (unexpected ``_srank`` keys). Outputs agree only where SRN's cap did not bind.
    """
    out: OrderedDict[str, Any] = OrderedDict(
        (k, v)
        for k, v in state_dict.items()
        if not (k.endswith("._srank") and ".parametrizations." in f".{k}")
    )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out
