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

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sylv.solver import relative_residual, solve_sylvester_psd

__all__ = ["LayerFit", "encoding_loss", "fit_layer"]


@dataclass(frozen=True)
class LayerFit:
    """Solution of one layer's problem and its diagnostics.

    Attributes:
        weight: ``W``, shape ``(d_out, d_in)``.
        bias: ``b``, shape ``(d_out,)``, or ``None`` when no bias was fitted.
        encoding_loss: ``‖X Wᵀ − S‖² / ‖S‖²`` (centred when a bias is fitted).
        decoding_loss: ``‖X − S W‖² / ‖X‖²`` (centred likewise).
        residual: Relative residual of the Sylvester equation at the returned ``W``.
        cond_a: Condition number of ``A = SᵀS / n``.
        cond_b: Condition number of ``B = λ XᵀX / n``.
        dropped: Eigenvalue pairs treated as singular by the solver (0 when the system is regular).
    """

    weight: Tensor
    bias: Tensor | None
    encoding_loss: float
    decoding_loss: float
    residual: float
    cond_a: float
    cond_b: float
    dropped: int


def _ratio(num: Tensor, den: Tensor) -> float:
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else float(num)


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


def fit_layer(
    x: Tensor,
    s: Tensor,
    lam: float,
    fit_bias: bool,
    dtype: torch.dtype = torch.float64,
) -> LayerFit:
    """Solve one layer's Sylvester problem.

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
    if x.ndim != 2 or s.ndim != 2 or x.shape[0] != s.shape[0]:
        raise ValueError(f"x (n, d_in) and s (n, d_out) must share n, got {tuple(x.shape)} and {tuple(s.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no rows to fit the layer on")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    x = x.to(dtype)
    s = s.to(dtype)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"the layer's input activations contain {bad} NaN/Inf values")
    n = x.shape[0]
    if fit_bias:
        mx, ms = x.mean(0), s.mean(0)
        x, s = x - mx, s - ms
    gram_x = x.T @ x / n
    gram_s = s.T @ s / n
    cross = s.T @ x / n
    a, b, c = gram_s, lam * gram_x, (1.0 + lam) * cross
    sol = solve_sylvester_psd(a, b, c, allow_singular=True)
    w = sol.w
    bias = (ms - w @ mx) if fit_bias else None
    # Losses from the statistics: no second pass over the rows.
    wg = w @ gram_x
    enc = (wg * w).sum() - 2 * (w * cross).sum() + gram_s.trace()
    dec = gram_x.trace() - 2 * (w * cross).sum() + (w * (gram_s @ w)).sum()
    return LayerFit(
        weight=w,
        bias=bias,
        encoding_loss=_ratio(enc.clamp_min(0), gram_s.trace()),
        decoding_loss=_ratio(dec.clamp_min(0), gram_x.trace()),
        residual=relative_residual(a, b, c, w),
        cond_a=sol.cond_a,
        cond_b=sol.cond_b,
        dropped=sol.dropped,
    )
