import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from lightning_sylv.codes import CODES, LatentCode, OneHotCode, PCACode, resolve_code


@pytest.fixture(scope="module")
def digits_x() -> torch.Tensor:
    return torch.tensor(load_digits().data[:300], dtype=torch.float64)


def _align_signs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    signs = np.sign((a * b).sum(axis=0))
    return b * signs


@pytest.mark.parametrize("k", [1, 5, 20, 40])
def test_pca_code_matches_sklearn(digits_x, k):
    s = PCACode().fit(digits_x, k)
    ref = PCA(n_components=k, svd_solver="full").fit(digits_x.numpy())
    proj = ref.transform(digits_x.numpy())
    # Same projections up to the sign of each component.
    np.testing.assert_allclose(s.numpy(), _align_signs(s.numpy(), proj), atol=1e-8 * np.abs(proj).max())
    _, comps, var = PCACode().components(digits_x, k)
    np.testing.assert_allclose(var.numpy(), ref.explained_variance_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.abs((comps.numpy() * ref.components_).sum(1)), 1.0, atol=1e-8)


def test_pca_fills_extra_columns_with_negated_then_random_mixtures():
    x = torch.randn(300, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = PCACode().fit(x, 25, generator=torch.Generator().manual_seed(0))
    assert s.shape == (300, 25)
    torch.testing.assert_close(s[:, 10:20], -s[:, :10])
    # No two columns identical (identical units would never separate in training).
    cols = s.T / s.T.norm(dim=1, keepdim=True)
    sim = cols @ cols.T - torch.eye(25, dtype=s.dtype)
    assert sim.max() < 1 - 1e-6
    # Random fills are combinations of the components: inside their span.
    basis = s[:, :10]
    resid = s[:, 20:] - basis @ torch.linalg.lstsq(basis, s[:, 20:]).solution
    assert resid.norm() < 1e-8 * s.norm()


def test_pca_is_deterministic_and_limited_by_samples():
    x = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s1 = PCACode().fit(x, 8, generator=torch.Generator().manual_seed(0))
    s2 = PCACode().fit(x, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2)
    # 4 centred samples span 3 directions: 3 components, 3 negated, 2 random mixtures.
    torch.testing.assert_close(s1[:, 3:6], -s1[:, :3])


def test_onehot_code():
    x = torch.zeros(5, 3, dtype=torch.float64)
    s = OneHotCode().fit(x, 4, labels=torch.tensor([0, 1, 3, 3, 2]))
    assert s.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 1, 0]]
    assert s.dtype == torch.float64


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (None, "needs class labels"),
        (torch.tensor([0, 1]), "shape"),
        (torch.tensor([0, 1, 2, 5, 0]), "one output per class"),
    ],
)
def test_onehot_rejects_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        OneHotCode().fit(torch.zeros(5, 3), 4, labels=labels)


def test_code_rejects_bad_shapes():
    with pytest.raises(ValueError, match="no rows"):
        PCACode().fit(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="out_features"):
        PCACode().fit(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match=r"\(n, d_in\)"):
        PCACode().fit(torch.zeros(4), 2)


def test_resolve_code():
    assert isinstance(resolve_code("pca"), PCACode)
    custom = OneHotCode()
    assert resolve_code(custom) is custom
    assert set(CODES) >= {"pca", "onehot"}
    with pytest.raises(ValueError, match="unknown latent code 'nope'"):
        resolve_code("nope")
    with pytest.raises(TypeError):
        resolve_code(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        LatentCode()  # type: ignore[abstract]


def test_signed_pca_pairs_components_with_negations():
    x = torch.randn(200, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = resolve_code("signed_pca").fit(x, 7)
    plain = PCACode().fit(x, 4)
    torch.testing.assert_close(s[:, :4], plain)
    torch.testing.assert_close(s[:, 4:7], -plain[:, :3])
    assert resolve_code("signed_pca").name == "signed_pca"


def test_random_rotation_is_orthogonal_and_seeded():
    from lightning_sylv.codes.linear import random_rotation

    r1 = random_rotation(12, torch.Generator().manual_seed(4))
    r2 = random_rotation(12, torch.Generator().manual_seed(4))
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(r1.T @ r1, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)


def test_rotated_pca_spans_the_principal_subspace_with_equal_unit_variances():
    """The rotation keeps the span of the top-k components and evens out the per-unit variances
    (a BatchNorm after the layer then rescales the units alike instead of whitening the subspace)."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -3, 20, dtype=torch.float64)  # variances 1 .. 1e-6
    x = torch.randn(2000, 20, generator=g, dtype=torch.float64) * scales
    k = 8
    plain = PCACode().fit(x, k)
    rotated = resolve_code("rotated_pca").fit(x, k, generator=torch.Generator().manual_seed(1))
    assert resolve_code("rotated_pca").name == "rotated_pca"

    def projector(s: torch.Tensor) -> torch.Tensor:
        q = torch.linalg.qr(s).Q
        return q @ q.T

    torch.testing.assert_close(projector(rotated), projector(plain), atol=1e-8, rtol=0)
    spread = lambda s: float(s.var(0).max() / s.var(0).min())  # noqa: E731
    assert spread(plain) > 100  # one direction per unit: the spread of the top 8 eigenvalues (~160)
    assert spread(rotated) < spread(plain) / 5  # a random mix: equal in expectation
    # Seeded: the same generator gives the same code.
    again = resolve_code("rotated_pca").fit(x, k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotated, again)


def test_pca_energy_is_validated():
    with pytest.raises(ValueError, match="energy must be in"):
        PCACode(energy=1.5)
