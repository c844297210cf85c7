"""In-memory labelled datasets and seeded, class-aware index selection.

:class:`LabeledTensorDataset` keeps a whole dataset as two tensors and exposes its labels as
``.targets``, so :mod:`lightning_sylv.subset` can pick a class-balanced subset without loading a
single item. :func:`stratified_split` and :func:`few_shot_indices` select indices with a seeded
``torch.Generator``, so the same seed gives the same split on every machine and process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["LabeledTensorDataset", "few_shot_indices", "stratified_split"]


def _check_targets(targets: Tensor, name: str = "targets") -> Tensor:
    """``targets`` as a 1-D ``LongTensor``, or a ``ValueError`` naming ``name``."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"{name} must be a 1-D integer tensor, got {type(targets).__name__}")
    if targets.ndim != 1 or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 1-D integer tensor, got dtype {targets.dtype} and shape {tuple(targets.shape)}"
        )
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"{name} must hold non-negative class indices, got minimum {int(targets.min())}")
    return targets.long()


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return seed


class LabeledTensorDataset(Dataset):
    """A labelled dataset held in memory as an ``inputs`` tensor and a ``targets`` tensor.

    Items are ``(transform(inputs[i]), targets[i])`` with the label a 0-dim ``LongTensor`` (the
    default collate stacks them into a ``LongTensor`` batch).

    Args:
        inputs: Tensor of shape ``(N, ...)``; any dtype (e.g. ``uint8`` images, decoded per item by
            ``transform``).
        targets: Integer class labels of shape ``(N,)``; stored as ``LongTensor`` in ``.targets``.
        transform: Optional callable applied to each input when it is read (e.g. augmentation or
            normalization). It must be picklable when used with ``num_workers > 0`` under the
            ``spawn`` start method.

    Raises:
        ValueError: If ``inputs`` is not a tensor with a leading batch dimension, ``targets`` is not a
            1-D non-negative integer tensor of the same length, or ``transform`` is not callable.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(inputs, Tensor) or inputs.ndim < 1:
            raise ValueError(f"inputs must be a tensor of shape (N, ...), got {type(inputs).__name__}")
        targets = _check_targets(targets)
        if targets.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same length, got {inputs.shape[0]} and {targets.shape[0]}"
            )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {transform!r}")
        self.inputs = inputs
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        """Number of items."""
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """The item at ``index``: ``(transformed input, 0-dim long label)``."""
        x = self.inputs[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, item_shape={tuple(self.inputs.shape[1:])}, "
            f"dtype={self.inputs.dtype}, transform={self.transform!r})"
        )


def stratified_split(targets: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Split ``range(len(targets))`` into disjoint, class-stratified parts of the given fractions.

    Part sizes are exact: ``round(cumsum(fractions) * N)`` boundaries over all ``N`` items. Inside
    every class the items are shuffled (seeded) and spread over the parts in proportion to
    ``fractions`` (each class's count in a part is within one item of proportional), so every part
    has the class balance of the whole.

    Args:
        targets: Integer class labels of shape ``(N,)``.
        fractions: Positive fractions, one per part, summing to 1.
        seed: Seed of the ``torch.Generator`` that shuffles the items.

    Returns:
        One sorted ``LongTensor`` of indices per part; together they cover every index once.

    Raises:
        ValueError: If ``targets`` is not a 1-D integer tensor, a fraction is not a positive finite
            number, or the fractions do not sum to 1.
    """
    targets = _check_targets(targets)
    _check_seed(seed)
    fracs = list(fractions)
    if not fracs or any(
        isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0 for f in fracs
    ):
        raise ValueError(f"fractions must be positive finite numbers, got {fractions!r}")
    if abs(sum(fracs) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fracs)})")
    n = targets.shape[0]
    g = torch.Generator().manual_seed(seed)
    # Key of each item: its (random) rank inside its class as a quantile in (0, 1). Sorting by the
    # key interleaves the classes evenly, so any contiguous cut of the order is stratified.
    perm = torch.randperm(n, generator=g)
    order = perm[torch.sort(targets[perm], stable=True).indices]  # grouped by class, shuffled inside
    counts = torch.bincount(targets, minlength=1) if n else torch.zeros(1, dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[targets[order]]
    key = torch.empty(n, dtype=torch.float64)
    key[order] = (rank.double() + 0.5) / counts[targets[order]].double()
    shuffle = torch.randperm(n, generator=g)  # random order of equal keys (classes of equal size)
    stratified = shuffle[torch.sort(key[shuffle], stable=True).indices]
    bounds = [0] + [round(c * n) for c in torch.cumsum(torch.tensor(fracs, dtype=torch.float64), 0).tolist()]
    bounds[-1] = n
    return [torch.sort(stratified[a:b]).values for a, b in pairwise(bounds)]


def few_shot_indices(
    targets: Tensor,
    per_class: int,
    seed: int,
    num_classes: int | None = None,
) -> Tensor:
    """Seeded choice of exactly ``per_class`` indices of every class.

    Args:
        targets: Integer class labels of shape ``(N,)``.
        per_class: Number of indices to keep per class (a positive int).
        seed: Seed of the ``torch.Generator`` that draws the indices.
        num_classes: If given, classes ``0..num_classes-1`` must all be present (an absent class
            counts as having zero samples); otherwise the classes present in ``targets`` are used.

    Returns:
        A sorted ``LongTensor`` of ``per_class * number_of_classes`` indices into ``targets``.

    Raises:
        ValueError: If ``per_class`` is not a positive int, or a class has fewer than ``per_class``
            samples (the message names the class and its count).
    """
    targets = _check_targets(targets)
    _check_seed(seed)
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    classes = range(num_classes) if num_classes is not None else torch.unique(targets).tolist()
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = torch.nonzero(targets == c).flatten()
        if members.numel() < per_class:
            raise ValueError(f"class {c} has {members.numel()} samples, fewer than the {per_class} per class requested")
        chosen.append(members[torch.randperm(members.numel(), generator=g)[:per_class]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values
