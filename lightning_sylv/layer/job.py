"""One layer, start to finish: collect -> choose the mode -> solve -> scale -> write -> report.

:class:`LayerJob` is the short pipeline every initializer runs per layer. Its two calls follow the
pass that feeds it:

* :meth:`LayerJob.add` (once per batch, from the layer's forward pre-hook): the input is kept by a
  :class:`~lightning_sylv.layer.collect.LayerInput` — statistics or rows, as
  :func:`~lightning_sylv.layer.mode.choose_mode` decides at the first batch;
* :meth:`LayerJob.finish` (once, when the layer has seen everything): the processes agree on failures
  and sum what they kept, :func:`~lightning_sylv.layer.solve.solve_gram` or
  :func:`~lightning_sylv.layer.solve.solve_rows` fits the code and solves the Sylvester problem for
  all convolution groups in one batched call, :func:`~lightning_sylv.scale.rescale` gives it the
  layer's own gain (``scale="own"``), :func:`~lightning_sylv.layer.write.write_layer` writes it in
  place and :func:`~lightning_sylv.layer.write.layer_report` reports it.

Both run with autocast disabled (:func:`autocast_off`), also inside a mixed-precision forward.

This module imports no Lightning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, get_args

import torch
from torch import Tensor, nn

from lightning_sylv._checks import check_choice
from lightning_sylv.codes import LatentCode
from lightning_sylv.layer.collect import LayerInitError, LayerInput
from lightning_sylv.layer.mode import directions
from lightning_sylv.layer.solve import LayerProblem, Solution, solve_gram, solve_rows
from lightning_sylv.layer.write import layer_report, write_layer
from lightning_sylv.report import LayerReport
from lightning_sylv.scale import LayerScale, rescale

__all__ = ["LayerJob", "autocast_off"]


def autocast_off(device: torch.device) -> AbstractContextManager[Any]:
    """A context with autocast disabled on ``device``'s type.

    The initialization runs inside the model's forward pass, which a mixed-precision trainer wraps
    in ``torch.autocast``: float32 matrix products there would silently run in bfloat16/float16
    (Gram matrices with ~1e-3 relative error, or overflow to Inf in float16). The statistics, codes
    and solves keep the dtypes asked for (``dtype``, ``gram_dtype``) instead.
    """
    kind = torch.device(device).type
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if available is not None and not available(kind):
        return nullcontext()
    return torch.autocast(device_type=kind, enabled=False)


class LayerJob:
    """Initialization of one supported layer (``Linear``, ``Conv1d``, ``Conv2d``, ``Conv3d``).

    Args:
        module: The layer.
        name: Its qualified name (for messages and the report).
        code: Its latent code.
        lam: λ.
        patches_per_image: Patch positions drawn per sample (``None``: all).
        generator: CPU generator for patch draws (and random code fills without ``code_generator``).
        dtype: Precision of statistics and solves.
        gram_dtype: Precision of the row products behind the second moments (``None``: ``dtype``;
            see :meth:`InputStats.from_rows`).
        code_generator: CPU generator for the random code fills. Give each layer its own, seeded
            independently of the data, when processes draw patches from shards of different sizes:
            the shared ``generator`` then ends in a different state on each process.
        samples: Samples the layer will see in all (over every batch and process); with the rows per
            sample it decides the mode (:mod:`lightning_sylv.layer.mode`). ``None``: the first batch
            is all there is.
        gather: Concatenation of a tensor's first dimension across processes (an all-gather), used
            to pool the rows in span mode under DDP. ``None`` with a ``reduce`` at :meth:`finish`
            means Gram mode, whatever the row count.
        distributed: Whether :meth:`finish` will get a ``reduce`` (several processes).
        solver: ``"exact"`` or ``"randomized"`` (the fast mode).
        power_iterations: Subspace iterations of the randomized range finder.
        scale: ``"solve"`` writes the solved weights as they are; ``"own"`` rescales them (and the
            bias) to the output energy the layer's weights before the init have on the same input
            rows, ``"norm"`` to those weights' Frobenius norm (see :mod:`lightning_sylv.scale`; the
            setting ``"auto"`` is resolved per layer by :func:`~lightning_sylv.scale.layer_scale`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_sylv.codes import PCACode
        >>> layer = nn.Linear(6, 3)
        >>> job = LayerJob(module=layer, name="fc", code=PCACode(), lam=10.0, patches_per_image=None,
        ...                generator=torch.Generator().manual_seed(0))
        >>> job.add(torch.randn(40, 6), None)
        >>> report = job.finish()
        >>> report.name, report.solver, report.rows
        ('fc', 'gram/eigh', 40)
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        name: str,
        code: LatentCode,
        lam: float,
        patches_per_image: int | None,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float64,
        gram_dtype: torch.dtype | None = None,
        code_generator: torch.Generator | None = None,
        samples: int | None = None,
        gather: Callable[[Tensor], Tensor] | None = None,
        distributed: bool = False,
        solver: str = "exact",
        power_iterations: int = 1,
        scale: LayerScale = "solve",
    ) -> None:
        check_choice("scale", scale, get_args(LayerScale))  # "auto" is resolved per layer before
        self.module, self.name, self.code = module, name, code
        self.gather, self.distributed = gather, distributed
        self.power_iterations, self.scale = power_iterations, scale
        self.input = LayerInput(
            module=module, name=name, code=code, patches_per_image=patches_per_image, generator=generator,
            dtype=dtype, gram_dtype=gram_dtype, samples=samples, pooled=not distributed or gather is not None,
            solver=solver, power_iterations=power_iterations, scale=scale,
        )  # fmt: skip
        self.problem = LayerProblem(
            name=name, code=code, outputs=self.input.out_per_group, fit_bias=module.bias is not None, lam=lam,
            dtype=dtype, gram_dtype=gram_dtype, generator=generator if code_generator is None else code_generator,
        )  # fmt: skip
        self._failure: LayerInitError | None = None
        #: Wall time spent on this layer so far.
        self.seconds = 0.0
        #: Factor applied to the solved weights (1.0: the solve's scale).
        self.gain = 1.0

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        """Add one call of the layer (its forward's ``args``/``kwargs``, as a pre-hook sees them)."""
        self.add(args[0] if args else next(iter(kwargs.values())), labels)

    def add(self, x: Tensor, labels: Tensor | None) -> None:
        """Add one batch of the layer's input ``x`` (with the batch's labels, if any).

        Raises:
            LayerInitError: If the rows cannot be gathered, contain NaN/Inf, or labels mismatch. For
                statistics codes the error is raised by :meth:`finish` instead (so that, across
                processes, every process raises rather than waits).
        """
        if self._failure is not None:
            return  # an earlier batch failed; finish() raises it
        t0 = time.perf_counter()
        with autocast_off(x.device):
            try:
                self.input.add(x, labels)
            except LayerInitError as err:
                if not self.input.uses_stats:
                    raise
                # Raised by finish(), after the other processes have heard of it: raising here would
                # leave them waiting in the all-reduce of this layer's statistics.
                self._failure = err
                return
        self.seconds += time.perf_counter() - t0

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> LayerReport:
        """Solve, scale and write the weights; return the layer's report.

        Args:
            reduce: Sum-reduction across processes (e.g. an all-reduce); applied to a failure flag,
                then to the statistics (Gram mode). In span mode the rows go through the ``gather``
                given at construction instead.

        Raises:
            LayerInitError: If nothing was added, or the code or the solve fails.
        """
        t0 = time.perf_counter()
        with autocast_off(self.module.weight.device):
            self._check_peers(reduce)
            solution = self._solve(reduce)
            fit = solution.fit
            if self.scale != "solve":
                own = self.input.energy if self.scale == "own" else self.input.own_norm
                fit, self.gain = rescale(fit, solution.data, own, by=self.scale)
            write_layer(self.module, fit.weight, fit.bias, solution.basis, self.input.columns)
            self.input.clear()
        self.seconds += time.perf_counter() - t0
        return layer_report(
            self.module, name=self.name, code=self.code.name, fit=fit, solution=solution, groups=self.input.groups,
            in_features=self.input.in_per_group, out_features=self.input.out_per_group, seconds=self.seconds,
            gain=self.gain,
        )  # fmt: skip

    def _check_peers(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Every process learns whether any failed (and sums the own output energy); then the local checks."""
        uses_stats = self.input.uses_stats
        if uses_stats and reduce is not None:
            flag = [0.0 if self._failure is None else 1.0, self.input.energy]
            summed = reduce(torch.tensor(flag, dtype=torch.float64, device=self.module.weight.device)).tolist()
            if summed[0] > 0 and self._failure is None:
                raise self.input.error(
                    "another process could not initialize it (its error is in that process's output)"
                )
            self.input.energy = summed[1]  # over every process's rows, like the statistics
        if self._failure is not None:
            raise self._failure
        if self.input.empty:
            raise self.input.error("no input was recorded")
        if reduce is not None and not uses_stats:
            raise self.input.error(
                f"the {self.code.name!r} code needs the rows themselves and cannot be combined across "
                "processes; use a statistics code such as 'pca'"
            )

    def _solve(self, reduce: Callable[[Tensor], Tensor] | None) -> Solution:
        """The solve of the layer's mode, with the kept input pooled across processes."""
        kept = self.input
        try:
            if kept.stats is not None:
                return solve_gram(kept.stats.map(reduce) if reduce is not None else kept.stats, self.problem)
            x, labels = kept.pooled_rows(self.gather if reduce is not None else None)
            return solve_rows(
                x, labels, self.problem, mode=kept.mode or "gram", directions=directions(self.code, kept.out_per_group),
                power_iterations=self.power_iterations, layer_rows=kept.layer_rows,
            )  # fmt: skip
        except ValueError as err:
            if isinstance(err, LayerInitError):
                raise
            raise kept.error(str(err)) from err
