"""One layer's problem: from rows ``X`` and code ``S`` to the weight ``W`` and bias ``b``.

Eq. (1) of Das, Bhalgat & Porikli (2021), written with samples as rows (``X``: ``(n, d_in)``,
``S``: ``(n, d_out)``, ``W``: ``(d_out, d_in)``):

    min_W  ‖X − S W‖²  +  λ ‖X Wᵀ − S‖²          (decoding + λ · encoding)

Setting the gradient to zero gives the Sylvester equation (Eq. 2)

    (Sᵀ S) W + W (λ Xᵀ X) = (1 + λ) Sᵀ X.

With a bias, ``X`` and ``S`` are centred first and ``b = mean(S) − W mean(X)``, so that the layer maps
the mean input to the mean code. All statistics are divided by ``n`` (the solution does not change)
to keep their scale independent of the subset size.

This module imports no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_sylv.solver import EIGH_PATHS, solve_sylvester_psd, symmetric_eigh

__all__ = [
    "LayerFit",
    "Moments",
    "encoding_loss",
    "fit_layer",
    "moments_from_rows",
    "solve_moments",
    "stack_fits",
    "summarize",
]


@dataclass(frozen=True)
class LayerFit:
    """Solution of one layer's problem and its diagnostics.

    For a stack of problems (the groups of a convolution) the tensors carry the batch dimensions
    and the numbers summarize the stack: losses are means, ``residual`` and condition numbers the
    largest, ``dropped`` the sum.

    Attributes:
        weight: ``W``, shape ``(*batch, d_out, d_in)``.
        bias: ``b``, shape ``(*batch, d_out)``, or ``None`` when no bias was fitted.
        encoding_loss: ``‖X Wᵀ − S‖² / ‖S‖²`` (centred when a bias is fitted).
        decoding_loss: ``‖X − S W‖² / ‖X‖²`` (centred likewise).
        residual: Relative residual of the Sylvester equation at the returned ``W``.
        cond_a: Condition number of ``A = SᵀS / n``.
        cond_b: Condition number of ``B = λ XᵀX / n``.
        dropped: Eigenvalue pairs treated as singular by the solver (0 when the system is regular).
        path: How the eigendecompositions were computed (see :data:`lightning_sylv.solver.EIGH_PATHS`).
    """

    weight: Tensor
    bias: Tensor | None
    encoding_loss: float
    decoding_loss: float
    residual: float
    cond_a: float
    cond_b: float
    dropped: int
    path: str = "eigh"


def _ratio(num: Tensor, den: Tensor) -> float:
    """``num / den`` (``num`` where ``den`` is 0), averaged over a stack."""
    return float(torch.where(den > 0, num / torch.where(den > 0, den, 1.0), num).mean())


def _trace(m: Tensor) -> Tensor:
    return m.diagonal(dim1=-2, dim2=-1).sum(-1)


def _losses(m: Moments, w: Tensor, wx: Tensor, sw: Tensor) -> tuple[float, float]:
    """Relative encoding and decoding losses from the moments alone (no pass over the rows), given the
    products ``wx = W gram_x`` and ``sw = gram_s W`` (shared with the residual)."""
    cross_term = 2 * (w * m.cross).sum((-2, -1))
    enc = (wx * w).sum((-2, -1)) - cross_term + _trace(m.gram_s)
    dec = _trace(m.gram_x) - cross_term + (w * sw).sum((-2, -1))
    return _ratio(enc.clamp_min(0), _trace(m.gram_s)), _ratio(dec.clamp_min(0), _trace(m.gram_x))


def _diagnostics(m: Moments, w: Tensor, lam: float) -> tuple[float, float, float]:
    """``(encoding loss, decoding loss, relative residual of the Sylvester equation)`` at ``w``: one
    ``W gram_x`` product (the largest, ``d_out d_in²``) and one ``gram_s W`` serve all three."""
    wx, sw = w @ m.gram_x, m.gram_s @ w
    enc, dec = _losses(m, w, wx, sw)
    c = (1.0 + lam) * m.cross
    res = torch.linalg.matrix_norm(sw + lam * wx - c)
    norm_c = torch.linalg.matrix_norm(c)
    ratio = torch.where(norm_c > 0, res / torch.where(norm_c > 0, norm_c, 1.0), res)
    return enc, dec, float(ratio.max())


def _bias(m: Moments, w: Tensor) -> Tensor | None:
    if m.mean_x is None or m.mean_s is None:
        return None
    return m.mean_s - (w @ m.mean_x[..., None]).squeeze(-1)


def encoding_loss(weight: Tensor, x: Tensor, s: Tensor, bias: Tensor | None = None) -> float:
    """Relative encoding loss ``‖X Wᵀ + b − S‖² / ‖S − mean(S)‖²`` computed directly from the rows.

    With ``bias`` given, ``S`` in the denominator is centred (the bias absorbs the mean). Useful to
    compare any weight (a random initialization, say) with the fitted one.

    Args:
        weight: ``(d_out, d_in)``.
        x: ``(n, d_in)``.
        s: ``(n, d_out)``.
        bias: ``(d_out,)`` or ``None``.
    """
    out = x @ weight.T
    if bias is not None:
        out = out + bias
        den = (s - s.mean(0)).square().sum()
    else:
        den = s.square().sum()
    return _ratio((out - s).square().sum(), den)


@dataclass(frozen=True)
class Moments:
    """Second moments of one layer's problem, divided by the row count ``n``.

    With a bias the moments are centred (``X − mean(X)``, ``S − mean(S)``) and the means are kept to
    recover the bias; without a bias they are raw and ``mean_x``/``mean_s`` are ``None``.

    Every tensor may carry leading batch dimensions (a stack of problems); they broadcast.

    Attributes:
        gram_x: ``XᵀX / n``, shape ``(*batch, d_in, d_in)``.
        gram_s: ``SᵀS / n``, shape ``(*batch, d_out, d_out)``.
        cross: ``SᵀX / n``, shape ``(*batch, d_out, d_in)``.
        mean_x: ``mean(X)`` ``(*batch, d_in)`` or ``None``.
        mean_s: ``mean(S)`` ``(*batch, d_out)`` or ``None``.
        basis_s: Optional orthonormal basis ``(*batch, d_out, r)`` of a subspace holding the ranges
            of ``gram_s`` and ``cross`` (a code with more outputs than independent directions, such
            as PCA's filled columns, knows one). The solve then runs in it: ``r`` instead of
            ``d_out`` dimensions on the left, exactly, since the minimum-norm ``W`` lies in it.
        eig_x: Optional eigendecomposition ``(eigenvalues, eigenvectors)`` of ``gram_x`` that the code
            already computed (PCA does), so the solver need not repeat it. With ``x_shift`` it is the
            decomposition of the *centred* part: ``gram_x = V diag(e) Vᵀ + x_shift x_shiftᵀ``.
        eig_s: Optional eigendecomposition ``(eigenvalues, eigenvectors)`` of ``gram_s``, known from the
            code's structure (PCA: ``SᵀS/n = Rᵀ diag(σ) R`` for a rotation ``R``; one-hot: diagonal).
        x_shift: The mean ``(*batch, d_in)`` when ``gram_x`` is the raw (uncentred) second moment and
            ``eig_x`` decomposes the centred covariance: ``gram_x`` is then a rank-one update of a
            matrix with a known eigenbasis, which the solver uses instead of decomposing ``gram_x``
            (see :func:`lightning_sylv.solver.solve_sylvester_psd`).
    """

    gram_x: Tensor
    gram_s: Tensor
    cross: Tensor
    mean_x: Tensor | None = None
    mean_s: Tensor | None = None
    eig_x: tuple[Tensor, Tensor] | None = None
    basis_s: Tensor | None = None
    eig_s: tuple[Tensor, Tensor] | None = None
    x_shift: Tensor | None = None


def moments_from_rows(x: Tensor, s: Tensor, fit_bias: bool, dtype: torch.dtype = torch.float64) -> Moments:
    """:class:`Moments` of rows ``x`` ``(n, d_in)`` and their code ``s`` ``(n, d_out)``.

    Raises:
        ValueError: On mismatched shapes, no rows, or non-finite rows.
    """
    if x.ndim != 2 or s.ndim != 2 or x.shape[0] != s.shape[0]:
        raise ValueError(f"x (n, d_in) and s (n, d_out) must share n, got {tuple(x.shape)} and {tuple(s.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no rows to fit the layer on")
    x, s = x.to(dtype), s.to(dtype)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"the layer's input activations contain {bad} NaN/Inf values")
    n = x.shape[0]
    mx = ms = None
    if fit_bias:
        mx, ms = x.mean(0), s.mean(0)
        x, s = x - mx, s - ms
    return Moments(gram_x=x.T @ x / n, gram_s=s.T @ s / n, cross=s.T @ x / n, mean_x=mx, mean_s=ms)


def summarize(parts: Sequence[Any]) -> dict[str, Any]:
    """The diagnostics of several solves (groups, or the q/k/v of an attention) as one: mean losses,
    the worst residual and conditioning, the dropped eigenvalue pairs summed. ``parts`` are
    :class:`LayerFit` or :class:`~lightning_sylv.report.LayerReport` objects (any with those fields).

    Example:
        >>> from types import SimpleNamespace as F
        >>> fits = [F(encoding_loss=0.1, decoding_loss=0.5, residual=1e-9, cond_a=2.0, cond_b=8.0, dropped=0),
        ...         F(encoding_loss=0.3, decoding_loss=0.5, residual=1e-8, cond_a=4.0, cond_b=1.0, dropped=1)]
        >>> summarize(fits)["cond_b"], summarize(fits)["dropped"]
        (8.0, 1)
    """
    n = len(parts)
    return {
        "encoding_loss": sum(p.encoding_loss for p in parts) / n,
        "decoding_loss": sum(p.decoding_loss for p in parts) / n,
        "residual": max(p.residual for p in parts),
        "cond_a": max(p.cond_a for p in parts),
        "cond_b": max(p.cond_b for p in parts),
        "dropped": sum(p.dropped for p in parts),
    }


def stack_fits(fits: Sequence[LayerFit]) -> LayerFit:
    """One :class:`LayerFit` ``(groups, ...)`` for a list of per-group fits (summarized as for a batched solve)."""
    bias = None if fits[0].bias is None else torch.stack([f.bias for f in fits if f.bias is not None])
    return LayerFit(
        weight=torch.stack([f.weight for f in fits]),
        bias=bias,
        path=max((f.path for f in fits), key=EIGH_PATHS.index),
        **summarize(fits),
    )


def solve_moments(m: Moments, lam: float, rcond: float | None = None) -> LayerFit:
    """Solve ``(SᵀS) W + W (λ XᵀX) = (1 + λ) SᵀX`` from the moments, with bias and losses.

    Args:
        m: The layer's :class:`Moments`.
        lam: λ, the weight of the encoding loss; must be ``> 0``. ``math.inf`` drops the decoding
            term: the mean-square-error-optimal (least-squares, minimum-norm) encoder.
        rcond: Relative accuracy of the moments: eigenvalues within ``rcond`` times the largest of
            zero count as zero (tiny negative ones from rounding included). ``None``: the solver's
            default for the moments' dtype. Moments formed from lower-precision products (see
            :meth:`lightning_sylv.stats.InputStats.from_rows`) need that precision's tolerance.

    Raises:
        ValueError: If ``lam <= 0``.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    if math.isinf(lam):
        return _least_squares(m, rcond)
    a, b, c = m.gram_s, lam * m.gram_x, (1.0 + lam) * m.cross
    # B = λ gram_x: its eigenbasis is the code's (PCA), exactly or up to a rank-one mean update.
    eig_b = None if m.eig_x is None else (lam * m.eig_x[0], m.eig_x[1])
    b_update = None if m.x_shift is None or eig_b is None else math.sqrt(lam) * m.x_shift
    q = m.basis_s
    if q is not None:  # left side in the code's own subspace: r x r instead of d_out x d_out
        sol = solve_sylvester_psd(
            q.mT @ a @ q, b, q.mT @ c, allow_singular=True, eig_b=eig_b, b_update=b_update, rcond=rcond
        )
        w = q @ sol.w
    else:
        sol = solve_sylvester_psd(
            a, b, c, allow_singular=True, eig_a=m.eig_s, eig_b=eig_b, b_update=b_update, rcond=rcond
        )
        w = sol.w
    enc, dec, residual = _diagnostics(m, w, lam)
    return LayerFit(
        weight=w,
        bias=_bias(m, w),
        encoding_loss=enc,
        decoding_loss=dec,
        residual=residual,
        cond_a=sol.cond_a,
        cond_b=sol.cond_b,
        dropped=sol.dropped,
        path=sol.path,
    )


def _least_squares(m: Moments, rcond: float | None = None) -> LayerFit:
    """``lam = inf``: the encoding loss alone, ``W (XᵀX) = SᵀX``, minimum-norm solution."""
    evals, evecs, path = symmetric_eigh(m.gram_x)
    if rcond is None:
        rcond = m.gram_x.shape[-1] * torch.finfo(evals.dtype).eps
    tol = rcond * evals.abs().amax(-1, keepdim=True)
    keep = evals > tol
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), torch.zeros_like(evals))
    w = ((m.cross @ evecs) * inv[..., None, :]) @ evecs.mT
    wx = w @ m.gram_x
    enc, dec = _losses(m, w, wx, m.gram_s @ w)
    res = torch.linalg.matrix_norm(wx - m.cross) / torch.linalg.matrix_norm(m.cross).clamp_min(1e-300)
    low = evals.clamp_min(0).amin(-1)
    cond_b = float("inf") if bool((low == 0).any()) else float((evals.amax(-1) / low).max())
    return LayerFit(
        weight=w,
        bias=_bias(m, w),
        encoding_loss=enc,
        decoding_loss=dec,
        residual=float(res.max()),
        cond_a=float("nan"),
        cond_b=cond_b,
        dropped=int((~keep).sum()),
        path=path,
    )


def fit_layer(
    x: Tensor,
    s: Tensor,
    lam: float,
    fit_bias: bool,
    dtype: torch.dtype = torch.float64,
) -> LayerFit:
    """Solve one layer's Sylvester problem from its rows and code.

    Args:
        x: Input rows, shape ``(n, d_in)``.
        s: Code, shape ``(n, d_out)``.
        lam: λ, the weight of the encoding loss; must be ``> 0``.
        fit_bias: Centre ``x`` and ``s`` and return the bias that restores the means.
        dtype: Precision of the statistics and the solve (``float64`` by default).

    Returns:
        A :class:`LayerFit` in ``dtype`` on ``x``'s device.

    Raises:
        ValueError: On mismatched shapes, no rows, ``lam <= 0``, or non-finite rows (with the
            count of bad values).
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    return solve_moments(moments_from_rows(x, s, fit_bias, dtype), lam)
