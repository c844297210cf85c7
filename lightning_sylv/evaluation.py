"""Accuracy of a classifier over batches, with torchmetrics.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_sylv._batch import map_batch
from lightning_sylv.modules import evaluating
from lightning_sylv.subset import split_batch

__all__ = ["evaluate_accuracy"]


def evaluate_accuracy(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device | str,
    *,
    max_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    to_device: Callable[[Any, torch.device], Any] | None = None,
    split: Callable[[Any], tuple[Any, Tensor | None]] | None = None,
) -> float | None:
    """Top-1 accuracy (a fraction in ``[0, 1]``) of ``model`` on labelled ``batches``, in eval mode.

    The model's train/eval mode is restored afterwards and nothing is learned (``torch.no_grad``).
    The global CPU random stream is left as it was: iterating a ``DataLoader`` draws its base seed
    from it, which would otherwise shift the training's dropout and augmentation draws.

    Args:
        model: A classifier returning logits ``(N, num_classes)``.
        batches: Iterable of batches as :func:`lightning_sylv.subset.split_batch` understands them.
        device: Device the batches are moved to.
        max_batches: Stop after this many batches (``None``: all).
        forward: ``forward(model, inputs)``; defaults to ``model(inputs)``.
        to_device: ``to_device(inputs, device)``; defaults to moving every tensor of the (nested:
            tuple, list, dict) inputs with ``Tensor.to``.
        split: ``split(batch) -> (inputs, labels)``; defaults to
            :func:`lightning_sylv.subset.split_batch` (see :class:`~lightning_sylv.subset.BatchFormat`).

    Returns:
        The accuracy, or ``None`` when the batches carry no labels or there are none.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> evaluate_accuracy(model, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))], "cpu")
        0.5
    """
    device = torch.device(device)
    run = forward or (lambda m, x: m(x))
    unpack = split or split_batch
    move = to_device or (lambda x, d: map_batch(lambda t: t.to(d), x))  # every tensor of a nested batch
    metric: MulticlassAccuracy | None = None
    with evaluating(model), torch.random.fork_rng(devices=[]):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = unpack(batch)
            if y is None:
                return None
            logits = run(model, move(x, device))
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                return None
            if metric is None:
                metric = MulticlassAccuracy(num_classes=logits.shape[1], average="micro").to(device)
            metric.update(logits.float(), y.to(device))
    return None if metric is None else float(metric.compute())
