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
