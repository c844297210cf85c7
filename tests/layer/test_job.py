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
