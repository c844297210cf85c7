"""Parameters split across processes (FSDP2 ``fully_shard``, DTensor): where a written value goes.

Every initializer computes a layer's *full* weight, identical on every process (its statistics are
reduced across processes first). Under FSDP2 a parameter lives in two forms:

* outside a forward pass, ``module.weight`` is the **sharded** parameter, a ``DTensor`` whose
  ``to_local()`` is this process's slice (rows split as ``torch.chunk(dim=0)``, the last slices
  shorter or empty). The optimizer holds these tensors.
* inside the forward pass of the ``fully_shard``-ed module that owns it (where the initializers'
  forward pre-hooks run), ``module.weight`` is the **unsharded** copy, a plain tensor all-gathered
  from the slices and freed again after the forward. Writing into it changes what the rest of the
  pass computes, but not the slices.

So a value is written twice, both in place: into the unsharded copy (the layers after it see the
new activations) and, sliced by the sharded parameter's own placements, into this process's shard
(:func:`write_`). :class:`ShardedParams` records the sharded parameters before a pass, so that
the copy written inside the pass can be committed to them (:meth:`ShardedParams.commit`). No process
ever holds more than the layer being written in full (FSDP's own all-gather of the module aside).

Under an FSDP2 ``MixedPrecisionPolicy`` whose ``param_dtype`` is narrower than the shards' (bfloat16
over float32 master weights), the unsharded copy holds the value in ``param_dtype``, and that is what
:meth:`ShardedParams.commit` writes into the shard: the initial weights are rounded to bfloat16
(relative 4e-3), not to float32. Training then updates the float32 shards as usual.

This module imports no Lightning and runs on any device; on a model without ``DTensor`` parameters
everything here is a no-op.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BLOCK_BYTES", "ShardedParams", "is_sharded", "local_shard", "write_", "write_product_"]

#: Bytes of one block of :func:`write_product_` (rows of the product formed at a time).
BLOCK_BYTES = 32 * 2**20


@functools.cache
def _dtensor_type() -> type | None:
    """``DTensor``, or ``None`` where torch has none (no distributed build, or torch < 2.4, which has
    no FSDP2 either: nothing there can be sharded this way)."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter split across processes)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def local_shard(full: Tensor, like: Tensor) -> Tensor:
    """This process's slice of ``full`` laid out as the ``DTensor`` ``like``: same mesh, same placements.

    No communication: every process holds ``full`` and cuts out its own slice
    (``distribute_tensor(..., src_data_rank=None)``), so uneven shards come out exactly as FSDP
    lays them out.

    Args:
        full: The full value, of ``like``'s global shape (or any shape with as many elements).
        like: The sharded parameter.

    Returns:
        A tensor of ``like.to_local()``'s shape, dtype and device.

    Raises:
        ValueError: If ``like`` is not a ``DTensor`` or ``full`` has the wrong number of elements.
    """
    if not is_sharded(like):
        raise ValueError(f"like must be a DTensor, got {type(like).__name__}")
    if full.numel() != like.numel():
        raise ValueError(f"full has {full.numel()} elements, the sharded tensor {tuple(like.shape)} has {like.numel()}")
    from torch.distributed.tensor import distribute_tensor

    value = full.detach().reshape(like.shape).to(device=like.device, dtype=like.dtype)
    mesh, placements = like.device_mesh, like.placements  # type: ignore[attr-defined]
    try:
        return distribute_tensor(value, mesh, placements, src_data_rank=None).to_local()
    except TypeError:  # torch < 2.6: no src_data_rank; cut the same chunks by hand
        return _chunks(value, mesh, placements)


def _chunks(value: Tensor, mesh: Any, placements: Any) -> Tensor:
    """This process's ``torch.chunk`` slices of ``value`` along each sharded mesh dimension (DTensor's
    layout for ``Shard``; ``Replicate`` keeps the whole)."""
    for mesh_dim, placement in enumerate(placements):
        if placement.is_replicate():
            continue
        if not placement.is_shard():
            raise ValueError(f"cannot write a parameter with placement {placement}: only Shard and Replicate")
        dim, rank = placement.dim, mesh.get_local_rank(mesh_dim)
        parts = torch.chunk(value, mesh.size(mesh_dim), dim=dim)
        value = parts[rank] if rank < len(parts) else value.narrow(dim, 0, 0)
    return value.contiguous()


def write_(param: Tensor, value: Tensor) -> None:
    """Write the full ``value`` into ``param`` in place: the whole of a plain tensor, or this process's
    slice of a sharded one. The tensor objects are kept (an optimizer holding them sees the values).

    Args:
        param: A parameter or buffer, plain or ``DTensor``.
        value: Its new full value (reshaped to ``param``'s shape and cast to its dtype and device).
    """
    with torch.no_grad():
        if is_sharded(param):
            param.to_local().copy_(local_shard(value, param))  # type: ignore[attr-defined]
        else:
            param.copy_(value.reshape(param.shape))  # copy_ casts and moves: no converted temporary


def write_product_(param: Tensor, left: Tensor, right: Tensor) -> None:
    """Write the product ``left @ right`` into ``param`` in place, a block of rows at a time.

    A weight solved in a subspace (span or randomized mode) comes as factors ``left`` ``(g, o, r)``
    and ``right`` ``(g, r, d)``, ``r`` much smaller than ``d``. Their product in the solve's precision
    is the largest tensor an initialization would hold: VGG's 4,096 x 25,088 ``Linear`` takes 822 MB in
    float64, eight times what the forward pass needs at 32 px. Here it is formed :data:`BLOCK_BYTES`
    at a time and cast into ``param`` block by block, so the extra memory is one block. A sharded
    or non-contiguous ``param`` (channels-last weights) takes the full product through :func:`write_`.

    Args:
        param: The parameter, ``g * o`` rows of ``d`` entries in all (any shape with that layout).
        left: ``(g, o, r)``.
        right: ``(g, r, d)``.

    Example:
        >>> import torch
        >>> p = torch.zeros(6, 4)
        >>> left, right = torch.ones(2, 3, 1), torch.arange(8.0).reshape(2, 1, 4)
        >>> write_product_(p, left, right)
        >>> torch.equal(p, (left @ right).reshape(6, 4))
        True
    """
    g, o, _ = left.shape
    d = right.shape[-1]
    if is_sharded(param) or not param.is_contiguous() or param.numel() != g * o * d:
        write_(param, left @ right)
        return
    rows = max(1, BLOCK_BYTES // max(1, d * left.element_size() * g))
    with torch.no_grad():
        view = param.view(g, o, d)
        for lo in range(0, o, rows):
            view[:, lo : lo + rows].copy_(left[:, lo : lo + rows] @ right)


def _fsdp_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The ``fully_shard``-ed modules of ``model`` (none where torch has no public FSDP2)."""
    if not torch.distributed.is_available():
        return
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    yield from (m for m in model.modules() if isinstance(m, FSDPModule))


class ShardedParams:
    """The sharded parameters of a model, recorded outside any forward pass.

    Building one first puts every ``fully_shard``-ed module in its sharded state (FSDP keeps a root
    module unsharded after a forward pass until the backward: the values written into that copy would
    be lost when it is freed), so the recorded tensors are the ones the optimizer holds.

    Args:
        model: The model (a model without ``DTensor`` parameters gives an empty, falsy record).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.reshard()
        self._params: dict[nn.Module, dict[str, Tensor]] = {}
        for module in model.modules():
            own = {n: p for n, p in module.named_parameters(recurse=False) if is_sharded(p)}
            if own:
                self._params[module] = own

    def __bool__(self) -> bool:
        return bool(self._params)

    def reshard(self) -> None:
        """Put every ``fully_shard``-ed module of the model in its sharded state (FSDPModule.reshard()).

        Also after a forward pass that was interrupted by an exception, which leaves the modules it was
        in unsharded."""
        for module in _fsdp_modules(self.model):
            module.reshard()  # type: ignore[operator]

    def commit(self, module: nn.Module) -> None:
        """Write the current values of ``module``'s parameters (its sub-modules' included) into their
        recorded shards, where the module holds an unsharded copy (inside a forward pass)."""
        for sub in module.modules():
            for name, sharded in self._params.get(sub, {}).items():
                current = sub._parameters.get(name)
                if current is not None and current is not sharded and not is_sharded(current):
                    write_(sharded, current)
