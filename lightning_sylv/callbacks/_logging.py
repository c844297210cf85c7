"""Logger glue of the initialization callbacks, parameterized by their prefix (``sylvester``,
``fuse``, ``lowrank``): hparams with the init metrics, the per-layer report, and a progress bar over
layers. The features before/after the init (TensorBoard's Projector, the t-SNE figure) are in
:mod:`lightning_sylv.callbacks._inspection`.

Everything that draws or computes lives in :mod:`lightning_sylv.inspection` and
:mod:`lightning_sylv.report`; this module only decides *where* things go:

* scalars (accuracies, times) go to every attached logger, to ``trainer.callback_metrics`` and, for
  TensorBoard, into the HParams session as its metrics (:func:`publish_metrics`);
* the Markdown table, per-layer scalars, embeddings and the t-SNE figure go only to
  ``TensorBoardLogger`` loggers (their ``experiment`` is a ``SummaryWriter``), and only on global rank 0.
  Nothing here is a collective operation, so ranks may take different paths.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "PROGRESS_DELAY_S",
    "layer_progress",
    "log_callback_hparams",
    "log_report",
    "publish_metrics",
    "tensorboard_writers",
]

#: The layer progress bar appears only when initialization takes longer than this (seconds).
PROGRESS_DELAY_S = 1.0


def tensorboard_writers(trainer: pl.Trainer) -> list[SummaryWriter]:
    """The ``SummaryWriter`` of every attached ``TensorBoardLogger``; empty off global rank 0."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _lightning_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """What Lightning is about to log as the run's hparams (module + datamodule), as it merges them."""
    if not getattr(trainer, "enable_autolog_hparams", True):
        return {}
    out: dict[str, Any] = {}
    if getattr(pl_module, "_log_hyperparams", True):
        out.update(pl_module.hparams_initial)
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "_log_hyperparams", True):
        out.update(dm.hparams_initial)
    out.pop("_class_path", None)
    return out


def log_callback_hparams(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    params: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """Record the callback's arguments (``params``, keys ``<prefix>/<arg>``) with every logger, and
    ``metrics`` (the init metrics) as the HParams session's metrics in TensorBoard.

    TensorBoard's HParams plugin keeps only the *first* hparams session written to a run, and
    ``on_fit_start`` runs before Lightning logs the LightningModule's and datamodule's hparams. Logging
    ``params`` alone there would hide the model's hparams from the HParams tab, so a
    ``TensorBoardLogger`` gets the model's hparams together with ``params``, and the init metrics as
    the session's metrics (written as scalars at step 0 too), instead of Lightning's placeholder
    ``hp_metric = -1``; Lightning's own call that follows adds nothing new to the plugin and merges
    into ``hparams.yaml``. Other loggers merge repeated calls themselves and get ``params`` alone (the
    metrics reach them through :func:`publish_metrics`). Loggers log on rank zero only.
    """
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams({**_lightning_hparams(trainer, pl_module), **params}, metrics=metrics or None)
        else:
            logger.log_hyperparams(params)


def publish_metrics(trainer: pl.Trainer, metrics: dict[str, float], *, loggers: bool = True) -> None:
    """Make ``metrics`` visible the way Lightning's own metrics are: in ``trainer.callback_metrics``
    (so ``ModelCheckpoint``, ``EarlyStopping`` and sweepers can monitor them) and, with ``loggers``,
    in every attached logger except TensorBoard, which gets them with the hparams
    (:func:`log_callback_hparams`).

    Lightning clears ``callback_metrics`` after the sanity check; the callbacks call this again in
    ``on_train_start`` with ``loggers=False``.
    """
    device = trainer.strategy.root_device if trainer.strategy is not None else None
    for key, value in metrics.items():
        trainer.callback_metrics[key] = torch.tensor(float(value), device=device)
    if not loggers:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            logger.log_metrics(metrics, step=trainer.global_step)


def log_report(trainer: pl.Trainer, prefix: str, table: str, scalars: dict[str, float]) -> None:
    """The per-layer report to TensorBoard: a Markdown ``table`` (tag ``<prefix>/layers``) and
    ``scalars`` (e.g. ``<prefix>/layer/<name>/<field>``, from :func:`lightning_sylv.report.layer_scalars`)."""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(f"{prefix}/layers", table, global_step=trainer.global_step)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=trainer.global_step)
        writer.flush()


@contextmanager
def layer_progress(
    trainer: pl.Trainer, enabled: bool, desc: str = "SylvesterInit"
) -> Iterator[Callable[[Any, int, int], None] | None]:
    """A tqdm bar over the initialized layers (titled ``desc``), for ``sylvester_init_(on_layer=...)``;
    ``on_layer(layer, done, total)`` reads ``layer.name`` only.

    Yields ``None`` (no bar) unless ``enabled``, on global rank 0, with an enabled progress bar
    callback on the trainer. The bar uses Lightning's ``Tqdm`` on stdout like the training bar and
    appears only once initialization has taken :data:`PROGRESS_DELAY_S` seconds.
    """
    bar_cb = trainer.progress_bar_callback
    if not enabled or not trainer.is_global_zero or bar_cb is None or getattr(bar_cb, "is_disabled", False):
        yield None
        return
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    bar = Tqdm(
        desc=desc,
        unit="layer",
        leave=True,
        dynamic_ncols=True,
        file=sys.stdout,
        smoothing=0,
        delay=PROGRESS_DELAY_S,
    )

    def on_layer(layer: Any, done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.set_postfix_str(layer.name, refresh=False)
        bar.update(done - bar.n)

    try:
        yield on_layer
    finally:
        bar.close()
