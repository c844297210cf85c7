"""Latent codes ``S``: the targets a layer's outputs should encode, and their registry.

* :mod:`~lightning_sylv.codes.base`: the :class:`LatentCode` interface and shared helpers.
* :mod:`~lightning_sylv.codes.linear`: :class:`PCACode` (``"pca"``, ``"signed_pca"``, hidden layers)
  and :class:`OneHotCode` (``"onehot"``, the classifier head), fitted from statistics.
* :mod:`~lightning_sylv.codes.sklearn`: LDA, ICA and K-means (scikit-learn, Fig. 3 of the paper).

Codes are looked up by name through :func:`resolve_code`. The implementations never import this
registry, only :mod:`~lightning_sylv.codes.base`.

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from lightning_sylv.codes.base import LatentCode, fill_columns
from lightning_sylv.codes.linear import OneHotCode, PCACode

__all__ = [
    "CODES",
    "ICACode",
    "KMeansCode",
    "LDACode",
    "LatentCode",
    "OneHotCode",
    "PCACode",
    "fill_columns",
    "resolve_code",
]

_SKLEARN = ("ICACode", "KMeansCode", "LDACode")


def _sklearn(name: str) -> Any:
    """A scikit-learn backed code class, imported on first use (scikit-learn takes a second to import)."""
    from lightning_sylv.codes import sklearn

    return getattr(sklearn, name)


def __getattr__(name: str) -> Any:  # PEP 562: the scikit-learn codes load lazily
    if name in _SKLEARN:
        return _sklearn(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Built-in codes by name (read-only): ``pca``, ``signed_pca``, ``rotated_pca``, ``rotated_signed_pca``
#: (see :class:`PCACode`), ``onehot``, and the scikit-learn backed ``lda``, ``ica`` and ``kmeans``
#: (Fig. 3 of the paper; see :mod:`lightning_sylv.codes.sklearn`).
CODES: Mapping[str, Callable[[], LatentCode]] = MappingProxyType(
    {
        "pca": PCACode,
        "signed_pca": lambda: PCACode(signed=True),
        "rotated_pca": lambda: PCACode(rotate=True),
        "rotated_signed_pca": lambda: PCACode(signed=True, rotate=True),
        "onehot": OneHotCode,
        "lda": lambda: _sklearn("LDACode")(),
        "ica": lambda: _sklearn("ICACode")(),
        "kmeans": lambda: _sklearn("KMeansCode")(),
    }
)


def resolve_code(code: str | LatentCode) -> LatentCode:
    """Return a :class:`LatentCode` for a name in :data:`CODES` or an instance.

    Raises:
        ValueError: If ``code`` is an unknown name.
        TypeError: If ``code`` is neither a string nor a :class:`LatentCode`.
    """
    if isinstance(code, LatentCode):
        return code
    if isinstance(code, str):
        try:
            return CODES[code]()
        except KeyError:
            raise ValueError(f"unknown latent code {code!r}; choose one of {sorted(CODES)}") from None
    raise TypeError(f"code must be a name or a LatentCode, got {type(code).__name__}")
