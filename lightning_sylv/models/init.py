"""Random (data-independent) weight initialization schemes, the baselines of the data-driven init."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = ["INIT_SCHEMES", "random_init_"]

INIT_SCHEMES = ("default", "he_uniform", "he_normal", "xavier_uniform", "xavier_normal")


@torch.no_grad()
def random_init_(module: nn.Module, scheme: str, generator: torch.Generator | None = None) -> None:
    """Re-initialize every ``Linear``/``Conv`` (and BatchNorm) of ``module`` in place.

    ``"he_uniform"``/``"he_normal"`` use ``kaiming_uniform_``/``kaiming_normal_`` (fan-in,
    ``nonlinearity="relu"``); ``"xavier_uniform"``/``"xavier_normal"`` the Glorot schemes. Biases
    are zeroed and BatchNorm layers reset to weight 1, bias 0. ``"default"`` changes nothing
    (PyTorch's own init, as constructed).

    Args:
        module: The network; its submodules are visited recursively.
        scheme: One of :data:`INIT_SCHEMES`.
        generator: Optional generator for the random draws (default: torch's global RNG).

    Raises:
        ValueError: If ``scheme`` is not one of :data:`INIT_SCHEMES`.
    """
    if not isinstance(scheme, str) or scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {list(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, _ConvNd)):
            if scheme == "he_uniform":
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
            elif scheme == "he_normal":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=generator)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight, generator=generator)
            else:
                nn.init.xavier_normal_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
