"""lightning_sylv.layer.write: weights written in place (from a basis, block by block) and the report."""

from __future__ import annotations

import torch
from torch import nn

from lightning_sylv.layer.solve import Solution
from lightning_sylv.layer.write import layer_report, write_layer
from lightning_sylv.layer_fit import LayerFit


def test_a_weight_in_a_basis_is_written_as_its_product_and_the_bias_as_is():
    layer = nn.Linear(6, 2)
    parameter = layer.weight
    weight, basis, bias = torch.randn(1, 2, 3), torch.randn(1, 6, 3), torch.randn(1, 2)
    write_layer(layer, weight, bias, basis)
    assert layer.weight is parameter  # in place: optimizers keep their parameter
    torch.testing.assert_close(layer.weight, (weight @ basis.mT)[0])
    torch.testing.assert_close(layer.bias, bias[0])


def test_a_layer_without_bias_takes_the_weight_only():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    weight = torch.randn(2, 3, 2 * 9)
    write_layer(conv, weight, torch.randn(2, 3))
    torch.testing.assert_close(conv.weight, weight.reshape(6, 2, 3, 3))


def test_the_report_carries_the_fit_and_the_solution():
    fit = LayerFit(torch.zeros(1, 2, 3), None, 0.25, 0.5, 1e-12, 4.0, 8.0, 1, path="eigh")
    solution = Solution(fit, None, 30, "gram", torch.zeros(1))
    report = layer_report(nn.Linear(3, 2), name="fc", code="pca", fit=fit, solution=solution, groups=1,
                          in_features=3, out_features=2, seconds=0.5, gain=0.7)  # fmt: skip
    assert (report.name, report.kind, report.rows, report.solver, report.gain) == ("fc", "Linear", 30, "gram/eigh", 0.7)
    assert (report.encoding_loss, report.cond_b, report.dropped) == (0.25, 8.0, 1)
