import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_sylv.solver import (
    SylvesterSingularError,
    relative_residual,
    solve_sylvester,
    solve_sylvester_psd,
)


def _psd(n: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, rank or n, generator=g, dtype=torch.float64)
    return m @ m.T


@pytest.mark.parametrize(("m", "n"), [(1, 1), (3, 7), (16, 27), (64, 576), (40, 10)])
def test_psd_matches_scipy_and_has_tiny_residual(m, n):
    a, b = _psd(m, seed=1), _psd(n, seed=2)
    c = torch.randn(m, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sol = solve_sylvester_psd(a, b, c)
    assert sol.dropped == 0
    assert relative_residual(a, b, c, sol.w) <= 1e-6
    ref = scipy.linalg.solve_sylvester(a.numpy(), b.numpy(), c.numpy())
    np.testing.assert_allclose(sol.w.numpy(), ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


def test_singular_a_with_regular_b_is_fine():
    a = _psd(5, rank=2)  # singular
    b = _psd(6)
    c = torch.randn(5, 6, dtype=torch.float64)
    sol = solve_sylvester_psd(a, b, c)
    assert sol.dropped == 0 and sol.cond_a > 1e8
    assert relative_residual(a, b, c, sol.w) <= 1e-6


def test_jointly_singular_raises_clear_error_or_returns_min_norm():
    a = _psd(4, rank=2, seed=4)
    b = _psd(5, rank=3, seed=5)
    c = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(SylvesterSingularError, match="singular"):
        solve_sylvester_psd(a, b, c)
    sol = solve_sylvester_psd(a, b, c, allow_singular=True)
    assert sol.dropped == 2 * 2
    assert torch.isfinite(sol.w).all()
    # Minimum-norm least squares: matches the pseudo-inverse of the Kronecker operator.
    op = torch.kron(a, torch.eye(5, dtype=torch.float64)) + torch.kron(
        torch.eye(4, dtype=torch.float64), b.T.contiguous()
    )
    ref = torch.linalg.pinv(op, hermitian=True) @ c.reshape(-1)
    torch.testing.assert_close(sol.w.reshape(-1), ref, rtol=1e-7, atol=1e-9)


def test_zero_matrices_are_singular():
    z = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(SylvesterSingularError):
        solve_sylvester_psd(z, z, torch.ones(3, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("a", "b", "c", "match"),
    [
        (torch.zeros(0, 0), torch.eye(2), torch.zeros(0, 2), "empty"),
        (torch.eye(2), torch.eye(3), torch.zeros(3, 3), "a must be square"),
        (torch.eye(2), torch.eye(3), torch.zeros(2, 2), "b must be square"),
        (torch.eye(2), torch.eye(2), torch.full((2, 2), float("nan")), "NaN"),
        (torch.ones(2, 3), torch.eye(3), torch.zeros(2, 3), "a must be square"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), torch.zeros(2, 2), "symmetric"),
        (-torch.eye(2), torch.eye(2), torch.zeros(2, 2), "positive semi-definite"),
    ],
)
def test_bad_inputs_raise_clear_messages(a, b, c, match):
    with pytest.raises(ValueError, match=match):
        solve_sylvester_psd(a.double(), b.double(), c.double())


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        solve_sylvester_psd(torch.eye(2, dtype=torch.long), torch.eye(2).double(), torch.ones(2, 2).double())


def test_general_case_goes_through_scipy():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64) + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(4, 4, generator=g, dtype=torch.float64) + 6 * torch.eye(4, dtype=torch.float64)
    c = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = solve_sylvester(a, b, c)
    assert relative_residual(a, b, c, w) <= 1e-10
    np.testing.assert_allclose(w.numpy(), scipy.linalg.solve_sylvester(a.numpy(), b.numpy(), c.numpy()))


def test_general_singular_raises():
    a = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    a[0, 1] = 3.0  # non-symmetric, eigenvalues 1, 2
    b = -torch.diag(torch.tensor([2.0, 5.0], dtype=torch.float64))  # -B shares eigenvalue 2 with A
    with pytest.raises(SylvesterSingularError):
        solve_sylvester(a, b, torch.ones(2, 2, dtype=torch.float64))


def test_dispatch_symmetric_uses_psd_path_and_keeps_device_dtype():
    a, b = _psd(3), _psd(4)
    c = torch.randn(3, 4, dtype=torch.float64)
    w = solve_sylvester(a, b, c)
    assert w.dtype == torch.float64 and w.device == c.device
    assert relative_residual(a, b, c, w) <= 1e-6


def test_float32_inputs_solve_in_float32():
    a, b = _psd(8).float(), _psd(9).float()
    c = torch.randn(8, 9)
    sol = solve_sylvester_psd(a, b, c)
    assert sol.w.dtype == torch.float32
    assert relative_residual(a, b, c, sol.w) <= 1e-3


# ---------------------------------------------------------------------------------- known eigenbases


def _rank_one_problem(m: int, n: int, batch: tuple[int, ...] = (), seed: int = 0):
    """A PSD ``A`` with its eigendecomposition, ``B = V diag(β) Vᵀ + uuᵀ`` with ``(β, V)`` and ``u``."""
    g = torch.Generator().manual_seed(seed)
    a = _psd(m, seed=seed + 1).expand(*batch, m, m).clone()
    q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))
    beta = torch.rand(*batch, n, generator=g, dtype=torch.float64) * 3
    u = torch.randn(*batch, n, generator=g, dtype=torch.float64)
    b = q @ torch.diag_embed(beta) @ q.mT + u[..., :, None] * u[..., None, :]
    c = torch.randn(*batch, m, n, generator=g, dtype=torch.float64)
    return a, b, c, (beta, q), u


@pytest.mark.parametrize(("m", "n", "batch"), [(1, 1, ()), (3, 7, ()), (16, 27, ()), (40, 10, ()), (5, 9, (3,))])
def test_rank_one_update_matches_the_full_solve_and_scipy(m, n, batch):
    """b_update: Sherman-Morrison in B's known eigenbasis, no decomposition of B."""
    a, b, c, eig_b, u = _rank_one_problem(m, n, batch)
    fast = solve_sylvester_psd(a, b, c, eig_a=torch.linalg.eigh(a), eig_b=eig_b, b_update=u)
    full = solve_sylvester_psd(a, b, c)
    torch.testing.assert_close(fast.w, full.w, rtol=1e-10, atol=1e-12 * float(full.w.abs().max()))
    assert relative_residual(a, b, c, fast.w) <= 1e-12
    assert fast.dropped == 0
    assert fast.cond_b == pytest.approx(full.cond_b, rel=1e-8)
    for i in np.ndindex(*batch):
        ref = scipy.linalg.solve_sylvester(a[i].numpy(), b[i].numpy(), c[i].numpy())
        np.testing.assert_allclose(fast.w[i].numpy(), ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())


def test_rank_one_update_never_decomposes_b(monkeypatch):
    a, b, c, eig_b, u = _rank_one_problem(6, 30)
    eig_a = torch.linalg.eigh(a)
    calls = []
    real = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda t, *args, **kw: calls.append(t.shape) or real(t, *args, **kw))
    solve_sylvester_psd(a, b, c, eig_a=eig_a, eig_b=eig_b, b_update=u)
    assert calls == []


def test_rank_one_update_falls_back_on_a_singular_pair():
    """A null direction shared by A and diag(β): the pair is dropped as in the general path
    (minimum-norm least squares), which needs B's own decomposition."""
    a, _, c, (beta, q), u = _rank_one_problem(4, 6)
    a = _psd(4, rank=2, seed=5)
    beta = beta.clone()
    beta[0] = 0.0
    b = q @ torch.diag(beta) @ q.T + torch.outer(u, u)
    fast = solve_sylvester_psd(a, b, c, allow_singular=True, eig_b=(beta, q), b_update=u)
    full = solve_sylvester_psd(a, b, c, allow_singular=True)
    torch.testing.assert_close(fast.w, full.w)
    assert fast.dropped == full.dropped


def test_b_update_needs_eig_b():
    a, b, c, _, u = _rank_one_problem(3, 4)
    with pytest.raises(ValueError, match="b_update needs eig_b"):
        solve_sylvester_psd(a, b, c, b_update=u)
