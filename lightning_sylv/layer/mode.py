"""How a layer keeps its input and is solved: Gram, span or randomized mode (a pure decision).

With ``n`` rows of ``d`` inputs (per group; ``d`` counts only the inputs that can be non-zero: a
convolution's kernel taps that lie in the zero padding at every output position, such as a ``7 x 7``
depthwise kernel's outer taps on a ``2 x 2`` map, are left out of the rows and written as zeros, what
the full solve gives them; see :func:`lightning_sylv.rows.conv_patches`, statistics codes only):

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
  Across processes the rows are gathered (all-gather), not summed; without a gather the layer uses
  Gram mode. The bases come from :mod:`lightning_sylv.row_space`.
* ``solver="randomized"`` — the fast mode, for unsupervised codes (PCA) when the layer needs far
  fewer directions ``k`` (its outputs) than it has inputs (``(4 + 4 q)(k + 11) <= d``, where the
  range finder is cheaper than the Gram matrix) and at least ``2 (k + 11)`` rows: the rows
  are kept, a randomized range finder (Halko, Martinsson & Tropp 2011: ``k + 10`` Gaussian
  directions, ``power_iterations`` rounds of subspace iteration, float32 products) finds the
  leading principal subspace, the mean is added to it, and the problem is solved exactly in that
  ``k + 11``-dimensional subspace as in span mode. Cost ``O(n d k)`` — the order of the layer's own
  forward pass — instead of ``O(n d² + d³)``. The PCA code's directions are then approximate;
  everything else is unchanged. Layers where this does not pay, supervised codes (the head) and
  rows-only codes use the exact modes.

The mode is chosen once per layer from the total row count over all processes (``samples`` x rows
per sample), so every process takes the same path. Codes that need the rows themselves (ICA,
K-means, LDA, a teacher's activations) keep them in either mode (single batch, single process only).

This module imports no Lightning.
"""

from __future__ import annotations

from typing import Literal

from lightning_sylv.codes import LatentCode

__all__ = ["OVERSAMPLE", "SOLVERS", "Mode", "choose_mode", "directions"]

#: Layer solvers: ``"exact"`` (Gram or span mode by the row count) and ``"randomized"`` (the fast mode).
SOLVERS = ("exact", "randomized")
#: Extra random directions of the randomized range finder beyond the ``k`` the code needs.
OVERSAMPLE = 10

Mode = Literal["gram", "span", "randomized"]


def directions(code: LatentCode, outputs: int) -> int:
    """Directions of the input a code can use for a layer with ``outputs`` outputs (per group): all
    of them, or half (rounded up) for a signed PCA code, whose outputs come in ± pairs.

    Example:
        >>> from lightning_sylv.codes import resolve_code
        >>> directions(resolve_code("pca"), 7), directions(resolve_code("signed_pca"), 7)
        (7, 4)
    """
    return -(-outputs // 2) if getattr(code, "signed", False) else outputs


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
        directions: Directions the code needs ``k`` (see :func:`directions`).
        solver: ``"exact"`` or ``"randomized"``.
        uses_stats: The code fits from statistics (PCA, one-hot).
        supervised: The code needs labels (the head).
        pooled: The rows of all processes can be brought together (single process, or a gather).
        power_iterations: Subspace iterations of the randomized range finder.

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
