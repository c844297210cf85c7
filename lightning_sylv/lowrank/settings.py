"""The options of the low-rank initializer as one frozen, validated object (see :mod:`lightning_sylv.settings`).

This module imports no Lightning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lightning_sylv._checks import (
    check_bool,
    check_choice,
    check_int,
    check_nonnegative_int,
    check_nonnegative_number,
    check_positive_int,
    check_positive_number,
)
from lightning_sylv.codes import LatentCode
from lightning_sylv.lowrank.factorize import METHODS
from lightning_sylv.settings import check_codes

__all__ = ["LowRankSettings"]


@dataclass(frozen=True, kw_only=True)
class LowRankSettings:
    """The options of :func:`~lightning_sylv.lowrank.low_rank_init_` and :class:`~lightning_sylv.LowRankInit`.

    Attributes:
        method: ``"spectral"``, ``"data"`` or ``"relu"`` (:data:`~lightning_sylv.lowrank.METHODS`).
        full_weight: ``"current"``: approximate each layer's stored ``full_weight`` (the weight it was
            converted from; the product ``U V`` if none is stored). ``"sylvester"``: approximate the
            Sylvester solution for the layer's actual input (``lam``, ``latent``; ``head_latent`` for
            the last executed layer), and Sylvester-initialize the plain ``Linear``/``Conv`` layers
            in the same pass — a data-driven initialization of the whole low-rank network.
        patches_per_image: Random patch positions per image for convolutions (``None``: all).
        seed: Seed of the patch draws.
        ridge: Relative ridge on the input covariance (``"data"``, ``"relu"``).
        relu_iters: Refinement iterations of ``"relu"``.
        through_batchnorm: Fit (and report) the ReLU error through a BatchNorm that directly consumes
            the layer's output.
        recalibrate_bn: Recompute every BatchNorm's running statistics during the pass.
        lam: λ of the Sylvester solve (``"sylvester"`` only).
        latent: Code of hidden layers for the Sylvester solve.
        head_latent: Code of the head for the Sylvester solve.

    Raises:
        ValueError: At construction, naming the first invalid argument and its value.

    Example:
        >>> LowRankSettings(method="data").method
        'data'
        >>> LowRankSettings(relu_iters=1.5)
        Traceback (most recent call last):
        ...
        ValueError: relu_iters must be an int >= 0, got 1.5
    """

    method: str = "relu"
    full_weight: Literal["current", "sylvester"] = "current"
    patches_per_image: int | None = 16
    seed: int = 0
    ridge: float = 1e-6
    relu_iters: int = 5
    through_batchnorm: bool = True
    recalibrate_bn: bool = True
    lam: float = 10.0
    latent: str | LatentCode = "pca"
    head_latent: str | LatentCode = "onehot"

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("full_weight", self.full_weight, ("current", "sylvester"))
        check_positive_int("patches_per_image", self.patches_per_image, allow_none=True)
        check_int("seed", self.seed)
        check_nonnegative_number("ridge", self.ridge)
        check_nonnegative_int("relu_iters", self.relu_iters)
        check_bool("through_batchnorm", self.through_batchnorm)
        check_bool("recalibrate_bn", self.recalibrate_bn)
        check_positive_number("lam", self.lam)
        check_codes(self)
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "ridge", float(self.ridge))

    #: Low-rank initialization works without labels (a one-hot head falls back to the hidden code).
    requires_labels = False

    @property
    def recalibrates_norms(self) -> bool:
        """Whether BatchNorm statistics are recomputed."""
        return self.recalibrate_bn

    def replace(self, **changes: Any) -> LowRankSettings:
        """A copy with ``changes`` (validated like the original)."""
        return dataclasses.replace(self, **changes)
