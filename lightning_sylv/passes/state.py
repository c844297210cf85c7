"""The model's state around an initialization, as one context manager.

:class:`Snapshot` copies what an initialization changes before it changes it; :func:`guarded` wraps a
run: sharded parameters gathered and committed, BatchNorm statistics reset to cumulative ones, the
global RNG forked, train/eval modes and momenta put back in ``finally``, everything restored on error.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_sylv.modules import BATCH_NORMS
from lightning_sylv.passes.base import InitializationError
from lightning_sylv.sharding import ShardedParams

__all__ = ["Snapshot", "guarded", "reset_batch_norms"]


class Snapshot:
    """What an initialization changes, copied before it changes it, so that a failure can undo it.

    Every buffer (BatchNorm statistics, and any other a forward pass may move) is copied on entry; a
    module's parameters only right before a job writes them (:meth:`save`). A head-only init of a
    large pretrained model copies the head, not the model, and an init of every layer holds the copy
    of a layer only from that layer on. A sharded (FSDP2) model is copied whole on entry
    (``whole=True``): inside a pass its modules hold unsharded copies, not the parameters a restore
    must reach, and each process holds only its slices anyway. The copies are kept with the tensors
    they came from, so a restore needs no names (and no ``state_dict`` hooks).

    Args:
        model: The model.
        whole: Copy every parameter on entry instead of on :meth:`save`.
    """

    def __init__(self, model: nn.Module, *, whole: bool = False) -> None:
        self.whole = whole
        self._saved: dict[int, tuple[Tensor, Tensor]] = {}
        for t in model.buffers():
            self._keep(t)
        if whole:
            for t in model.parameters():
                self._keep(t)

    def _keep(self, t: Tensor) -> None:
        if id(t) not in self._saved:
            self._saved[id(t)] = (t, t.detach().clone())

    def save(self, module: nn.Module) -> None:
        """Copy ``module``'s parameters (and its submodules'), unless copied already."""
        if not self.whole:
            for t in module.parameters():
                self._keep(t)

    def saved(self) -> list[Tensor]:
        """The tensors copied so far (buffers and saved parameters)."""
        return [t for t, _ in self._saved.values()]

    def restore(self) -> None:
        """Put every copied tensor back, in place."""
        with torch.no_grad():
            for t, copy in self._saved.values():
                t.copy_(copy)


def reset_batch_norms(bns: Sequence[nn.Module]) -> None:
    for m in bns:
        if m.track_running_stats:
            m.reset_running_stats()  # type: ignore[operator]
            m.momentum = None  # cumulative average over everything that follows


@contextmanager
def guarded(
    model: nn.Module,
    *,
    recalibrate_bn: bool = True,
    on_failure: Callable[[], None] | None = None,
    error: type[InitializationError] = InitializationError,
    what: str = "initialization",
) -> Iterator[tuple[ShardedParams, list[nn.Module], Snapshot]]:
    """The model's state around an initialization: all or nothing, and nothing else changed.

    On entry: sharded (FSDP2) parameters resharded, a :class:`Snapshot` started, the model in
    eval mode with its BatchNorm layers in training mode and reset to cumulative statistics
    (``recalibrate_bn``), the global RNG forked. On an exception: the model restored from the
    snapshot (what was saved into it), ``on_failure()`` called and the exception raised as
    ``error``. Always: train/eval modes and BatchNorm momenta put back, the RNG restored, the FSDP
    modules resharded.

    Yields:
        ``(shards, batch_norms, snapshot)``: the :class:`~lightning_sylv.sharding.ShardedParams` the
        jobs commit through, the model's BatchNorm layers, and the :class:`Snapshot`, into which a
        module's parameters must be saved before they are written.
    """
    shards = ShardedParams(model)  # first: the snapshot must hold the sharded parameters
    snap = Snapshot(model, whole=bool(shards))
    was_training = model.training
    bn_state = [(m, m.training, m.momentum) for m in model.modules() if isinstance(m, BATCH_NORMS)]
    bns = [m for m, _, _ in bn_state]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    # The global RNG is left as it was: training sees the same random stream with or without init.
    with torch.random.fork_rng(devices=cuda):
        try:
            model.eval()
            if recalibrate_bn:
                for m in bns:
                    m.train()  # batch statistics of the new activations during the passes
                reset_batch_norms(bns)
            yield shards, bns, snap
        except Exception as err:
            shards.reshard()  # a failed pass leaves its FSDP modules unsharded
            snap.restore()
            if on_failure is not None:
                on_failure()
            if isinstance(err, error):
                raise
            raise error(f"{what} failed, the model was restored: {err}") from err
        finally:
            for m, training, momentum in bn_state:
                m.momentum = momentum
                m.train(training)
            model.train(was_training)
    shards.reshard()  # leave no unsharded copy behind (FSDP keeps a root's after the forward)
