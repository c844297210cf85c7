"""Bases of the space a layer's rows live in: their exact span, a randomized leading subspace.

* :func:`span_basis` — thin QR of the rows: an orthonormal basis of their span and their coordinates
  in it (the span mode of :mod:`lightning_sylv.layer.mode`, ``O(n² d)``).
* :func:`randomized_basis` — a randomized range finder for the leading principal subspace plus the
  mean (its randomized mode, ``O(n d k)``).
* :func:`canonical_order` — the rows in an order that depends only on their values, so that a basis
  computed from them does not depend on where (which process) they came from.

Every function takes stacks ``(*batch, n, d)`` (the groups of a grouped convolution) and runs on any
device. This module imports no Lightning.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["canonical_order", "randomized_basis", "span_basis"]


def span_basis(x: Tensor) -> tuple[Tensor, Tensor]:
    """An orthonormal basis of the span of the rows and the rows' coordinates in it.

    Algorithm: thin (Householder) QR of ``xᵀ``, ``O(n² d)``; unlike an eigendecomposition of the
    ``n x n`` Gram matrix it needs no iteration, so rank-deficient rows cannot make it fail.

    Args:
        x: Rows, shape ``(*batch, n, d)`` with ``n < d``.

    Returns:
        ``(q, z)``: ``q`` ``(*batch, d, n)`` with orthonormal columns spanning the rows, and
        ``z = x q`` ``(*batch, n, n)``, so that ``x = z qᵀ`` exactly.
    """
    q, r = torch.linalg.qr(x.mT, mode="reduced")
    return q, r.mT


def canonical_order(x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The rows ``(*batch, n, d)`` (and their labels ``(n,)``) in an order that depends only on their values.

    The basis :func:`span_basis` returns depends on the order of the rows, and the rows of one layer
    arrive in different orders from one process (subset order) and from an all-gather (rank order).
    Sorting them by a fixed linear key, one permutation for every group, makes the span solve, and
    with it the signs of a PCA code's directions, the same either way. Rows with equal keys are, but
    for a measure-zero set of inputs, equal rows, whose order cannot matter.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    weights = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=dtype).sqrt()
    key = (x.to(dtype) @ weights).reshape(-1, x.shape[-2]).sum(0)
    order = torch.argsort(key, stable=True)
    return x[..., order, :], None if labels is None else labels[order]


def randomized_basis(x: Tensor, k: int, power_iterations: int, generator: torch.Generator) -> Tensor:
    """An orthonormal basis of the leading principal subspace of the rows, plus their mean.

    Algorithm: randomized range finder with subspace iteration (Halko, Martinsson & Tropp, "Finding
    structure with randomness", SIAM Review 53(2), 2011, Alg. 4.4) on the centred rows: ``Y = Xc Ω``
    with a Gaussian ``Ω`` of ``k`` columns, ``power_iterations`` rounds of ``Y <- Xc (Xcᵀ Q(Y))``,
    then the row space of ``Q(Y)ᵀ Xc``; the mean row is appended and the whole orthonormalized.
    Cost ``O(n d k (2 + 2 power_iterations))`` in the rows' dtype.

    Args:
        x: Rows, shape ``(*batch, n, d)``.
        k: Directions to find (``k < min(n, d)``).
        power_iterations: Rounds of subspace iteration (more: closer to the exact top-``k`` subspace).
        generator: CPU generator of ``Ω``.

    Returns:
        ``(*batch, d, k + 1)`` with orthonormal columns.
    """
    mu = x.mean(-2, keepdim=True)
    xc = x - mu
    omega = torch.randn(*x.shape[:-2], x.shape[-1], k, generator=generator, dtype=torch.float32)
    y = xc @ omega.to(device=x.device, dtype=x.dtype)
    for _ in range(power_iterations):
        y = xc @ (xc.mT @ torch.linalg.qr(y).Q)
    rows = torch.linalg.qr(y).Q.mT @ xc  # (k, d): its row space is the leading subspace
    return torch.linalg.qr(torch.cat([rows.mT, mu.mT], dim=-1)).Q
