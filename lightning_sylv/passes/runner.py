"""The passes themselves: every job fed its layer's real input, in one pass or streamed.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sylv._batch import default_forward, slice_batch
from lightning_sylv.passes.base import InitializationError, Job
from lightning_sylv.passes.hooks import hooked
from lightning_sylv.passes.state import Snapshot, guarded, reset_batch_norms
from lightning_sylv.sharding import ShardedParams

__all__ = ["run_jobs"]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (streaming mode)."""


def _one_pass(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None,
    jobs: Sequence[Job],
    reduce: Callable[[Tensor], Tensor] | None,
    forward: Callable[[nn.Module, Any], Any],
    on_result: Callable[[Job, Any], None],
    shards: ShardedParams,
    snapshot: Snapshot,
) -> None:
    """Every job run inside a single forward pass, at its module's first call."""
    by_module: dict[nn.Module, list[Job]] = {}
    for job in jobs:
        by_module.setdefault(job.module, []).append(job)
    done: set[nn.Module] = set()

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module in done:  # a shared module called again already holds its new weights
            return
        done.add(module)
        snapshot.save(module)
        for job in by_module[module]:
            job.add_call(args, kwargs, labels)
            on_result(job, job.finish(reduce))
        shards.commit(module)  # the unsharded copy was written: this process's shard too

    with torch.no_grad(), hooked(dict.fromkeys(by_module, hook), {}):
        forward(model, inputs)


def _streamed(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None,
    jobs: Sequence[Job],
    batch_size: int,
    n_samples: int,
    reduce: Callable[[Tensor], Tensor] | None,
    forward: Callable[[nn.Module, Any], Any],
    on_result: Callable[[Job, Any], None],
    shards: ShardedParams,
    snapshot: Snapshot,
) -> int:
    """Job by job: a job's module input over all mini-batches, then its solve; returns the passes."""
    for job in jobs:
        state: dict[str, Any] = {"seen": False, "labels": None}

        # job and state are bound as defaults: the hook is only attached during this iteration's passes
        def hook(
            module: nn.Module,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            job: Job = job,
            state: dict[str, Any] = state,
        ) -> None:
            if state["seen"]:
                return
            state["seen"] = True
            job.add_call(args, kwargs, state["labels"])
            raise _StopForward

        with torch.no_grad(), hooked({job.module: hook}, {}):
            for lo in range(0, n_samples, batch_size):
                state["seen"] = False
                state["labels"] = None if labels is None else labels[lo : lo + batch_size]
                with suppress(_StopForward):
                    forward(model, slice_batch(inputs, lo, lo + batch_size))
                shards.reshard()  # the stopped pass left its FSDP modules unsharded
        snapshot.save(job.module)
        on_result(job, job.finish(reduce))  # outside the pass: writes the shards directly
    return len(jobs)


def run_jobs(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None,
    jobs: Sequence[Job],
    *,
    n_samples: int,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    batch_size: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    recalibrate_bn: bool = True,
    on_result: Callable[[Job, Any], None] | None = None,
    on_failure: Callable[[], None] | None = None,
    error: type[InitializationError] = InitializationError,
    what: str = "initialization",
) -> int:
    """Run ``jobs`` over the subset in execution order; all or nothing.

    Args:
        model: The model; it is modified in place by the jobs.
        inputs: The subset's inputs, on the model's device, as ``forward`` expects them.
        labels: Integer labels ``(N,)`` handed to every job, or ``None``.
        jobs: The jobs, in execution order (several may share a module; they run in list order).
        n_samples: Samples in ``inputs``.
        forward: ``forward(model, inputs)``.
        batch_size: Stream in mini-batches of this size (``None``, or at least ``n_samples``: one pass).
        reduce: Sum across processes, handed to every job's ``finish``.
        recalibrate_bn: Recompute every BatchNorm's running statistics during the passes (one more
            pass at the end when streaming).
        on_result: Called as ``on_result(job, record)`` after each job.
        on_failure: Restores initializer-specific state after a failure (parameters and buffers are
            restored here).
        error: The exception type raised on failure (a subclass of :class:`InitializationError`).
        what: Names the initializer in the error message.

    Returns:
        The number of forward passes over the subset.

    Raises:
        InitializationError: ``error``, after the model was restored.
    """
    on_result = on_result or (lambda job, record: None)
    size = batch_size if batch_size is not None else n_samples
    with guarded(model, recalibrate_bn=recalibrate_bn, on_failure=on_failure, error=error, what=what) as state:
        shards, bns, snapshot = state
        if size >= n_samples:
            _one_pass(model, inputs, labels, jobs, reduce, forward, on_result, shards, snapshot)
            return 1
        passes = _streamed(model, inputs, labels, jobs, size, n_samples, reduce, forward, on_result, shards, snapshot)
        if recalibrate_bn and bns:  # one more pass: BatchNorm statistics of the final net
            reset_batch_norms(bns)
            with torch.no_grad():
                for lo in range(0, n_samples, size):
                    forward(model, slice_batch(inputs, lo, lo + size))
            passes += 1
        return passes
