"""Walking a model's modules, in one home: the layers an initializer targets, normalization types, the
model's device, and running it in eval mode without gradients.

This module imports no Lightning.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from lightning_sylv.rows import SUPPORTED_LAYERS

__all__ = ["BATCH_NORMS", "NORMS", "SCALE_FREE_NORMS", "evaluating", "model_device", "target_modules"]

#: BatchNorm layers (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``): their running statistics are
#: recomputed by an initialization pass.
BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)
#: Normalization layers (parametrized, but not initialized from data: their affine stays 1/0).
NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
#: Normalizations whose output does not change when their input is multiplied by a positive factor
#: (up to their ε): BatchNorm (in training mode, or after its statistics are recomputed), instance,
#: layer, group and RMS normalization. A layer whose output goes straight into one computes the same
#: function at any scale.
SCALE_FREE_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def target_modules(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS,
    patterns: Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """The modules of ``model`` of ``types`` whose qualified names match one of ``patterns``.

    Args:
        model: The model.
        types: Module types to keep (default: the layers the Sylvester initializer supports,
            :data:`lightning_sylv.rows.SUPPORTED_LAYERS`).
        patterns: ``fnmatch`` patterns of qualified names (``["net.layer3.*"]``); ``None``: all.

    Returns:
        ``{name: module}`` in registration order (``model.named_modules()``).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
        >>> list(target_modules(net))
        ['0', '2.0', '2.1']
        >>> list(target_modules(net, patterns=["2.*"]))
        ['2.0', '2.1']
    """
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, types) and (patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns))
    }


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (a model without parameters: the CPU)."""
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients; its train/eval mode restored afterwards, also on error."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
