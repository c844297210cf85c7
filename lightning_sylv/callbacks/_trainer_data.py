"""Where a fit run's data comes from: the datamodule, the LightningModule, or ``trainer.fit`` arguments."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

__all__ = ["stage_dataloader"]


def _first_dataloader(source: Any) -> DataLoader | None:
    """The first ``DataLoader`` in what a ``*_dataloader`` hook returned (possibly a collection)."""
    if isinstance(source, DataLoader):
        return source
    if isinstance(source, (list, tuple)):
        return next((d for d in source if isinstance(d, DataLoader)), None)
    if isinstance(source, dict):
        return next((d for d in source.values() if isinstance(d, DataLoader)), None)
    flattened = getattr(source, "flattened", None)  # CombinedLoader
    if flattened:
        return _first_dataloader(list(flattened))
    return None


def stage_dataloader(trainer: pl.Trainer, stage: Literal["train", "val"]) -> DataLoader | None:
    """The fit run's train or val ``DataLoader`` (the first one if there are several), or ``None``.

    Reads the same source the fit loop will use (Lightning keeps it on the loops), so it works for a
    datamodule, the LightningModule's ``*_dataloader`` hooks and dataloaders passed to ``trainer.fit``.
    Errors raised by the user's hook propagate.
    """
    loop = trainer.fit_loop if stage == "train" else trainer.fit_loop.epoch_loop.val_loop
    source = getattr(loop, "_data_source", None)
    if source is None or source.instance is None or not source.is_defined():
        return None
    return _first_dataloader(source.dataloader())
