"""lightning_sylv.row_space: the span of the rows, a randomized leading subspace, a canonical row order."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA

from lightning_sylv.row_space import canonical_order, randomized_basis, span_basis


def test_span_basis_is_orthonormal_and_reproduces_the_rows_exactly():
    x = torch.randn(2, 7, 30, dtype=torch.float64)  # two groups, fewer rows than dims
    q, z = span_basis(x)
    assert q.shape == (2, 30, 7) and z.shape == (2, 7, 7)
    torch.testing.assert_close(q.mT @ q, torch.eye(7, dtype=torch.float64).expand(2, 7, 7))
    torch.testing.assert_close(z @ q.mT, x)


def test_randomized_basis_holds_the_mean_and_the_leading_principal_subspace_of_scikit_learn():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 8.0, 6.0] + [0.01] * 57, dtype=torch.float64)
    x = torch.randn(200, 60, generator=g, dtype=torch.float64) * scales + 3.0
    basis = randomized_basis(x, 3, 1, torch.Generator().manual_seed(1))
    assert basis.shape == (60, 4)
    torch.testing.assert_close(basis.mT @ basis, torch.eye(4, dtype=torch.float64))
    top = torch.from_numpy(PCA(3).fit(x.numpy()).components_)  # (3, 60)
    inside = (top @ basis).norm(dim=1)  # each principal direction's length inside the subspace
    assert bool((inside > 0.999).all()), inside
    mean = x.mean(0)
    assert float((mean @ basis).norm() / mean.norm()) > 1 - 1e-9


def test_canonical_order_ignores_where_the_rows_came_from():
    x = torch.randn(3, 12, 5)
    labels = torch.arange(12)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(12))
    a, la = canonical_order(x, labels)
    b, lb = canonical_order(x[:, perm], labels[perm])
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert canonical_order(x)[1] is None
