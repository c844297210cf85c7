"""lightning_sylv: data-driven weight initialization with Sylvester solvers for PyTorch Lightning.

Quick start::

    from lightning.pytorch import Trainer
    from lightning_sylv import SylvesterInit

    trainer = Trainer(max_epochs=20, callbacks=[SylvesterInit(samples_per_class=100)])
    trainer.fit(model, datamodule=dm)

The math (``lightning_sylv.solver``, ``codes``, ``layer_fit``, ``engine``, ``lowrank``) works on any
``nn.Module`` without Lightning. The names below are loaded on first use (PEP 562), so
``import lightning_sylv.solver`` imports neither Lightning nor matplotlib; the callbacks
(``SylvesterInit``, ``FuseInit``, ``LowRankInit``) are the Lightning glue.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY = {
    "SylvesterInit": "lightning_sylv.callbacks.sylvester",
    "FuseInit": "lightning_sylv.callbacks.fuse",
    "LowRankInit": "lightning_sylv.callbacks.lowrank",
    "CODES": "lightning_sylv.codes",
    "LatentCode": "lightning_sylv.codes",
    "OneHotCode": "lightning_sylv.codes",
    "PCACode": "lightning_sylv.codes",
    "InitReport": "lightning_sylv.engine",
    "LayerReport": "lightning_sylv.engine",
    "SylvesterInitError": "lightning_sylv.engine",
    "SylvesterSettings": "lightning_sylv.settings",
    "sylvester_init_": "lightning_sylv.engine",
    "SylvesterSingularError": "lightning_sylv.solver",
    "solve_sylvester": "lightning_sylv.solver",
    "solve_sylvester_psd": "lightning_sylv.solver",
}

#: the same names as ``_LAZY``, spelled out so that tools see them as re-exported
#: (``tests/test_imports.py`` checks the two agree)
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
    "SylvesterSettings",
    "SylvesterSingularError",
    "solve_sylvester",
    "solve_sylvester_psd",
    "sylvester_init_",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from lightning_sylv.callbacks.fuse import FuseInit
    from lightning_sylv.callbacks.lowrank import LowRankInit
    from lightning_sylv.callbacks.sylvester import SylvesterInit
    from lightning_sylv.codes import CODES, LatentCode, OneHotCode, PCACode
    from lightning_sylv.engine import InitReport, LayerReport, SylvesterInitError, sylvester_init_
    from lightning_sylv.settings import SylvesterSettings
    from lightning_sylv.solver import SylvesterSingularError, solve_sylvester, solve_sylvester_psd


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_sylv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
