"""Multi-process glue: which strategies are supported, sums across processes, syncing a module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn

__all__ = ["check_strategy", "sum_across_processes", "sync_module"]

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def check_strategy(strategy: Strategy, who: str) -> None:
    """Refuse strategies that shard parameters (each process would hold only a slice of a weight).

    Raises:
        RuntimeError: For FSDP, DeepSpeed and model-parallel strategies.
    """
    names = {cls.__name__ for cls in type(strategy).__mro__}
    hit = names.intersection(_SHARDED)
    if hit:
        raise RuntimeError(
            f"{who} does not support the sharded strategy {type(strategy).__name__}: parameters are split "
            "across processes. Initialize with strategy='ddp' (or a single device), save a checkpoint, and "
            "load it into the sharded run."
        )


def sum_across_processes(strategy: Strategy) -> Callable[[Tensor], Tensor]:
    """A function returning the sum of a tensor over all processes of ``strategy`` (an all-reduce)."""

    def reduce(t: Tensor) -> Tensor:
        return strategy.reduce(t.clone(), reduce_op="sum")

    return reduce


def gather_across_processes(strategy: Strategy) -> Callable[[Tensor], Tensor]:
    """A function concatenating a tensor along its first dimension over all processes (an all-gather).

    Processes may hold different numbers of rows (a subset that does not split evenly): every
    process pads its rows to the largest count, the padded blocks are gathered, and the padding is
    cut off again. The result is the same, in rank order, on every process.
    """

    def gather(t: Tensor) -> Tensor:
        sizes = strategy.all_gather(torch.tensor([t.shape[0]], device=t.device)).reshape(-1).tolist()
        most = max(int(n) for n in sizes)
        padded = torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))]) if t.shape[0] < most else t
        blocks = strategy.all_gather(padded.contiguous())
        return torch.cat([blocks[rank, : int(n)] for rank, n in enumerate(sizes)])

    return gather


def sync_module(module: nn.Module, strategy: Strategy, average_norm_stats: bool = True) -> None:
    """Make all processes hold rank 0's parameters and buffers, bit for bit.

    Args:
        module: The module to sync.
        strategy: The run's strategy (for its barrier).
        average_norm_stats: First average the BatchNorm running means and variances across processes
            (each recomputed them on its own share of the subset). Pass ``False`` when they were not
            recomputed: averaging identical values is not bit-exact.
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    world = torch.distributed.get_world_size()
    with torch.no_grad():
        if average_norm_stats:
            for bn in module.modules():
                if isinstance(bn, nn.modules.batchnorm._NormBase) and bn.track_running_stats:
                    for buf in (bn.running_mean, bn.running_var):
                        if buf is not None:
                            torch.distributed.all_reduce(buf)
                            buf.div_(world)
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, src=0)
    strategy.barrier("sylvester_sync")
