"""The pass runner every initializer rides, one concern a module: ``hooks`` (hook passes, execution
order, the probe), ``selection`` (which layers are left alone and why), ``state`` (the guarded model
state: snapshot, BatchNorm reset, restore on error), ``runner`` (one pass or streamed).

An initializer (Sylvester, FuseInit, low-rank) supplies only per-layer *jobs*; this module runs the
model over the subset and hands each job its layer's real input, in execution order:

1. :func:`probe_forward` runs two samples to record the execution order of the layers (and proves
   the forward accepts the batch), in channels-last layout on CPUs when the forward accepts it.
2. :func:`run_jobs` runs the subset with a forward pre-hook on every job's module. In one-pass mode
   (the default) a job receives its module's input at the module's first call, fits and writes its
   weights, and the module then runs with them, so the next layer sees the new activations. Streamed
   (``batch_size``), each job gets its own pass over all mini-batches (stopped right after its
   module), then the next job follows, and a last pass recomputes the BatchNorm statistics.
3. BatchNorm layers run with reset, cumulative running statistics during those passes (unless told
   not to), so the model is usable in eval mode right away.
4. ``reduce`` (a sum across processes) is handed to every job's ``finish``: DDP.
5. Sharded parameters (FSDP2 ``fully_shard``): a job writes into the unsharded copy its module holds
   during the pass, and the runner commits the value to this process's shard right after
   (:class:`~lightning_sylv.sharding.ShardedParams`); the model is left in its sharded state.
6. On any failure every parameter written and every buffer is restored (:class:`Snapshot`, and the
   initializer's own extra state via ``on_failure``) and the error is raised as the initializer's subclass of
   :class:`InitializationError`. Train/eval modes and BatchNorm momenta are put back in ``finally``;
   the global RNG is never advanced.

The rule for layers that are not initialized is also here, once: :func:`skip_reason` (not executed,
frozen, not selected).

This module imports no Lightning.
"""

from lightning_sylv.passes.base import InitializationError, Job, PostHook, PreHook
from lightning_sylv.passes.hooks import Probe, execution_order, hooked, hooked_pass, probe_forward
from lightning_sylv.passes.runner import run_jobs
from lightning_sylv.passes.selection import frozen, skip_reason
from lightning_sylv.passes.state import Snapshot, guarded

__all__ = [
    "InitializationError",
    "Job",
    "PostHook",
    "PreHook",
    "Probe",
    "Snapshot",
    "execution_order",
    "frozen",
    "guarded",
    "hooked",
    "hooked_pass",
    "probe_forward",
    "run_jobs",
    "skip_reason",
]
