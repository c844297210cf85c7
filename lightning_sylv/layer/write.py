"""What a solved layer leaves behind: its weights, written in place, and its report.

:func:`write_layer` writes a :class:`~lightning_sylv.layer.solve.Solution`'s weight (mapped back from
its basis block by block, so a wide layer never forms its full product twice) and bias into the
module's parameters, a sharded parameter's own slice included (:mod:`lightning_sylv.sharding`).
:func:`layer_report` turns the fit's diagnostics into a :class:`~lightning_sylv.report.LayerReport`.

This module imports no Lightning.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_sylv.layer.solve import Solution
from lightning_sylv.layer_fit import LayerFit, summarize
from lightning_sylv.report import LayerReport
from lightning_sylv.sharding import write_, write_product_

__all__ = ["layer_report", "write_layer"]


def write_layer(
    module: nn.Module,
    weight: Tensor,
    bias: Tensor | None,
    basis: Tensor | None = None,
    columns: Tensor | None = None,
) -> None:
    """Write ``weight`` ``(groups, out, d)`` and ``bias`` ``(groups, out)`` into ``module`` in place.

    With a ``basis`` ``(groups, d, r)`` the weight given is ``(groups, out, r)`` and ``weight @ basisᵀ``
    is written, a block of rows at a time (:func:`~lightning_sylv.sharding.write_product_`). With
    ``columns`` (``(c,)`` indices into each group's ``d`` weight columns) the solve saw only those
    columns (``d`` above is ``c``): they are written and the other columns set to zero.
    """
    if columns is not None:
        full = module.weight.shape[1:].numel()
        if basis is None:
            wide = weight.new_zeros(*weight.shape[:-1], full)
            wide[..., columns.to(weight.device)] = weight
            weight = wide
        else:
            wide = basis.new_zeros(basis.shape[0], full, basis.shape[-1])
            wide[:, columns.to(basis.device)] = basis
            basis = wide
    if basis is None:
        write_(module.weight, weight)
    else:
        write_product_(module.weight, weight, basis.mT)
    if module.bias is not None and bias is not None:
        write_(module.bias, bias)


def layer_report(
    module: nn.Module,
    *,
    name: str,
    code: str,
    fit: LayerFit,
    solution: Solution,
    groups: int,
    in_features: int,
    out_features: int,
    seconds: float,
    gain: float,
) -> LayerReport:
    """The report of one written layer (see :class:`~lightning_sylv.report.LayerReport` for the fields)."""
    return LayerReport(
        name=name,
        kind=type(module).__name__,
        in_features=in_features,
        out_features=out_features,
        groups=groups,
        rows=solution.rows,
        code=code,
        seconds=seconds,
        solver=f"{solution.how}/{fit.path}",
        gain=gain,
        **summarize([fit]),
    )
