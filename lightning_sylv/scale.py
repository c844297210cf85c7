"""The output scale of a solved layer: the data's directions at the model's own gain or norm.

The Sylvester solve fixes a layer's weights, directions *and* size, from the data: ``W`` maps the
input onto a code ``S`` whose scale is the input's principal variances (PCA codes) or one (one-hot).
Many architectures depend on the size their own initializer gives a layer rather than on its
directions. A pre-norm transformer block adds each residual branch to a stream that must stay close
to the identity at initialization (timm's and torchvision's ViTs draw their weights with a standard
deviation of 0.02 for that); attention logits grow with the square of the query/key scale. Solved
weights there are several times larger than the model's own, the branches swamp the stream and
training starts from a saturated network.

``scale="own"`` keeps the solve's directions and gives the layer the gain its own initialization
has **on the same input**: with ``X`` the layer's input rows (the patches or tokens the solve saw),

    c = ‖X W_ownᵀ + b_own‖_F / ‖X Wᵀ + b‖_F,        W ← c W,   b ← c b,

one factor per layer (its groups together). The energies are sums over rows, so they add across
batches and processes like the statistics of the solve, and the factor is the same on every
process. Where the own output is zero (a zero-initialized layer) or either energy is not a positive
finite number, the factor is 1: the solve's scale is kept.

``scale="norm"`` keeps the solve's directions and gives the layer the Frobenius norm of its weights
before the init (over the weight columns the solve sees), ``c = ‖W_own‖_F / ‖W‖_F``. The two differ
where the input is far from isotropic. Solved weights point along the input's leading principal
directions, where it carries most of its energy, so at the own output energy they are smaller than
the own weights: half their norm in the first block of a ViT on CIFAR-10 patches. What an optimizer
does with a layer depends on that norm. Adam(W) moves every weight by about the learning rate per
step, whatever its size, so a layer at half the norm is moved twice as far, relative to what it
holds, as its own init would be; in a layer followed by a normalization the effective step grows
with the inverse square of the norm. The first epoch then overwrites what the init wrote. At the
own norm the optimizer's relative steps are the ones its settings were chosen for; the output gain
of a block whose input is concentrated comes out larger than the own init's (where the input is
isotropic the two rules agree).

A layer followed by a normalization (Conv → BatchNorm) computes the same function after either
rescaling (up to the normalization's ε), so only layers whose output scale reaches the network
— residual branches, attention projections, the head's logits — change what the network computes.

``scale="auto"`` (the default) takes the rule by the layer's context (:func:`layer_scale`): ``"own"``
for a layer whose output a scale-free normalization takes directly (the probe of the execution order
finds them, :attr:`~lightning_sylv.passes.Probe.normalized`), ``"norm"`` for the others. Measured on
the training benchmark of ``examples/RESULTS.md`` (issue 22), the own norm trained better where the
scale reaches the network (ViTs, ConvNeXt, MLP-Mixer) and the own gain where a BatchNorm takes every
convolution's output, whose function the rule cannot change but whose effective step it sets.

The reference is whatever the layer holds when the init runs: the model's own initialization for a
freshly constructed model (or one a sharding strategy materialized with ``reset_parameters``), the
pretrained values when pretrained layers are initialized again. A model created with
``empty_init=True`` whose weights were never initialized holds arbitrary memory: use
``scale="solve"`` there (all-zero and non-finite references already fall back to it).

This module imports no Lightning.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from lightning_sylv.layer_fit import LayerFit
from lightning_sylv.stats import InputStats, row_blocks

__all__ = [
    "SCALES",
    "LayerScale",
    "Scale",
    "energy_from_rows",
    "energy_from_stats",
    "gain_factor",
    "layer_scale",
    "rescale",
    "weight_energy",
]

Scale = Literal["auto", "solve", "own", "norm"]
#: Ways to set the scale of solved layers: ``"solve"`` as solved, ``"own"`` at the gain of the
#: layer's weights before the init on the same input, ``"norm"`` at their Frobenius norm, ``"auto"``
#: ``"own"`` for a layer whose output goes straight into a normalization and ``"norm"`` for the others.
SCALES: tuple[str, ...] = ("auto", "solve", "own", "norm")
#: The rule one layer takes (``"auto"`` resolved, :func:`layer_scale`).
LayerScale = Literal["solve", "own", "norm"]


def layer_scale(scale: Scale, normalized: bool) -> LayerScale:
    """The rule one layer takes: ``"auto"`` resolved by the layer's context, the others as they are.

    Args:
        scale: The setting.
        normalized: Whether a scale-free normalization takes the layer's output directly
            (:attr:`~lightning_sylv.passes.Probe.normalized`).

    Example:
        >>> layer_scale("auto", normalized=True), layer_scale("auto", normalized=False), layer_scale("solve", True)
        ('own', 'norm', 'solve')
    """
    if scale == "auto":
        return "own" if normalized else "norm"
    return scale


def energy_from_rows(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``Σ_g ‖X_g W_gᵀ + b_g‖²_F``: the squared output norm of a layer on its input rows.

    Args:
        x: Rows ``(groups, n, d)``.
        weight: ``(groups, d_out, d)``.
        bias: ``(groups, d_out)`` or ``None``.

    Returns:
        A 0-dim float64 tensor on ``x``'s device. Costs one pass of the layer over the rows,
        ``O(groups · n · d · d_out)``.

    Example:
        >>> import torch
        >>> x, w = torch.ones(1, 3, 2), torch.ones(1, 1, 2)
        >>> float(energy_from_rows(x, w, torch.zeros(1, 1)))
        12.0
    """
    w = weight.to(x.dtype).mT
    b = None if bias is None else bias.unsqueeze(1).to(x.dtype)
    if x.shape[0] == 1:
        return _energy(x, w, b)
    # The groups of a grouped convolution: in cache-sized contiguous blocks (see row_blocks).
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for block in row_blocks(x):
        total += _energy(block, w, b)
    return total


def _energy(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    out = torch.baddbmm(b, x, w) if b is not None else x @ w
    return out.to(torch.float64).square().sum()


def energy_from_stats(stats: InputStats, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """:func:`energy_from_rows` from the rows' sums instead of the rows.

    ``‖X Wᵀ + 1 bᵀ‖² = tr(W (XᵀX) Wᵀ) + 2 bᵀ W (Xᵀ1) + n ‖b‖²``, per group.

    Args:
        stats: Sums of the rows, ``gram_x`` ``(groups, d, d)`` or ``(d, d)`` and ``sum_x``.
        weight: ``(groups, d_out, d)``.
        bias: ``(groups, d_out)`` or ``None``.

    Returns:
        A 0-dim float64 tensor; ``O(groups · d² · d_out)``.

    Example:
        >>> import torch
        >>> x, w, b = torch.randn(1, 50, 4, dtype=torch.float64), torch.randn(1, 3, 4), torch.randn(1, 3)
        >>> s = InputStats.from_rows(x)
        >>> bool(torch.isclose(energy_from_stats(s, w, b), energy_from_rows(x, w, b)))
        True
    """
    w = weight.to(torch.float64)
    gram = stats.gram_x.to(torch.float64)
    energy = torch.einsum("...od,...de,...oe->", w, gram, w)
    if bias is not None:
        b = bias.to(torch.float64)
        energy = energy + 2 * torch.einsum("...o,...od,...d->", b, w, stats.sum_x.to(torch.float64))
        energy = energy + stats.n.to(torch.float64) * b.square().sum()
    return energy


def gain_factor(own: float, solved: float) -> float:
    """The factor ``sqrt(own / solved)`` that gives a solved layer its own output energy.

    Args:
        own: Output energy of the layer's weights before the init (:func:`energy_from_rows`).
        solved: Output energy of the solved weights on the same rows.

    Returns:
        The factor, or ``1.0`` (keep the solve's scale) when either energy is not a positive finite
        number: a zero-initialized layer has no scale to copy.

    Example:
        >>> gain_factor(1.0, 4.0)
        0.5
        >>> gain_factor(0.0, 4.0)
        1.0
    """
    if not (math.isfinite(own) and math.isfinite(solved)) or own <= 0 or solved <= 0:
        return 1.0
    return math.sqrt(own / solved)


def weight_energy(weight: Tensor) -> Tensor:
    """``‖W‖²_F``, the squared Frobenius norm of a weight, as a 0-dim float64 tensor.

    Args:
        weight: Any shape (``(groups, d_out, d)`` for a solved layer).

    Example:
        >>> import torch
        >>> float(weight_energy(torch.full((1, 2, 2), 0.5)))
        1.0
    """
    return weight.to(torch.float64).square().sum()


def rescale(
    fit: LayerFit, data: InputStats | Tensor, own: float, by: Literal["own", "norm"] = "own"
) -> tuple[LayerFit, float]:
    """``fit`` at the size ``own`` of the layer's weights before the init.

    Args:
        fit: Weights ``(groups, d_out, d)`` and bias ``(groups, d_out)`` in the coordinates of ``data``
            (an orthonormal basis of the layer's inputs, or the inputs themselves: either way
            ``‖fit.weight‖_F`` is the norm of the weight the layer is given).
        data: What the fit saw: the rows' sums, or the rows ``(groups, n, d)``.
        own: ``by="own"``: output energy of the layer's own weights on those rows
            (:func:`energy_from_rows`); ``by="norm"``: their squared Frobenius norm
            (:func:`weight_energy`).
        by: Which size to match (the ``scale`` setting).

    Returns:
        The rescaled fit (weight and bias times the factor; diagnostics unchanged) and the factor
        (:func:`gain_factor`; ``fit`` itself where it is ``1.0``).

    Example:
        >>> import torch
        >>> x = torch.ones(1, 3, 2, dtype=torch.float64)
        >>> fit = LayerFit(torch.full((1, 1, 2), 2.0, dtype=torch.float64), None, 0.0, 0.0, 0.0, 1.0, 1.0, 0)
        >>> scaled, gain = rescale(fit, x, own=12.0)
        >>> gain, scaled.weight.flatten().tolist()
        (0.5, [1.0, 1.0])
        >>> rescale(fit, x, own=2.0, by="norm")[1]
        0.5
    """
    if by == "norm":
        solved = weight_energy(fit.weight)
    elif isinstance(data, InputStats):
        solved = energy_from_stats(data, fit.weight, fit.bias)
    else:
        solved = energy_from_rows(data, fit.weight, fit.bias)
    gain = gain_factor(own, float(solved))
    if gain == 1.0:
        return fit, gain
    bias = None if fit.bias is None else fit.bias * gain
    return dataclasses.replace(fit, weight=fit.weight * gain, bias=bias), gain
