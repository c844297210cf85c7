"""One layer, start to finish: input activation -> statistics -> code -> solve -> scale -> weights written.

:class:`LayerJob` collects what one layer needs from one or more batches of its input
(:meth:`LayerJob.add`), then :meth:`LayerJob.finish` merges across processes if asked, fits the code,
solves the Sylvester problem for all convolution groups in one batched call and writes
``weight``/``bias`` in place. Read in that order, one step each:

* collect: :meth:`LayerJob.add` keeps Gram sums or the rows, as :func:`choose_mode` (a pure function
  of the row count, the dimensions and the code) decided at the first batch;
* solve: one private method per mode, ``_solve_gram`` (sums -> the code's moments -> the solve) and
  ``_solve_rows`` (the rows as they are, in their span, or in a randomized subspace);
* scale: ``_rescaled`` (``scale="own"``): the solved directions at the output energy the layer's own
  weights have on the same rows, accumulated batch by batch in ``add`` (see :mod:`lightning_sylv.scale`);
* write: ``_write`` (in place, a sharded parameter's own slice included, see
  :mod:`lightning_sylv.sharding`); report: ``_report``.

Which statistics are kept follows the data. With ``n`` rows of ``d`` inputs (per group):

* ``n >= d`` — *Gram mode*: sums ``Σx``, ``Σxxᵀ`` (``d x d``) and per-class sums. Memory does not
  grow with the number of batches, and the sums all-reduce across processes. Cost ``O(n d² + d³)``.
* ``n < d`` — *span mode* (the late stages and wide heads of large nets: 4,608 inputs from 200 rows,
  VGG's 25,088-input ``Linear``): the rows themselves are kept, and the problem is solved exactly
  in the ``n``-dimensional span of the rows, where every quantity of the problem lives. A thin QR
  factorization ``Xᵀ = Q R`` (``Q``: ``d x n``, orthonormal columns) gives the coordinates
  ``Z = X Q = Rᵀ``; codes, statistics and the Sylvester solve work on ``Z`` (``n x n``), and the
  weight is mapped back as ``W = W_Z Qᵀ``. This is exact, not an approximation: ``SᵀX`` and the
  encoding term only see the span, so the minimum-norm solution lies in it, and PCA, one-hot and the
  losses are invariant under the rotation. Cost ``O(n² d)``; no ``d x d`` matrix is ever formed.
  Across processes the rows are gathered (all-gather), not summed; without a gather the job uses
  Gram mode. The bases come from :mod:`lightning_sylv.row_space`.

* ``solver="randomized"`` — the fast mode, for unsupervised codes (PCA) when the layer needs far
  fewer directions ``k`` (its outputs) than it has inputs (``(4 + 4 q)(k + 11) <= d``, where the
  range finder is cheaper than the Gram matrix) and at least ``2 (k + 11)`` rows: the rows
  are kept, a randomized range finder (Halko, Martinsson & Tropp 2011: ``k + 10`` Gaussian
  directions, ``power_iterations`` rounds of subspace iteration, float32 products) finds the
  leading principal subspace, the mean is added to it, and the problem is solved exactly in that
  ``k + 11``-dimensional subspace as in span mode. Cost ``O(n d k)`` — the order of the layer's own
  forward pass — instead of ``O(n d² + d³)``. The PCA code's directions are then approximate
  (the subspace captures the top ``k`` directions up to the randomized method's error); everything
  else is unchanged. Layers where this does not pay, supervised codes (the head) and rows-only
  codes use the exact modes.

The mode is chosen once per layer from the total row count over all processes (``samples`` x rows
per sample), so every process takes the same path. Codes that need the rows themselves (ICA,
K-means, LDA, a teacher's activations) keep them in either mode (single batch, single process only).

This module imports no Lightning.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_sylv.codes import LatentCode
from lightning_sylv.layer_fit import LayerFit, moments_from_rows, solve_moments
from lightning_sylv.report import LayerReport
from lightning_sylv.row_space import canonical_order, randomized_basis, span_basis
from lightning_sylv.rows import LayerRows, layer_rows
from lightning_sylv.scale import Scale, energy_from_rows, energy_from_stats, gain_factor
from lightning_sylv.sharding import write_, write_product_
from lightning_sylv.solver import EIGH_PATHS
from lightning_sylv.stats import InputStats

__all__ = [
    "SOLVERS",
    "LayerInitError",
    "LayerJob",
    "Mode",
    "autocast_off",
    "choose_mode",
    "code_uses_stats",
    "grouped_rows",
]

#: Layer solvers: ``"exact"`` (Gram or span mode by the row count) and ``"randomized"`` (the fast mode).
SOLVERS = ("exact", "randomized")
#: Extra random directions of the randomized range finder beyond the ``k`` the code needs.
OVERSAMPLE = 10


class LayerInitError(ValueError):
    """A layer could not be initialized; the message names the layer."""


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


def code_uses_stats(code: LatentCode) -> bool:
    """Whether ``code`` fits from statistics alone (streamable, reducible across processes)."""
    return code.from_statistics


def grouped_rows(x: Tensor, groups: int) -> Tensor:
    """The rows of each group as one stack ``(groups, n, d / groups)``.

    Args:
        x: Rows ``(n, d)`` or patches ``(n, C, K)`` (channel-major, as :func:`layer_rows` returns them).
        groups: Number of groups (channel slices), ``C % groups == 0``.
    """
    n = x.shape[0]
    return x.reshape(n, groups, -1).transpose(0, 1)


def _gram_stats(
    x: Tensor,
    groups: int,
    labels: Tensor | None,
    classes: int | None,
    dtype: torch.dtype,
    gram_dtype: torch.dtype | None,
) -> InputStats:
    """Stacked :class:`InputStats` ``(groups, ...)`` of each group's flat rows (see :func:`grouped_rows`)."""
    if groups == 1 and x.ndim == 3 and x.transpose(1, 2).is_contiguous():
        # Patches gathered as (n, K, C) in memory (see conv_patches): the sums are formed in that
        # order and reordered to the weight's (C, K) order, O(d²), instead of copying the O(n d) rows.
        c, k = x.shape[1:]
        natural = x.transpose(1, 2).reshape(1, x.shape[0], k * c)
        order = (torch.arange(k)[None, :] * c + torch.arange(c)[:, None]).reshape(-1)
        return InputStats.from_rows(natural, labels, classes, dtype, gram_dtype).take(order)
    return InputStats.from_rows(grouped_rows(x, groups), labels, classes, dtype, gram_dtype)


Mode = Literal["gram", "span", "randomized"]


def choose_mode(
    *,
    rows: int,
    in_features: int,
    directions: int,
    solver: str,
    uses_stats: bool,
    supervised: bool,
    pooled: bool,
    power_iterations: int = 1,
) -> Mode:
    """How a layer keeps its input and is solved (the module docstring has the three modes).

    Args:
        rows: Rows the layer will see in all (every batch and process).
        in_features: Inputs per group ``d``.
        directions: Directions the code needs ``k`` (the layer's outputs; half for a signed PCA code).
        solver: ``"exact"`` or ``"randomized"``.
        uses_stats: The code fits from statistics (PCA, one-hot).
        supervised: The code needs labels (the head).
        pooled: The rows of all processes can be brought together (single process, or a gather).

    Returns:
        ``"randomized"`` where the range finder pays (``(4 + 4 q)(k + 11) <= d`` and ``2 (k + 11)``
        rows at least, an unsupervised statistics code, ``solver="randomized"``), else ``"span"`` for
        fewer rows than inputs, else ``"gram"``. Without ``pooled`` always ``"gram"`` (the sums reduce).

    Example:
        >>> choose_mode(rows=200, in_features=4608, directions=512, solver="exact", uses_stats=True,
        ...             supervised=False, pooled=True)
        'span'
        >>> choose_mode(rows=3200, in_features=576, directions=64, solver="exact", uses_stats=True,
        ...             supervised=False, pooled=True)
        'gram'
    """
    if not pooled:
        return "gram"
    k = directions + OVERSAMPLE
    # The range finder costs ~(2 + 2 q) n d k products against ~n d² / 2 for the Gram matrix (and d³
    # for its eigendecomposition): it pays when k is well below d / (4 + 4 q).
    if (
        solver == "randomized"
        and uses_stats
        and not supervised
        and (4 + 4 * power_iterations) * (k + 1) <= in_features
        and 2 * (k + 1) <= rows
    ):
        return "randomized"
    return "span" if rows < in_features else "gram"


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
            sample it decides between Gram and span mode (see the module docstring). ``None``: the
            first batch is all there is.
        gather: Concatenation of a tensor's first dimension across processes (an all-gather), used
            to pool the rows in span mode under DDP. ``None`` with a ``reduce`` at :meth:`finish`
            means Gram mode, whatever the row count.
        distributed: Whether :meth:`finish` will get a ``reduce`` (several processes).
        solver: ``"exact"`` or ``"randomized"`` (the fast mode; see the module docstring).
        power_iterations: Subspace iterations of the randomized range finder.
        scale: ``"solve"`` writes the solved weights as they are; ``"own"`` rescales them (and the
            bias) to the output energy the layer's weights before the init have on the same input
            rows (see :mod:`lightning_sylv.scale`).
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        code: LatentCode,
        *,
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
        scale: Scale = "solve",
    ) -> None:
        self.module = module
        self.name = name
        self.code = code
        self.lam = lam
        self.patches_per_image = patches_per_image
        self.generator = generator
        self.code_generator = generator if code_generator is None else code_generator
        self.dtype = dtype
        self.gram_dtype = gram_dtype
        self.samples = samples
        self.gather = gather
        self.distributed = distributed
        self.solver = solver
        self.power_iterations = power_iterations
        self.scale = scale
        self.groups: int = getattr(module, "groups", 1)
        self.out_per_group: int = module.weight.shape[0] // self.groups
        self.in_per_group: int = math.prod(module.weight.shape[1:])  # no indexing: may be a DTensor
        self.uses_stats = code_uses_stats(code)
        self.mode: Mode | None = None  # decided at the first batch (choose_mode)
        self._stats: InputStats | None = None
        self._rows: list[Tensor] = []  # (groups, n_b, d) per batch
        self._labels: list[Tensor] = []
        self._failure: LayerInitError | None = None
        self._layer_rows: LayerRows | None = None
        self.seconds = 0.0
        self._own_energy = 0.0  # output energy of the weights before the init (scale="own")
        #: Factor applied to the solved weights (1.0: the solve's scale).
        self.gain = 1.0
        #: Optional callback receiving this layer's report once it is written.
        self.on_done: Callable[[LayerReport], None] | None = None

    def notify(self, report: LayerReport) -> None:
        """Pass ``report`` to :attr:`on_done`, if set."""
        if self.on_done is not None:
            self.on_done(report)

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        """Add one call of the layer (its forward's ``args``/``kwargs``, as a pre-hook sees them)."""
        self.add(args[0] if args else next(iter(kwargs.values())), labels)

    def add(self, x: Tensor, labels: Tensor | None) -> None:
        """Add one batch of the layer's input ``x`` (with the batch's labels, if any).

        Runs with autocast disabled (see :func:`autocast_off`), also when called from a forward pass
        under a mixed-precision context.

        Raises:
            LayerInitError: If the rows cannot be gathered, contain NaN/Inf, or labels mismatch. For
                statistics codes the error is raised by :meth:`finish` instead (so that, across
                processes, every process raises rather than waits).
        """
        if self._failure is not None:
            return  # an earlier batch failed; finish() raises it
        with autocast_off(x.device):
            try:
                self._add(x, labels)
            except LayerInitError as err:
                if not self.uses_stats:
                    raise
                # Raised by finish(), after the other processes have heard of it: raising here would
                # leave them waiting in the all-reduce of this layer's statistics.
                self._failure = err

    def _error(self, message: str) -> LayerInitError:
        return LayerInitError(f"layer {self.name!r}: {message}")

    def _directions(self) -> int:
        """Directions of the input the code can use: its outputs (half of them for a signed PCA code)."""
        signed = getattr(self.code, "signed", False)
        return -(-self.out_per_group // 2) if signed else self.out_per_group

    def _add(self, x: Tensor, labels: Tensor | None) -> None:
        t0 = time.perf_counter()
        try:
            rows = layer_rows(self.module, x, self.patches_per_image, self.generator)
        except (TypeError, ValueError) as err:
            raise self._error(f"could not gather its input rows: {err}") from err
        row_labels = None
        if labels is not None and self.code.requires_labels:
            n_samples = rows.x.shape[0] // rows.per_sample
            if n_samples != labels.shape[0]:
                raise self._error(f"its input has {n_samples} samples but {labels.shape[0]} labels were given")
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0:
                raise self._error(f"labels must be >= 0, got {lo}")
            if self.uses_stats and hi >= self.out_per_group:
                raise self._error(
                    f"labels span [{lo}, {hi}] but the layer has {self.out_per_group} outputs: a "
                    f"{self.code.name!r} code needs one output per class (labels 0..{hi})"
                )
            row_labels = labels.to(rows.x.device).repeat_interleave(rows.per_sample)
        if self.scale == "own":
            self._own_energy += float(self._energy_of_current(rows.x))
        if self.mode is None:
            self.mode = choose_mode(
                rows=rows.x.shape[0] if self.samples is None else self.samples * rows.per_sample,
                in_features=self.in_per_group,
                directions=self._directions(),
                solver=self.solver,
                uses_stats=self.uses_stats,
                supervised=self.code.requires_labels,
                pooled=not self.distributed or self.gather is not None,
                power_iterations=self.power_iterations,
            )
        if self.uses_stats and self.mode == "gram":
            # A fixed class count keeps statistics of batches and processes mergeable.
            classes = None if row_labels is None else self.out_per_group
            try:
                new = _gram_stats(rows.x, self.groups, row_labels, classes, self.dtype, self.gram_dtype)
            except ValueError as err:
                raise self._error(str(err)) from err
            # NaN/Inf in any row propagates into the sums: checking them is O(d²), not O(n d).
            if not bool(torch.isfinite(new.gram_x).all() and torch.isfinite(new.sum_x).all()):
                raise self._error(
                    "its input activations contain NaN/Inf values (check the data and the layers before it)"
                )
            self._stats = new if self._stats is None else self._stats + new
        else:
            if self._rows and not self.uses_stats:
                raise self._error(
                    f"the {self.code.name!r} code needs all rows at once; it cannot be streamed over several "
                    "batches (use a statistics code such as 'pca', or no batch_size)"
                )
            # Kept in the precision they arrive in (half precision widened to float32), converted once
            # at the solve: the randomized range finder runs in float32 (its products are the
            # O(n d k) part), the other modes in the solve's dtype.
            block = grouped_rows(rows.x, self.groups)
            if block.dtype not in (torch.float32, torch.float64):
                block = block.float()
            if not bool(torch.isfinite(block).all()):
                raise self._error(
                    "its input activations contain NaN/Inf values (check the data and the layers before it)"
                )
            self._rows.append(block)
            if row_labels is not None:
                self._labels.append(row_labels)
            self._layer_rows = rows
        self.seconds += time.perf_counter() - t0

    def _energy_of_current(self, x: Tensor) -> Tensor:
        """Output energy of the layer's current (own) weights on the rows ``x`` of one batch."""
        w = self.module.weight.detach()
        block = grouped_rows(x, self.groups)
        if block.dtype not in (torch.float32, torch.float64):
            block = block.float()  # half-precision products are too coarse for a sum over rows
        weight = w.reshape(self.groups, self.out_per_group, -1)
        b = self.module.bias
        bias = None if b is None else b.detach().reshape(self.groups, self.out_per_group)
        return energy_from_rows(block, weight, bias)

    def _rcond(self, d_in: int) -> float | None:
        """Eigenvalue tolerance matching the precision of the row products (``None``: the default)."""
        if self.gram_dtype is None or torch.finfo(self.gram_dtype).bits >= torch.finfo(self.dtype).bits:
            return None
        return max(d_in, self.out_per_group) * torch.finfo(self.gram_dtype).eps

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> LayerReport:
        """Fit, solve and write the weights; return the layer's report.

        Runs with autocast disabled, like :meth:`add`.

        Args:
            reduce: Sum-reduction across processes (e.g. an all-reduce); applied to a failure flag,
                then to the statistics (Gram mode). In span mode the rows go through the ``gather``
                given at construction instead.

        Raises:
            LayerInitError: If nothing was added, or the code or the solve fails.
        """
        with autocast_off(self.module.weight.device):
            return self._finish(reduce)

    def _check_peers(self, reduce: Callable[[Tensor], Tensor] | None) -> None:
        if self.uses_stats and reduce is not None:  # every process learns whether any failed
            flag = [0.0 if self._failure is None else 1.0, self._own_energy]
            summed = reduce(torch.tensor(flag, dtype=torch.float64, device=self.module.weight.device)).tolist()
            if summed[0] > 0 and self._failure is None:
                raise self._error("another process could not initialize it (its error is in that process's output)")
            self._own_energy = summed[1]  # over every process's rows, like the statistics
        if self._failure is not None:
            raise self._failure
        if self._stats is None and not self._rows:
            raise self._error("no input was recorded")
        if reduce is not None and not self.uses_stats:
            raise self._error(
                f"the {self.code.name!r} code needs the rows themselves and cannot be combined across "
                "processes; use a statistics code such as 'pca'"
            )

    def _pooled_rows(self, reduce: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """All rows ``(groups, n, d)`` and row labels of this layer, over batches and processes."""
        x = self._rows[0] if len(self._rows) == 1 else torch.cat(self._rows, dim=1)
        labels = torch.cat(self._labels) if self._labels else None
        self._rows, self._labels = [], []  # from here on the pooled rows are the only copy
        if reduce is not None and self.gather is not None:
            x = self.gather(x.transpose(0, 1).contiguous()).transpose(0, 1)
            if labels is not None:
                labels = self.gather(labels)
        # Statistics codes see the rows as a set: put them in an order that does not depend on where
        # they came from. Codes that need the rows keep them aligned with the layer's sampled positions.
        return canonical_order(x, labels) if self.uses_stats else (x, labels)

    def _finish(self, reduce: Callable[[Tensor], Tensor] | None) -> LayerReport:
        t0 = time.perf_counter()
        self._check_peers(reduce)
        try:
            if self._stats is not None:
                fit, basis, n_rows, mode, data = self._solve_gram(self._stats, reduce)
            else:
                fit, basis, n_rows, mode, data = self._solve_rows(reduce)
        except ValueError as err:
            if isinstance(err, LayerInitError):
                raise
            raise self._error(str(err)) from err
        if self.scale == "own":
            fit = self._rescaled(fit, data)
        self._write(fit.weight, fit.bias, basis)
        self._stats, self._rows, self._labels, self._layer_rows = None, [], [], None
        self.seconds += time.perf_counter() - t0
        return self._report(fit, n_rows, mode)

    def _solve_gram(
        self, stats: InputStats, reduce: Callable[[Tensor], Tensor] | None
    ) -> tuple[LayerFit, None, int, str, InputStats]:
        """Gram mode: the (reduced) sums -> the code's moments -> the solve. Also returns the sums."""
        stats = stats.map(reduce) if reduce is not None else stats
        self._warn_missing(stats.counts)
        m = self.code.moments(stats, self.out_per_group, self.module.bias is not None, self.code_generator)
        return solve_moments(m, self.lam, self._rcond(m.gram_x.shape[-1])), None, int(stats.n), "gram", stats

    def _solve_rows(
        self, reduce: Callable[[Tensor], Tensor] | None
    ) -> tuple[LayerFit, Tensor | None, int, str, Tensor]:
        """The kept rows (pooled across processes), solved as they are (codes that need the rows), in
        the span of fewer rows than inputs, or in a randomized leading subspace. Returns the fit in
        the basis's coordinates, the basis (``None``: the rows' own coordinates) and the rows in
        those coordinates (``rows @ basis`` maps through the fit exactly as the rows do through the
        written weight)."""
        x, labels = self._pooled_rows(reduce)
        n_rows, mode, basis = x.shape[1], "rows", None
        if self.mode == "randomized":  # a randomized leading subspace (plus the mean)
            x = x.float()
            basis = randomized_basis(x, self._directions() + OVERSAMPLE, self.power_iterations, self.code_generator)
            x, basis, mode = (x @ basis).to(self.dtype), basis.to(self.dtype), "randomized"
        elif n_rows < x.shape[2]:  # span mode: the coordinates of the rows' span
            basis, x = span_basis(x.to(self.dtype))
            mode = "span"
        else:
            x = x.to(self.dtype)
        return self._fit_rows(x, labels, self.module.bias is not None), basis, n_rows, mode, x

    def _rescaled(self, fit: LayerFit, data: InputStats | Tensor) -> LayerFit:
        """``fit`` at the output energy of the layer's own weights on the same rows (``scale="own"``)."""
        if isinstance(data, InputStats):
            solved = energy_from_stats(data, fit.weight, fit.bias)
        else:
            solved = energy_from_rows(data, fit.weight, fit.bias)
        self.gain = gain_factor(self._own_energy, float(solved))
        if self.gain == 1.0:
            return fit
        bias = None if fit.bias is None else fit.bias * self.gain
        return dataclasses.replace(fit, weight=fit.weight * self.gain, bias=bias)

    def _report(self, fit: LayerFit, n_rows: int, mode: str) -> LayerReport:
        return LayerReport(
            name=self.name,
            kind=type(self.module).__name__,
            in_features=self.in_per_group,
            out_features=self.out_per_group,
            groups=self.groups,
            rows=n_rows,
            code=self.code.name,
            encoding_loss=fit.encoding_loss,
            decoding_loss=fit.decoding_loss,
            residual=fit.residual,
            cond_a=fit.cond_a,
            cond_b=fit.cond_b,
            dropped=fit.dropped,
            seconds=self.seconds,
            solver=f"{mode}/{fit.path}",
            gain=self.gain,
        )

    def _warn_missing(self, counts: Tensor | None) -> None:
        if counts is not None and bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).squeeze(1).tolist()
            warnings.warn(
                f"layer {self.name!r}: classes {missing} have no samples in the subset; their outputs get zero "
                "weights and zero bias",
                stacklevel=3,
            )

    def _fit_rows(self, x: Tensor, labels: Tensor | None, fit_bias: bool) -> LayerFit:
        """Fit from rows ``(groups, n, k)`` (the raw rows, or their span coordinates)."""
        if self.uses_stats:
            classes = None if labels is None else self.out_per_group
            stats = InputStats.from_rows(x, labels, classes, self.dtype)
            self._warn_missing(stats.counts)
            m = self.code.moments(stats, self.out_per_group, fit_bias, self.code_generator)
            return solve_moments(m, self.lam)
        # Codes that need the rows: one fit per group (their implementations are not batched).
        # rows= only for codes that declare they need it: codes written against the older fit() signature work.
        extra = {"rows": self._layer_rows} if self.code.requires_rows else {}
        fits = []
        for xg in x:
            s = self.code.fit(xg, self.out_per_group, labels=labels, generator=self.code_generator, **extra)
            fits.append(solve_moments(moments_from_rows(xg, s, fit_bias, self.dtype), self.lam))
        return _stack_fits(fits)

    def _write(self, weight: Tensor, bias: Tensor | None, basis: Tensor | None = None) -> None:
        """Write ``weight`` ``(groups, out, d)`` (with a ``basis`` ``(groups, d, r)``: ``weight @ basisᵀ``
        from ``(groups, out, r)``, a block at a time) and ``bias`` ``(groups, out)`` in place."""
        if basis is None:
            write_(self.module.weight, weight)
        else:
            write_product_(self.module.weight, weight, basis.mT)
        if self.module.bias is not None and bias is not None:
            write_(self.module.bias, bias)


def _stack_fits(fits: list[LayerFit]) -> LayerFit:
    """One :class:`LayerFit` for a list of per-group fits (summarized as for a batched solve)."""
    bias = None if fits[0].bias is None else torch.stack([f.bias for f in fits if f.bias is not None])
    return LayerFit(
        weight=torch.stack([f.weight for f in fits]),
        bias=bias,
        encoding_loss=sum(f.encoding_loss for f in fits) / len(fits),
        decoding_loss=sum(f.decoding_loss for f in fits) / len(fits),
        residual=max(f.residual for f in fits),
        cond_a=max(f.cond_a for f in fits),
        cond_b=max(f.cond_b for f in fits),
        dropped=sum(f.dropped for f in fits),
        path=max((f.path for f in fits), key=EIGH_PATHS.index),
    )
