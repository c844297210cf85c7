"""The interface of latent codes and the helpers every code shares.

A code turns a layer's input rows ``X`` (shape ``(n, d_in)``; one row per sample, or per sampled
patch for convolutions) into the code ``S`` of shape ``(n, d_out)``, one column per output unit of the
layer. The Sylvester initializer then finds the ``W`` that best encodes ``X`` into ``S`` and decodes
``S`` back into ``X``.

This module imports no Lightning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_sylv.layer_fit import Moments
from lightning_sylv.stats import InputStats

if TYPE_CHECKING:
    from lightning_sylv.rows import LayerRows

__all__ = ["LatentCode", "check_rows", "fill_columns"]


class LatentCode(ABC):
    """Interface of a latent code.

    Subclasses implement :meth:`fit`. They must return exactly ``out_features`` columns; when the data
    cannot support that many (for example PCA on fewer input dimensions than outputs), the subclass
    documents how it fills the remaining columns.
    """

    #: Short name used in reports and by :func:`resolve_code`.
    name: str = "code"
    #: Whether :meth:`fit` needs ``labels``.
    requires_labels: bool = False
    #: Whether :meth:`fit` needs to know where its rows come from (``rows=``, a
    #: :class:`lightning_sylv.rows.LayerRows`). Such codes are rows-only (no streaming,
    #: single process).
    requires_rows: bool = False
    #: Whether :meth:`moments` fits the code from statistics alone; such codes stream over batches
    #: and combine across processes. Set it when overriding :meth:`moments`.
    from_statistics: bool = False

    @abstractmethod
    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        """Return the code ``S`` for the input rows ``x``.

        Args:
            x: Input rows, shape ``(n, d_in)``, floating point (in any orthonormal coordinates of
                the rows: the engine may pass the coordinates of the rows' span).
            out_features: Number of columns of ``S`` (the layer's output units).
            labels: Integer class labels, shape ``(n,)``, or ``None``.
            generator: CPU random generator for codes that draw random numbers.
            rows: Where the rows come from (sample positions, output grid); for codes that align
                with other activations (:attr:`requires_rows`). Others ignore it.

        Returns:
            ``S`` of shape ``(n, out_features)`` on ``x``'s device and dtype.
        """

    def moments(
        self,
        stats: InputStats,
        out_features: int,
        fit_bias: bool,
        generator: torch.Generator | None = None,
    ) -> Moments:
        """The layer problem's :class:`~lightning_sylv.layer_fit.Moments` from input statistics alone.

        Codes that can do this work with streamed mini-batches and across processes (the statistics
        are sums that merge). The default raises ``NotImplementedError``: such a code needs the rows
        (:meth:`fit`).

        Args:
            stats: Sums over the layer's input rows (with per-class sums if labelled).
            out_features: Number of code columns.
            fit_bias: Return centred moments and the means (for a layer with a bias).
            generator: CPU generator for random fills.
        """
        raise NotImplementedError(f"the {self.name!r} code needs the rows themselves (no statistics-only fit)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def fill_columns(s: Tensor, out_features: int, generator: torch.Generator | None = None) -> Tensor:
    """Extend a code ``s`` ``(n, k)`` to ``out_features`` columns without exact duplicates.

    Columns ``k .. 2k-1`` are the negated columns ``-s`` (after a ReLU both halves of every direction
    survive); columns from ``2k`` on are random unit-norm combinations of the ``k`` columns (drawn from
    ``generator``). With ``out_features <= k`` the first ``out_features`` columns are returned.

    Args:
        s: Code columns, shape ``(*batch, n, k)``, ``k >= 1`` (a stack shares the random mix).
        out_features: Columns wanted.
        generator: CPU generator for the random combinations.
    """
    k = s.shape[-1]
    if out_features <= k:
        return s[..., :out_features]
    extra = [-s[..., : min(k, out_features - k)]]
    n_rand = out_features - 2 * k
    if n_rand > 0:
        mix = torch.randn(k, n_rand, generator=generator, dtype=torch.float64)
        mix = (mix / mix.norm(dim=0, keepdim=True)).to(device=s.device, dtype=s.dtype)
        extra.append(s @ mix)
    return torch.cat([s, *extra], dim=-1)


def check_rows(x: Tensor, out_features: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d_in), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has no rows: the code needs at least one sample")
    if not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features must be a positive int, got {out_features!r}")
