"""The types every pass shares: the hook signatures, a job, the error every initializer raises.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, nn

__all__ = ["InitializationError", "Job", "PostHook", "PreHook"]

PreHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
PostHook = Callable[[nn.Module, tuple[Any, ...], Any], None]


class InitializationError(RuntimeError):
    """An initialization failed; the model was restored to its state before the call.

    Each initializer raises its own subclass (:class:`~lightning_sylv.engine.SylvesterInitError`,
    :class:`~lightning_sylv.lowrank.engine.LowRankInitError`), so ``except InitializationError``
    catches them all.
    """


class Job(Protocol):
    """One unit of work of an initializer, bound to the module whose input it needs."""

    module: nn.Module
    name: str

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        """Receive one call's inputs (a forward pre-hook's ``args`` and ``kwargs``)."""

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> Any:
        """Solve and write the weights; return the job's record (handed to ``on_result``)."""
