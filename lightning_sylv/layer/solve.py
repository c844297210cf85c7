"""One layer's solve, one function per mode: the kept input -> the code's moments -> the weights.

* :func:`solve_gram` — Gram mode: the (reduced) sums ``Σx``, ``Σxxᵀ``, per-class sums -> the code's
  moments (:meth:`~lightning_sylv.codes.LatentCode.moments`) -> the Sylvester solve
  (:func:`~lightning_sylv.layer_fit.solve_moments`).
* :func:`solve_rows` — the kept rows, in the coordinates their mode asks for (one private function
  each): ``_span_coordinates`` (the rows' own span, exact), ``_randomized_coordinates`` (a randomized
  leading subspace plus the mean), or the rows as they are; then the same moments and solve, or,
  for codes that need the rows themselves (ICA, K-means, LDA, a teacher), the code's own fit per group.

Both return a :class:`Solution`: the fit in the basis's coordinates, the basis (``None``: the weight's
own coordinates), the row count and the data the fit saw (for the output energy of ``scale="own"``).
The mode docstring (:mod:`lightning_sylv.layer.mode`) derives why the span and subspace solves are exact
or how they approximate.

This module imports no Lightning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sylv.codes import LatentCode
from lightning_sylv.layer.mode import OVERSAMPLE, Mode
from lightning_sylv.layer_fit import LayerFit, moments_from_rows, solve_moments, stack_fits
from lightning_sylv.row_space import randomized_basis, span_basis
from lightning_sylv.rows import LayerRows
from lightning_sylv.stats import InputStats

__all__ = ["LayerProblem", "Solution", "solve_gram", "solve_rows"]


@dataclass(frozen=True, kw_only=True)
class LayerProblem:
    """The constants of one layer's solve.

    Attributes:
        name: The layer's qualified name (for warnings).
        code: Its latent code.
        outputs: Outputs per group.
        fit_bias: Whether the layer has a bias to solve for.
        lam: λ.
        dtype: Precision of the statistics and solves.
        gram_dtype: Precision the Gram-mode row products were formed in (``None``: ``dtype``).
        generator: CPU generator of the code's random fills and of the randomized range finder.
    """

    name: str
    code: LatentCode
    outputs: int
    fit_bias: bool
    lam: float
    dtype: torch.dtype
    gram_dtype: torch.dtype | None
    generator: torch.Generator

    def rcond(self, d_in: int) -> float | None:
        """Eigenvalue tolerance matching the precision of the row products (``None``: the default)."""
        if self.gram_dtype is None or torch.finfo(self.gram_dtype).bits >= torch.finfo(self.dtype).bits:
            return None
        return max(d_in, self.outputs) * torch.finfo(self.gram_dtype).eps

    def warn_missing(self, counts: Tensor | None) -> None:
        """Warn about classes with no rows (their outputs get zero weights)."""
        if counts is not None and bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).squeeze(1).tolist()
            warnings.warn(
                f"layer {self.name!r}: classes {missing} have no samples in the subset; their outputs get zero "
                "weights and zero bias",
                stacklevel=4,
            )


@dataclass(frozen=True)
class Solution:
    """A solved layer, before scaling and writing.

    Attributes:
        fit: Weights ``(groups, out, r)``, bias ``(groups, out)`` and diagnostics.
        basis: ``(groups, d, r)`` mapping the fit to the layer's inputs (``weight = fit.weight @ basisᵀ``),
            or ``None`` when ``r = d`` are the inputs themselves.
        rows: Rows the fit saw (over batches and processes).
        how: ``"gram"``, ``"span"``, ``"randomized"`` or ``"rows"`` (the report's solver prefix).
        data: What the fit saw, in its coordinates: the sums (Gram mode) or the rows ``(groups, n, r)``.
    """

    fit: LayerFit
    basis: Tensor | None
    rows: int
    how: str
    data: InputStats | Tensor


def solve_gram(stats: InputStats, problem: LayerProblem) -> Solution:
    """Gram mode: the summed statistics -> the code's moments -> the solve."""
    problem.warn_missing(stats.counts)
    m = problem.code.moments(stats, problem.outputs, problem.fit_bias, problem.generator)
    fit = solve_moments(m, problem.lam, problem.rcond(m.gram_x.shape[-1]))
    return Solution(fit, None, int(stats.n), "gram", stats)


def solve_rows(
    x: Tensor,
    labels: Tensor | None,
    problem: LayerProblem,
    *,
    mode: Mode,
    directions: int,
    power_iterations: int,
    layer_rows: LayerRows | None,
) -> Solution:
    """The pooled rows ``(groups, n, d)``, solved in the coordinates ``mode`` asks for.

    ``mode="randomized"``: a leading subspace of ``directions + OVERSAMPLE`` directions and the mean;
    fewer rows than inputs: their span; otherwise the rows as they are. ``layer_rows`` reaches codes
    that declare they need the rows' layout (``requires_rows``).
    """
    n_rows = x.shape[1]
    if mode == "randomized":
        basis, coords, how = _randomized_coordinates(x, problem, directions + OVERSAMPLE, power_iterations)
    elif n_rows < x.shape[2]:
        basis, coords, how = _span_coordinates(x, problem)
    else:
        basis, coords, how = None, x.to(problem.dtype), "rows"
    if problem.code.from_statistics:
        fit = _fit_from_statistics(coords, labels, problem)
    else:
        fit = _fit_from_rows(coords, labels, problem, layer_rows)
    return Solution(fit, basis, n_rows, how, coords)


def _randomized_coordinates(
    x: Tensor, problem: LayerProblem, k: int, power_iterations: int
) -> tuple[Tensor, Tensor, str]:
    """A randomized leading subspace (float32 products) and the rows' coordinates in it."""
    x = x.float()
    basis = randomized_basis(x, k, power_iterations, problem.generator)
    return basis.to(problem.dtype), (x @ basis).to(problem.dtype), "randomized"


def _span_coordinates(x: Tensor, problem: LayerProblem) -> tuple[Tensor, Tensor, str]:
    """The span of fewer rows than inputs (exact) and the rows' coordinates in it."""
    basis, coords = span_basis(x.to(problem.dtype))
    return basis, coords, "span"


def _fit_from_statistics(x: Tensor, labels: Tensor | None, problem: LayerProblem) -> LayerFit:
    """Statistics codes: the rows' sums -> the code's moments -> the solve."""
    classes = None if labels is None else problem.outputs
    stats = InputStats.from_rows(x, labels, classes, problem.dtype)
    problem.warn_missing(stats.counts)
    m = problem.code.moments(stats, problem.outputs, problem.fit_bias, problem.generator)
    return solve_moments(m, problem.lam)


def _fit_from_rows(x: Tensor, labels: Tensor | None, problem: LayerProblem, layer_rows: LayerRows | None) -> LayerFit:
    """Codes that need the rows: the code's fit and one solve per group (their fits are not batched)."""
    code = problem.code
    # rows= only for codes that declare they need it: codes written against the older fit() signature work.
    extra = {"rows": layer_rows} if code.requires_rows else {}
    fits = []
    for xg in x:
        s = code.fit(xg, problem.outputs, labels=labels, generator=problem.generator, **extra)
        fits.append(solve_moments(moments_from_rows(xg, s, problem.fit_bias, problem.dtype), problem.lam))
    return stack_fits(fits)
