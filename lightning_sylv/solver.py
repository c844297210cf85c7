"""Solvers for the Sylvester equation ``A @ W + W @ B = C``.

The initializer of Das, Bhalgat & Porikli (2021) reduces every layer to

    (S Sᵀ) W + W (λ X Xᵀ) = (1 + λ) S Xᵀ,

a Sylvester equation whose coefficients ``A = S Sᵀ`` and ``B = λ X Xᵀ`` are symmetric positive
semi-definite (PSD). For that case :func:`solve_sylvester_psd` diagonalizes both coefficients with
``torch.linalg.eigh`` and solves elementwise; it runs on whatever device the inputs live on. The
general (non-symmetric) case goes through :func:`scipy.linalg.solve_sylvester` (Bartels-Stewart) on
the CPU. :func:`solve_sylvester` picks between them.

**One decomposition per layer.** The initializer's coefficients have a structure the code already
knows, and :func:`solve_sylvester_psd` accepts it instead of decomposing again. For a principal-
component code ``S = (X − 1μᵀ) P R`` (``P``: the top ``k`` eigenvectors of the centred covariance
``Σ = V diag(σ) Vᵀ``, ``R`` a ``k x k`` rotation):

* ``A = SᵀS/n = Rᵀ Pᵀ Σ P R = Rᵀ diag(σ_top) R``: eigenvalues ``σ_top``, eigenvectors the columns of
  ``Rᵀ`` (``eig_a``), no decomposition;
* with a bias (centred problem) ``B = λ Σ``: eigenbasis ``V`` (``eig_b``), no decomposition;
* without a bias (every convolution before a BatchNorm) ``B = λ XᵀX/n = λ (Σ + μμᵀ)``, a rank-one
  update of a matrix whose eigenbasis is known. In the bases ``A = Qa diag(α) Qaᵀ`` and ``V`` the
  equation ``A W + W B = C`` becomes, for ``W̃ = Qaᵀ W V``, ``C̃ = Qaᵀ C V``, ``ν = √λ Vᵀμ`` and
  ``β = λσ``, one independent system per row ``i``::

      W̃_i (D_i + ννᵀ) = C̃_i,        D_i = diag(α_i + β_1, ..., α_i + β_n),

  solved by the Sherman-Morrison formula in ``O(n)``::

      W̃_i = C̃_i D_i⁻¹ − (C̃_i D_i⁻¹ ν) / (1 + νᵀ D_i⁻¹ ν) · νᵀ D_i⁻¹

  (``b_update = √λ μ``). ``B``'s eigendecomposition is never formed; its condition number comes from the
  extreme roots of the secular equation ``1 + Σ_j ν_j² / (β_j − θ) = 0``, found by bisection on the
  intervals the interlacing theorem gives. The formula needs every ``α_i + β_j`` to be clearly positive;
  when some pair is (numerically) zero the solve falls back to decomposing ``B`` and dropping the
  singular pairs, the minimum-norm least-squares solution of the general path.

A layer with a PCA code therefore costs the one ``d x d`` eigendecomposition of its covariance (the
one-hot head: one of ``B``, since its ``A`` is diagonal), plus matrix products. References: J. Sherman
and W. J. Morrison, Ann. Math. Statist. 21(1), 1950; G. H. Golub, "Some modified matrix eigenvalue
problems", SIAM Review 15(2), 1973 (the secular equation).

Every function here accepts a stack of problems (leading batch dimensions), so the groups of a grouped
or depthwise convolution are solved in one batched call. :func:`symmetric_eigh` is the one place that
eigendecomposes: LAPACK's divide-and-conquer driver (``torch.linalg.eigh``) can fail to converge on
rank-deficient matrices with many repeated eigenvalues; the fallback is scipy's MRRR driver
(``evr``) and, as a last resort, a tiny ridge. The path taken is reported.

This module imports no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = [
    "EIGH_PATHS",
    "SylvesterSingularError",
    "SylvesterSolution",
    "relative_residual",
    "solve_sylvester",
    "solve_sylvester_psd",
    "symmetric_eigh",
]

#: Paths :func:`symmetric_eigh` can take, from the preferred one on.
EIGH_PATHS = ("eigh", "scipy-evr", "ridge")


class SylvesterSingularError(np.linalg.LinAlgError):
    """Raised when ``A W + W B = C`` has no unique solution and singular systems are not allowed."""


@dataclass(frozen=True)
class SylvesterSolution:
    """A solution of ``A W + W B = C`` with its diagnostics.

    Attributes:
        w: The solution, shape ``(*batch, m, n)``.
        dropped: How many of the ``m * n`` eigenvalue pairs ``α_i + β_j`` were treated as zero
            (``0`` for a nonsingular system; summed over the batch). Their components of ``W`` are set
            to zero, which gives the minimum-norm least-squares solution.
        cond_a: Condition number of ``A`` (``inf`` when ``A`` is singular; the largest over the batch).
        cond_b: Condition number of ``B`` (likewise).
        path: The eigendecomposition path that solved it (one of :data:`EIGH_PATHS`; the least
            preferred one used by ``A`` or ``B``).
    """

    w: Tensor
    dropped: int
    cond_a: float
    cond_b: float
    path: str = "eigh"


def _check_shapes(a: Tensor, b: Tensor, c: Tensor) -> None:
    for name, t in (("a", a), ("b", b), ("c", c)):
        if t.ndim < 2:
            raise ValueError(f"{name} must be a matrix (or a stack of them), got shape {tuple(t.shape)}")
    m, n = c.shape[-2:]
    if a.shape[-2:] != (m, m):
        raise ValueError(f"a must be square of shape ({m}, {m}) to match c {tuple(c.shape)}, got {tuple(a.shape)}")
    if b.shape[-2:] != (n, n):
        raise ValueError(f"b must be square of shape ({n}, {n}) to match c {tuple(c.shape)}, got {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of a {tuple(a.shape)}, b {tuple(b.shape)} and c {tuple(c.shape)} do not broadcast"
        ) from None
    if m == 0 or n == 0:
        raise ValueError(f"cannot solve an empty Sylvester equation: c has shape {tuple(c.shape)}")
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf values")


def symmetric_eigh(a: Tensor) -> tuple[Tensor, Tensor, str]:
    """Eigendecomposition of symmetric matrices that does not give up on rank-deficient input.

    Algorithm: ``torch.linalg.eigh`` (LAPACK ``syevd``, divide and conquer, on ``a``'s device). When
    it fails to converge (it can on matrices of low rank with many repeated eigenvalues), the stack
    goes to :func:`scipy.linalg.eigh` with the MRRR driver ``evr`` on the CPU; should that fail too,
    a ridge of ``1e-12 · trace / d`` (``1e-6`` in single precision) is added, ``syevd`` retried and
    the ridge subtracted from the eigenvalues again.

    Args:
        a: Symmetric matrices, shape ``(*batch, d, d)``.

    Returns:
        ``(eigenvalues (*batch, d) ascending, eigenvectors (*batch, d, d) as columns, path)`` where
        ``path`` is one of :data:`EIGH_PATHS`.

    Raises:
        torch.linalg.LinAlgError: If every path fails (not seen on finite input).
    """
    try:
        evals, evecs = torch.linalg.eigh(a)
        return evals, evecs, "eigh"
    except torch.linalg.LinAlgError:
        pass
    try:
        arr = a.detach().to("cpu", torch.float64).numpy()
        flat = arr.reshape(-1, *arr.shape[-2:])
        pairs = [scipy.linalg.eigh(m, driver="evr") for m in flat]
        evals = torch.from_numpy(np.stack([p[0] for p in pairs]).reshape(arr.shape[:-1]))
        evecs = torch.from_numpy(np.stack([p[1] for p in pairs]).reshape(arr.shape))
        return evals.to(a.device, a.dtype), evecs.to(a.device, a.dtype), "scipy-evr"
    except (np.linalg.LinAlgError, ValueError):
        pass
    d = a.shape[-1]
    scale = a.diagonal(dim1=-2, dim2=-1).abs().sum(-1).clamp_min(torch.finfo(a.dtype).tiny) / d
    ridge = (1e-12 if a.dtype == torch.float64 else 1e-6) * scale
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    evals, evecs = torch.linalg.eigh(a + ridge[..., None, None] * eye)
    return evals - ridge[..., None], evecs, "ridge"


def _worst_path(*paths: str) -> str:
    return max(paths, key=EIGH_PATHS.index)


def _cond(eigvals: Tensor) -> float:
    """Largest condition number ``max|λ| / min|λ|`` over a stack of spectra ``(*batch, d)``."""
    top = eigvals.abs().amax(-1)
    low = eigvals.abs().amin(-1)
    if bool((low == 0).any()):
        return float("inf")
    return float((top / low).max())


def _is_symmetric(t: Tensor) -> bool:
    eps = torch.finfo(t.dtype).eps
    scale = max(float(t.abs().max()), 1.0)
    return bool((t - t.mT).abs().max() <= 1e3 * eps * scale * t.shape[-1])


def solve_sylvester_psd(
    a: Tensor,
    b: Tensor,
    c: Tensor,
    *,
    rcond: float | None = None,
    allow_singular: bool = False,
    eig_a: tuple[Tensor, Tensor] | None = None,
    eig_b: tuple[Tensor, Tensor] | None = None,
    b_update: Tensor | None = None,
) -> SylvesterSolution:
    """Solve ``A W + W B = C`` for symmetric positive semi-definite ``A`` and ``B``.

    Algorithm: with the eigendecompositions ``A = Qa diag(α) Qaᵀ`` and ``B = Qb diag(β) Qbᵀ`` the
    equation becomes ``diag(α) W̃ + W̃ diag(β) = Qaᵀ C Qb`` for ``W̃ = Qaᵀ W Qb``, solved elementwise
    as ``W̃_ij = (Qaᵀ C Qb)_ij / (α_i + β_j)``; then ``W = Qa W̃ Qbᵀ``. Cost: two symmetric
    eigendecompositions plus four matrix products, ``O(m³ + n³ + m n (m + n))``. Because ``A`` and
    ``B`` are PSD every ``α_i + β_j ≥ 0``; the system is singular exactly when some pair vanishes (a
    null direction shared by ``A`` on the left and ``B`` on the right). Those pairs are dropped
    (their component of ``W̃`` set to zero) when ``allow_singular`` is true, which yields the
    minimum-Frobenius-norm least-squares solution, since the Sylvester operator is diagonal in the
    two eigenbases.

    All work happens on the device of the inputs, in their dtype (use ``float64`` for accuracy). The
    eigendecompositions go through :func:`symmetric_eigh` (with its fallbacks); a stack of problems is
    solved in one batched call.

    Args:
        a: Symmetric PSD matrix, shape ``(*batch, m, m)`` (batch dimensions broadcast).
        b: Symmetric PSD matrix, shape ``(*batch, n, n)``.
        c: Right-hand side, shape ``(*batch, m, n)``.
        rcond: Pairs with ``α_i + β_j <= rcond * (max|α| + max|β|)`` count as zero. Defaults to
            ``max(m, n) * eps`` of the dtype.
        allow_singular: Return the minimum-norm least-squares solution for a singular system instead
            of raising.
        eig_a: A known eigendecomposition ``(eigenvalues, eigenvectors)`` of ``a`` (as returned by
            ``torch.linalg.eigh``, any order), to skip computing it. It is trusted, not checked.
        eig_b: Likewise for ``b``; with ``b_update``, of ``b − u uᵀ`` instead.
        b_update: ``u`` ``(*batch, n)`` with ``b = Qb diag(β) Qbᵀ + u uᵀ`` for ``eig_b = (β, Qb)``: the
            rank-one path of the module docstring (Sherman-Morrison, no decomposition of ``b``).

    Returns:
        A :class:`SylvesterSolution` with ``w`` of shape ``(*batch, m, n)``.

    Raises:
        ValueError: If shapes do not match, a matrix is empty, contains NaN/Inf, is not symmetric,
            or has a clearly negative eigenvalue (not PSD).
        TypeError: If an input is not floating point.
        SylvesterSingularError: If the system is singular and ``allow_singular`` is false.

    Example:
        >>> import torch
        >>> from lightning_sylv.solver import relative_residual, solve_sylvester_psd
        >>> g = torch.Generator().manual_seed(0)
        >>> s = torch.randn(50, 4, generator=g, dtype=torch.float64)
        >>> x = torch.randn(50, 6, generator=g, dtype=torch.float64)
        >>> a, b, c = s.T @ s, 10 * x.T @ x, 11 * s.T @ x
        >>> sol = solve_sylvester_psd(a, b, c)
        >>> sol.w.shape, relative_residual(a, b, c, sol.w) < 1e-12
        (torch.Size([4, 6]), True)
        >>> mu = x.mean(0)  # the same B as a rank-one update of a known eigenbasis: no decomposition of B
        >>> cov = 10 * (x - mu).T @ (x - mu)
        >>> fast = solve_sylvester_psd(a, b, c, eig_b=torch.linalg.eigh(cov), b_update=(10 * 50) ** 0.5 * mu)
        >>> torch.allclose(fast.w, sol.w, rtol=1e-9)
        True

    References:
        R. H. Bartels and G. W. Stewart, "Solution of the matrix equation AX + XB = C",
        Communications of the ACM 15(9), 1972. D. Das, Y. Bhalgat and F. Porikli, "Data-driven
        Weight Initialization with Sylvester Solvers", arXiv:2105.10335, 2021, Eq. (2).
    """
    _check_shapes(a, b, c)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)
    a, b, c = a.to(dtype), b.to(dtype), c.to(dtype)
    eps = torch.finfo(dtype).eps
    for name, t in (("a", a), ("b", b)):
        if not _is_symmetric(t):
            raise ValueError(f"{name} must be symmetric for solve_sylvester_psd; use solve_sylvester")
    if b_update is not None and eig_b is None:
        raise ValueError("b_update needs eig_b, the eigendecomposition of b - b_update b_updateᵀ")
    if rcond is None:
        rcond = max(a.shape[-1], b.shape[-1]) * eps
    alpha, qa, path_a = symmetric_eigh(a) if eig_a is None else (eig_a[0].to(dtype), eig_a[1].to(dtype), "eigh")
    if b_update is not None and eig_b is not None:
        beta, qb = eig_b[0].to(dtype).clamp_min(0), eig_b[1].to(dtype)
        nu = (qb.mT @ b_update.to(dtype)[..., :, None]).squeeze(-1)
        top = alpha.abs().amax(-1) + beta.amax(-1) + nu.square().sum(-1)
        if bool((alpha.amin(-1) < -torch.maximum(rcond * top, 1e3 * eps * top)).any()):
            raise ValueError(
                f"a must be positive semi-definite, but its smallest eigenvalue is {float(alpha.min()):.3g}; "
                "use solve_sylvester for general matrices"
            )
        alpha = alpha.clamp_min(0)
        if not bool((alpha[..., :, None] + beta[..., None, :] <= (rcond * top)[..., None, None]).any()):
            return _solve_rank_one(alpha, qa, beta, qb, nu, c, path_a)
        eig_b = None  # a (numerically) singular pair: decompose b and drop the pairs, as below
    if eig_b is None:
        beta, qb, path_b = symmetric_eigh(b)
    else:
        beta, qb, path_b = eig_b[0].to(dtype), eig_b[1].to(dtype), "eigh"
    top = alpha.abs().amax(-1) + beta.abs().amax(-1)  # (*batch,)
    tol = rcond * top
    for name, ev in (("a", alpha), ("b", beta)):
        low = ev.amin(-1)
        bad = low < -torch.maximum(tol, 1e3 * eps * top)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must be positive semi-definite, but its smallest eigenvalue is {float(low.min()):.3g}; "
                "use solve_sylvester for general matrices"
            )
    alpha = alpha.clamp_min(0)
    beta = beta.clamp_min(0)
    denom = alpha[..., :, None] + beta[..., None, :]
    singular = denom <= tol[..., None, None]
    dropped = int(singular.sum())
    if dropped and not allow_singular:
        raise SylvesterSingularError(
            f"A W + W B = C is singular: {dropped} of {denom.numel()} eigenvalue pairs of A and B sum "
            f"to zero (tolerance {float(tol.max()):.3g}), so the solution is not unique. Pass allow_singular=True "
            "for the minimum-norm least-squares solution, or regularize A or B."
        )
    rhs = qa.mT @ c @ qb
    w_tilde = torch.where(singular, torch.zeros_like(rhs), rhs / torch.where(singular, 1.0, denom))
    w = qa @ w_tilde @ qb.mT
    return SylvesterSolution(
        w=w, dropped=dropped, cond_a=_cond(alpha), cond_b=_cond(beta), path=_worst_path(path_a, path_b)
    )


def _solve_rank_one(
    alpha: Tensor, qa: Tensor, beta: Tensor, qb: Tensor, nu: Tensor, c: Tensor, path: str
) -> SylvesterSolution:
    """``A W + W B = C`` with ``A = Qa diag(α) Qaᵀ`` and ``B = Qb (diag(β) + ννᵀ) Qbᵀ``, every
    ``α_i + β_j > 0``: Sherman-Morrison row by row in the eigenbases (see the module docstring)."""
    denom = alpha[..., :, None] + beta[..., None, :]  # D_i, one row per i
    w0 = (qa.mT @ c @ qb) / denom  # C̃_i D_i⁻¹
    y = nu[..., None, :] / denom  # νᵀ D_i⁻¹
    num = (w0 * nu[..., None, :]).sum(-1, keepdim=True)
    den = 1.0 + (y * nu[..., None, :]).sum(-1, keepdim=True)
    w = qa @ (w0 - (num / den) * y) @ qb.mT
    low, high = _rank_one_extremes(beta, nu)
    cond_b = float("inf") if bool((low <= 0).any()) else float((high / low).max())
    return SylvesterSolution(w=w, dropped=0, cond_a=_cond(alpha), cond_b=cond_b, path=path)


def _rank_one_extremes(beta: Tensor, nu: Tensor, iterations: int = 60) -> tuple[Tensor, Tensor]:
    """Smallest and largest eigenvalues of ``diag(β) + ννᵀ`` (``β ≥ 0``), stacked over the batch.

    They are the outermost roots of the secular equation ``f(θ) = 1 + Σ_j ν_j² / (β_j − θ)``, which
    increases between its poles: the smallest lies in ``[β_(1), β_(2)]`` and the largest in
    ``[β_(n), β_(n) + |ν|²]`` (interlacing; Golub 1973). Both are bisected at once on ``f``'s sign,
    in float64 with NumPy on the CPU: a diagnostic of ``O(n)`` per step whose many tiny operations
    would cost more in kernel launches on any device than the arithmetic (one copy of two vectors).
    """
    b = beta.detach().to("cpu", torch.float64).numpy().reshape(-1, beta.shape[-1])
    v2 = np.square(nu.detach().to("cpu", torch.float64).numpy().reshape(-1, nu.shape[-1]))
    srt = np.sort(b, axis=-1)
    width = v2.sum(-1)
    second = srt[:, 1] if srt.shape[-1] > 1 else srt[:, 0] + width
    lo = np.stack([srt[:, 0], srt[:, -1]])  # (2, batch): the smallest root, the largest
    hi = np.stack([second, srt[:, -1] + width])
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(iterations):
            mid = (lo + hi) / 2
            neg = 1.0 + (v2 / (b - mid[..., None])).sum(-1) < 0  # left of the root (a pole: not negative)
            lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
    roots = torch.from_numpy((lo + hi) / 2).reshape(2, *beta.shape[:-1])
    return roots[0], roots[1]


def solve_sylvester(a: Tensor, b: Tensor, c: Tensor, *, allow_singular: bool = False) -> Tensor:
    """Solve ``A W + W B = C`` for general square ``A`` and ``B``.

    Symmetric positive semi-definite coefficients (the initializer's case) go to
    :func:`solve_sylvester_psd` on the inputs' device; anything else is solved on the CPU by
    :func:`scipy.linalg.solve_sylvester` (Bartels-Stewart with Schur forms) and moved back.

    Args:
        a: Square matrix, shape ``(m, m)``.
        b: Square matrix, shape ``(n, n)``.
        c: Right-hand side, shape ``(m, n)``.
        allow_singular: For PSD inputs, return the minimum-norm least-squares solution of a singular
            system instead of raising. General singular systems always raise.

    Returns:
        ``W`` of shape ``(m, n)``, dtype and device of ``c``'s promotion with ``a`` and ``b``.

    Raises:
        ValueError: On shape mismatch, empty or non-finite input.
        SylvesterSingularError: If the system is singular (no unique solution).
    """
    _check_shapes(a, b, c)
    if a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
        raise ValueError("solve_sylvester takes single matrices; use solve_sylvester_psd for stacks")
    if _is_symmetric(a) and _is_symmetric(b):
        try:
            return solve_sylvester_psd(a, b, c, allow_singular=allow_singular).w
        except ValueError as err:
            if "positive semi-definite" not in str(err):
                raise
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)
    np_args = [t.detach().to("cpu", torch.float64).numpy() for t in (a, b, c)]
    try:
        w = scipy.linalg.solve_sylvester(*np_args)
    except np.linalg.LinAlgError as err:  # pragma: no cover - depends on LAPACK's flagging
        raise SylvesterSingularError(f"A W + W B = C is singular or nearly so: {err}") from err
    if not np.isfinite(w).all() or _general_singular(*np_args):
        raise SylvesterSingularError(
            "A W + W B = C is singular: A and -B share an eigenvalue, so the solution is not unique"
        )
    return torch.from_numpy(w).to(device=c.device, dtype=dtype)


def _general_singular(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    ea = np.linalg.eigvals(a)
    eb = np.linalg.eigvals(b)
    gap = np.abs(ea[:, None] + eb[None, :]).min()
    scale = np.abs(ea).max() + np.abs(eb).max()
    return bool(gap <= max(a.shape[0], b.shape[0]) * np.finfo(np.float64).eps * max(scale, 1e-300))


def relative_residual(a: Tensor, b: Tensor, c: Tensor, w: Tensor) -> float:
    """Return ``‖A W + W B − C‖_F / ‖C‖_F`` (or the absolute residual when ``C`` is zero).

    For a stack of problems the largest residual over the batch is returned.

    Args:
        a: Shape ``(*batch, m, m)``.
        b: Shape ``(*batch, n, n)``.
        c: Shape ``(*batch, m, n)``.
        w: Shape ``(*batch, m, n)``.
    """
    res = torch.linalg.matrix_norm(a @ w + w @ b - c)
    norm_c = torch.linalg.matrix_norm(c)
    ratio = torch.where(norm_c > 0, res / torch.where(norm_c > 0, norm_c, 1.0), res)
    return float(ratio.max())
