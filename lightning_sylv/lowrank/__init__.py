"""Low-rank (factorized) layers and their function-aware initialization.

* :mod:`~lightning_sylv.lowrank.layers`: :class:`LowRankLinear`, :class:`LowRankConv2d` (``W = U·V``).
* :mod:`~lightning_sylv.lowrank.convert`: :func:`to_low_rank`, which converts chosen layers of an
  existing model in place.
* :mod:`~lightning_sylv.lowrank.factorize`: the matrix math of the three initializers —
  ``"spectral"`` (truncated SVD of ``W``), ``"data"`` (reduced-rank regression of ``W x`` on the
  layer's inputs) and ``"relu"`` (refined so that ``relu(U V x + b)`` matches ``relu(W x + b)``).
* :mod:`~lightning_sylv.lowrank.init`: :func:`init_low_rank_`, one layer in place.
* :mod:`~lightning_sylv.lowrank.engine`: :func:`low_rank_init_`, every low-rank layer of a model in
  one forward pass over a data subset, in execution order.

The :class:`lightning_sylv.callbacks.LowRankInit` callback is the Lightning glue. Nothing here
imports Lightning.
"""

from lightning_sylv.lowrank.convert import to_low_rank
from lightning_sylv.lowrank.engine import (
    LowRankInitError,
    LowRankLayerReport,
    LowRankReport,
    format_low_rank_table,
    low_rank_init_,
)
from lightning_sylv.lowrank.factorize import (
    METHODS,
    Factors,
    data_factors,
    factorize,
    linear_error,
    relu_error,
    relu_factors,
    spectral_factors,
)
from lightning_sylv.lowrank.init import LowRankFit, init_low_rank_, input_rows
from lightning_sylv.lowrank.layers import (
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    full_rank_of,
    resolve_rank,
)
from lightning_sylv.lowrank.settings import LowRankSettings

__all__ = [
    "METHODS",
    "Factors",
    "LowRankConv2d",
    "LowRankFit",
    "LowRankInitError",
    "LowRankLayer",
    "LowRankLayerReport",
    "LowRankLinear",
    "LowRankReport",
    "LowRankSettings",
    "data_factors",
    "factorize",
    "format_low_rank_table",
    "full_rank_of",
    "init_low_rank_",
    "input_rows",
    "linear_error",
    "low_rank_init_",
    "relu_error",
    "relu_factors",
    "resolve_rank",
    "spectral_factors",
    "to_low_rank",
]
