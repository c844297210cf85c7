"""Multi-process glue: which strategies are supported, sums across processes, syncing a module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn

from lightning_sylv.sharding import is_sharded

__all__ = ["check_materialized", "check_strategy", "gather_across_processes", "sum_across_processes", "sync_module"]

_SUPPORTED = (
    "a single device, DDP (strategy='ddp' and its variants) and ModelParallelStrategy with FSDP2 "
    "(fully_shard, data parallel)"
)


def check_strategy(strategy: Strategy, who: str, refusal: str | None = None) -> None:
    """Refuse the strategies an initializer cannot write weights under.

    Supported: a single device, DDP, and Lightning's ``ModelParallelStrategy`` with FSDP2 data
    parallelism (``fully_shard``; each process writes its shard of every weight, see
    :mod:`lightning_sylv.sharding`), unless ``refusal`` says why not. Refused: tensor parallelism
    (``tensor_parallel_size > 1``: the processes of a tensor-parallel group hold different parts of a
    layer's *input*), ``FSDPStrategy`` (FSDP1) and ``DeepSpeedStrategy`` (not built: FSDP1 runs only on
    GPUs and DeepSpeed is not installed where the package is tested, so neither could be tested).

    Args:
        strategy: The trainer's strategy (after ``setup_environment``: its parallel sizes are resolved).
        who: The callback's name, for the message.
        refusal: Why the initializer refuses ``ModelParallelStrategy`` altogether (``None``: it supports it).

    Raises:
        RuntimeError: For a refused strategy; the message names the supported ones.
    """
    names = {cls.__name__ for cls in type(strategy).__mro__}
    name = type(strategy).__name__
    if "ModelParallelStrategy" in names:
        if refusal is not None:
            raise RuntimeError(
                f"{who} does not support the sharded strategy {name}: {refusal}. Initialize with "
                "strategy='ddp' (or a single device), save a checkpoint, and load it into the sharded run."
            )
        tp = getattr(strategy, "_tensor_parallel_size", 1)
        if isinstance(tp, int) and tp > 1:
            raise RuntimeError(
                f"{who} does not support tensor parallelism ({name} with tensor_parallel_size={tp}): a "
                "layer's input is split across the processes of a tensor-parallel group. Use "
                f"{name}(data_parallel_size=N, tensor_parallel_size=1) with fully_shard (FSDP2); "
                f"supported: {_SUPPORTED}."
            )
        return
    hit = names.intersection(("FSDPStrategy", "DeepSpeedStrategy"))
    if hit:
        raise RuntimeError(
            f"{who} does not support the strategy {name}. Supported: {_SUPPORTED}. For sharded training "
            "use ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1) with fully_shard in "
            "configure_model, or initialize with strategy='ddp', save a checkpoint, and load it into the "
            "sharded run."
        )


def check_materialized(module: nn.Module, who: str) -> None:
    """Refuse a model that still has parameters or buffers on the ``meta`` device.

    Raises:
        RuntimeError: Naming the first such tensor.
    """
    for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in named:
            if t.is_meta:
                raise RuntimeError(
                    f"{who}: the model's {kind} {name!r} is still on the meta device at the start of fit, so "
                    "there are no values to initialize. Models created with "
                    "trainer.init_module(empty_init=True) or in configure_model are materialized by "
                    "ModelParallelStrategy (and FSDP) before fit starts; with other strategies create "
                    "the model with real tensors (empty_init=False), or call to_empty() and "
                    "reset_parameters() first."
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
    """Make all processes hold rank 0's parameters and buffers, bit for bit (sharded parameters excepted:
    each process holds its own slice, written from weights every process solved alike).

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
            if not is_sharded(t):  # a shard is this process's own slice of identical weights
                torch.distributed.broadcast(t.data, src=0)
    strategy.barrier("sylvester_sync")
