"""What every data-driven initialization callback shares: when to run, where the subset comes from,
how the model is run under the trainer's precision, and where the metrics go."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_sylv.callbacks._distributed import check_strategy, sync_module
from lightning_sylv.callbacks._trainer_data import stage_dataloader
from lightning_sylv.evaluation import evaluate_accuracy
from lightning_sylv.report import InitReport
from lightning_sylv.subset import balanced_subset

__all__ = ["DataDrivenInit", "FitContext", "Subset"]


@dataclass
class FitContext:
    """The fit run as the initializers need it.

    Attributes:
        train_dl: The training dataloader (its dataset and collate function give the subset).
        val_dl: The validation dataloader, or ``None``.
        device: The model's device.
        to_device: Moves inputs to a device and casts them to the run's precision (without the
            batch-transfer hooks, which expect whole training batches).
        forward: Runs a model on inputs inside the precision plugin's forward context (autocast).
        init_dataset: Where the subset is drawn from: ``datamodule.init_dataset()`` when the datamodule
            defines it (e.g. the training images without augmentation), else the training dataset.
    """

    train_dl: DataLoader
    val_dl: DataLoader | None
    device: torch.device
    to_device: Callable[[Any, torch.device], Any]
    forward: Callable[[nn.Module, Any], Any]
    init_dataset: Dataset


@dataclass
class Subset:
    """The initialization subset: ``raw`` as collated (CPU), ``inputs``/``labels`` on the model's device,
    ``indices`` of the whole subset (all processes)."""

    raw: Any
    inputs: Any
    labels: torch.Tensor | None
    indices: torch.Tensor


class DataDrivenInit(Callback):
    """Base class of the callbacks that initialize a model from data at the start of ``fit``.

    It keeps ``initialized`` in the checkpoint (a resumed run is never re-initialized), refuses
    sharded strategies, and gives subclasses the fit's data and precision-aware forward. Subclasses
    implement ``on_fit_start``, starting with ``if not self._should_run(trainer): return``.
    """

    def __init__(self) -> None:
        self.initialized = False
        self.report: InitReport | None = None
        self.subset_size = 0
        self.metrics: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"initialized": self.initialized, "metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialized = bool(state_dict.get("initialized", False))
        self.metrics = dict(state_dict.get("metrics", {}))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(trainer.strategy, type(self).__name__)

    def _should_run(self, trainer: pl.Trainer) -> bool:
        name = type(self).__name__
        if self.initialized:
            rank_zero_info(f"{name}: the model was already initialized (restored from a checkpoint); skipping.")
            return False
        if trainer.ckpt_path is not None:
            rank_zero_info(f"{name}: resuming from {trainer.ckpt_path}; keeping the checkpoint's weights.")
            self.initialized = True
            return False
        if trainer.fast_dev_run:
            rank_zero_warn(f"{name}: skipped under fast_dev_run.")
            return False
        return True

    def _context(self, trainer: pl.Trainer, pl_module: pl.LightningModule, evaluate: bool) -> FitContext:
        train_dl = stage_dataloader(trainer, "train")
        if train_dl is None:
            raise RuntimeError(
                f"{type(self).__name__} needs a training DataLoader (from a datamodule, the LightningModule's "
                "train_dataloader, or trainer.fit(train_dataloaders=...)); none was found"
            )
        plugin = trainer.precision_plugin

        def to_device(batch: Any, device: torch.device) -> Any:
            # Not ``strategy.batch_to_device``: it runs the LightningModule's and datamodule's batch
            # transfer hooks, which are written for whole training batches (they unpack ``(x, y)``)
            # and often augment (``trainer.training`` is already true in ``on_fit_start``). Only the
            # inputs travel here. Then the dtype the run's precision expects ("bf16-true" etc.).
            return plugin.convert_input(move_data_to_device(batch, device))

        def forward(model: nn.Module, inputs: Any) -> Any:
            with plugin.forward_context():  # autocast for mixed precision
                return model(inputs)

        hook = getattr(trainer.datamodule, "init_dataset", None)
        return FitContext(
            train_dl=train_dl,
            val_dl=stage_dataloader(trainer, "val") if evaluate else None,
            device=pl_module.device,
            to_device=to_device,
            forward=forward,
            init_dataset=hook() if callable(hook) else train_dl.dataset,
        )

    @staticmethod
    def _subset(
        ctx: FitContext,
        samples_per_class: int,
        seed: int,
        *,
        require_labels: bool,
        shard: tuple[int, int] = (0, 1),
    ) -> Subset:
        raw, labels, indices = balanced_subset(
            ctx.init_dataset, samples_per_class, seed, ctx.train_dl.collate_fn, require_labels=require_labels, shard=shard
        )
        return Subset(
            raw=raw,
            inputs=ctx.to_device(raw, ctx.device),
            labels=None if labels is None else labels.to(ctx.device),
            indices=indices,
        )

    @staticmethod
    def _accuracy(ctx: FitContext, model: nn.Module, max_batches: int | None, *, precision_aware: bool = True) -> float | None:
        if ctx.val_dl is None:
            return None
        if not precision_aware:  # e.g. a teacher loaded in its own device and dtype
            first = next(iter(model.parameters()), None)
            device = ctx.device if first is None else first.device

            def to_model(inputs: Any, device: torch.device) -> Any:
                inputs = move_data_to_device(inputs, device)
                if first is not None and isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
                    return inputs.to(first.dtype)
                return inputs

            return evaluate_accuracy(model, ctx.val_dl, device, max_batches=max_batches, to_device=to_model)
        return evaluate_accuracy(model, ctx.val_dl, ctx.device, max_batches=max_batches, forward=ctx.forward, to_device=ctx.to_device)

    def _synced(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, start: float, subset: Subset, recalibrated: bool = True
    ) -> float:
        """After the weights are written: make every rank hold rank 0's weights (DDP; BatchNorm
        statistics averaged first if ``recalibrated``), record the subset size, and return the seconds
        since ``start`` (the init time: evaluations are not in it)."""
        if trainer.world_size > 1:
            sync_module(pl_module, trainer.strategy, average_norm_stats=recalibrated)
        self.subset_size = len(subset.indices)
        return time.perf_counter() - start

    def _publish(self, trainer: pl.Trainer) -> None:
        """Log :attr:`metrics` to every attached logger (loggers write on rank zero only)."""
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)


def percent(value: float | None) -> str:
    """``0.1234 -> "12.34%"``, ``None -> "n/a"``."""
    return "n/a" if value is None else f"{100 * value:.2f}%"
