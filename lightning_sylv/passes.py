"""The pass runner every initializer rides: hooks, execution order, one pass or streamed, restore.

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

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from lightning_sylv._batch import channels_last, default_forward, slice_batch
from lightning_sylv.modules import BATCH_NORMS, evaluating, target_modules
from lightning_sylv.sharding import ShardedParams

__all__ = [
    "InitializationError",
    "Job",
    "Snapshot",
    "execution_order",
    "frozen",
    "guarded",
    "hooked_pass",
    "Probe",
    "probe_forward",
    "run_jobs",
    "skip_reason",
]


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


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (streaming mode)."""


@contextmanager
def _hooked(pre: Mapping[nn.Module, PreHook], post: Mapping[nn.Module, PostHook]) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(fn, with_kwargs=True) for m, fn in pre.items()]
    handles += [m.register_forward_hook(fn) for m, fn in post.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hooked_pass(
    model: nn.Module,
    inputs: Any,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    pre: Mapping[nn.Module, PreHook] | None = None,
    post: Mapping[nn.Module, PostHook] | None = None,
) -> Any:
    """Run ``forward(model, inputs)`` once in eval mode without gradients, with hooks attached.

    The one hook pass of the package: execution-order probes, feature capture and teacher
    activations all go through it. Hooks are removed and the train/eval mode restored afterwards,
    also when the forward raises.

    Args:
        model: The model.
        inputs: Its inputs, as ``forward`` expects them.
        forward: ``forward(model, inputs)``.
        pre: Forward pre-hooks ``fn(module, args, kwargs)`` by module.
        post: Forward hooks ``fn(module, args, output)`` by module.

    Returns:
        What ``forward`` returned.
    """
    with evaluating(model), _hooked(pre or {}, post or {}):
        return forward(model, inputs)


def execution_order(
    model: nn.Module,
    inputs: Any,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    units: Mapping[nn.Module, str] | None = None,
    *,
    pre: Mapping[nn.Module, PreHook] | None = None,
    post: Mapping[nn.Module, PostHook] | None = None,
) -> list[str]:
    """Names of ``units`` in the order a forward pass first calls them.

    Args:
        model: The model.
        inputs: A small batch.
        forward: ``forward(model, inputs)``.
        units: The modules to track, with their names (default: the layers the Sylvester
            initializer supports, see :data:`lightning_sylv.rows.SUPPORTED_LAYERS`).
        pre: More forward pre-hooks to run in the same pass, on modules other than ``units`` (what
            else an initializer wants to learn from the probe).
        post: Forward hooks to run in the same pass.

    Raises:
        InitializationError: If the forward pass fails on ``inputs``.
    """
    if units is None:
        units = {m: n for n, m in target_modules(model).items()}
    order: list[str] = []

    def make(name: str) -> PreHook:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in order:
                order.append(name)

        return hook

    try:
        hooked_pass(model, inputs, forward, pre={**(pre or {}), **{m: make(n) for m, n in units.items()}}, post=post)
    except Exception as err:
        raise InitializationError(
            f"the model's forward failed on the initialization batch ({type(err).__name__}: {err}); "
            "check that the batches are (inputs, labels) or pass a forward function that maps inputs to logits"
        ) from err
    return order


class Probe(NamedTuple):
    """What the two-sample probe of an initialization learns.

    Attributes:
        forward: The forward the initialization pass runs (channels-last where the model accepts it).
        order: Names of the units in the order the forward first calls them.
        output: What the forward returned on the probe (the logits, for a classifier).
    """

    forward: Callable[[nn.Module, Any], Any]
    order: list[str]
    output: Any


def probe_forward(
    model: nn.Module,
    probe: Any,
    forward: Callable[[nn.Module, Any], Any],
    units: Mapping[nn.Module, str],
) -> Probe:
    """The forward the initialization pass runs, the execution order of ``units`` and the output it
    gives on ``probe`` (a couple of samples): the one probe of an initialization.

    On CPUs, oneDNN convolutions run about twice as fast on a large batch of images in channels-last
    layout (ResNet-20 on 1,000 CIFAR images: its convolutions inside the initialization 1.35 s ->
    0.64 s). A 4-D CPU input is fed in that layout whenever the model's forward accepts it, probed
    on ``probe``; a forward that does not (code that calls ``.view`` on activations) is probed again
    in the given layout. Values, weights and their layout are unchanged. Other inputs and devices
    run ``forward`` as given, probed once.

    Raises:
        InitializationError: If the forward pass fails on ``probe`` in its given layout.
    """
    output: list[Any] = []

    def keep(fn: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Any]:
        def run(m: nn.Module, x: Any) -> Any:
            output.append(fn(m, x))
            return output[-1]

        return run

    if channels_last(probe) is not probe:

        def fast(m: nn.Module, x: Any) -> Any:
            return forward(m, channels_last(x))

        try:
            order = execution_order(model, probe, keep(fast), units)
            return Probe(fast, order, output[-1])
        except InitializationError:
            pass  # the forward depends on the layout: run it as given
    order = execution_order(model, probe, keep(forward), units)
    return Probe(forward, order, output[-1])


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


def _reset_bn(bns: Sequence[nn.Module]) -> None:
    for m in bns:
        if m.track_running_stats:
            m.reset_running_stats()  # type: ignore[operator]
            m.momentum = None  # cumulative average over everything that follows


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

    with torch.no_grad(), _hooked(dict.fromkeys(by_module, hook), {}):
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

        with torch.no_grad(), _hooked({job.module: hook}, {}):
            for lo in range(0, n_samples, batch_size):
                state["seen"] = False
                state["labels"] = None if labels is None else labels[lo : lo + batch_size]
                with suppress(_StopForward):
                    forward(model, slice_batch(inputs, lo, lo + batch_size))
                shards.reshard()  # the stopped pass left its FSDP modules unsharded
        snapshot.save(job.module)
        on_result(job, job.finish(reduce))  # outside the pass: writes the shards directly
    return len(jobs)


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
                _reset_bn(bns)
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
            _reset_bn(bns)
            with torch.no_grad():
                for lo in range(0, n_samples, size):
                    forward(model, slice_batch(inputs, lo, lo + size))
            passes += 1
        return passes
