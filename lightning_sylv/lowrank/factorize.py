"""Rank-``r`` factors ``W ≈ U·V`` of a dense layer ``z = W x + b``: spectral, data-aware, ReLU-aware.

Notation: ``W`` is ``(m, d)`` (a convolution's weight reshaped to ``(C_out, C_in * k_h * k_w)``),
rows ``x_i`` ``(d,)`` are the layer's inputs on a data subset (``X``: ``(n, d)``, patches for
convolutions), ``L = U V`` with ``U`` ``(m, r)`` and ``V`` ``(r, d)``.

* ``"spectral"`` (prior art): the truncated SVD of ``W``; ignores the data.
* ``"data"`` (data-aware linear, reduced-rank regression): ``L`` minimizes ``‖W X − L X‖``. With the
  input second moment ``Σ = XᵀX / n`` the objective is ``‖(W − L) Σ^{1/2}‖²``, so
  ``L = trunc_r(W Σ^{1/2}) Σ^{-1/2}``: the truncated SVD taken in the metric of the inputs. With a
  bias the rows are centred (``Σ`` is the covariance) and the bias absorbs the mean:
  ``b' = b + (W − L) mean(x)``. **Ridge:** ``Σ`` is often singular (dead pixels, few rows, ReLU
  inputs); it is replaced by ``Σ + ε I`` with ``ε = ridge * trace(Σ) / d`` (``ridge=1e-6`` by
  default). This is exactly the objective ``‖(W − L) X‖² + n ε ‖W − L‖²``: directions the data never
  visits are approximated as spectral init would, and the result is never worse than spectral on
  ``‖W X − L X‖`` (spectral is feasible and closer to ``W``). ``ridge → ∞`` gives spectral init.
* ``"relu"`` (ReLU-aware): refines the data-aware factors so that ``relu(L x + b')`` matches
  ``relu(W x + b)`` on the rows. Entries whose target is active must reproduce ``W x + b``; entries
  whose target is inactive only need a non-positive pre-activation (censored values). Each
  iteration imputes the censored entries from the current fit (kept where already non-positive,
  moved to the threshold where not) and solves one reduced-rank regression for these targets with
  the same ``Σ`` factorization — the cost of one data-aware solve minus the covariance (a product
  ``n m d`` and an SVD of an ``m x d`` matrix). The iterate with the smallest ReLU error on the rows
  is kept, starting with the data-aware one, so it is never worse than ``"data"`` on that error.
  An optional per-output affine map ``(scale, offset)`` between the layer and its ReLU (a
  BatchNorm) makes the target ``relu(scale * (W x + b) + offset)``.

Factors are split evenly (``U = P √σ``, ``V = √σ Qᵀ`` from the SVD of ``L``), as spectral init does.
All math runs in float64 on the device of the inputs. This module imports no Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "METHODS",
    "Factors",
    "data_factors",
    "factorize",
    "linear_error",
    "relu_error",
    "relu_factors",
    "spectral_factors",
]

#: Names of the initializers, in order of data use.
METHODS: tuple[str, ...] = ("spectral", "data", "relu")


@dataclass(frozen=True)
class Factors:
    """Rank-``r`` factors of one layer.

    Attributes:
        u: ``U``, shape ``(m, r)``, float64.
        v: ``V``, shape ``(r, d)``, float64.
        bias: The low-rank layer's bias ``(m,)`` (refitted by ``"data"``/``"relu"``), or ``None``.
        method: ``"spectral"``, ``"data"`` or ``"relu"``.
        iterations: ReLU refinement iterations run (0 for the other methods).
        best_iteration: The iterate kept (0: the data-aware start).
    """

    u: Tensor
    v: Tensor
    bias: Tensor | None
    method: str
    iterations: int = 0
    best_iteration: int = 0

    @property
    def weight(self) -> Tensor:
        """``U @ V``, shape ``(m, d)``."""
        return self.u @ self.v

    def pre_activation(self, x: Tensor) -> Tensor:
        """``x Vᵀ Uᵀ + b'`` for rows ``x`` ``(n, d)``."""
        out = (x.to(self.v) @ self.v.T) @ self.u.T
        return out if self.bias is None else out + self.bias


def _check_weight(weight: Tensor) -> Tensor:
    if not isinstance(weight, Tensor) or weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(f"weight must be a non-empty (out, in) matrix, got {getattr(weight, 'shape', weight)!r}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN/Inf values")
    return weight.double()


def _check_rank(rank: int, weight: Tensor) -> int:
    full = min(weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank must be an int in [1, {full}] (min(out, in) of the weight), got {rank!r}")
    return rank


def _check_x(x: Tensor | None, weight: Tensor, method: str) -> Tensor:
    if x is None:
        raise ValueError(f"x (the layer's input rows) is required by method {method!r}, got None")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != weight.shape[1] or x.shape[0] == 0:
        raise ValueError(
            f"x must be input rows of shape (n >= 1, {weight.shape[1]}), got {getattr(x, 'shape', type(x).__name__)!r}"
        )
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"x (the layer's input rows) contains {bad} NaN/Inf values")
    return x.to(device=weight.device, dtype=torch.float64)


def _check_bias(bias: Tensor | None, weight: Tensor) -> Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {getattr(bias, 'shape', bias)!r}")
    return bias.to(device=weight.device, dtype=torch.float64)


def _check_iters(iters: int, name: str = "iters") -> int:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"{name} must be an int >= 0, got {iters!r}")
    return iters


def _check_ridge(ridge: float) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def _balanced(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Even split ``U = P √σ``, ``V = √σ Qᵀ`` of ``L = a @ b`` (``a``: ``(m, r)``, ``b``: ``(r, d)``)."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.T)
    uk, sk, vkh = torch.linalg.svd(ra @ rb.T)
    root = sk.clamp_min(0).sqrt()
    return (qa @ uk) * root, root[:, None] * (vkh @ qb.T)


def spectral_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(U, V)`` from the truncated SVD ``W ≈ P_r diag(σ_r) Q_rᵀ``: ``U = P_r √σ``, ``V = √σ Q_rᵀ``.

    Args:
        weight: ``W``, shape ``(m, d)``.
        rank: ``r`` in ``[1, min(m, d)]``.

    Returns:
        ``U`` ``(m, r)`` and ``V`` ``(r, d)`` in float64.

    Raises:
        ValueError: On a bad ``weight`` or ``rank``.
    """
    w = _check_weight(weight)
    r = _check_rank(rank, w)
    p, s, qh = torch.linalg.svd(w, full_matrices=False)
    root = s[:r].sqrt()
    return p[:, :r] * root, root[:, None] * qh[:r]


@dataclass(frozen=True)
class _InputMetric:
    """``Σ_ε^{±1/2}`` of the (centred) input second moment with the relative ridge, and the mean."""

    mean: Tensor | None
    sqrt: Tensor
    inv_sqrt: Tensor
    eps: float

    @classmethod
    def from_rows(cls, x: Tensor, center: bool, ridge: float) -> _InputMetric:
        n, d = x.shape
        mean = x.mean(0) if center else None
        second = x.T @ x / n
        if mean is not None:
            second = second - torch.outer(mean, mean)
        second = (second + second.T) / 2
        scale = float(second.trace()) / d
        eps = ridge * scale if scale > 0 else max(ridge, 1e-12)
        evals, evecs = torch.linalg.eigh(second)
        evals = evals.clamp_min(0) + eps
        if float(evals.min()) <= 0:  # ridge=0 on a singular Σ: pseudo-inverse square root
            pos = evals > evals.max() * 1e-12
            inv = torch.where(pos, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals))
        else:
            inv = evals.rsqrt()
        return cls(mean, (evecs * evals.sqrt()) @ evecs.T, (evecs * inv) @ evecs.T, eps)


def _rrr(
    cross: Tensor, anchor: Tensor, metric: _InputMetric, rank: int, out_weight: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Rank-``r`` ``L`` minimizing ``Σ_j w_j ‖T_j − L_j X‖² + n ε ‖L − anchor‖²_w`` (balanced factors).

    ``cross`` is ``Tᵀ X / n`` (centred if the metric is), so the solution is
    ``L = D^{-1/2} trunc_r(D^{1/2} (cross + ε anchor) Σ_ε^{-1/2}) Σ_ε^{-1/2}``.
    """
    m = (cross + metric.eps * anchor) @ metric.inv_sqrt
    root_w = None if out_weight is None else out_weight.sqrt()
    if root_w is not None:
        m = root_w[:, None] * m
    p, s, qh = torch.linalg.svd(m, full_matrices=False)
    a = p[:, :rank] * s[:rank]
    if root_w is not None:
        a = a / root_w[:, None]
    return _balanced(a, qh[:rank] @ metric.inv_sqrt)


def _new_bias(target_mean: Tensor, u: Tensor, v: Tensor, mean_x: Tensor | None) -> Tensor | None:
    return None if mean_x is None else target_mean - u @ (v @ mean_x)


def data_factors(
    weight: Tensor,
    x: Tensor,
    rank: int,
    bias: Tensor | None = None,
    *,
    ridge: float = 1e-6,
) -> Factors:
    """Data-aware linear factors: reduced-rank regression of ``W x + b`` on the rows ``x``.

    Args:
        weight: ``W``, shape ``(m, d)``.
        x: Input rows ``(n, d)``.
        rank: ``r`` in ``[1, min(m, d)]``.
        bias: ``b`` ``(m,)``; when given the covariance is centred and a new bias
            ``b + (W − U V) mean(x)`` is returned, else no bias and the raw second moment is used.
        ridge: Relative ridge ``ε / (trace(Σ) / d)`` added to ``Σ`` (see the module docstring).

    Returns:
        :class:`Factors` with ``method="data"``.

    Raises:
        ValueError: On bad shapes, non-finite values, ``rank`` or ``ridge``.
    """
    w = _check_weight(weight)
    r = _check_rank(rank, w)
    xs = _check_x(x, w, "data")
    b = _check_bias(bias, w)
    metric = _InputMetric.from_rows(xs, b is not None, _check_ridge(ridge))
    # cross = W Σ (centred), so cross + ε W = W Σ_ε and the SVD is that of W Σ_ε^{1/2}.
    u, v = _balanced_data(w, metric, r)
    nb = None if b is None else b + (w - u @ v) @ metric.mean  # type: ignore[operator]
    return Factors(u, v, nb, "data")


def _balanced_data(w: Tensor, metric: _InputMetric, rank: int) -> tuple[Tensor, Tensor]:
    p, s, qh = torch.linalg.svd(w @ metric.sqrt, full_matrices=False)
    return _balanced(p[:, :rank] * s[:rank], qh[:rank] @ metric.inv_sqrt)


def _check_affine(affine: tuple[Tensor, Tensor] | None, m: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
    if affine is None:
        return None
    if not isinstance(affine, (tuple, list)) or len(affine) != 2:
        raise ValueError(f"affine must be a (scale, offset) pair of ({m},) tensors or None, got {affine!r}")
    scale, offset = (torch.as_tensor(t).to(like) for t in affine)
    if tuple(scale.shape) != (m,) or tuple(offset.shape) != (m,):
        raise ValueError(
            f"affine scale and offset must have shape ({m},), got {tuple(scale.shape)} and {tuple(offset.shape)}"
        )
    if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
        raise ValueError("affine scale/offset contain NaN/Inf values")
    return scale, offset


def _relu_err(target_post: Tensor, pre: Tensor, affine: tuple[Tensor, Tensor] | None) -> float:
    post = pre if affine is None else affine[0] * pre + affine[1]
    num = float((post.clamp_min(0) - target_post).norm())
    den = float(target_post.norm())
    return num / den if den > 0 else num


def relu_factors(
    weight: Tensor,
    x: Tensor,
    rank: int,
    bias: Tensor | None = None,
    *,
    ridge: float = 1e-6,
    iters: int = 5,
    affine: tuple[Tensor, Tensor] | None = None,
) -> Factors:
    """ReLU-aware factors: ``relu(U V x + b')`` fitted to ``relu(W x + b)`` on the rows.

    Starts from :func:`data_factors` and runs ``iters`` censored reduced-rank regressions (see the
    module docstring), keeping the iterate with the smallest ReLU error on ``x``.

    Args:
        weight: ``W``, shape ``(m, d)``.
        x: Input rows ``(n, d)``.
        rank: ``r`` in ``[1, min(m, d)]``.
        bias: ``b`` ``(m,)`` (refitted, as in :func:`data_factors`) or ``None``.
        ridge: Relative ridge on the input covariance (see :func:`data_factors`).
        iters: Refinement iterations (``0``: the data-aware factors).
        affine: ``(scale, offset)``, each ``(m,)``: the ReLU acts on ``scale * z + offset`` (e.g. a
            following BatchNorm); ``None`` for ``relu(z)``. Outputs are weighted by ``scale²``.

    Returns:
        :class:`Factors` with ``method="relu"``.

    Raises:
        ValueError: On bad shapes, non-finite values, ``rank``, ``ridge``, ``iters`` or ``affine``.
    """
    w = _check_weight(weight)
    r = _check_rank(rank, w)
    xs = _check_x(x, w, "relu")
    b = _check_bias(bias, w)
    _check_iters(iters)
    aff = _check_affine(affine, w.shape[0], w)
    metric = _InputMetric.from_rows(xs, b is not None, _check_ridge(ridge))
    z = xs @ w.T if b is None else xs @ w.T + b
    post_z = z if aff is None else aff[0] * z + aff[1]
    active = post_z > 0
    target_post = post_z.clamp_min(0)
    out_weight = None
    threshold = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if aff is not None:
        sq = aff[0].square()
        out_weight = sq.clamp_min(float(sq.max()) * 1e-8) if float(sq.max()) > 0 else None
        nz = aff[0] != 0
        threshold = torch.where(nz, -aff[1] / torch.where(nz, aff[0], torch.ones_like(aff[0])), threshold)
    u, v = _balanced_data(w, metric, r)
    nb = None if b is None else b + (w - u @ v) @ metric.mean  # type: ignore[operator]
    best = (math.inf, u, v, nb, 0)
    n = xs.shape[0]
    for it in range(iters + 1):
        pre = (xs @ v.T) @ u.T
        if nb is not None:
            pre = pre + nb
        err = _relu_err(target_post, pre, aff)
        if err < best[0]:
            best = (err, u, v, nb, it)
        if it == iters:
            break
        dead_channel = torch.zeros_like(active) if aff is None else (aff[0] == 0).expand_as(active)
        # Censored entries: anywhere between the full-rank value and the threshold (the current value
        # clipped into that interval), so the low-rank output's statistics stay close to W x's.
        censored = torch.minimum(torch.maximum(pre, torch.minimum(z, threshold)), torch.maximum(z, threshold))
        target = torch.where(active | dead_channel, torch.where(dead_channel, pre, z), censored)
        t_mean = target.mean(0)
        cross = target.T @ xs / n
        if metric.mean is not None:
            cross = cross - torch.outer(t_mean, metric.mean)
        u, v = _rrr(cross, w, metric, r, out_weight)
        nb = _new_bias(t_mean, u, v, metric.mean)
    _, u, v, nb, kept = best
    return Factors(u, v, nb, "relu", iterations=iters, best_iteration=kept)


def factorize(
    weight: Tensor,
    rank: int,
    method: str,
    x: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    ridge: float = 1e-6,
    relu_iters: int = 5,
    affine: tuple[Tensor, Tensor] | None = None,
) -> Factors:
    """Rank-``r`` factors of ``W`` by ``method``: the one interface behind the three initializers.

    Args:
        weight: ``W``, shape ``(m, d)``.
        rank: ``r`` in ``[1, min(m, d)]``.
        method: ``"spectral"``, ``"data"`` or ``"relu"``.
        x: Input rows ``(n, d)``; required by ``"data"`` and ``"relu"``, ignored by ``"spectral"``.
        bias: ``b`` ``(m,)`` or ``None``; ``"spectral"`` returns it unchanged.
        ridge: Relative ridge on the input covariance (``"data"``, ``"relu"``).
        relu_iters: Refinement iterations of ``"relu"``.
        affine: ``(scale, offset)`` before the ReLU, for ``"relu"`` (see :func:`relu_factors`).

    Raises:
        ValueError: On an unknown ``method`` or any bad argument of the chosen method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "spectral":
        u, v = spectral_factors(weight, rank)
        b = _check_bias(bias, weight)
        return Factors(u, v, None if b is None else b.clone(), "spectral")
    if method == "data":
        return data_factors(weight, x, rank, bias, ridge=ridge)  # type: ignore[arg-type]
    return relu_factors(weight, x, rank, bias, ridge=ridge, iters=relu_iters, affine=affine)  # type: ignore[arg-type]


def linear_error(weight: Tensor, x: Tensor, factors: Factors, bias: Tensor | None = None) -> float:
    """``‖(W x + b) − (U V x + b')‖ / ‖W x + b‖`` over the rows ``x`` ``(n, d)``.

    Args:
        weight: ``W`` ``(m, d)``.
        x: Rows ``(n, d)``.
        factors: The low-rank factors (and bias ``b'``).
        bias: ``b`` or ``None``.
    """
    w = _check_weight(weight)
    xs = _check_x(x, w, "linear_error")
    b = _check_bias(bias, w)
    z = xs @ w.T if b is None else xs @ w.T + b
    num = float((factors.pre_activation(xs) - z).norm())
    den = float(z.norm())
    return num / den if den > 0 else num


def relu_error(
    weight: Tensor,
    x: Tensor,
    factors: Factors,
    bias: Tensor | None = None,
    affine: tuple[Tensor, Tensor] | None = None,
) -> float:
    """``‖relu(W x + b) − relu(U V x + b')‖ / ‖relu(W x + b)‖`` over the rows ``x`` ``(n, d)``.

    Args:
        weight: ``W`` ``(m, d)``.
        x: Rows ``(n, d)``.
        factors: The low-rank factors (and bias ``b'``).
        bias: ``b`` or ``None``.
        affine: ``(scale, offset)`` applied before both ReLUs (see :func:`relu_factors`).
    """
    w = _check_weight(weight)
    xs = _check_x(x, w, "relu_error")
    b = _check_bias(bias, w)
    aff = _check_affine(affine, w.shape[0], w)
    z = xs @ w.T if b is None else xs @ w.T + b
    post_z = (z if aff is None else aff[0] * z + aff[1]).clamp_min(0)
    return _relu_err(post_z, factors.pre_activation(xs), aff)
