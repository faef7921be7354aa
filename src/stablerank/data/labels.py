"""Random labels and small training subsets for the memorization (shattering) experiments.

Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization") replace a
fraction p of the training labels by random classes, drawn once and kept fixed for the whole run,
and measure how fast a network still fits them. SRN's claim 2 (docs/math.md §2.3) is that it fits
them less or more slowly.

Both functions here draw from their own ``torch.Generator`` seeded by the ``seed`` argument, so
they never touch (nor depend on) the global RNG: the same arguments give the same result in any
process, on any device. For a shattering run, take the subset first, then corrupt its labels.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["check_labels", "corrupt_labels", "subset_indices", "train_subset"]


def _generator(seed: int) -> torch.Generator:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def check_labels(labels: torch.Tensor, name: str = "labels") -> None:
    """Refuse (ValueError naming ``name``) anything but a 1-D integer tensor of class indices."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {labels.dtype}")


def corrupt_labels(
    labels: torch.Tensor,
    fraction: float,
    num_classes: int,
    seed: int,
    *,
    exclude_original: bool = False,
) -> torch.Tensor:
    """Replace a fixed fraction of labels by uniformly random classes (Zhang et al. 2017).

    Exactly ``round(fraction * N)`` positions, chosen uniformly without replacement, receive a new
    label drawn uniformly from the ``num_classes`` classes. With the default
    ``exclude_original=False`` (Zhang et al.'s protocol) the new label may equal the old one, so
    the fraction of labels that actually change is about ``fraction * (K - 1) / K``; with ``True``
    the new label is drawn uniformly from the other ``K - 1`` classes and exactly
    ``round(fraction * N)`` labels change. (Zhang et al. corrupt each label independently with
    probability p; choosing exactly round(p N) positions removes the binomial noise in the count.)

    Args:
        labels: 1-D integer tensor of class indices in [0, num_classes), any device.
        fraction: p in [0, 1]; 1 gives fully random labels.
        num_classes: K >= 2.
        seed: seed of the draw, an int in [0, 2**64); the same arguments always give the same
            labels.
        exclude_original: if True, a corrupted label always differs from the original
            (default False).

    Returns:
        A new int64 tensor on ``labels``' device; ``labels`` is not modified.

    Raises:
        ValueError: naming the argument that is out of range.
    """
    check_labels(labels)
    if not isinstance(fraction, numbers.Real) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    generator = _generator(seed)
    out = labels.detach().to("cpu", torch.int64).clone()
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}), got range "
            f"[{int(out.min())}, {int(out.max())}]"
        )
    count = round(float(fraction) * out.numel())
    # Draws in a fixed order (positions, then classes) so the result depends only on the args.
    positions = torch.randperm(out.numel(), generator=generator)[:count]
    if exclude_original:
        shift = torch.randint(1, num_classes, (count,), generator=generator)
        out[positions] = (out[positions] + shift) % num_classes
    else:
        out[positions] = torch.randint(0, num_classes, (count,), generator=generator)
    return out.to(labels.device)


def subset_indices(labels: torch.Tensor, size: int, seed: int, *, stratified: bool = True
                   ) -> torch.Tensor:  # fmt: skip
    """Indices of a seeded subset of ``size`` examples, sorted ascending.

    Stratified (default): every class present in ``labels`` gets ``size // K`` examples and a
    seeded random choice of ``size % K`` classes one more, each class's examples chosen uniformly
    without replacement. Otherwise a uniform random subset. ``size == len(labels)`` gives every
    index, with no draw (a stratified quota could exceed a small class).

    Args:
        labels: 1-D integer tensor of labels.
        size: subset size, 1 <= size <= len(labels).
        seed: seed of the draw, an int in [0, 2**64).
        stratified: balance the classes (default True).

    Returns:
        int64 tensor of ``size`` distinct indices on the CPU.

    Raises:
        ValueError: ``size`` or ``seed`` out of range, or a class too small for its stratified
            share.
    """
    check_labels(labels)
    n = labels.numel()
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or not 1 <= size <= n:
        raise ValueError(f"size must be an int in [1, {n}] (the number of examples), got {size!r}")
    size = int(size)
    generator = _generator(seed)
    if size == n:  # every example: no draw (a stratified quota could exceed a small class)
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    if not stratified:
        return order[:size].sort().values
    labels = labels.detach().cpu()
    classes = labels.unique()
    quota = torch.full((classes.numel(),), size // classes.numel(), dtype=torch.int64)
    extra = torch.randperm(classes.numel(), generator=generator)[: size % classes.numel()]
    quota[extra] += 1
    shuffled = labels[order]
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = order[shuffled == c]  # this class's indices in random order
        if members.numel() < q:
            raise ValueError(
                f"size={size} needs {q} examples of class {c} for a stratified subset, but there "
                f"are only {members.numel()}; use a smaller size or stratified=False"
            )
        chosen.append(members[:q])
    return torch.cat(chosen).sort().values


def train_subset(
    x: torch.Tensor, y: torch.Tensor, size: int, seed: int, *, stratified: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded subset ``(x[idx], y[idx])`` of a training split (see :func:`subset_indices`).

    Args:
        x: inputs, first dimension N.
        y: 1-D labels, N entries.
        size: subset size in [1, N].
        seed: seed of the draw, an int in [0, 2**64).
        stratified: balance the classes (default True).

    Returns:
        New tensors ``(x_sub, y_sub)`` on the inputs' devices, in ascending index order.

    Raises:
        ValueError: mismatched lengths, or as :func:`subset_indices`.
    """
    check_labels(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    idx = subset_indices(y, size, seed, stratified=stratified)
    return x[idx.to(x.device)], y[idx.to(y.device)]
