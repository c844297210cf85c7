"""lightning_sylv.layer.job: the per-layer pipeline (add batches, finish: solve, scale, write, report)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sylv.codes import PCACode, resolve_code
from lightning_sylv.layer import LayerInitError, LayerJob
from lightning_sylv.layer_fit import fit_layer


def _job(module: nn.Module, code=None, **kw) -> LayerJob:
    return LayerJob(module=module, name="fc", code=code or PCACode(), lam=10.0, patches_per_image=None,
                    generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip


def test_construction_is_keyword_only():
    with pytest.raises(TypeError):
        LayerJob(nn.Linear(2, 2), "fc", PCACode(), lam=1.0, patches_per_image=None,  # type: ignore[misc]
                 generator=torch.Generator())  # fmt: skip


def test_the_written_weights_are_the_reference_solve():
    layer = nn.Linear(5, 3).double()
    x = torch.randn(50, 5, dtype=torch.float64)
    job = _job(layer)
    job.add(x, None)
    report = job.finish()
    reference = fit_layer(x, PCACode().fit(x, 3), 10.0, fit_bias=True)
    torch.testing.assert_close(layer.weight, reference.weight, rtol=1e-8, atol=1e-10)
    assert report.solver == "gram/eigh" and report.rows == 50 and report.gain == 1.0


def test_scale_own_keeps_the_layers_own_output_energy():
    layer = nn.Linear(5, 3).double()
    x = torch.randn(50, 5, dtype=torch.float64)
    own = float(layer(x).detach().square().sum())
    job = _job(layer, scale="own")
    job.add(x, None)
    report = job.finish()
    assert report.gain != 1.0
    assert float(layer(x).detach().square().sum()) == pytest.approx(own, rel=1e-9)


def test_a_statistics_code_defers_a_bad_batch_to_finish_a_rows_code_raises_at_once():
    """Across processes every rank must reach the all-reduce of finish() before anyone raises."""
    bad = torch.full((10, 4), float("nan"))
    deferred = _job(nn.Linear(4, 2))
    deferred.add(bad, None)  # no raise here
    with pytest.raises(LayerInitError, match="NaN/Inf"):
        deferred.finish()
    with pytest.raises(LayerInitError, match="NaN/Inf"):
        _job(nn.Linear(4, 2), code=resolve_code("kmeans")).add(bad, None)


def test_finish_without_input_names_the_layer():
    with pytest.raises(LayerInitError, match="layer 'fc': no input was recorded"):
        _job(nn.Linear(4, 2)).finish()


def test_under_autocast_the_statistics_keep_their_precision():
    """A mixed-precision trainer runs the pass under autocast: the float32 row products (the default
    precision) must not silently run in bfloat16."""
    x = torch.randn(40, 6)
    plain, mixed = nn.Linear(6, 3), nn.Linear(6, 3)
    mixed.load_state_dict(plain.state_dict())
    for module, ctx in ((plain, torch.autocast("cpu", enabled=False)), (mixed, torch.autocast("cpu", torch.bfloat16))):
        job = _job(module, gram_dtype=torch.float32)
        with ctx:
            job.add(x, None)
            job.finish()
    torch.testing.assert_close(mixed.weight, plain.weight)


@pytest.mark.parametrize("gram_dtype", [None, torch.float32])
def test_taps_that_never_see_the_input_are_left_out_of_the_solve_and_written_as_zeros(gram_dtype):
    """A 7 x 7 depthwise kernel on 2 x 2 maps (ConvNeXt at 32 px): the solve sees the 9 taps that reach
    the input (49 -> 9 inputs per group) and writes what the full solve writes, zeros elsewhere. The
    full solve is the same layer without padding on the input padded beforehand (its padding taps
    are then ordinary zero inputs)."""
    torch.manual_seed(0)
    x = torch.randn(40, 4, 2, 2, dtype=torch.float64)
    pruned = nn.Conv2d(4, 4, 7, padding=3, groups=4).double()
    full = nn.Conv2d(4, 4, 7, padding=0, groups=4).double()
    for layer, inp in ((pruned, x), (full, nn.functional.pad(x, (3, 3, 3, 3)))):
        job = _job(layer, code=resolve_code("rotated_pca"), gram_dtype=gram_dtype)
        job.add(inp, None)
        job.finish()
        if layer is pruned:
            assert job.input.columns is not None and len(job.input.columns) == 9
            assert job.input.mode == "gram"  # 160 rows, 9 inputs (49 without the pruning: still Gram)
    # float32 products: each solve decomposes a differently sized float32 matrix, so rounding differs.
    tol = 1e-12 if gram_dtype is None else 1e-4
    torch.testing.assert_close(pruned.weight, full.weight, rtol=0, atol=tol * float(full.weight.detach().abs().max()))
    torch.testing.assert_close(pruned.bias, full.bias, rtol=0, atol=tol * float(full.bias.detach().abs().max()))
    centre = torch.zeros(7, 7, dtype=torch.bool)
    centre[2:5, 2:5] = True
    assert float(pruned.weight.detach()[..., ~centre].abs().max()) == 0.0


def test_an_input_that_changes_size_between_batches_is_refused_when_the_taps_would_differ():
    job = _job(nn.Conv2d(2, 2, 7, padding=3))
    job.add(torch.randn(20, 2, 2, 2), None)
    with pytest.raises(LayerInitError, match="changed spatial size"):
        job.add(torch.randn(20, 2, 5, 5), None)
        job.finish()
