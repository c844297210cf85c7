"""Which candidate layers an initializer leaves alone, and why: the one rule for every initializer.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["frozen", "skip_reason"]


def frozen(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` (its sub-modules' included) has ``requires_grad=False``.

    An initializer never overwrites a frozen parameter, so one frozen parameter skips the layer.
    """
    return not all(p.requires_grad for p in module.parameters())


def skip_reason(name: str, module: nn.Module, executed: Sequence[str], selected: Sequence[str] | None) -> str | None:
    """Why a candidate layer is not initialized, or ``None`` when it is: the one rule for every initializer.

    Args:
        name: The layer's name.
        module: The layer.
        executed: Names the forward pass executed (see :func:`execution_order`).
        selected: Names the caller asked for (``None``: all).
    """
    if name not in executed:
        return "not executed by the forward pass"
    if selected is not None and name not in selected:
        return "not selected"
    if frozen(module):
        return "frozen (requires_grad=False)"
    return None
