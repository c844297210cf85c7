"""Linear codes from input statistics: principal components (hidden layers) and one-hot labels (head).

* :class:`PCACode` (``"pca"``, ``"signed_pca"``): projections onto the leading principal components.
* :class:`OneHotCode` (``"onehot"``): one-hot class labels.

Both fit from sums of the rows (:class:`~lightning_sylv.stats.InputStats`), so they stream and
combine across processes, and both accept stacks of row sets (convolution groups).

This module imports no Lightning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_sylv.codes.base import LatentCode, check_rows, fill_columns
from lightning_sylv.layer_fit import Moments
from lightning_sylv.solver import symmetric_eigh
from lightning_sylv.stats import InputStats

if TYPE_CHECKING:
    from lightning_sylv.rows import LayerRows

__all__ = ["OneHotCode", "PCACode", "random_rotation"]


def _linear_code_moments(
    stats: InputStats, proj: Tensor, offset: Tensor, fit_bias: bool, centered: bool = False
) -> Moments:
    """Moments for a code ``S = (X − offset) @ proj`` from input statistics (``centered``: the offset
    is the mean)."""
    mu = stats.mean
    pt = proj.mT
    if fit_bias:
        cov = stats.covariance(center=True)
        mean_s = ((mu - offset)[..., None, :] @ proj).squeeze(-2)
        cross = pt @ cov  # the one (k x d) @ (d x d) product; SᵀS/n = cross @ P
        return Moments(gram_x=cov, gram_s=cross @ proj, cross=cross, mean_x=mu, mean_s=mean_s)
    raw = stats.covariance(center=False)
    e_cx = raw - offset[..., :, None] * mu[..., None, :]  # E[(x - c) xᵀ]
    cross = pt @ e_cx
    if centered:  # c = μ: E[(x - c)(x - c)ᵀ] = E[(x - c) xᵀ], the covariance (one d x d fewer)
        return Moments(gram_x=raw, gram_s=cross @ proj, cross=cross)
    e_cc = e_cx - mu[..., :, None] * offset[..., None, :] + offset[..., :, None] * offset[..., None, :]
    return Moments(gram_x=raw, gram_s=pt @ e_cc @ proj, cross=cross)


def random_rotation(k: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-distributed random orthogonal ``(k, k)`` matrix (float64, CPU).

    Algorithm: QR of a standard Gaussian matrix with the signs of ``R``'s diagonal moved into ``Q``
    (Mezzadri, "How to generate random matrices from the classical compact groups", Notices of the
    AMS 54(5), 2007).
    """
    q, r = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return q * signs


class PCACode(LatentCode):
    """Principal-component code for hidden layers.

    Column ``j < k`` of ``S`` is the projection of the centred rows onto the ``j``-th principal
    direction (largest variance first), where ``k = min(out_features, d_in, n - 1)`` is the number of
    directions the data can supply. Each direction's sign is fixed so that its largest-magnitude
    entry is positive (deterministic output).

    When ``out_features > k`` the remaining columns are filled as follows, and never with exact
    duplicates (duplicate units would stay identical under gradient descent):

    * columns ``k .. 2k-1`` are the negated components ``-S[:, 0..k-1]``, so that after a ReLU both
      halves of every direction survive;
    * columns from ``2k`` on are random unit-norm combinations of the ``k`` components (drawn from
      ``generator``).

    With ``signed=True`` the layer's units come in pairs instead: the leading ``ceil(out / 2)``
    components and their negations (``k`` is then at most ``ceil(out / 2)``). Every kept direction
    then survives a ReLU with both signs, at the price of half as many distinct directions.

    Args:
        center: Subtract the mean of ``x`` before projecting (standard PCA).
    With ``rotate=True`` the ``k`` components are mixed by a random rotation (a Haar-distributed
    orthogonal ``k x k`` matrix drawn from ``generator``) before the columns are filled: the code
    spans the same principal subspace, but every unit carries about the mean variance of the ``k``
    directions instead of one direction's. Without it, a BatchNorm after the layer divides unit
    ``j`` by the square root of the ``j``-th eigenvalue, which whitens the subspace: directions
    of little variance, mostly noise with few rows, come out as loud as the leading ones. On
    torchvision/timm models this rotation is what makes a PCA initialization of the hidden layers
    beat the models' own initialization (``examples/RESULTS.md``, zoo section).

    Args:
        center: Subtract the mean of ``x`` before projecting (standard PCA).
        signed: Pair every component with its negation (see above).
        energy: Keep only the leading directions that explain this share of the variance (in
            ``(0, 1]``); the remaining columns are filled as above. ``None``: all ``k``.
        rotate: Mix the components by a random rotation (see above).
    """

    name = "pca"
    from_statistics = True

    def __init__(
        self, center: bool = True, signed: bool = False, energy: float | None = None, rotate: bool = False
    ) -> None:
        if energy is not None and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
            raise ValueError(f"energy must be in (0, 1] or None, got {energy!r}")
        self.center = center
        self.signed = signed
        self.energy = energy
        self.rotate = rotate
        self.name = ("rotated_" if rotate else "") + ("signed_" if signed else "") + "pca"

    def components(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(mean, components, explained_variance)`` of the top ``k`` directions of rows ``x``.

        Args:
            x: Rows, shape ``(n, d)``.
            k: Number of directions, ``1 <= k <= d``.

        Returns:
            ``mean`` ``(d,)``, ``components`` ``(k, d)`` with orthonormal rows, and the variances
            ``(k,)`` in decreasing order (normalized by ``n - 1`` like scikit-learn).
        """
        stats = InputStats.from_rows(x, dtype=x.dtype)
        comps, evals = self._eig(stats, k)
        n = x.shape[0]
        return self._offset(stats), comps, evals * n / max(n - 1, 1)

    def _offset(self, stats: InputStats) -> Tensor:
        return stats.mean if self.center else torch.zeros_like(stats.sum_x)

    def _eig(self, stats: InputStats, k: int, full: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
        evals, evecs, _ = symmetric_eigh(stats.covariance(center=self.center))
        if full is not None:
            full.append((evals, evecs))
        # eigh sorts ascending: the k largest are the last k, reversed (batched alike).
        top = evals[..., -k:].flip(-1)
        comps = evecs[..., -k:].flip(-1).mT.contiguous()  # (*batch, k, d)
        # Deterministic signs: largest-magnitude entry of each component positive.
        idx = comps.abs().argmax(dim=-1, keepdim=True)
        signs = torch.sign(comps.gather(-1, idx))
        signs[signs == 0] = 1
        return comps * signs, top.clamp_min(0)

    def projection(self, stats: InputStats, out_features: int, generator: torch.Generator | None = None) -> Tensor:
        """The ``(d, out_features)`` matrix ``P`` with ``S = (X − offset) P`` (see the class docstring).

        Args:
            stats: Statistics of the rows.
            out_features: Number of code columns.
            generator: CPU generator for the random fills.
        """
        return self._projection(stats, out_features, generator)[0]

    def _projection(
        self, stats: InputStats, out_features: int, generator: torch.Generator | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor] | Tensor]:
        """``P``, the eigendecomposition of the covariance it came from, and what the solver needs on the
        code's side: without filled columns the eigendecomposition of ``Pᵀ Σ P`` (``Rᵀ diag(σ_top) R``);
        with them an orthonormal basis ``(out_features, k)`` of the ``k``-dimensional subspace that
        ``SᵀS`` and ``SᵀX`` live in (see :attr:`~lightning_sylv.layer_fit.Moments.basis_s`)."""
        d = stats.sum_x.shape[-1]
        n = int(stats.n)
        wanted = -(-out_features // 2) if self.signed else out_features
        k = min(wanted, d, max(n - 1, 1) if self.center else n)
        full: list[tuple[Tensor, Tensor]] = []
        comps, top = self._eig(stats, k, full)
        if self.energy is not None:
            evals = full[-1][0].clamp_min(0).flip(-1)  # descending
            share = evals.cumsum(-1) / evals.sum(-1, keepdim=True).clamp_min(torch.finfo(evals.dtype).tiny)
            k_e = min(k, int((share < self.energy).sum(-1).max()) + 1)
            comps, top = comps[..., :k_e, :], top[..., :k_e]
        proj = comps.mT
        basis = torch.eye(proj.shape[-1], dtype=proj.dtype, device=proj.device).expand(*top.shape, -1)
        if self.rotate:
            rot = random_rotation(proj.shape[-1], generator).to(device=proj.device, dtype=proj.dtype)
            proj, basis = proj @ rot, rot.mT.expand_as(basis)
        # S = (X - offset) @ P is linear in P; its Gram PᵀΣP = basis diag(top) basisᵀ unless filled.
        if out_features == proj.shape[-1]:
            return proj, full[0], (top, basis)
        filled = fill_columns(proj, out_features, generator)
        # Filled columns are combinations of the k directions: P_filled = P G with G = Pᵀ P_filled
        # (P has orthonormal columns). SᵀS and SᵀX live in range(Gᵀ), k of the out_features dimensions.
        mix = proj.mT @ filled
        return filled, full[0], torch.linalg.qr(mix.mT).Q

    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        check_rows(x, out_features)
        stats = InputStats.from_rows(x, dtype=x.dtype)
        return (x - self._offset(stats)) @ self.projection(stats, out_features, generator)

    def moments(
        self,
        stats: InputStats,
        out_features: int,
        fit_bias: bool,
        generator: torch.Generator | None = None,
    ) -> Moments:
        if not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be a positive int, got {out_features!r}")
        proj, eig_cov, code_side = self._projection(stats, out_features, generator)
        m = _linear_code_moments(stats, proj, self._offset(stats), fit_bias, centered=self.center)
        if isinstance(code_side, Tensor):
            # Filled columns (more outputs than directions, k < out_features): S = (X - c) P has rank
            # <= k and both SᵀS and SᵀX live in a k-dimensional subspace, where the solve runs exactly.
            m = replace(m, basis_s=code_side)
        elif self.center:
            m = replace(m, eig_s=code_side)
        if self.center:  # the solver's B is the covariance (bias) or the covariance plus μμᵀ (no bias)
            m = replace(m, eig_x=eig_cov, x_shift=None if fit_bias else stats.mean)
        return m

    def __repr__(self) -> str:
        return f"PCACode(center={self.center}, signed={self.signed}, energy={self.energy}, rotate={self.rotate})"


class OneHotCode(LatentCode):
    """One-hot labels, the code of the classifier head.

    ``S[i, c] = 1`` if row ``i`` has label ``c`` else ``0``. The layer must have one output per class.

    Raises (from :meth:`fit`):
        ValueError: If ``labels`` is missing, has the wrong length, or holds a label outside
            ``[0, out_features)``.
    """

    name = "onehot"
    requires_labels = True
    from_statistics = True

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
            raise ValueError(
                "the one-hot code needs class labels, but the data has none; use an unsupervised "
                "code such as 'pca' for this layer"
            )
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= out_features:
            raise ValueError(
                f"labels span [{lo}, {hi}] but the layer has {out_features} outputs: a one-hot head "
                "needs one output per class"
            )
        return torch.nn.functional.one_hot(labels.long().to(x.device), out_features).to(x.dtype)

    def moments(
        self,
        stats: InputStats,
        out_features: int,
        fit_bias: bool,
        generator: torch.Generator | None = None,
    ) -> Moments:
        if stats.counts is None or stats.class_sums is None:
            raise ValueError(
                "the one-hot code needs class labels, but the data has none; use an unsupervised "
                "code such as 'pca' for this layer"
            )
        c = stats.counts.shape[0]
        if c > out_features:
            raise ValueError(
                f"labels span [0, {c - 1}] but the layer has {out_features} outputs: a one-hot head "
                "needs one output per class"
            )
        pad = out_features - c
        counts = torch.nn.functional.pad(stats.counts, (0, pad))
        sums = torch.nn.functional.pad(stats.class_sums, (0, 0, 0, pad))
        n = stats.n
        if not fit_bias:  # SᵀS/n is diagonal: its eigendecomposition is known
            eye = torch.eye(out_features, dtype=counts.dtype, device=counts.device)
            return Moments(
                gram_x=stats.covariance(center=False),
                gram_s=torch.diag(counts) / n,
                cross=sums / n,
                eig_s=(counts / n, eye),
            )
        p, mu = counts / n, stats.mean
        return Moments(
            gram_x=stats.covariance(center=True),
            gram_s=torch.diag(p) - torch.outer(p, p),
            cross=sums / n - p[:, None] * mu[..., None, :],
            mean_x=mu,
            mean_s=p,
        )
