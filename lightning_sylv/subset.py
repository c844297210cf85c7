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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = [
    "INPUT_KEYS",
    "LABEL_KEYS",
    "BatchFormat",
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
#: Keys of a dict batch (or item) tried, in order, for the inputs and for the labels.
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
_WAY_OUT = (
    "tell the callback where they are: input_key=/label_key= (a dict key, or a position in a tuple "
    "batch), e.g. SylvesterInit(input_key='pixel_values', label_key='labels')"
)


_ITERABLE = (
    "the training dataset is iterable-style (no random access), and a class-balanced subset needs a "
    "map-style dataset: define init_dataset() on the LightningDataModule, returning a map-style dataset "
    "of training examples (e.g. a few thousand items materialized from the stream, without augmentation)"
)


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


def _as_int_label(y: Any) -> int | None:
    if isinstance(y, Tensor):
        return int(y) if y.numel() == 1 and not y.is_floating_point() else None
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        return int(y)
    return None


@dataclass(frozen=True)
class BatchFormat:
    """Where a batch (or a dataset item) keeps its inputs and its integer class labels.

    With both keys ``None`` (the default) a batch is read as a bare tensor (inputs, no labels), an
    ``(x, y, ...)`` tuple or list, or a dict with one of :data:`INPUT_KEYS` and optionally one of
    :data:`LABEL_KEYS`. A key names a dict entry (``"pixel_values"``) or a position in a tuple/list
    batch (``0``); a given ``label_key`` must be present.

    Args:
        input_key: Where the inputs are (``None``: the defaults above).
        label_key: Where the labels are (``None``: the defaults above).
    """

    input_key: str | int | None = None
    label_key: str | int | None = None

    def _describe(self, batch: Any) -> str:
        if isinstance(batch, dict):
            return f"a dict with keys {list(batch)}"
        if isinstance(batch, (tuple, list)):
            return f"a {type(batch).__name__} of {len(batch)}"
        return f"a batch of type {type(batch).__name__}"

    def _get(self, batch: Any, key: str | int, what: str) -> Any:
        try:
            if isinstance(key, int) and isinstance(batch, (tuple, list)):
                return batch[key]
            if isinstance(key, str) and isinstance(batch, dict):
                return batch[key]
        except (IndexError, KeyError):
            pass
        raise TypeError(
            f"{what}_key={key!r} does not locate the {what}s in {self._describe(batch)}: give a dict key for "
            "dict batches or a position for tuple batches"
        )

    def split(self, batch: Any) -> tuple[Any, Tensor | None]:
        """``(inputs, labels)`` of a collated batch (``labels`` ``None`` when it carries none).

        Raises:
            TypeError: If the inputs cannot be found; the message lists the keys tried and the way out.
        """
        x = self._get(batch, self.input_key, "input") if self.input_key is not None else self._default_inputs(batch)
        if self.label_key is not None:
            y = self._get(batch, self.label_key, "label")
            if not isinstance(y, Tensor):
                y = torch.as_tensor(y)
            return x, y
        return x, self._default_labels(batch)

    def _default_inputs(self, batch: Any) -> Any:
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, (tuple, list)) and batch:
            return batch[0]
        if isinstance(batch, dict):
            key = next((k for k in INPUT_KEYS if k in batch), None)
            if key is not None:
                return batch[key]
        raise TypeError(
            f"cannot find the inputs in {self._describe(batch)}; understood are tensors, (x, y, ...) tuples "
            f"and dicts with one of the keys {list(INPUT_KEYS)} (labels under {list(LABEL_KEYS)}). Otherwise "
            + _WAY_OUT
        )

    @staticmethod
    def _default_labels(batch: Any) -> Tensor | None:
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            y = batch[1]
            return y if isinstance(y, Tensor) and not y.is_floating_point() else None
        if isinstance(batch, dict):
            return next((batch[k] for k in LABEL_KEYS if k in batch), None)
        return None

    def item_label(self, item: Any) -> int | None:
        """The integer class label of one dataset item, or ``None``."""
        if self.label_key is not None:
            try:
                return _as_int_label(self._get(item, self.label_key, "label"))
            except TypeError:
                return None
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            return _as_int_label(item[1])
        if isinstance(item, dict):
            return _as_int_label(next((item[k] for k in LABEL_KEYS if k in item), None))
        return None


def scan_targets(dataset: Dataset, batch_format: BatchFormat | None = None) -> Tensor:
    """Read every item's label in one pass (items ``(x, y, ...)``, dicts with a key of
    :data:`LABEL_KEYS`, or where ``batch_format.label_key`` says).

    Raises:
        NoLabelsError: If an item has no integer label.
        TypeError: If the dataset is iterable-style (no random access).
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError(_ITERABLE)
    fmt = batch_format or BatchFormat()
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        y = fmt.item_label(dataset[i])
        if y is None:
            where = (
                f"under label_key={fmt.label_key!r}"
                if fmt.label_key is not None
                else (f"(expected (x, y) tuples or dicts with one of the keys {list(LABEL_KEYS)})")
            )
            raise NoLabelsError(
                f"item {i} of {type(dataset).__name__} carries no integer class label {where}; if the labels are "
                "elsewhere, give label_key= (a dict key or a tuple position)"
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


def collate_subset(
    dataset: Dataset,
    indices: Sequence[int] | Tensor,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """Load ``dataset[i]`` for each index and collate them into one batch."""
    collate = collate_fn or default_collate
    return collate([dataset[int(i)] for i in indices])


def split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """Split a collated batch into ``(inputs, labels)`` the default way (see :class:`BatchFormat`).

    Raises:
        TypeError: For any other batch format (the message says how to name the keys).
    """
    return BatchFormat().split(batch)


def balanced_subset(
    dataset: Dataset,
    samples_per_class: int,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    require_labels: bool = False,
    unlabelled_count: int | None = None,
    shard: tuple[int, int] = (0, 1),
    batch_format: BatchFormat | None = None,
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
        batch_format: Where items and collated batches keep inputs and labels (default:
            :class:`BatchFormat`'s defaults).

    Returns:
        ``(inputs, labels, indices)``: this process's share of the inputs and labels (``labels`` a
        ``LongTensor`` or ``None``), and the indices of the whole subset (all processes).

    Raises:
        TypeError: For iterable-style datasets.
        ValueError: For an empty dataset or bad ``samples_per_class``.
        NoLabelsError: If ``require_labels`` and the items carry no labels.
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError(_ITERABLE)
    fmt = batch_format or BatchFormat()
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training dataset is empty: no samples to initialize from")
    targets = dataset_targets(dataset)
    if targets is None:
        try:
            targets = scan_targets(dataset, fmt)
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
    inputs, batch_labels = fmt.split(collate_subset(dataset, mine, collate_fn))
    # The loaded labels win over ``.targets``: a ``target_transform`` changes them on loading.
    if batch_labels is not None:
        return inputs, batch_labels.long(), indices
    return inputs, None if targets is None else targets[mine], indices
