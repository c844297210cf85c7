"""lightning_sylv.layer_fit with the structure the codes know: one decomposition per layer.

The weights solved with the codes' eigenbases (``eig_x``, ``eig_s``, ``x_shift``) are pinned against
the general solve, which decomposes ``A`` and ``B`` itself (``lightning_sylv.solver``'s module
docstring has the derivation); the decompositions are counted through a real initialization.
"""

from dataclasses import replace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.codes import resolve_code
from lightning_sylv.layer_fit import solve_moments
from lightning_sylv.stats import InputStats


@pytest.fixture(scope="module")
def hidden_rows() -> torch.Tensor:
    """Rows of a hidden layer's input: real digits through a random ReLU layer (some dead units)."""
    x = torch.tensor(load_digits().data, dtype=torch.float64)
    w = torch.randn(64, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.relu(x @ w)


@pytest.mark.parametrize("code", ["pca", "rotated_pca", "signed_pca", "rotated_signed_pca"])
@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("out", [16, 40, 60])
def test_structured_solve_equals_the_general_solve(hidden_rows, code, fit_bias, out):
    stats = InputStats.from_rows(hidden_rows, dtype=torch.float64)
    m = resolve_code(code).moments(stats, out, fit_bias, torch.Generator().manual_seed(1))
    assert m.eig_x is not None and (m.x_shift is not None) is not fit_bias
    # Filled columns (signed codes, or more outputs than the 40 inputs): the solve runs in the code's subspace.
    assert (m.basis_s is not None) is ("signed" in code or out > 40)
    fast = solve_moments(m, 10.0)
    general = solve_moments(replace(m, eig_x=None, eig_s=None, x_shift=None, basis_s=None), 10.0)
    assert float((fast.weight - general.weight).norm() / general.weight.norm()) <= 1e-8
    if fast.bias is not None:
        torch.testing.assert_close(fast.bias, general.bias, rtol=1e-8, atol=1e-10)
    assert fast.residual <= 1e-10 and fast.encoding_loss == pytest.approx(general.encoding_loss, rel=1e-8)


def test_unrotated_pca_gram_of_the_code_is_diagonal_in_its_own_basis(hidden_rows):
    stats = InputStats.from_rows(hidden_rows, dtype=torch.float64)
    m = resolve_code("rotated_pca").moments(stats, 16, False, torch.Generator().manual_seed(1))
    values, vectors = m.eig_s
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.mT, m.gram_s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_one_decomposition_per_layer(monkeypatch, bias):
    """A BatchNorm CNN (convolutions without bias) with rotated PCA codes: one symmetric
    eigendecomposition per hidden layer, of its input covariance (three before this change). The
    one-hot head decomposes its input's second moment, and with a bias also the ``classes x classes``
    ``diag(p) − ppᵀ`` of its code; without a bias that matrix is diagonal and is not decomposed."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4, bias=bias),
    )  # fmt: skip
    x, y = torch.randn(200, 3, 8, 8), torch.arange(4).repeat(50)
    shapes = []
    real = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda t, *a, **k: shapes.append(tuple(t.shape[-2:])) or real(t, *a, **k))
    report = sylvester_init_(model, x, y, latent="rotated_pca")
    assert [r.solver for r in report.layers] == ["gram/eigh"] * 3
    assert shapes == [(27, 27), (72, 72), *([(4, 4)] if bias else []), (16, 16)]
