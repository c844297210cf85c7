"""Low-rank (factorized) layers ``W = U·V``.

A :class:`LowRankLinear` computes ``U (V x) + b`` with two ``nn.Linear`` sublayers: ``v`` (``in ->
rank``, no bias, weight ``V``) and ``u`` (``rank -> out``, weight ``U``, the bias). A
:class:`LowRankConv2d` is a ``k x k`` convolution to ``rank`` channels (``v``: same kernel, stride,
padding, dilation and padding mode as the original) followed by a ``1 x 1`` convolution to the outputs
(``u``, with the bias); its merged weight is ``U @ V.reshape(rank, -1)``, reshaped to the original
``(out, in, k_h, k_w)``. Because ``v`` has the original convolution's geometry,
:func:`lightning_sylv.rows.layer_rows` gathers exactly the original layer's patches from it.

Both keep the full-rank weight they approximate in the non-persistent buffers ``full_weight`` and
``full_bias`` (moved with the module, not saved in checkpoints; ``None`` once dropped or when the
layer was built from scratch), for the initializers of :mod:`lightning_sylv.lowrank.init`.

This module imports no Lightning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_sylv._checks import is_int
from lightning_sylv.lowrank.factorize import spectral_factors

__all__ = ["LowRankConv2d", "LowRankLayer", "LowRankLinear", "full_rank_of", "resolve_rank"]


def full_rank_of(layer: nn.Linear | nn.Conv2d) -> int:
    """The largest useful rank of a dense layer: ``min(out, in)`` (``in = C_in * k_h * k_w`` for convs).

    Args:
        layer: An ``nn.Linear`` or an ungrouped ``nn.Conv2d``.
    """
    w = layer.weight
    return min(w.shape[0], math.prod(w.shape[1:]))


def resolve_rank(rank: int | float, full_rank: int, name: str = "rank") -> int:
    """An int rank in ``[1, full_rank]`` from an int or a fraction of the full rank.

    A float ``f`` in ``(0, 1]`` gives ``max(1, round(f * full_rank))``.

    Args:
        rank: An int in ``[1, full_rank]`` or a float fraction in ``(0, 1]``.
        full_rank: ``min(out, in)`` of the layer.
        name: How the value is called in error messages (e.g. ``"ranks['net.fc']"``).

    Raises:
        ValueError: If ``rank`` is not a positive int up to ``full_rank`` nor a fraction in ``(0, 1]``.
    """
    if is_int(rank):
        if not 1 <= rank <= full_rank:
            raise ValueError(f"{name} must be in [1, {full_rank}] (the layer's full rank min(out, in)), got {rank!r}")
        return int(rank)
    if isinstance(rank, float) and math.isfinite(rank) and 0 < rank <= 1:
        return max(1, min(full_rank, round(rank * full_rank)))
    raise ValueError(f"{name} must be a positive int or a fraction in (0, 1], got {rank!r}")


class LowRankLayer(nn.Module):
    """Base class of the factorized layers: sublayers ``v`` (weight ``V``) then ``u`` (``U``, bias).

    Attributes:
        rank: ``r``, the inner dimension.
        full_weight: The full-rank weight being approximated (original layout), or ``None``.
        full_bias: Its bias, or ``None``.
    """

    rank: int
    u: nn.Module
    v: nn.Module
    full_weight: Tensor | None
    full_bias: Tensor | None

    def _init_full(self) -> None:
        self.register_buffer("full_weight", None, persistent=False)
        self.register_buffer("full_bias", None, persistent=False)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the equivalent full-rank weight."""
        raise NotImplementedError

    @property
    def full_rank(self) -> int:
        """``min(out, in)`` of the equivalent full-rank layer."""
        shape = self.weight_shape
        return min(shape[0], math.prod(shape[1:]))

    @property
    def bias(self) -> Tensor | None:
        """The layer's bias (on ``u``), or ``None``."""
        return self.u.bias  # type: ignore[return-value]

    def factor_matrices(self) -> tuple[Tensor, Tensor]:
        """``(U, V)`` as matrices ``(out, rank)`` and ``(rank, in)`` (views of the parameters)."""
        u = self.u.weight.reshape(self.u.weight.shape[0], self.rank)  # type: ignore[union-attr]
        v = self.v.weight.reshape(self.rank, -1)  # type: ignore[union-attr]
        return u, v

    def merged_weight(self) -> Tensor:
        """``U @ V`` in the layout of the equivalent full-rank layer's weight."""
        u, v = self.factor_matrices()
        return (u @ v).reshape(self.weight_shape)

    def set_full(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Store (a detached copy of) the full-rank weight and bias to approximate.

        Args:
            weight: Weight in the full-rank layer's layout (``(out, in)`` or ``(out, in, k_h, k_w)``).
            bias: ``(out,)`` or ``None``.

        Raises:
            ValueError: On a shape mismatch.
        """
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight must have shape {self.weight_shape}, got {tuple(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (self.weight_shape[0],):
            raise ValueError(f"bias must have shape ({self.weight_shape[0]},), got {tuple(bias.shape)}")
        dev = self.v.weight.device  # type: ignore[union-attr]
        self.full_weight = weight.detach().clone().to(dev)
        self.full_bias = None if bias is None else bias.detach().clone().to(dev)

    def drop_full(self) -> None:
        """Forget the stored full-rank weight and bias (frees their memory)."""
        self.full_weight = None
        self.full_bias = None

    @torch.no_grad()
    def set_factors(self, u: Tensor, v: Tensor, bias: Tensor | None = None) -> None:
        """Write ``U`` ``(out, rank)``, ``V`` ``(rank, in)`` and the bias in place, cast to the parameters' dtype.

        Args:
            u: ``U``, shape ``(out, rank)``.
            v: ``V``, shape ``(rank, in)``.
            bias: New bias ``(out,)``; ignored when the layer has none; ``None`` keeps the current one.

        Raises:
            ValueError: On a shape mismatch.
        """
        pu, pv = self.factor_matrices()
        if tuple(u.shape) != tuple(pu.shape) or tuple(v.shape) != tuple(pv.shape):
            raise ValueError(
                f"factors must have shapes {tuple(pu.shape)} and {tuple(pv.shape)}, "
                f"got {tuple(u.shape)} and {tuple(v.shape)}"
            )
        wu, wv = self.u.weight, self.v.weight  # type: ignore[union-attr]
        wu.copy_(u.reshape(wu.shape).to(device=wu.device, dtype=wu.dtype))
        wv.copy_(v.reshape(wv.shape).to(device=wv.device, dtype=wv.dtype))
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias.to(device=self.bias.device, dtype=self.bias.dtype))

    def _copy_from(self, dense: nn.Linear | nn.Conv2d, keep_full: bool) -> None:
        """Spectral factors, bias and ``requires_grad`` of ``dense``; its weight stored if ``keep_full``."""
        w, b = dense.weight.detach(), None if dense.bias is None else dense.bias.detach()
        u, v = spectral_factors(w.reshape(w.shape[0], -1).double(), self.rank)
        self.set_factors(u, v, b)
        self.u.weight.requires_grad_(dense.weight.requires_grad)  # type: ignore[union-attr]
        self.v.weight.requires_grad_(dense.weight.requires_grad)  # type: ignore[union-attr]
        if dense.bias is not None and self.bias is not None:
            self.bias.requires_grad_(dense.bias.requires_grad)
        if keep_full:
            self.set_full(w, b)

    def forward(self, x: Tensor) -> Tensor:
        """``u(v(x))``."""
        return self.u(self.v(x))


class LowRankLinear(LowRankLayer):
    """``y = U (V x) + b``: an ``nn.Linear`` of rank at most ``rank``.

    Each factor gets PyTorch's default ``nn.Linear`` initialization; use :meth:`from_dense`,
    :func:`to_low_rank` or :func:`lightning_sylv.lowrank.init.init_low_rank_` for a principled one.

    Args:
        in_features: Input features.
        out_features: Output features.
        rank: Inner dimension ``r``, in ``[1, min(in_features, out_features)]``.
        bias: Learn an additive bias (on ``u``).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: If a size is not a positive int or ``rank`` exceeds ``min(in_features, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not is_int(rank):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.in_features, self.out_features = in_features, out_features
        self.rank = resolve_rank(rank, min(in_features, out_features))
        self.v = nn.Linear(in_features, self.rank, bias=False, device=device, dtype=dtype)
        self.u = nn.Linear(self.rank, out_features, bias=bias, device=device, dtype=dtype)
        self._init_full()

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int | float, keep_full: bool = True) -> LowRankLinear:
        """A low-rank copy of ``linear``: spectral (truncated SVD) factors, same bias, device and dtype.

        Args:
            linear: The full-rank layer.
            rank: Int rank or fraction of ``min(in, out)`` (see :func:`resolve_rank`).
            keep_full: Store ``linear``'s weight and bias in ``full_weight``/``full_bias``.
        """
        w = linear.weight
        r = resolve_rank(rank, full_rank_of(linear))
        layer = cls(linear.in_features, linear.out_features, r, linear.bias is not None, w.device, w.dtype)
        layer._copy_from(linear, keep_full)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"bias={self.bias is not None}"
        )


class LowRankConv2d(LowRankLayer):
    """A ``k x k`` convolution to ``rank`` channels (``v``) followed by a ``1 x 1`` one (``u``, bias).

    Equivalent to an ``nn.Conv2d`` whose weight ``(out, in, k_h, k_w)`` reshaped to
    ``(out, in * k_h * k_w)`` has rank at most ``rank``. Grouped convolutions are not supported.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size of ``v`` (int or pair).
        rank: Inner channels ``r``, in ``[1, min(out_channels, in_channels * k_h * k_w)]``.
        stride: Stride of ``v``.
        padding: Padding of ``v`` (int, pair, ``"same"`` or ``"valid"``).
        dilation: Dilation of ``v``.
        bias: Learn an additive bias (on ``u``).
        padding_mode: Padding mode of ``v`` (``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"``).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: If a size is not a positive int or ``rank`` exceeds the full rank.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not is_int(rank):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        ks = (kernel_size, kernel_size) if is_int(kernel_size) else tuple(kernel_size)  # type: ignore[arg-type]
        if len(ks) != 2 or not all(is_int(k) and k >= 1 for k in ks):
            raise ValueError(f"kernel_size must be a positive int or a pair of them, got {kernel_size!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.rank = resolve_rank(rank, min(out_channels, in_channels * ks[0] * ks[1]))
        self.v = nn.Conv2d(
            in_channels,
            self.rank,
            ks,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.u = nn.Conv2d(self.rank, out_channels, 1, bias=bias, device=device, dtype=dtype)
        self._init_full()

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """``(out_channels, in_channels, k_h, k_w)``."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int | float, keep_full: bool = True) -> LowRankConv2d:
        """A low-rank copy of ``conv``: spectral factors, same geometry, bias, device and dtype.

        Args:
            conv: The full-rank convolution (``groups == 1``).
            rank: Int rank or fraction of ``min(out, in * k_h * k_w)`` (see :func:`resolve_rank`).
            keep_full: Store ``conv``'s weight and bias in ``full_weight``/``full_bias``.

        Raises:
            ValueError: If ``conv`` is grouped.
        """
        if conv.groups != 1:
            raise ValueError(f"grouped convolutions (groups={conv.groups}) cannot be converted to LowRankConv2d")
        w = conv.weight
        r = resolve_rank(rank, full_rank_of(conv))
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            r,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,
            conv.bias is not None,
            conv.padding_mode,
            w.device,
            w.dtype,  # type: ignore[arg-type]
        )
        layer._copy_from(conv, keep_full)
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
            f"stride={self.v.stride}, padding={self.v.padding}, bias={self.bias is not None}"
        )
