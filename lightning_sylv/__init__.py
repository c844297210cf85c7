"""lightning_sylv: data-driven weight initialization with Sylvester solvers for PyTorch Lightning.

Quick start::

    from lightning.pytorch import Trainer
    from lightning_sylv import SylvesterInit

    trainer = Trainer(callbacks=[SylvesterInit(samples_per_class=100)])
    trainer.fit(model, datamodule=dm)

The math (:mod:`~lightning_sylv.solver`, :mod:`~lightning_sylv.codes`,
:mod:`~lightning_sylv.activations`, :mod:`~lightning_sylv.layer_fit`, :mod:`~lightning_sylv.engine`)
works on any ``nn.Module`` without Lightning; :class:`SylvesterInit` is the Lightning glue.
"""

from lightning_sylv.callbacks import SylvesterInit
from lightning_sylv.callbacks.fuse import FuseInit
from lightning_sylv.callbacks.lowrank import LowRankInit
from lightning_sylv.codes import CODES, LatentCode, OneHotCode, PCACode
from lightning_sylv.engine import InitReport, LayerReport, SylvesterInitError, sylvester_init_
from lightning_sylv.solver import SylvesterSingularError, solve_sylvester, solve_sylvester_psd

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "FuseInit",
    "InitReport",
    "LatentCode",
    "LayerReport",
    "LowRankInit",
    "OneHotCode",
    "PCACode",
    "SylvesterInit",
    "SylvesterInitError",
    "SylvesterSingularError",
    "solve_sylvester",
    "solve_sylvester_psd",
    "sylvester_init_",
]
