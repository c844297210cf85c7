"""The layer patterns of torchvision/timm models, in small hand-written modules (no torchvision needed).

Each failed or was mishandled before the engine learned it: rank-deficient wide layers (``eigh``
failed to converge), a 25,088-input ``Linear`` from few rows (a 25,088² eigendecomposition),
depthwise stacks (a Python loop over groups), ``Conv3d`` (unsupported), parameters that are not layers
(reported as unsupported layers).
``nn.MultiheadAttention`` has its own module, ``tests/test_attention.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.codes import OneHotCode, PCACode
from lightning_sylv.layer import LayerJob, grouped_rows
from lightning_sylv.layer_fit import fit_layer
from lightning_sylv.row_space import span_basis
from lightning_sylv.rows import conv_patches
from lightning_sylv.solver import solve_sylvester_psd, symmetric_eigh


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


# --------------------------------------------------------------------------- solver paths


def test_batched_psd_solve_matches_scipy_problem_by_problem():
    g = _gen(1)
    m = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    a = m @ m.mT
    q = torch.randn(4, 9, 9, generator=g, dtype=torch.float64)
    b = q @ q.mT
    c = torch.randn(4, 6, 9, generator=g, dtype=torch.float64)
    sol = solve_sylvester_psd(a, b, c)
    for i in range(4):
        ref = scipy.linalg.solve_sylvester(a[i].numpy(), b[i].numpy(), c[i].numpy())
        np.testing.assert_allclose(sol.w[i].numpy(), ref, rtol=1e-8, atol=1e-10)


def test_eigh_falls_back_to_scipy_then_to_a_ridge(monkeypatch):
    g = _gen(2)
    x = torch.randn(5, 40, generator=g, dtype=torch.float64)
    a = x.T @ x  # rank 5 of 40: many repeated (zero) eigenvalues
    real = torch.linalg.eigh

    def failing(t: torch.Tensor, *args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    evals, evecs, path = symmetric_eigh(a)
    assert path == "scipy-evr"
    torch.testing.assert_close(evecs @ torch.diag(evals) @ evecs.T, a, atol=1e-9, rtol=0)

    calls = {"n": 0}

    def fails_once(t: torch.Tensor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real(t)

    monkeypatch.setattr(torch.linalg, "eigh", fails_once)
    monkeypatch.setattr(scipy.linalg, "eigh", lambda *a, **k: (_ for _ in ()).throw(np.linalg.LinAlgError("no")))
    evals, evecs, path = symmetric_eigh(a)
    assert path == "ridge"
    torch.testing.assert_close(evecs @ torch.diag(evals) @ evecs.T, a, atol=1e-8, rtol=0)


# --------------------------------------------------------------------------- span of the rows


def test_span_solve_equals_the_exact_solve_of_the_full_problem():
    """Fewer rows than inputs: the solve in the rows' span is the full problem's exact (scipy) solution."""
    g = _gen(3)
    n, d, classes, lam = 40, 300, 5, 10.0
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    y = _labels(n, classes)
    layer = nn.Linear(d, classes).double()
    job = LayerJob(
        module=layer, name="fc", code=OneHotCode(), lam=lam, patches_per_image=None, generator=_gen(), samples=n
    )
    job.add(x, y)
    report = job.finish()
    assert report.solver.startswith("span/")
    # Reference: the minimum-norm solution of the full d x d problem (centred moments; A and B are both
    # singular, so the system is), through the pseudo-inverse of its Kronecker operator.
    s = F.one_hot(y, classes).double()
    xc, sc = x - x.mean(0), s - s.mean(0)
    a, b, c = sc.T @ sc / n, lam * xc.T @ xc / n, (1 + lam) * sc.T @ xc / n
    op = np.kron(a.numpy(), np.eye(d)) + np.kron(np.eye(classes), b.numpy().T)
    ref = (np.linalg.pinv(op, hermitian=True) @ c.numpy().reshape(-1)).reshape(classes, d)
    np.testing.assert_allclose(layer.weight.detach().numpy(), ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())
    b_ref = s.mean(0).numpy() - ref @ x.mean(0).numpy()
    np.testing.assert_allclose(layer.bias.detach().numpy(), b_ref, rtol=1e-6, atol=1e-9)


def test_span_basis_reconstructs_rank_deficient_rows():
    g = _gen(4)
    x = torch.randn(3, 30, 4, generator=g, dtype=torch.float64) @ torch.randn(
        3, 4, 500, generator=g, dtype=torch.float64
    )
    q, z = span_basis(x)  # rank 4 rows, 30 of them, 500 inputs
    assert q.shape == (3, 500, 30) and z.shape == (3, 30, 30)
    torch.testing.assert_close(z @ q.mT, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(q.mT @ q, torch.eye(30, dtype=torch.float64).expand(3, 30, 30), atol=1e-10, rtol=0)


def test_span_solve_does_not_depend_on_the_order_of_the_rows():
    """A process sees its rows in subset order, an all-gather in rank order: same weights either way
    (the span basis and with it a PCA direction's sign depended on the order)."""
    g = _gen(5)
    x = torch.randn(40, 64, generator=g)
    y = _labels(40, 4)
    perm = torch.randperm(40, generator=g)
    weights = []
    for order in (torch.arange(40), perm):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
        report = sylvester_init_(net, x[order], y[order], gram_dtype=None)  # float64 products: exact
        assert report.layers[0].solver.startswith("span")
        weights.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class _LateStage(nn.Module):
    """The last stage of a ResNet at 32x32: 512 channels at 1x1, 3x3 convs (4,608 inputs), few rows."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 512, 3, stride=32, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(512)
        self.conv = nn.Conv2d(512, 512, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(self.bn(self.conv(h))) + h
        return self.fc(h.flatten(1))


def test_rank_deficient_4608_input_conv_initializes():
    torch.manual_seed(0)
    model = _LateStage()
    x = torch.randn(60, 3, 32, 32, generator=_gen(5))
    y = _labels(60, 10)
    report = sylvester_init_(model, x, y)
    by_name = {r.name: r for r in report.layers}
    assert by_name["conv"].in_features == 4608 and by_name["conv"].rows == 60
    assert by_name["conv"].solver.startswith("span/")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    assert float((model(x).argmax(1) == y).float().mean()) == 1.0  # 60 rows in 512 dims separate


def test_25088_input_linear_from_200_rows_solves_in_the_span():
    """VGG's first classifier layer at 32x32: 25,088 inputs from 200 rows (no 25,088² matrix formed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(25088, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(200, 512, 7, 7, generator=_gen(6))
    report = sylvester_init_(model, x, _labels(200, 10))
    first = report.layers[0]
    assert first.in_features == 25088 and first.solver.startswith("span/")
    assert torch.isfinite(model[1].weight).all()


# --------------------------------------------------------------------------- groups, batched


def test_depthwise_groups_are_solved_in_one_batch_like_one_by_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 24, 3, padding=1, groups=12).double()
    x = torch.randn(20, 12, 6, 6, generator=_gen(7), dtype=torch.float64)
    job = LayerJob(
        module=conv, name="dw", code=PCACode(), lam=10.0, patches_per_image=None, generator=_gen(), samples=20
    )
    job.add(x, None)
    report = job.finish()
    assert report.groups == 12 and report.solver.startswith("gram/")
    rows = grouped_rows(conv_patches(x, conv, None).x, 12)  # (groups, n, 9)
    for g in range(12):
        ref = fit_layer(rows[g], PCACode().fit(rows[g], 2), 10.0, fit_bias=True)
        torch.testing.assert_close(conv.weight[2 * g : 2 * g + 2].reshape(2, -1), ref.weight, atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(conv.bias[2 * g : 2 * g + 2], ref.bias, atol=1e-8, rtol=1e-6)


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.reduce = nn.Conv2d(c, 4, 1)
        self.expand = nn.Conv2d(4, c, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.dw(F.silu(self.conv(x))))
        s = torch.sigmoid(self.expand(F.silu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return self.fc((h * s).mean((2, 3)))


def test_squeeze_excitation_block_initializes_every_conv():
    torch.manual_seed(0)
    model = _SqueezeExcite()
    x = torch.randn(40, 3, 8, 8, generator=_gen(8))
    report = sylvester_init_(model, x, _labels(40, 10))
    assert [r.name for r in report.layers] == ["conv", "dw", "reduce", "expand", "fc"]
    assert not report.skipped and not report.untouched
    assert report.initialized_fraction == 1.0
    assert torch.isfinite(model(x)).all()


# --------------------------------------------------------------------------- attention, layer scale, 3-D


class _LayerScaleBlock(nn.Module):
    """ConvNeXt/timm-ViT style: LayerNorm, GELU MLP, a layer-scale γ and a class token."""

    def __init__(self, e: int = 12) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.embed = nn.Linear(6, e)
        self.norm = nn.LayerNorm(e)
        self.fc1 = nn.Linear(e, 4 * e)
        self.fc2 = nn.Linear(4 * e, e)
        self.gamma = nn.Parameter(1e-6 * torch.ones(e))
        self.head = nn.Linear(e, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.embed(x)], 1)
        h = h + self.gamma * self.fc2(F.gelu(self.fc1(self.norm(h))))
        return self.head(h[:, 0])


def test_parameters_that_are_not_layers_are_reported_as_untouched_not_unsupported():
    torch.manual_seed(0)
    model = _LayerScaleBlock()
    x = torch.randn(40, 5, 6, generator=_gen(10))
    with warnings_as_errors():
        report = sylvester_init_(model, x, _labels(40, 10))
    assert set(report.untouched) == {"cls_token", "gamma"}
    assert not report.skipped
    assert [r.name for r in report.layers] == ["embed", "fc1", "fc2", "head"]
    layers = sum(p.numel() for m in (model.embed, model.fc1, model.fc2, model.head) for p in m.parameters())
    assert report.initialized_parameters == layers
    assert 0 < report.initialized_fraction < 1
    torch.testing.assert_close(model.gamma.detach(), torch.full((12,), 1e-6))


def test_unsupported_layers_are_still_named():
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 3, 10))
    x = torch.randint(0, 20, (30, 3), generator=_gen(11))
    with pytest.warns(UserWarning, match="Embedding"):
        report = sylvester_init_(model, x, _labels(30, 10))
    assert "unsupported layer type Embedding" in report.skipped["0"]


def test_conv3d_patches_reproduce_the_convolution_and_the_layer_initializes():
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 4, (3, 2, 3), stride=(1, 2, 1), padding=(1, 0, 2), dilation=(1, 1, 2)).double()
    x = torch.randn(3, 2, 5, 6, 7, generator=_gen(12), dtype=torch.float64)
    rows = conv_patches(x, conv, None)
    out = conv(x)
    assert rows.out_shape == tuple(out.shape[2:])
    dense = rows.x.reshape(rows.x.shape[0], -1) @ conv.weight.reshape(4, -1).T + conv.bias
    torch.testing.assert_close(dense.reshape(3, -1, 4).transpose(1, 2).reshape(out.shape), out)
    model = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    report = sylvester_init_(model, torch.randn(30, 1, 4, 6, 6, generator=_gen(13)), _labels(30, 10))
    assert [r.kind for r in report.layers] == ["Conv3d", "Linear"]


# --------------------------------------------------------------------------- messages


def test_label_span_error_names_the_real_span_once():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    y = torch.arange(5, 15).repeat(3)  # labels 5..14 for a 10-output head
    with pytest.raises(Exception, match=r"labels span \[5, 14\]") as err:
        sylvester_init_(model, torch.randn(30, 4, generator=_gen(14)), y, head="2")  # named: no probe check
    assert str(err.value).count("layer '2'") == 1


def test_a_head_that_does_not_match_the_classes_is_refused_with_the_fix():
    """A forward that returns features: its last layer is not the classifier."""
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))
    with pytest.raises(ValueError, match=r"returns 64 values per sample, but there are 10 classes.*forward"):
        sylvester_init_(model, torch.randn(30, 4, generator=_gen(15)), _labels(30, 10), num_classes=10)


class warnings_as_errors:  # a context manager used like a function
    """Fail on any warning (an 'unsupported layer' warning here would be a regression)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def test_more_outputs_than_inputs_solve_in_the_codes_subspace_exactly():
    """A PCA code with filled columns (d_out > d_in): the left side is solved in range(Pᵀ), exactly."""
    from dataclasses import replace

    from lightning_sylv.layer_fit import solve_moments
    from lightning_sylv.stats import InputStats

    x = torch.randn(50, 6, generator=_gen(16), dtype=torch.float64)
    m = PCACode().moments(InputStats.from_rows(x), 20, fit_bias=True, generator=_gen(17))
    assert m.basis_s is not None and m.basis_s.shape == (20, 6)
    fast, full = solve_moments(m, 10.0), solve_moments(replace(m, basis_s=None), 10.0)
    torch.testing.assert_close(fast.weight, full.weight, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fast.bias, full.bias, atol=1e-10, rtol=1e-8)


# --------------------------------------------------------------------------- randomized mode


def test_randomized_basis_finds_the_leading_principal_subspace():
    """Rank-6 signal plus small noise: the randomized basis contains the exact top-6 principal
    directions (principal angles ~0) and the mean, with orthonormal columns."""
    from lightning_sylv.row_space import randomized_basis

    g = _gen(6)
    signal = torch.randn(2, 400, 6, generator=g, dtype=torch.float64) @ torch.randn(
        2, 6, 300, generator=g, dtype=torch.float64
    )
    x = signal + 1e-3 * torch.randn(2, 400, 300, generator=g, dtype=torch.float64) + 2.0
    q = randomized_basis(x, 8, 1, torch.Generator().manual_seed(0))
    assert q.shape == (2, 300, 9)
    torch.testing.assert_close(q.mT @ q, torch.eye(9, dtype=torch.float64).expand(2, 9, 9), atol=1e-10, rtol=0)
    xc = x - x.mean(-2, keepdim=True)
    top = torch.linalg.svd(xc, full_matrices=False).Vh[:, :6].mT  # (2, 300, 6)
    captured = (q.mT @ top).norm(dim=-2)  # cosines of the principal angles' complements
    assert float(captured.min()) > 1 - 1e-6
    mean = x.mean(-2)
    assert float(((q.mT @ mean[..., None]).norm(dim=-2) / mean.norm(dim=-1, keepdim=True)).min()) > 1 - 1e-9


def test_randomized_solver_matches_the_exact_solve_on_low_rank_inputs():
    """A wide layer with few outputs takes the randomized path; on inputs of low rank its subspace is
    exact, so the weights agree with the exact solve (up to the directions' signs)."""
    g = _gen(7)
    x = torch.randn(400, 5, generator=g) @ torch.randn(5, 600, generator=g)
    y = _labels(400, 4)
    weights, solvers = [], []
    for solver in ("exact", "randomized"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(600, 4), nn.ReLU(), nn.Linear(4, 4))
        report = sylvester_init_(net, x, y, latent="pca", solver=solver)
        solvers.append(report.layers[0].solver)
        weights.append(net[0].weight.detach().clone())
    assert solvers[0].startswith("span") and solvers[1].startswith("randomized"), solvers
    # The same units up to each principal direction's sign (fixed in the coordinates each mode
    # solves in: the rows' span, or the randomized subspace).
    signs = torch.sign((weights[0] * weights[1]).sum(1, keepdim=True))
    torch.testing.assert_close(weights[1] * signs, weights[0], rtol=1e-3, atol=1e-5)


def test_canonical_order_ignores_the_arrival_order():
    from lightning_sylv.row_space import canonical_order

    g = _gen(8)
    x = torch.randn(3, 20, 7, generator=g, dtype=torch.float64)
    y = torch.arange(20)
    perm = torch.randperm(20, generator=g)
    a, ya = canonical_order(x, y)
    b, yb = canonical_order(x[:, perm], y[perm])
    assert torch.equal(a, b) and torch.equal(ya, yb)
