"""Walking a (nested) batch of inputs: its length, a slice of it, and the default forward.

The one home of these helpers: the pass runner, the initializers and the callbacks all use them.

This module imports no Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["batch_len", "channels_last", "default_forward", "slice_batch"]


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: how the initializers run a model unless told otherwise."""
    return model(inputs)


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every tensor in a (nested) batch; other leaves are kept as they are."""
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(slice_batch(v, start, stop) for v in inputs)
    if isinstance(inputs, dict):
        return {k: slice_batch(v, start, stop) for k, v in inputs.items()}
    return inputs


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
