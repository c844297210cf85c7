"""Build a network by architecture name (the ``arch`` argument of :class:`ImageClassifier`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_sylv.models.cnn import SmallCNN
from lightning_sylv.models.mlp import MLP
from lightning_sylv.models.resnet import resnet_cifar

__all__ = ["ARCHS", "build_network"]

ARCHS = ("mlp", "cnn", "resnet20", "resnet32", "resnet56")


def build_network(arch: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly constructed network (PyTorch's default init) for inputs of ``input_shape``.

    Args:
        arch: One of :data:`ARCHS`: ``"mlp"`` (:class:`MLP` on the flattened input), ``"cnn"``
            (:class:`SmallCNN`), ``"resnet20"``/``"resnet32"``/``"resnet56"`` (:func:`resnet_cifar`).
        input_shape: Shape of one input without the batch dimension, e.g. ``(1, 8, 8)``; the
            convolutional networks need ``(C, H, W)``.
        num_classes: Number of output logits.
        **kwargs: Passed to the network's constructor (``hidden`` for ``"mlp"``, ``width`` for
            ``"cnn"``).

    Returns:
        The network, mapping ``(N, *input_shape)`` to logits ``(N, num_classes)``.

    Raises:
        ValueError: If ``arch`` is unknown (the message lists the valid ones), ``input_shape`` is not
            a non-empty sequence of positive ints (of length 3 for convolutional networks), or the
            network rejects an argument.
    """
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    if (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, Sequence)
        or not input_shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
    if arch == "mlp":
        return MLP(math.prod(input_shape), num_classes, **kwargs)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width) for arch {arch!r}, got {list(input_shape)}")
    if arch == "cnn":
        return SmallCNN(input_shape[0], num_classes, **kwargs)
    return resnet_cifar(int(arch.removeprefix("resnet")), num_classes=num_classes, in_channels=input_shape[0], **kwargs)
