import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch import nn

from lightning_sylv.codes import ICACode, KMeansCode, LDACode, resolve_code
from lightning_sylv.engine import sylvester_init_


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.data[:400], dtype=torch.float64)
    return x, torch.tensor(d.target[:400])


def test_lda_leading_columns_are_sklearn_discriminants(digits):
    x, y = digits
    s = LDACode().fit(x, 20, labels=y, generator=torch.Generator().manual_seed(0))
    assert s.shape == (400, 20)
    ref = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x.numpy(), y.numpy())
    proj = (x.numpy() - x.numpy().mean(0)) @ ref.scalings_[:, :9]
    for j in range(9):  # same direction up to scale: correlation +-1
        corr = np.corrcoef(s[:, j].numpy(), proj[:, j])[0, 1]
        assert abs(corr) > 1 - 1e-6
    # The remaining columns are projections onto directions orthogonal to the discriminant ones.
    xc = x - x.mean(0)
    rest_dirs = torch.linalg.lstsq(xc, s[:, 9:18], driver="gelsd").solution  # (64, 9)
    disc = torch.as_tensor(ref.scalings_[:, :9])
    cos = (disc / disc.norm(dim=0)).T @ (rest_dirs / rest_dirs.norm(dim=0))
    assert cos.abs().max() < 1e-6


def test_lda_needs_labels(digits):
    with pytest.raises(ValueError, match="needs class labels"):
        LDACode().fit(digits[0], 5)


def test_ica_recovers_mixed_independent_sources():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    sources = torch.distributions.Laplace(0.0, 1.0).sample((2000, 4)).double()
    x = sources @ torch.randn(4, 6, generator=g, dtype=torch.float64)
    s = ICACode(max_iter=500).fit(x, 4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2000, 4)
    np.testing.assert_allclose(s.var(0, unbiased=False).numpy(), 1.0, rtol=1e-6)
    corr = torch.corrcoef(torch.cat([s, sources], 1).T)[:4, 4:].abs()
    assert (corr.max(dim=1).values > 0.95).all()  # each component matches one true source


def test_kmeans_code_is_inner_product_with_centroids(digits):
    x, _ = digits
    gen = torch.Generator().manual_seed(0)
    s = KMeansCode().fit(x, 6, generator=gen)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(0)))
    xc = (x - x.mean(0)).numpy()
    km = KMeans(n_clusters=6, n_init=1, random_state=seed).fit(xc)
    np.testing.assert_allclose(s.numpy(), xc @ km.cluster_centers_.T, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["lda", "ica", "kmeans"])
def test_codes_run_through_the_engine(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)
    )
    y = torch.arange(3).repeat(15)
    x = torch.randn(3, 1, 6, 6)[y] + 0.3 * torch.randn(45, 1, 6, 6)
    report = sylvester_init_(model, x, y, latent=resolve_code(name), patches_per_image=6)
    assert [r.code for r in report.layers] == [name, "onehot"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_fit_rows must be an int >= 2, got 1"):
        LDACode(max_fit_rows=1)
    with pytest.raises(ValueError, match="max_iter"):
        ICACode(max_iter=0)
    with pytest.raises(ValueError, match="n_init"):
        KMeansCode(n_init=0)
