"""Walking a (nested) batch of inputs: its length, a slice of it, a copy on a device, the default forward.

The one home of these helpers: the pass runner, the initializers and the callbacks all use them.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["batch_len", "channels_last", "default_forward", "map_batch", "move_batch", "slice_batch"]


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: how the initializers run a model unless told otherwise."""
    return model(inputs)


def map_batch(fn: Callable[[Tensor], Any], inputs: Any) -> Any:
    """``fn`` applied to every tensor of a (nested) batch: tensors in lists, tuples and dicts.

    The one batch walker of the package; containers keep their types, other leaves are kept as
    they are.
    """
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(map_batch(fn, v) for v in inputs)
    if isinstance(inputs, dict):
        return {k: map_batch(fn, v) for k, v in inputs.items()}
    return inputs


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every tensor in a (nested) batch; other leaves are kept as they are."""
    return map_batch(lambda t: t[start:stop], inputs)


def move_batch(inputs: Any, like: Tensor | None) -> Any:
    """A (nested) batch on ``like``'s device, its floating-point tensors in ``like``'s dtype.

    A model kept in bfloat16 on a GPU gets bfloat16 inputs there; ``like=None`` (a model without
    parameters) returns ``inputs`` unchanged.
    """
    if like is None:
        return inputs
    return map_batch(lambda t: t.to(like.device, like.dtype) if t.is_floating_point() else t.to(like.device), inputs)


def batch_len(inputs: Any) -> int:
    """Number of samples of a (nested) batch: the first dimension of its first tensor.

    Raises:
        TypeError: If the batch holds no tensor.
    """
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (list, tuple)) and inputs:
        return batch_len(inputs[0])
    if isinstance(inputs, dict) and inputs:
        return batch_len(next(iter(inputs.values())))
    raise TypeError(f"cannot tell the number of samples of inputs of type {type(inputs).__name__}")


def channels_last(inputs: Any) -> Any:
    """A 4-D floating-point CPU tensor in channels-last layout; any other input unchanged."""
    if isinstance(inputs, Tensor) and inputs.ndim == 4 and inputs.device.type == "cpu" and inputs.is_floating_point():
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs
