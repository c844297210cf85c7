"""Class-balanced, seeded selection of the initialization subset.

:func:`dataset_targets` finds a dataset's labels without loading a single sample when the dataset
exposes them (``.targets``, ``.labels``, ``.y``; ``TensorDataset``'s second tensor; ``Subset`` and
``ConcatDataset`` of those); otherwise :func:`scan_targets` makes one pass over the items.
:func:`class_balanced_indices` then draws ``k`` indices per class with a seeded generator, and
:func:`collate_subset` loads just those items.

This module imports no Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = [
    "NoLabelsError",
    "balanced_subset",
    "class_balanced_indices",
    "collate_subset",
    "dataset_targets",
    "random_indices",
    "scan_targets",
    "split_batch",
]

_LABEL_ATTRS = ("targets", "labels", "y")


class NoLabelsError(ValueError):
    """The dataset's items carry no integer class label."""


def _as_labels(values: Any, length: int) -> Tensor | None:
    try:
        t = torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError):
        return None
    if t.ndim != 1 or t.shape[0] != length or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return None
    return t.long()


def dataset_targets(dataset: Dataset) -> Tensor | None:
    """Integer labels of every item of ``dataset`` if they can be read without loading items.

    Returns:
        A ``LongTensor`` of shape ``(len(dataset),)``, or ``None`` when the dataset does not expose
        its labels (then use :func:`scan_targets`).
    """
    if isinstance(dataset, IterableDataset):
        return None
    if isinstance(dataset, Subset):
        parent = dataset_targets(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_targets(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _as_labels(dataset.tensors[1], length)
    for attr in _LABEL_ATTRS:
        if hasattr(dataset, attr):
            labels = _as_labels(getattr(dataset, attr), length)
            if labels is not None:
                return labels
    return None


def _item_label(item: Any) -> int | None:
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        y = item[1]
    elif isinstance(item, dict):
        y = next((item[k] for k in ("y", "label", "labels", "target", "targets") if k in item), None)
    else:
        return None
    if isinstance(y, Tensor):
        return int(y) if y.numel() == 1 and not y.is_floating_point() else None
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        return int(y)
    return None


def scan_targets(dataset: Dataset) -> Tensor:
    """Read every item's label in one pass (items ``(x, y, ...)`` or dicts with a ``"y"``/``"label"`` key).

    Raises:
        NoLabelsError: If an item has no integer label.
        TypeError: If the dataset is iterable-style (no random access).
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError("iterable-style datasets have no random access; a class-balanced subset needs a map-style dataset")
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        y = _item_label(dataset[i])
        if y is None:
            raise NoLabelsError(
                f"item {i} of {type(dataset).__name__} carries no integer class label (expected (x, y) "
                "tuples or dicts with a 'y'/'label' key)"
            )
        labels.append(y)
    return torch.tensor(labels, dtype=torch.long)


def class_balanced_indices(targets: Tensor, samples_per_class: int, seed: int = 0) -> Tensor:
    """Draw ``samples_per_class`` indices of every class present in ``targets``.

    Classes with fewer items contribute all of them (with a warning). The draw is a seeded random
    permutation per class, so the same seed always gives the same subset.

    Args:
        targets: Integer labels, shape ``(N,)``.
        samples_per_class: Items per class, ``>= 1``.
        seed: Seed of the draw.

    Returns:
        Indices into the dataset, grouped by class (classes ascending).

    Raises:
        ValueError: If ``samples_per_class < 1`` or ``targets`` is empty.
    """
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class!r}")
    if targets.numel() == 0:
        raise ValueError("the dataset is empty: no samples to initialize from")
    gen = torch.Generator().manual_seed(seed)
    picked, short = [], []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).squeeze(1)
        perm = idx[torch.randperm(idx.numel(), generator=gen)]
        if perm.numel() < samples_per_class:
            short.append(f"{c} ({perm.numel()})")
        picked.append(perm[:samples_per_class])
    if short:
        warnings.warn(
            f"classes with fewer than samples_per_class={samples_per_class} items use all they have: "
            + ", ".join(short),
            stacklevel=2,
        )
    return torch.cat(picked)


def random_indices(length: int, count: int, seed: int = 0) -> Tensor:
    """``min(count, length)`` distinct random indices (for unlabelled data), seeded.

    Raises:
        ValueError: If ``length`` is 0.
    """
    if length == 0:
        raise ValueError("the dataset is empty: no samples to initialize from")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(length, generator=gen)[: min(count, length)]


def collate_subset(dataset: Dataset, indices: Sequence[int] | Tensor, collate_fn: Callable[[list[Any]], Any] | None = None) -> Any:
    """Load ``dataset[i]`` for each index and collate them into one batch."""
    collate = collate_fn or default_collate
    return collate([dataset[int(i)] for i in indices])


def split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """Split a collated batch into ``(inputs, labels)``.

    Accepts ``(x, y, ...)`` tuples/lists, dicts with an input key (``x``, ``input``, ``inputs``,
    ``image``) and an optional label key (``y``, ``label``, ``labels``, ``target``, ``targets``), and
    bare tensors (no labels).

    Raises:
        TypeError: For any other batch format.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) and not batch[1].is_floating_point() else None
        return batch[0], y
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "input", "inputs", "image") if k in batch), None)
        y = next((batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
        if x is not None:
            return x, y
    raise TypeError(
        f"cannot find the inputs in a batch of type {type(batch).__name__}; expected (x, y) tuples, "
        "dicts with an 'x'/'input' key, or tensors"
    )


def balanced_subset(
    dataset: Dataset,
    samples_per_class: int,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    require_labels: bool = False,
    unlabelled_count: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Any, Tensor | None, Tensor]:
    """Load a class-balanced, seeded subset of ``dataset`` as one batch.

    The class-balanced draw reads the labels from :func:`dataset_targets` when the dataset exposes
    them, else from one pass (:func:`scan_targets`); the returned labels are those of the loaded
    items when they carry labels (a ``target_transform`` applies). A dataset without labels yields a
    seeded random subset of ``unlabelled_count`` items (default ``samples_per_class * 10``) and
    ``labels=None``.

    Args:
        dataset: A map-style dataset.
        samples_per_class: Items per class.
        seed: Seed of the draw.
        collate_fn: Collate function of the training dataloader (default: torch's).
        require_labels: Raise :class:`NoLabelsError` instead of falling back to an unlabelled subset.
        unlabelled_count: Subset size when the data has no labels.
        shard: ``(rank, world_size)``: every process draws the same subset (same seed) and loads
            only its share ``indices[rank::world_size]``.

    Returns:
        ``(inputs, labels, indices)``: this process's share of the inputs and labels (``labels`` a
        ``LongTensor`` or ``None``), and the indices of the whole subset (all processes).

    Raises:
        TypeError: For iterable-style datasets.
        ValueError: For an empty dataset or bad ``samples_per_class``.
        NoLabelsError: If ``require_labels`` and the items carry no labels.
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "the training dataset is iterable-style (no random access); a class-balanced subset needs a "
            "map-style dataset"
        )
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training dataset is empty: no samples to initialize from")
    targets = dataset_targets(dataset)
    if targets is None:
        try:
            targets = scan_targets(dataset)
        except NoLabelsError:
            if require_labels:
                raise
    if targets is not None:
        indices = class_balanced_indices(targets, samples_per_class, seed)
    else:
        indices = random_indices(len(dataset), unlabelled_count or samples_per_class * 10, seed)  # type: ignore[arg-type]
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    if len(indices) < world:  # decided from the whole subset, so every process raises (none waits)
        raise ValueError(
            f"the subset has {len(indices)} samples, fewer than the {world} processes: every process needs at "
            "least one (raise samples_per_class)"
        )
    mine = indices[rank::world]
    inputs, batch_labels = split_batch(collate_subset(dataset, mine, collate_fn))
    # The loaded labels win over ``.targets``: a ``target_transform`` changes them on loading.
    if batch_labels is not None:
        return inputs, batch_labels.long(), indices
    return inputs, None if targets is None else targets[mine], indices
