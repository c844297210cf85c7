"""One layer's initialization as a short pipeline (each step a module of its own):

* :mod:`~lightning_sylv.layer.collect` — what a layer keeps of its input over batches (statistics or rows);
* :mod:`~lightning_sylv.layer.mode` — the pure choice between Gram, span and randomized mode;
* :mod:`~lightning_sylv.layer.solve` — one solve function per mode;
* :mod:`~lightning_sylv.layer.write` — the weights written in place, and the layer's report;
* :mod:`~lightning_sylv.layer.job` — :class:`LayerJob`, the pipeline the initializers' passes feed.

This package imports no Lightning.
"""

from lightning_sylv.layer.collect import LayerInitError, LayerInput, grouped_rows
from lightning_sylv.layer.job import LayerJob, autocast_off
from lightning_sylv.layer.mode import OVERSAMPLE, SOLVERS, Mode, choose_mode, directions
from lightning_sylv.layer.solve import LayerProblem, Solution, solve_gram, solve_rows
from lightning_sylv.layer.write import layer_report, write_layer

__all__ = [
    "OVERSAMPLE",
    "SOLVERS",
    "LayerInitError",
    "LayerInput",
    "LayerJob",
    "LayerProblem",
    "Mode",
    "Solution",
    "autocast_off",
    "choose_mode",
    "directions",
    "grouped_rows",
    "layer_report",
    "solve_gram",
    "solve_rows",
    "write_layer",
]
