"""Alternative latent codes backed by scikit-learn: LDA, ICA and K-means (Fig. 3 of the paper).

All three need the rows themselves (no statistics-only fit), so they run on a single batch in a
single process. They fit on at most ``max_fit_rows`` rows (a seeded random subset, for speed), then
transform every row; the result moves back to the rows' device and dtype. Too few columns are
completed with :func:`lightning_sylv.codes.base.fill_columns` (negated columns, then random mixtures).

This module imports no Lightning.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import FastICA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor

from lightning_sylv.codes.base import LatentCode, check_rows, fill_columns
from lightning_sylv.codes.linear import PCACode

if TYPE_CHECKING:
    from lightning_sylv.rows import LayerRows

__all__ = ["ICACode", "KMeansCode", "LDACode"]


def _fit_rows(x: Tensor, max_rows: int, generator: torch.Generator | None) -> Tensor:
    if x.shape[0] <= max_rows:
        return torch.arange(x.shape[0])
    return torch.randperm(x.shape[0], generator=generator)[:max_rows]


def _seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


class _SklearnCode(LatentCode):
    def __init__(self, max_fit_rows: int = 5000) -> None:
        if not isinstance(max_fit_rows, int) or max_fit_rows < 2:
            raise ValueError(f"max_fit_rows must be an int >= 2, got {max_fit_rows!r}")
        self.max_fit_rows = max_fit_rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_fit_rows={self.max_fit_rows})"


class LDACode(_SklearnCode):
    """Fisher discriminant (LDA) projections; needs labels.

    LDA yields at most ``min(C - 1, d_in)`` discriminant directions for ``C`` classes. The first
    columns of ``S`` are the LDA projections (``LinearDiscriminantAnalysis(solver="eigen",
    shrinkage="auto")``); the remaining columns are the principal components of the data after the
    discriminant directions are projected out (so they carry what LDA ignores), then the usual fill.

    Args:
        max_fit_rows: Rows used to fit the LDA (a seeded random subset when there are more).
    """

    name = "lda"
    requires_labels = True

    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        check_rows(x, out_features)
        if labels is None:
            raise ValueError("the LDA code needs class labels, but the data has none; use 'pca' or 'ica'")
        idx = _fit_rows(x, self.max_fit_rows, generator)
        xn = x.detach().cpu().double().numpy()
        yn = labels.detach().cpu().numpy()
        classes = np.unique(yn[idx.numpy()])
        if classes.size < 2:
            warnings.warn("LDA needs at least two classes; using principal components instead", stacklevel=2)
            return PCACode().fit(x, out_features, generator=generator)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
        lda.fit(xn[idx.numpy()], yn[idx.numpy()])
        k = min(out_features, classes.size - 1, x.shape[1])
        directions = torch.as_tensor(lda.scalings_[:, :k], dtype=x.dtype, device=x.device)  # (d, k)
        directions = directions / directions.norm(dim=0, keepdim=True).clamp_min(1e-12)
        xc = x - x.mean(0)
        s = xc @ directions
        if out_features > k and x.shape[1] > k:
            q, _ = torch.linalg.qr(directions)
            rest = xc - (xc @ q) @ q.T  # the data with the discriminant span removed
            pcs = PCACode().fit(rest, min(out_features - k, x.shape[1] - k), generator=generator)
            s = torch.cat([s, pcs], dim=1)
        return fill_columns(s, out_features, generator)


class ICACode(_SklearnCode):
    """Independent components (``FastICA``, whitened, unit-variance sources).

    At most ``min(out_features, d_in)`` components are estimated; the rest are filled.

    Args:
        max_fit_rows: Rows used to fit the ICA (a seeded random subset when there are more).
        max_iter: FastICA iterations (a non-converged fit is used as it is, with scikit-learn's warning
            silenced: it is an initialization).
    """

    name = "ica"

    def __init__(self, max_fit_rows: int = 5000, max_iter: int = 200) -> None:
        super().__init__(max_fit_rows)
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.max_iter = max_iter

    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        check_rows(x, out_features)
        k = min(out_features, x.shape[1], max(x.shape[0] - 1, 1))
        idx = _fit_rows(x, self.max_fit_rows, generator)
        xn = x.detach().cpu().double().numpy()
        ica = FastICA(n_components=k, whiten="unit-variance", max_iter=self.max_iter, random_state=_seed(generator))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ica.fit(xn[idx.numpy()])
        s = torch.as_tensor(ica.transform(xn), dtype=x.dtype, device=x.device)
        return fill_columns(s, out_features, generator)


class KMeansCode(_SklearnCode):
    """Inner products with K-means centroids, ``S = Hᵀ X`` (``H``: ``d_in x d_out`` centroids).

    As in the paper, K-means with ``out_features`` clusters runs on the (centred) rows; the code is the
    inner product of every row with every centroid. With fewer distinct rows than clusters, the missing
    columns are filled.

    Args:
        max_fit_rows: Rows used to fit K-means (a seeded random subset when there are more).
        n_init: K-means restarts.
    """

    name = "kmeans"

    def __init__(self, max_fit_rows: int = 5000, n_init: int = 1) -> None:
        super().__init__(max_fit_rows)
        if not isinstance(n_init, int) or n_init < 1:
            raise ValueError(f"n_init must be a positive int, got {n_init!r}")
        self.n_init = n_init

    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        check_rows(x, out_features)
        idx = _fit_rows(x, self.max_fit_rows, generator)
        xc = x - x.mean(0)
        xn = xc.detach().cpu().double().numpy()[idx.numpy()]
        k = min(out_features, int(np.unique(xn, axis=0).shape[0]))
        km = KMeans(n_clusters=k, n_init=self.n_init, random_state=_seed(generator))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            km.fit(xn)
        centers = torch.as_tensor(km.cluster_centers_.T, dtype=x.dtype, device=x.device)  # (d, k)
        return fill_columns(xc @ centers, out_features, generator)
