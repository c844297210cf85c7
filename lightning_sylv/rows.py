"""Turning a layer's input activation into rows ``X`` of a dense problem.

A ``Linear`` layer's input ``(N, *, d_in)`` already is a set of rows. A convolution is rewritten as a
dense layer over patches (im2col): every output position sees a ``C_in x k_h x k_w`` patch of the
padded input, flattened in the layout of ``weight.reshape(C_out, -1)``. Using every patch of every
image is wasteful (most are uninformative, and there are ``H_out * W_out`` per image), so
:func:`layer_rows` draws ``patches_per_image`` random output positions per image first and gathers
only those patches: memory is ``N * patches_per_image * C_in * k_h * k_w`` values, never the full
unfolded tensor.

This module imports no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SUPPORTED_LAYERS", "LayerRows", "conv_patches", "layer_rows"]

#: Layer types the initializer knows how to rewrite as a dense problem.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerRows:
    """Rows gathered from one layer input.

    Attributes:
        x: Rows, shape ``(N * p, C_in, K)`` for convolutions (``K = k_h * k_w``, the channel axis
            kept so grouped convolutions can be split) or ``(N * p, d_in)`` for linear layers.
        per_sample: ``p``, rows taken from each sample (the same for every sample).
        positions: ``(N, p)`` flat output positions of the rows (row ``i * p + j`` is sample ``i`` at
            position ``positions[i, j]`` of the layer's ``out_shape`` grid), for codes that must align
            with another network's activations (e.g. a teacher's).
        out_shape: Spatial shape of the layer's output (``(H_out, W_out)``, ``(1, L_out)`` for 1-D
            convolutions, ``(D_out, H_out, W_out)`` for 3-D ones, ``(T,)`` for a ``Linear`` on
            ``(N, T, d)``, ``()`` for plain rows).
        taps: The flat kernel offsets (into ``K = k_1 ... k_D``, increasing) that ``x`` holds when
            taps that never see the input were dropped (see :func:`conv_patches`); ``None``: all.
    """

    x: Tensor
    per_sample: int
    positions: Tensor | None = None
    out_shape: tuple[int, ...] = ()
    taps: Tensor | None = None


def _sample_positions(n: int, total: int, k: int | None, generator: torch.Generator | None) -> Tensor:
    """Return ``(n, p)`` position indices in ``[0, total)``; random without replacement if ``k < total``."""
    if k is None or k >= total:
        return torch.arange(total).expand(n, total)
    # The k largest of uniform keys: a uniform k-subset, without sorting all ``total`` keys.
    return torch.rand(n, total, generator=generator).topk(k, dim=1, sorted=False).indices


def _pads(conv: nn.modules.conv._ConvNd, spatial: int) -> list[int]:
    """Padding as ``F.pad`` wants it (last dim first), resolving the string forms."""
    ks, dil = conv.kernel_size, conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [0] * (2 * spatial)
        pads: list[int] = []
        for i in reversed(range(spatial)):
            total = dil[i] * (ks[i] - 1)
            pads += [total // 2, total - total // 2]
        return pads
    pads = []
    for i in reversed(range(spatial)):
        pads += [conv.padding[i], conv.padding[i]]
    return pads


def _seen_offsets(
    size: list[int], out: list[int], kernel: list[int], stride: list[int], dilation: list[int], lo: list[int]
) -> list[Tensor]:
    """Per dimension, the kernel offsets that fall inside the (unpadded) input at some output position."""
    seen = []
    for i in range(len(size)):
        at = (torch.arange(out[i]) * stride[i] - lo[i])[:, None] + dilation[i] * torch.arange(kernel[i])
        seen.append(torch.nonzero(((at >= 0) & (at < size[i])).any(0)).flatten())
    return seen


def _flat_taps(offsets: list[Tensor], kernel: list[int]) -> Tensor:
    """Flat indices (row-major over ``kernel``) of the product grid of per-dimension ``offsets``."""
    flat = torch.zeros(1, dtype=torch.long)
    for off, k in zip(offsets, kernel, strict=True):
        flat = (flat[:, None] * k + off[None, :]).flatten()
    return flat


def conv_patches(
    x: Tensor,
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d,
    patches_per_image: int | None,
    generator: torch.Generator | None = None,
    drop_unseen: bool = False,
) -> LayerRows:
    """Gather randomly chosen patches of a convolution's input.

    Algorithm: draw ``p`` flat output positions per sample, turn each into per-dimension start
    offsets (stride, padding, dilation), and gather the ``C_in x k_1 x ... x k_D`` patches with one
    advanced-indexing call; positions in the zero padding are masked, so the activation itself is
    never padded or unfolded. Memory: ``N p C_in K`` values.

    With ``drop_unseen``, kernel taps that lie in the zero padding at *every* output position (a
    ``7 x 7`` depthwise kernel on a ``2 x 2`` map sees the input with its central ``3 x 3`` taps only,
    a ``3 x 3`` kernel on a ``1 x 1`` map with its centre only) are left out of the rows: their
    columns would be zero in every row, whatever the draw. It is decided by the geometry alone (input
    size, kernel, stride, padding, dilation), so every batch and process of the same input size drops
    the same taps (:attr:`LayerRows.taps`).

    Args:
        x: The convolution's input, shape ``(N, C_in, L)`` (1-D), ``(N, C_in, H, W)`` (2-D) or
            ``(N, C_in, D, H, W)`` (3-D).
        conv: The convolution (its kernel size, stride, padding, dilation and padding mode are
            honoured).
        patches_per_image: Output positions drawn per image, without replacement; ``None`` or a
            number above the output size takes every position.
        generator: CPU generator for the position draw.
        drop_unseen: Leave out the taps that never see the input (see above).

    Returns:
        :class:`LayerRows` with ``x`` of shape ``(N * p, C_in, K)``, ``K = k_1 ... k_D`` (or the
        number of taps kept, listed in ``taps``).

    Raises:
        ValueError: If ``x`` does not have the convolution's expected rank, or the padded input is
            smaller than the kernel.
    """
    spatial = len(conv.kernel_size)
    if x.ndim != spatial + 2:
        raise ValueError(f"{type(conv).__name__} expects a batched {spatial + 2}-D input, got shape {tuple(x.shape)}")
    pads = _pads(conv, spatial)
    # Zero padding is applied to the gathered patches only (a mask), not to the whole activation;
    # other padding modes pad the activation first.
    if any(pads) and conv.padding_mode != "zeros":
        x = F.pad(x, pads, mode=conv.padding_mode)
        pads = [0] * len(pads)
    kernel, stride, dilation = list(conv.kernel_size), list(conv.stride), list(conv.dilation)
    lo = [pads[2 * (spatial - 1 - i)] for i in range(spatial)]  # leading pad of each dim, natural order
    hi = [pads[2 * (spatial - 1 - i) + 1] for i in range(spatial)]
    if spatial == 1:  # reported as a (1, L_out) grid, as a 2-D convolution over a height-1 image
        x = x.unsqueeze(2)
        kernel, stride, dilation, lo, hi = [1, *kernel], [1, *stride], [1, *dilation], [0, *lo], [0, *hi]
    n, c, *size = x.shape
    dims = len(size)
    out = [(size[i] + lo[i] + hi[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(dims)]
    if min(out) < 1:
        padded = tuple(size[i] + lo[i] + hi[i] for i in range(dims))
        raise ValueError(f"input of spatial size {padded} (padded) is smaller than the kernel {tuple(kernel)}")
    total = 1
    for o in out:
        total *= o
    pos = _sample_positions(n, total, patches_per_image, generator).to(x.device)
    p = pos.shape[1]
    offsets = [torch.arange(k) for k in kernel]
    taps = None
    if drop_unseen and any(lo + hi):
        offsets = _seen_offsets(size, out, kernel, stride, dilation, lo)
        if any(len(o) < k for o, k in zip(offsets, kernel, strict=True)):
            taps = _flat_taps(offsets, kernel)
    index: list[Tensor] = []
    inside: Tensor | None = None
    rest = pos
    for i in reversed(range(dims)):  # unravel the flat position, last dimension fastest
        coord = rest % out[i]
        rest = rest // out[i]
        shape = [1] * dims
        shape[i] = len(offsets[i])
        taps_i = offsets[i].to(x.device).reshape(shape)
        idx = (coord * stride[i] - lo[i]).reshape(n, p, *([1] * dims)) + dilation[i] * taps_i
        if lo[i] or hi[i]:
            ok = (idx >= 0) & (idx < size[i])
            inside = ok if inside is None else inside & ok
        index.insert(0, idx.clamp(0, size[i] - 1))
    batch = torch.arange(n, device=x.device).reshape(n, *([1] * (dims + 1)))
    # Advanced indices separated by a slice: the indexed dims come first -> (N, p, k_1, ..., k_D, C).
    patches = x[(batch, slice(None), *index)]
    if inside is not None:
        patches.mul_(inside[..., None].to(patches.dtype))  # a fresh tensor from the gather
    order = [0, 1, dims + 2, *range(2, dims + 2)]
    patches = patches.permute(*order).reshape(n * p, c, -1)
    return LayerRows(x=patches, per_sample=p, positions=pos, out_shape=tuple(out), taps=taps)


def layer_rows(
    module: nn.Module,
    x: Tensor,
    patches_per_image: int | None,
    generator: torch.Generator | None = None,
    drop_unseen: bool = False,
) -> LayerRows:
    """Rows of the dense problem for ``module`` given its input ``x``.

    For ``nn.Linear`` an input ``(N, *, d_in)`` with extra positions ``*`` (e.g. tokens) is treated
    like a convolution's positions: ``patches_per_image`` of them are drawn per sample.

    Args:
        module: An instance of one of :data:`SUPPORTED_LAYERS`.
        x: The module's input.
        patches_per_image: Positions drawn per sample (see :func:`conv_patches`).
        generator: CPU generator for the draw.
        drop_unseen: Convolutions: leave out the kernel taps that never see the input (see
            :func:`conv_patches`).

    Raises:
        TypeError: If ``module`` is not supported.
    """
    if isinstance(module, nn.Linear):
        n = x.shape[0] if x.ndim > 1 else 1
        x3 = x.reshape(n, -1, module.in_features)
        pos = _sample_positions(n, x3.shape[1], patches_per_image, generator).to(x.device)
        rows = x3.gather(1, pos[:, :, None].expand(-1, -1, module.in_features))
        shape = tuple(x.shape[1:-1]) if x.ndim > 2 else ()
        return LayerRows(
            x=rows.reshape(-1, module.in_features), per_sample=pos.shape[1], positions=pos, out_shape=shape
        )
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return conv_patches(x, module, patches_per_image, generator, drop_unseen)
    raise TypeError(
        f"unsupported layer type {type(module).__name__}; supported: {[t.__name__ for t in SUPPORTED_LAYERS]}"
    )
