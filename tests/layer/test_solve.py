"""lightning_sylv.layer.solve: one solve per mode, against the reference fit and each other."""

from __future__ import annotations

import torch

from lightning_sylv.codes import OneHotCode, PCACode
from lightning_sylv.layer.solve import LayerProblem, solve_gram, solve_rows
from lightning_sylv.layer_fit import fit_layer
from lightning_sylv.stats import InputStats


def _problem(code=None, outputs: int = 3, **kw) -> LayerProblem:
    opts = dict(
        name="fc", code=code or PCACode(), outputs=outputs, fit_bias=True, lam=10.0, dtype=torch.float64,
        gram_dtype=None, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    opts.update(kw)
    return LayerProblem(**opts)


def test_gram_mode_matches_the_reference_fit_on_the_rows():
    x = torch.randn(60, 5, dtype=torch.float64)
    y = torch.arange(3).repeat(20)
    stats = InputStats.from_rows(x[None], y.repeat(1), 3, torch.float64)
    solution = solve_gram(stats, _problem(OneHotCode()))
    reference = fit_layer(x, torch.nn.functional.one_hot(y, 3).double(), 10.0, fit_bias=True)
    torch.testing.assert_close(solution.fit.weight[0], reference.weight, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(solution.fit.bias[0], reference.bias, rtol=1e-9, atol=1e-10)
    assert solution.basis is None and solution.how == "gram" and solution.rows == 60


def test_span_mode_maps_the_rows_as_the_gram_solve_does():
    """Fewer rows than inputs: the span solve is exact on the rows (its outputs equal the Gram solve's)."""
    x = torch.randn(12, 40, dtype=torch.float64)
    y = torch.arange(3).repeat(4)
    span = solve_rows(x[None], y, _problem(OneHotCode()), mode="span", directions=3, power_iterations=1,
                      layer_rows=None)  # fmt: skip
    gram = solve_gram(InputStats.from_rows(x[None], y, 3, torch.float64), _problem(OneHotCode()))
    assert span.how == "span" and span.basis.shape == (1, 40, 12)
    w_span = span.fit.weight @ span.basis.mT
    torch.testing.assert_close(x @ w_span[0].T + span.fit.bias[0], x @ gram.fit.weight[0].T + gram.fit.bias[0],
                               rtol=1e-6, atol=1e-8)  # fmt: skip


def test_randomized_mode_is_exact_when_the_rows_have_fewer_directions_than_it_keeps():
    """Rows of rank 4 in 200 dimensions: a 3 + 10-direction subspace plus the mean holds all of them."""
    torch.manual_seed(0)
    x = (torch.randn(80, 4, dtype=torch.float64) @ torch.randn(4, 200, dtype=torch.float64))[None]
    fast = solve_rows(x, None, _problem(), mode="randomized", directions=3, power_iterations=1, layer_rows=None)
    exact = solve_gram(InputStats.from_rows(x, None, None, torch.float64), _problem())
    assert fast.how == "randomized"
    out_fast = x[0] @ (fast.fit.weight @ fast.basis.mT)[0].T + fast.fit.bias[0]
    out_exact = x[0] @ exact.fit.weight[0].T + exact.fit.bias[0]
    # The PCA code's directions are defined up to sign: compare the outputs' magnitudes per unit. The
    # range finder's products run in float32: agreement to its precision, not float64's.
    error = (out_fast.abs() - out_exact.abs()).norm() / out_exact.norm()
    assert error < 1e-5, float(error)


def test_the_eigenvalue_tolerance_follows_the_precision_of_the_products():
    assert _problem().rcond(64) is None
    assert _problem(gram_dtype=torch.float64).rcond(64) is None
    assert _problem(gram_dtype=torch.float32).rcond(64) == 64 * torch.finfo(torch.float32).eps


def _recorded_eighs(monkeypatch) -> list[tuple[tuple[int, ...], torch.dtype]]:
    calls: list[tuple[tuple[int, ...], torch.dtype]] = []
    eigh = torch.linalg.eigh

    def recording(a, *args, **kwargs):
        calls.append((tuple(a.shape), a.dtype))
        return eigh(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", recording)
    return calls


def _hidden_layer_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """ReLU rows with a decaying spectrum and a large mean, like a hidden layer's input."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, d, dtype=torch.float64)
    return torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 0.3)[None]


def test_mixed_precision_forms_products_in_float32_but_decomposes_in_float64(monkeypatch):
    """precision="mixed" (float32 products): every decomposition stays in float64, a measured choice
    (examples/RESULTS.md, issue 24, third pass: float32 decompositions cost ResNet-50 about a point
    of initial accuracy over five seeds). The weights stay within float32-level error of the
    all-float64 solve, in Gram and span mode, for a layer with and without a bias."""
    for n, d, fit_bias in ((400, 24, True), (400, 24, False), (30, 64, False)):
        x = _hidden_layer_rows(n, d)
        outs = {}
        for gram_dtype in (None, torch.float32):
            problem = _problem(outputs=8, fit_bias=fit_bias, gram_dtype=gram_dtype)
            calls = _recorded_eighs(monkeypatch)
            if n >= d:
                solution = solve_gram(InputStats.from_rows(x, None, None, torch.float64, gram_dtype), problem)
            else:
                solution = solve_rows(x, None, problem, mode="span", directions=8, power_iterations=1,
                                      layer_rows=None)  # fmt: skip
            monkeypatch.undo()
            assert calls and all(dtype == torch.float64 for _, dtype in calls), calls
            assert solution.fit.weight.dtype == torch.float64
            weight = solution.fit.weight if solution.basis is None else solution.fit.weight @ solution.basis.mT
            outs[gram_dtype] = x[0] @ weight[0].T
        # PCA directions are defined up to sign: compare the outputs' magnitudes.
        error = (outs[torch.float32].abs() - outs[None].abs()).norm() / outs[None].norm()
        assert error < 1e-4, (n, d, fit_bias, float(error))
