"""One layer, start to finish: input activation -> statistics -> code -> solve -> weights written.

:class:`LayerJob` collects what one layer needs from one or more batches of its input
(:meth:`LayerJob.add`), then :meth:`LayerJob.finish` merges across processes if asked, fits the code,
solves the Sylvester problem per convolution group and writes ``weight``/``bias`` in place.

Codes that work from statistics (PCA, one-hot: :meth:`LatentCode.moments`) keep only sums, so
memory does not grow with the number of batches and the sums all-reduce across processes. Codes
that need the rows themselves keep them (single batch, single process only).

This module imports no Lightning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sylv.activations import LayerRows, layer_rows
from lightning_sylv.codes import LatentCode
from lightning_sylv.layer_fit import LayerFit, moments_from_rows, solve_moments
from lightning_sylv.report import LayerReport
from lightning_sylv.stats import InputStats

__all__ = ["LayerInitError", "LayerJob", "autocast_off", "code_uses_stats"]


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
    return type(code).moments is not LatentCode.moments


def _split_groups(x: Tensor, groups: int) -> list[Tensor]:
    """Flat ``(n, d)`` rows of each group: channel slices of ``(n, C, K)`` patches or of ``(n, d)`` rows."""
    width = x.shape[1] // groups
    return [(x[:, g * width : (g + 1) * width] if groups > 1 else x).flatten(1) for g in range(groups)]


def _row_stats(
    x: Tensor,
    groups: int,
    labels: Tensor | None,
    classes: int | None,
    dtype: torch.dtype,
    gram_dtype: torch.dtype | None,
) -> list[InputStats]:
    """:class:`InputStats` of each group's flat rows (see :func:`_split_groups`)."""
    if groups == 1 and x.ndim == 3 and x.transpose(1, 2).is_contiguous():
        # Patches gathered as (n, K, C) in memory (see conv_patches): the sums are formed in that
        # order and reordered to the weight's (C, K) order, O(d²), instead of copying the O(n d) rows.
        c, k = x.shape[1:]
        natural = x.transpose(1, 2).reshape(x.shape[0], k * c)
        order = (torch.arange(k)[None, :] * c + torch.arange(c)[:, None]).reshape(-1)
        return [InputStats.from_rows(natural, labels, classes, dtype, gram_dtype).take(order)]
    return [InputStats.from_rows(xg, labels, classes, dtype, gram_dtype) for xg in _split_groups(x, groups)]


class LayerJob:
    """Initialization of one supported layer (``Linear``, ``Conv1d``, ``Conv2d``).

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
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        code: LatentCode,
        lam: float,
        patches_per_image: int | None,
        generator: torch.Generator,
        dtype: torch.dtype,
        gram_dtype: torch.dtype | None = None,
        code_generator: torch.Generator | None = None,
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
        self.groups: int = getattr(module, "groups", 1)
        self.out_per_group: int = module.weight.shape[0] // self.groups
        self.uses_stats = code_uses_stats(code)
        self._stats: list[InputStats] | None = None
        self._rows: list[Tensor] = []
        self._failure: LayerInitError | None = None
        self._labels: list[Tensor] = []
        self._layer_rows: LayerRows | None = None
        self.seconds = 0.0
        #: Optional callback receiving this layer's report once it is written.
        self.on_done: Callable[[LayerReport], None] | None = None

    def notify(self, report: LayerReport) -> None:
        """Pass ``report`` to :attr:`on_done`, if set."""
        if self.on_done is not None:
            self.on_done(report)

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

    def _add(self, x: Tensor, labels: Tensor | None) -> None:
        t0 = time.perf_counter()
        try:
            rows = layer_rows(self.module, x, self.patches_per_image, self.generator)
        except (TypeError, ValueError) as err:
            raise LayerInitError(f"layer {self.name!r}: could not gather its input rows: {err}") from err
        row_labels = None
        if labels is not None and self.code.requires_labels:
            n_samples = rows.x.shape[0] // rows.per_sample
            if n_samples != labels.shape[0]:
                raise LayerInitError(
                    f"layer {self.name!r}: its input has {n_samples} samples but {labels.shape[0]} labels were given"
                )
            if int(labels.min()) < 0:
                raise LayerInitError(f"layer {self.name!r}: labels must be >= 0, got {int(labels.min())}")
            row_labels = labels.to(rows.x.device).repeat_interleave(rows.per_sample)
        if self.uses_stats:
            try:
                if row_labels is not None and int(row_labels.max()) >= self.out_per_group:
                    raise LayerInitError(
                        f"layer {self.name!r}: labels span [0, {int(row_labels.max())}] but the layer has "
                        f"{self.out_per_group} outputs: a {self.code.name!r} code needs one output per class"
                    )
                # A fixed class count keeps statistics of batches and processes mergeable.
                classes = None if row_labels is None else self.out_per_group
                new = _row_stats(rows.x, self.groups, row_labels, classes, self.dtype, self.gram_dtype)
            except ValueError as err:
                raise LayerInitError(f"layer {self.name!r}: {err}") from err
            # NaN/Inf in any row propagates into the sums: checking them is O(d²), not O(n d).
            if not all(bool(torch.isfinite(st.gram_x).all() and torch.isfinite(st.sum_x).all()) for st in new):
                raise LayerInitError(
                    f"layer {self.name!r}: its input activations contain NaN/Inf values (check the data and "
                    "the layers before it)"
                )
            self._stats = new if self._stats is None else [a + b for a, b in zip(self._stats, new)]
        else:
            if self._rows:
                raise LayerInitError(
                    f"layer {self.name!r}: the {self.code.name!r} code needs all rows at once; it cannot be "
                    "streamed over several batches (use a statistics code such as 'pca', or no batch_size)"
                )
            self._rows = [xg.to(self.dtype) for xg in _split_groups(rows.x, self.groups)]
            if not all(bool(torch.isfinite(xg).all()) for xg in self._rows):
                raise LayerInitError(
                    f"layer {self.name!r}: its input activations contain NaN/Inf values (check the data and "
                    "the layers before it)"
                )
            self._labels = [row_labels] if row_labels is not None else []
            self._layer_rows = rows
        self.seconds += time.perf_counter() - t0

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
                then to the statistics.

        Raises:
            LayerInitError: If nothing was added, or the code or the solve fails.
        """
        with autocast_off(self.module.weight.device):
            return self._finish(reduce)

    def _finish(self, reduce: Callable[[Tensor], Tensor] | None) -> LayerReport:
        t0 = time.perf_counter()
        if self.uses_stats and reduce is not None:  # every process learns whether any failed
            flag = torch.tensor([0.0 if self._failure is None else 1.0], device=self.module.weight.device)
            if float(reduce(flag)[0]) > 0 and self._failure is None:
                raise LayerInitError(
                    f"layer {self.name!r}: another process could not initialize it (its error is in that "
                    "process's output)"
                )
        if self._failure is not None:
            raise self._failure
        if self._stats is None and not self._rows:
            raise LayerInitError(f"layer {self.name!r}: no input was recorded")
        if reduce is not None and not self.uses_stats:
            raise LayerInitError(
                f"layer {self.name!r}: the {self.code.name!r} code needs the rows themselves and cannot be "
                "combined across processes; use a statistics code such as 'pca'"
            )
        fit_bias = self.module.bias is not None
        fits: list[LayerFit] = []
        n_rows = 0
        try:
            if self._stats is not None:
                stats = [s.map(reduce) for s in self._stats] if reduce is not None else self._stats
                n_rows = int(stats[0].n)
                counts = stats[0].counts
                if counts is not None and bool((counts == 0).any()):
                    missing = torch.nonzero(counts == 0).squeeze(1).tolist()
                    warnings.warn(
                        f"layer {self.name!r}: classes {missing} have no samples in the subset; their "
                        "outputs get zero weights and zero bias",
                        stacklevel=2,
                    )
                for st in stats:
                    m = self.code.moments(st, self.out_per_group, fit_bias, self.code_generator)
                    fits.append(solve_moments(m, self.lam, self._rcond(m.gram_x.shape[0])))
            else:
                labels = self._labels[0] if self._labels else None
                n_rows = self._rows[0].shape[0]
                extra = {"rows": self._layer_rows} if self.code.requires_rows else {}
                for xg in self._rows:
                    s = self.code.fit(xg, self.out_per_group, labels=labels, generator=self.code_generator, **extra)
                    fits.append(solve_moments(moments_from_rows(xg, s, fit_bias, self.dtype), self.lam))
        except ValueError as err:
            raise LayerInitError(f"layer {self.name!r}: {err}") from err
        self._write(fits)
        self._stats, self._rows, self._labels, self._layer_rows = None, [], [], None
        self.seconds += time.perf_counter() - t0
        return LayerReport(
            name=self.name,
            kind=type(self.module).__name__,
            in_features=fits[0].weight.shape[1],
            out_features=self.out_per_group,
            groups=self.groups,
            rows=n_rows,
            code=self.code.name,
            encoding_loss=sum(f.encoding_loss for f in fits) / len(fits),
            decoding_loss=sum(f.decoding_loss for f in fits) / len(fits),
            residual=max(f.residual for f in fits),
            cond_a=max(f.cond_a for f in fits),
            cond_b=max(f.cond_b for f in fits),
            dropped=sum(f.dropped for f in fits),
            seconds=self.seconds,
        )

    def _write(self, fits: list[LayerFit]) -> None:
        weight: Tensor = self.module.weight
        bias: Tensor | None = self.module.bias
        with torch.no_grad():
            new_w = torch.cat([f.weight for f in fits], dim=0)
            weight.copy_(new_w.reshape(weight.shape).to(weight.dtype))
            if bias is not None:
                bias.copy_(torch.cat([f.bias for f in fits if f.bias is not None]).to(bias.dtype))
