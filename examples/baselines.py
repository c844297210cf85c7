"""Baseline data-driven initializers for the reproduction harness (issue 18), outside the plugin.

``LSUVBaseline`` runs LSUV (Mishkin & Matas, "All you need is a good init", 2016) through the PyPI
package ``lsuv`` (``pip install 'lightning_sylv[examples]'`` or ``pip install lsuv``) at the start of
``fit``, on the same class-balanced subset that ``SylvesterInit`` draws: ``balanced_subset`` of
``datamodule.init_dataset()`` (the un-augmented training images), ``samples_per_class`` per class,
the run's seed. A class with fewer images than ``samples_per_class`` (few-shot runs) gives all it
has, exactly as for ``SylvesterInit``.

What LSUV does (``lsuv.lsuv_with_singlebatch``): every Conv/Linear weight is replaced by an
orthonormal matrix (biases zeroed), then, layer by layer in execution order, the weight is rescaled
until the layer's output on the batch has standard deviation 1 (tolerance 0.1, at most 10 tries).
The model runs in eval mode, so BatchNorm layers use their running statistics (as constructed:
mean 0, variance 1) and are left untouched. The classifier head is orthonormal and rescaled too: it
is not fitted to the labels, so the initial accuracy stays near chance.

The plugin does not depend on ``lsuv``; only this file imports it, lazily.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

from lightning_sylv.subset import balanced_subset

__all__ = ["LSUVBaseline", "lsuv_available", "lsuv_init_"]


def lsuv_available() -> bool:
    try:
        import lsuv  # noqa: F401
    except ImportError:
        return False
    return True


def lsuv_init_(net: torch.nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.nn.Module:
    """LSUV-initialize ``net`` in place from the input batch ``x`` (``lsuv.lsuv_with_singlebatch``).

    ``kwargs`` go to the package (``needed_std``, ``std_tol``, ``max_attempts``, ``do_orthonorm``).
    The train/eval mode of ``net`` is restored by the package.
    """
    try:
        from lsuv import lsuv_with_singlebatch
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the LSUV baseline needs the `lsuv` package: pip install lsuv "
                          "(or the `examples` extra of lightning_sylv)") from e
    kwargs.setdefault("verbose", False)
    device = next(net.parameters()).device
    return lsuv_with_singlebatch(net, x, device=device, **kwargs)


class LSUVBaseline(Callback):
    """LSUV on ``pl_module.net`` (or the module itself) in ``on_fit_start``, from a balanced subset.

    Put it before any callback that measures the initial accuracy in ``on_fit_start``.
    ``metrics["lsuv/init_time_s"]`` holds the subset draw plus LSUV (not counting evaluations).
    """

    def __init__(self, samples_per_class: int = 100, seed: int = 0, **lsuv_kwargs: Any) -> None:
        self.samples_per_class, self.seed, self.lsuv_kwargs = samples_per_class, seed, lsuv_kwargs
        self.metrics: dict[str, float] = {}
        self.subset_size = 0

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.ckpt_path is not None:  # resumed: the weights come from the checkpoint
            return
        t0 = time.perf_counter()
        dm = trainer.datamodule
        hook = getattr(dm, "init_dataset", None)
        dataset = hook() if callable(hook) else dm.train_dataloader().dataset
        x, _, _ = balanced_subset(dataset, self.samples_per_class, self.seed)
        net = getattr(pl_module, "net", pl_module)
        lsuv_init_(net, x.to(pl_module.device), **self.lsuv_kwargs)
        self.subset_size = len(x)
        self.metrics["lsuv/init_time_s"] = time.perf_counter() - t0
