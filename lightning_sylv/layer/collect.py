"""What one layer keeps of its input over batches: statistics (Gram mode) or the rows themselves.

:class:`LayerInput` receives each batch of a layer's input activations (:meth:`LayerInput.add`),
gathers its rows (sampled patches for convolutions, :mod:`lightning_sylv.rows`), checks them and the
labels, and keeps what the mode (:func:`~lightning_sylv.layer.mode.choose_mode`, decided at the first
batch) needs: mergeable sums (:class:`~lightning_sylv.stats.InputStats`) or the rows, in the precision
they arrive in. With ``scale="own"`` it also sums the output energy the layer's current weights have
on the same rows, with ``scale="norm"`` it notes their norm (:mod:`lightning_sylv.scale`).
:meth:`LayerInput.pooled_rows` brings the kept rows of all batches and processes together for the
solve.

This module imports no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_sylv.codes import LatentCode
from lightning_sylv.layer.mode import Mode, choose_mode, directions
from lightning_sylv.row_space import canonical_order
from lightning_sylv.rows import LayerRows, layer_rows
from lightning_sylv.scale import LayerScale, energy_from_rows, weight_energy
from lightning_sylv.stats import InputStats

__all__ = ["LayerInitError", "LayerInput", "gram_stats", "grouped_rows"]


class LayerInitError(ValueError):
    """A layer could not be initialized; the message names the layer."""


def grouped_rows(x: Tensor, groups: int) -> Tensor:
    """The rows of each group as one stack ``(groups, n, d / groups)``.

    Args:
        x: Rows ``(n, d)`` or patches ``(n, C, K)`` (channel-major, as :func:`layer_rows` returns them).
        groups: Number of groups (channel slices), ``C % groups == 0``.

    Example:
        >>> grouped_rows(torch.arange(12.0).reshape(2, 6), 3).shape
        torch.Size([3, 2, 2])
    """
    n = x.shape[0]
    return x.reshape(n, groups, -1).transpose(0, 1)


def gram_stats(
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


def _widened(block: Tensor) -> Tensor:
    """``block`` in float32 when it arrives in half precision (too coarse for sums over rows)."""
    return block if block.dtype in (torch.float32, torch.float64) else block.float()


class LayerInput:
    """The input of one layer (``Linear``, ``Conv1d/2d/3d``), accumulated batch by batch.

    Args:
        module: The layer.
        name: Its qualified name (for messages).
        code: Its latent code (decides whether labels are checked and statistics suffice).
        patches_per_image: Patch positions drawn per sample (``None``: all).
        generator: CPU generator of the patch draws.
        dtype: Precision of the statistics.
        gram_dtype: Precision of the row products behind the second moments (``None``: ``dtype``).
        samples: Samples the layer will see in all (every batch and process); ``None``: the first
            batch is all there is.
        pooled: Whether the rows of all processes can be brought together (one process, or a gather).
        solver: ``"exact"`` or ``"randomized"``.
        power_iterations: Subspace iterations of the randomized range finder.
        scale: What to measure of the layer's current weights: ``"own"`` their output energy on the
            rows, ``"norm"`` their norm, ``"solve"`` nothing.

    Attributes:
        mode: ``"gram"``, ``"span"`` or ``"randomized"``, decided at the first batch; ``None`` before.
        columns: For a convolution with kernel taps that never see the input (statistics codes only,
            :func:`~lightning_sylv.rows.conv_patches` ``drop_unseen``): the indices, within a group's
            ``in_per_group`` weight columns, of the columns the kept rows hold; ``None``: all. The
            dropped columns are zero in every row, so the solve leaves them out and the weights get
            zeros there (what the full solve gives them: no data reaches those taps).
        stats: The summed statistics (Gram mode with a statistics code), else ``None``.
        energy: Output energy of the current weights on the rows seen so far (``scale="own"``).
        own_norm: Squared Frobenius norm of the current weights, over the columns the solve sees
            (``scale="norm"``; taken at the first batch, before anything is written), else ``0.0``.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        name: str,
        code: LatentCode,
        patches_per_image: int | None,
        generator: torch.Generator,
        dtype: torch.dtype,
        gram_dtype: torch.dtype | None,
        samples: int | None,
        pooled: bool,
        solver: str,
        power_iterations: int,
        scale: LayerScale,
    ) -> None:
        self.module, self.name, self.code = module, name, code
        self.patches_per_image, self.generator = patches_per_image, generator
        self.dtype, self.gram_dtype = dtype, gram_dtype
        self.samples, self.pooled = samples, pooled
        self.solver, self.power_iterations = solver, power_iterations
        self.scale = scale
        self.groups: int = getattr(module, "groups", 1)
        self.out_per_group: int = module.weight.shape[0] // self.groups
        self.in_per_group: int = math.prod(module.weight.shape[1:])  # no indexing: may be a DTensor
        self.uses_stats: bool = code.from_statistics
        self.columns: Tensor | None = None
        self._taps: Tensor | None = None
        self.mode: Mode | None = None
        self.stats: InputStats | None = None
        self.energy = 0.0
        self.own_norm = 0.0
        self.layer_rows: LayerRows | None = None  # the last batch's row layout (codes that need it)
        self._rows: list[Tensor] = []  # (groups, n_b, d) per batch
        self._labels: list[Tensor] = []

    def error(self, message: str) -> LayerInitError:
        """A :class:`LayerInitError` naming the layer."""
        return LayerInitError(f"layer {self.name!r}: {message}")

    @property
    def empty(self) -> bool:
        """Whether nothing was kept yet."""
        return self.stats is None and not self._rows

    def add(self, x: Tensor, labels: Tensor | None) -> None:
        """Keep what the mode needs of one batch of the layer's input ``x`` (and its labels).

        Raises:
            LayerInitError: If the rows cannot be gathered, contain NaN/Inf, or the labels do not fit.
        """
        try:
            # Statistics codes see the rows as sums: columns that are zero in every row carry nothing.
            rows = layer_rows(self.module, x, self.patches_per_image, self.generator, drop_unseen=self.uses_stats)
        except (TypeError, ValueError) as err:
            raise self.error(f"could not gather its input rows: {err}") from err
        self._check_taps(rows.taps)
        row_labels = self._row_labels(rows, labels)
        if self.scale == "own":
            self.energy += float(self._energy_of_current(rows.x))
        elif self.scale == "norm" and self.mode is None:
            self.own_norm = float(weight_energy(self._current_weight()[0]))
        if self.mode is None:
            self.mode = choose_mode(
                rows=rows.x.shape[0] if self.samples is None else self.samples * rows.per_sample,
                in_features=self.in_per_group if self.columns is None else len(self.columns),
                directions=directions(self.code, self.out_per_group),
                solver=self.solver,
                uses_stats=self.uses_stats,
                supervised=self.code.requires_labels,
                pooled=self.pooled,
                power_iterations=self.power_iterations,
            )
        if self.uses_stats and self.mode == "gram":
            self._add_stats(rows.x, row_labels)
        else:
            self._add_rows(rows, row_labels)

    def _check_taps(self, taps: Tensor | None) -> None:
        """Keep the first batch's kernel taps (and the weight columns they hold); later batches must agree."""
        if self.mode is None:
            self._taps = taps
            if taps is not None:
                k = math.prod(self.module.weight.shape[2:])
                channels = torch.arange(self.in_per_group // k)
                self.columns = (channels[:, None] * k + taps[None, :]).flatten()
        elif (taps is None) != (self._taps is None) or (taps is not None and not torch.equal(taps, self._taps)):
            raise self.error(
                "its input changed spatial size between batches, so different kernel taps see it; give "
                "every batch of the init subset the same size"
            )

    def _row_labels(self, rows: LayerRows, labels: Tensor | None) -> Tensor | None:
        """One label per row (``None`` where the code needs none), after checking the labels."""
        if labels is None or not self.code.requires_labels:
            return None
        n_samples = rows.x.shape[0] // rows.per_sample
        if n_samples != labels.shape[0]:
            raise self.error(f"its input has {n_samples} samples but {labels.shape[0]} labels were given")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise self.error(f"labels must be >= 0, got {lo}")
        if self.uses_stats and hi >= self.out_per_group:
            raise self.error(
                f"labels span [{lo}, {hi}] but the layer has {self.out_per_group} outputs: a "
                f"{self.code.name!r} code needs one output per class (labels 0..{hi})"
            )
        return labels.to(rows.x.device).repeat_interleave(rows.per_sample)

    def _add_stats(self, x: Tensor, row_labels: Tensor | None) -> None:
        # A fixed class count keeps statistics of batches and processes mergeable.
        classes = None if row_labels is None else self.out_per_group
        try:
            new = gram_stats(x, self.groups, row_labels, classes, self.dtype, self.gram_dtype)
        except ValueError as err:
            raise self.error(str(err)) from err
        # NaN/Inf in any row propagates into the sums: checking them is O(d²), not O(n d).
        if not bool(torch.isfinite(new.gram_x).all() and torch.isfinite(new.sum_x).all()):
            raise self._not_finite()
        self.stats = new if self.stats is None else self.stats + new

    def _add_rows(self, rows: LayerRows, row_labels: Tensor | None) -> None:
        if self._rows and not self.uses_stats:
            raise self.error(
                f"the {self.code.name!r} code needs all rows at once; it cannot be streamed over several "
                "batches (use a statistics code such as 'pca', or no batch_size)"
            )
        # Kept in the precision they arrive in (half precision widened to float32), converted once
        # at the solve: the randomized range finder runs in float32 (its products are the
        # O(n d k) part), the other modes in the solve's dtype.
        block = _widened(grouped_rows(rows.x, self.groups))
        if not bool(torch.isfinite(block).all()):
            raise self._not_finite()
        self._rows.append(block)
        if row_labels is not None:
            self._labels.append(row_labels)
        self.layer_rows = rows

    def _not_finite(self) -> LayerInitError:
        return self.error("its input activations contain NaN/Inf values (check the data and the layers before it)")

    def _energy_of_current(self, x: Tensor) -> Tensor:
        """Output energy of the layer's current (own) weights on the rows ``x`` of one batch."""
        return energy_from_rows(_widened(grouped_rows(x, self.groups)), *self._current_weight())

    def _current_weight(self) -> tuple[Tensor, Tensor | None]:
        """The layer's current weight ``(groups, out, d)`` over the columns the solve sees, and bias."""
        weight = self.module.weight.detach().reshape(self.groups, self.out_per_group, -1)
        if self.columns is not None:
            weight = weight[..., self.columns.to(weight.device)]
        b = self.module.bias
        return weight, None if b is None else b.detach().reshape(self.groups, self.out_per_group)

    def pooled_rows(self, gather: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """All kept rows ``(groups, n, d)`` and row labels, over batches (and processes, with ``gather``).

        From here on the pooled rows are the only copy: the per-batch blocks are released.
        """
        x = self._rows[0] if len(self._rows) == 1 else torch.cat(self._rows, dim=1)
        labels = torch.cat(self._labels) if self._labels else None
        self._rows, self._labels = [], []
        if gather is not None:
            x = gather(x.transpose(0, 1).contiguous()).transpose(0, 1)
            if labels is not None:
                labels = gather(labels)
        # Statistics codes see the rows as a set: put them in an order that does not depend on where
        # they came from. Codes that need the rows keep them aligned with the layer's sampled positions.
        return canonical_order(x, labels) if self.uses_stats else (x, labels)

    def clear(self) -> None:
        """Release everything kept (after the layer is written)."""
        self.stats, self._rows, self._labels, self.layer_rows = None, [], [], None
