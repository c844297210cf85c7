"""Initialize one low-rank layer in place from the full-rank layer it approximates.

:func:`init_low_rank_` is the one interface behind the three initializers (``"spectral"``,
``"data"``, ``"relu"``; see :mod:`lightning_sylv.lowrank.factorize`): it takes the full-rank weight
``W`` (a random init, a pretrained layer, or the Sylvester solution; by default the layer's stored
``full_weight``), the layer's input rows when the method needs data, computes the factors in float64
on the weight's device and writes ``U``, ``V`` and the bias into the layer's parameters (cast to
their dtype) under ``torch.no_grad()``. :func:`input_rows` turns a layer's input activation into
those rows (conv patches via :func:`lightning_sylv.rows.layer_rows` on the layer's first
convolution, which has the original geometry).

This module imports no Lightning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sylv.lowrank.factorize import (
    METHODS,
    Factors,
    factorize,
    linear_error,
    relu_error,
    spectral_factors,
)
from lightning_sylv.lowrank.layers import LowRankLayer
from lightning_sylv.rows import layer_rows

__all__ = ["LowRankFit", "init_low_rank_", "input_rows"]


@dataclass(frozen=True)
class LowRankFit:
    """What :func:`init_low_rank_` did to one layer.

    Attributes:
        method: The initializer used.
        rank: The layer's rank.
        in_features: ``d`` (``C_in * k_h * k_w`` for convolutions).
        out_features: ``m``.
        rows: Input rows used (0 for ``"spectral"`` without rows).
        linear_error: ``‖(W x + b) − (U V x + b')‖ / ‖W x + b‖`` on the rows (``None`` without rows).
        relu_error: ``‖relu(W x + b) − relu(U V x + b')‖ / ‖relu(W x + b)‖`` on the rows, through
            ``affine`` if one was given (``None`` without rows).
        spectral_relu_error: The same error for spectral factors, for comparison (``None`` without rows).
        best_iteration: ReLU refinement iterate kept (0: the data-aware start).
        seconds: Wall time of the factorization and the write (not of gathering the rows).
    """

    method: str
    rank: int
    in_features: int
    out_features: int
    rows: int
    linear_error: float | None
    relu_error: float | None
    spectral_relu_error: float | None
    best_iteration: int
    seconds: float


def input_rows(
    layer: LowRankLayer,
    x: Tensor,
    patches_per_image: int | None = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rows ``(n, d)`` of the dense problem of ``layer`` from its input activation ``x``.

    For a :class:`~lightning_sylv.lowrank.layers.LowRankConv2d` these are the patches the original
    convolution sees (``patches_per_image`` random positions per image); for a
    :class:`~lightning_sylv.lowrank.layers.LowRankLinear` the input's rows (positions of a
    ``(N, T, d)`` input sampled likewise).

    Args:
        layer: The low-rank layer.
        x: Its input, as the model feeds it.
        patches_per_image: Positions drawn per sample (``None``: all).
        generator: CPU generator of the draw.
    """
    rows = layer_rows(layer.v, x, patches_per_image, generator).x
    return rows.reshape(rows.shape[0], -1)


def init_low_rank_(
    layer: LowRankLayer,
    full_weight: Tensor | None = None,
    full_bias: Tensor | None = None,
    x_rows: Tensor | None = None,
    method: str = "data",
    *,
    ridge: float = 1e-6,
    relu_iters: int = 5,
    affine: tuple[Tensor, Tensor] | None = None,
) -> LowRankFit:
    """Set ``layer``'s factors (and bias) in place to approximate a full-rank layer.

    Args:
        layer: A :class:`~lightning_sylv.lowrank.layers.LowRankLinear` or ``LowRankConv2d``.
        full_weight: ``W`` in the full-rank layout (``(out, in)`` or ``(out, in, k_h, k_w)``);
            ``None`` uses ``layer.full_weight``, or the current product ``U V`` if none is stored.
        full_bias: ``b`` ``(out,)``; ``None`` uses ``layer.full_bias`` when ``full_weight`` is also
            ``None``, else zero. Ignored (must be ``None`` or zero) when the layer has no bias.
        x_rows: The layer's input rows ``(n, d)`` (see :func:`input_rows`); required by ``"data"``
            and ``"relu"``; with ``"spectral"`` they only feed the reported errors.
        method: ``"spectral"``, ``"data"`` or ``"relu"``.
        ridge: Relative ridge on the input covariance (see :func:`~lightning_sylv.lowrank.factorize.data_factors`).
        relu_iters: Refinement iterations of ``"relu"``.
        affine: ``(scale, offset)`` per output between the layer and its ReLU (e.g. a BatchNorm), for
            ``"relu"`` and the reported ReLU errors.

    Returns:
        A :class:`LowRankFit`.

    Raises:
        TypeError: If ``layer`` is not a low-rank layer.
        ValueError: On an unknown ``method``, mismatched shapes, missing rows, a nonzero bias for a
            layer without one, or non-finite values.
    """
    if not isinstance(layer, LowRankLayer):
        raise TypeError(f"layer must be a LowRankLinear or LowRankConv2d, got {type(layer).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    start = time.perf_counter()
    if full_weight is None:
        full_weight, stored_bias = layer.full_weight, layer.full_bias
        if full_weight is None:
            full_weight = layer.merged_weight().detach()
            stored_bias = None if layer.bias is None else layer.bias.detach()
        full_bias = stored_bias if full_bias is None else full_bias
    if tuple(full_weight.shape) != layer.weight_shape:
        raise ValueError(f"full_weight must have shape {layer.weight_shape}, got {tuple(full_weight.shape)}")
    w = full_weight.detach().reshape(layer.weight_shape[0], -1).double()
    dev = w.device
    has_bias = layer.bias is not None
    b: Tensor | None = None
    if full_bias is not None:
        if tuple(full_bias.shape) != (w.shape[0],):
            raise ValueError(f"full_bias must have shape ({w.shape[0]},), got {tuple(full_bias.shape)}")
        b = full_bias.detach().to(dev, torch.float64)
        if not has_bias and bool(b.abs().max() > 0):
            raise ValueError("full_bias is nonzero but the low-rank layer has no bias to hold it")
    if has_bias and b is None:
        b = torch.zeros(w.shape[0], dtype=torch.float64, device=dev)
    if not has_bias:
        b = None
    rows = None if x_rows is None else x_rows.detach().reshape(x_rows.shape[0], -1).to(dev, torch.float64)
    if rows is not None and rows.shape[1] != w.shape[1]:
        raise ValueError(
            f"x_rows must have {w.shape[1]} values per row (the layer's input size), got {tuple(x_rows.shape)}"
        )
    factors = factorize(w, layer.rank, method, rows, b, ridge=ridge, relu_iters=relu_iters, affine=affine)
    layer.set_factors(factors.u, factors.v, factors.bias)
    lin = rel = spec = None
    if rows is not None:
        lin = linear_error(w, rows, factors, b)
        rel = relu_error(w, rows, factors, b, affine)
        su, sv = spectral_factors(w, layer.rank)
        spec = relu_error(w, rows, Factors(su, sv, b, "spectral"), b, affine)
    return LowRankFit(
        method=method,
        rank=layer.rank,
        in_features=w.shape[1],
        out_features=w.shape[0],
        rows=0 if rows is None else rows.shape[0],
        linear_error=lin,
        relu_error=rel,
        spectral_relu_error=spec,
        best_iteration=factors.best_iteration,
        seconds=time.perf_counter() - start,
    )
