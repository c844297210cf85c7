"""The template every data-driven initialization callback follows.

:class:`DataDrivenInit` owns ``on_fit_start``: whether to run (only a real resume skips), the fit's
data and precision-aware forward (:class:`FitContext`), the class-balanced subset, the DDP policy,
the timing, the accuracy, publishing the metrics (loggers, ``trainer.callback_metrics``, TensorBoard
HParams), the per-layer report and the summary. A subclass holds its frozen
:attr:`~DataDrivenInit.settings` (what its function takes), declares its :attr:`~DataDrivenInit.prefix`
and implements one public hook, :meth:`~DataDrivenInit.initialize`; the optional
:meth:`~DataDrivenInit.on_init_start` / :meth:`~DataDrivenInit.on_init_end` run around it (and
:meth:`~DataDrivenInit.on_init_skip` when a resume skips it). The report the function returns
presents itself (``metrics()``, ``tensorboard()``).

Strategies that restore a checkpoint after ``on_fit_start`` (``ModelParallelStrategy``) would have the
template initialize a model whose checkpoint is about to be loaded: there the template runs at
``on_train_start`` (or ``on_fit_end`` for a fit without training steps), when a resume is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_sylv._checks import (
    check_bool,
    check_identifier,
    check_int,
    check_key,
    check_positive_int,
)
from lightning_sylv.callbacks._distributed import check_materialized, check_strategy, sync_module
from lightning_sylv.callbacks._logging import (
    layer_progress,
    log_callback_hparams,
    log_report,
    publish_metrics,
)
from lightning_sylv.callbacks._trainer_data import stage_dataloader
from lightning_sylv.evaluation import evaluate_accuracy
from lightning_sylv.subset import BatchFormat, balanced_subset

__all__ = ["DTYPES", "DataDrivenInit", "FitContext", "InitSubset", "percent"]

#: precision -> (dtype of statistics and solves, dtype of the row products behind the second moments).
#: SylvesterInit accepts all three; FuseInit and LowRankInit "float64" and "float32".
DTYPES: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "float64": (torch.float64, None),
    "mixed": (torch.float64, torch.float32),
    "float32": (torch.float32, None),
}


@dataclass
class FitContext:
    """The fit run as the initializers need it.

    Attributes:
        train_dl: The training dataloader (its dataset and collate function give the subset).
        val_dl: The validation dataloader, or ``None``.
        device: The model's device.
        to_device: Moves inputs to a device and casts them to the run's precision (without the
            batch-transfer hooks, which expect whole training batches).
        forward: Runs the model on inputs to logits, inside the precision plugin's forward context
            (autocast): ``model(inputs)``, or the LightningModule method named by the callback's
            ``forward`` argument.
        init_dataset: Where the subset is drawn from: ``datamodule.init_dataset()`` when the datamodule
            defines it (e.g. the training images without augmentation), else the training dataset.
        batch_format: Where batches keep their inputs and labels (the callback's ``input_key`` /
            ``label_key``).
    """

    train_dl: DataLoader
    val_dl: DataLoader | None
    device: torch.device
    to_device: Callable[[Any, torch.device], Any]
    forward: Callable[[nn.Module, Any], Any]
    init_dataset: Dataset
    batch_format: BatchFormat


@dataclass
class InitSubset:
    """The initialization subset: ``raw`` as collated (CPU), ``inputs``/``labels`` on the model's device,
    ``indices`` of the whole subset (all processes)."""

    raw: Any
    inputs: Any
    labels: Tensor | None
    indices: Tensor


class _Settings(Protocol):
    """What the template reads from a callback's settings (:class:`~lightning_sylv.settings.SylvesterSettings`,
    :class:`~lightning_sylv.settings.FuseSettings`, :class:`~lightning_sylv.lowrank.LowRankSettings`)."""

    @property
    def requires_labels(self) -> bool:
        """Whether the subset must carry labels."""
        ...

    @property
    def recalibrates_norms(self) -> bool:
        """Whether BatchNorm statistics are recomputed (then averaged across DDP processes)."""
        ...


def percent(value: float | None) -> str:
    """``0.1234 -> "12.34%"``, ``None -> "n/a"``."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


class DataDrivenInit(Callback):
    """Base class of the callbacks that initialize a model from data at the start of ``fit``.

    Subclasses set :attr:`settings` (the frozen, validated options their function takes as is),
    :attr:`prefix` (metric and hparam names are ``<prefix>/<name>``), :attr:`hparam_names`,
    :attr:`shard_subset`, and implement :meth:`initialize`. The arguments of the template itself are
    validated here, once; the settings validate themselves.

    Args:
        samples_per_class: Training examples drawn per class.
        seed: Seed of the subset draw (the settings carry the seed of the patch draws).
        evaluate: Measure validation accuracy.
        eval_batches: Cap on validation batches per evaluation (``None``: all).
        verbose: Print the summary and the per-layer table; show the layer progress bar.
        forward: Name of a LightningModule method mapping a batch's inputs to logits, used instead of
            ``forward`` for every pass the callback makes (``None``: the model's ``forward``).
        input_key, label_key: Where batches keep their inputs and labels (a dict key, or a position
            in a tuple batch); ``None``: tuples ``(x, y)``, or the usual dict keys.
    """

    #: Metric and hparam names are ``<prefix>/<name>``.
    prefix: ClassVar[str] = ""
    #: The arguments recorded as hparams ``<prefix>/<argument>``.
    hparam_names: ClassVar[tuple[str, ...]] = ()
    #: Under DDP, each process loads its share of the subset (and the statistics are summed across
    #: processes); otherwise every process loads and fits on the whole subset. Either way rank 0's
    #: weights are broadcast.
    shard_subset: ClassVar[bool] = False
    #: Why the callback refuses ``ModelParallelStrategy`` (FSDP2), or ``None`` when it supports it (its
    #: jobs' writes go through :func:`lightning_sylv.sharding.write_` and the pass runner's commit).
    sharding_refusal: ClassVar[str | None] = "it has not been built for parameters split across processes"

    #: The options of the callback's function, as one frozen object it takes as is.
    settings: _Settings

    def __init__(
        self,
        *,
        samples_per_class: int,
        seed: int,
        evaluate: bool,
        eval_batches: int | None,
        verbose: bool,
        forward: str | None,
        input_key: str | int | None,
        label_key: str | int | None,
    ) -> None:
        check_positive_int("samples_per_class", samples_per_class)
        check_int("seed", seed)
        check_bool("evaluate", evaluate)
        check_positive_int("eval_batches", eval_batches, allow_none=True)
        check_bool("verbose", verbose)
        check_identifier("forward", forward, allow_none=True)
        check_key("input_key", input_key)
        check_key("label_key", label_key)
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.verbose = verbose
        self.forward = forward
        self.input_key = input_key
        self.label_key = label_key
        self.initialized = False
        self.report: Any = None
        self.subset_size = 0
        self.metrics: dict[str, float] = {}
        self._pending = False  # initialization deferred to on_train_start (see on_fit_start)

    # ------------------------------------------------------------------ checkpoint state (unchanged)

    def state_dict(self) -> dict[str, Any]:
        return {"initialized": self.initialized, "metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialized = bool(state_dict.get("initialized", False))
        self.metrics = dict(state_dict.get("metrics", {}))

    # ------------------------------------------------------------------ hooks a subclass implements

    def initialize(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        ctx: FitContext,
        subset: InitSubset,
        on_layer: Callable[[Any, int, int], None] | None,
    ) -> Any:
        """Initialize ``pl_module`` in place from ``subset`` and return the function's report.

        The one hook every subclass implements: call its function with :attr:`settings` as they are,
        the subset, the run's ``ctx.forward`` (and, for statistics summed across processes, the
        strategy's reduce). Timed as ``<prefix>/init_time_s`` with the subset's loading.

        Args:
            trainer: The trainer.
            pl_module: The model, initialized in place.
            ctx: The fit's data, device and precision-aware forward.
            subset: The class-balanced subset, on the model's device.
            on_layer: Progress callback ``on_layer(record, done, total)`` for the function (``None``
                without a progress bar).

        Returns:
            The report (it provides ``layers``, ``metrics()`` and ``tensorboard(prefix, samples)``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement initialize()")

    def on_init_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext) -> dict[str, float]:
        """Runs before the init timer starts (load a teacher, measure what the init will change).

        Returns:
            Metrics to publish, named without the prefix.
        """
        return {}

    def on_init_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext, metrics: dict[str, float]
    ) -> dict[str, float]:
        """Runs after the initial accuracy is measured, with the metrics so far (named without the prefix).

        Returns:
            More metrics to publish, named without the prefix.
        """
        return {}

    def on_init_skip(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs instead of the initialization when it is skipped (a resume, ``fast_dev_run``)."""

    def summary(self) -> str:
        """The text printed when ``verbose``: a line of what happened and the per-layer table."""
        layers = len(self.report.layers) if self.report is not None else 0
        return f"{type(self).__name__}: {layers} layer(s) initialized from {self.subset_size} samples"

    # ------------------------------------------------------------------ the template

    def hyperparameters(self) -> dict[str, Any]:
        """The callback's arguments as hparams ``{"<prefix>/<argument>": value}`` (read from the
        callback, else from its settings)."""
        out: dict[str, Any] = {}
        for n in self.hparam_names:
            value = getattr(self, n) if hasattr(self, n) else getattr(self.settings, n)
            out[f"{self.prefix}/{n}"] = list(value) if isinstance(value, tuple) else value
        return out

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(trainer.strategy, type(self).__name__, refusal=self.sharding_refusal)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelParallelStrategy (FSDP2) loads a checkpoint only after on_fit_start: whether this fit
        # resumes is known from on_train_start on, so the initialization waits until then. Set on
        # every fit: a fit that crashed before on_train_start must not leave the next one pending.
        self._pending = bool(trainer.strategy.restore_checkpoint_after_setup)
        if not self._pending:
            self._start(trainer, pl_module)
        else:  # TensorBoard's HParams tab keeps the first session: ours must be in it, as without deferral
            log_callback_hparams(trainer, pl_module, self.hyperparameters())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            self._pending = False
            self._start(trainer, pl_module)
        elif self.metrics:  # Lightning empties callback_metrics after the sanity check: put them back
            publish_metrics(trainer, self.metrics, loggers=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:  # a deferred fit that ran no training step (max_steps=0)
            self._pending = False
            self._start(trainer, pl_module)
        elif self.metrics:  # a fit that ran no step never reached on_train_start: put them back
            publish_metrics(trainer, self.metrics, loggers=False)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Initialize ``pl_module`` (or skip on a resume) and publish everything: the template."""
        if not self._should_run(trainer):
            self.on_init_skip(trainer, pl_module)
            log_callback_hparams(trainer, pl_module, self.hyperparameters())
            return
        check_materialized(pl_module, type(self).__name__)
        self.report = None
        ctx = self._context(trainer, pl_module)
        metrics = self.on_init_start(trainer, pl_module, ctx)
        start = time.perf_counter()
        subset = self._subset(ctx, trainer)
        with layer_progress(trainer, self.verbose, type(self).__name__) as on_layer:
            self.report = self.initialize(trainer, pl_module, ctx, subset, on_layer)
        if trainer.world_size > 1:
            sync_module(pl_module, trainer.strategy, average_norm_stats=self.settings.recalibrates_norms)
        self.subset_size = len(subset.indices)
        metrics["init_time_s"] = time.perf_counter() - start  # subset and init, no evaluation
        metrics.update(self.report.metrics())
        post = self._accuracy(ctx, pl_module)
        if post is not None:
            metrics["initial_accuracy"] = post
        metrics.update(self.on_init_end(trainer, pl_module, ctx, metrics))
        self.initialized = True
        self.metrics = {f"{self.prefix}/{k}": v for k, v in metrics.items()}
        publish_metrics(trainer, self.metrics)
        log_callback_hparams(trainer, pl_module, self.hyperparameters(), self.metrics)
        log_report(trainer, self.prefix, *self.report.tensorboard(self.prefix, self.subset_size))
        if self.verbose:
            rank_zero_info(self.summary())

    def _should_run(self, trainer: pl.Trainer) -> bool:
        """Only a real resume (``trainer.fit(..., ckpt_path=...)``) skips: a reused callback instance
        with a fresh model initializes it again."""
        name = type(self).__name__
        if trainer.ckpt_path is not None:
            state = "was initialized" if self.initialized else "holds trained weights"
            rank_zero_info(
                f"{name}: resuming from {trainer.ckpt_path}; the model {state}, keeping the checkpoint's weights."
            )
            self.initialized = True
            return False
        if trainer.fast_dev_run:
            rank_zero_warn(f"{name}: skipped under fast_dev_run.")
            return False
        return True

    def _context(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> FitContext:
        name = type(self).__name__
        train_dl = stage_dataloader(trainer, "train")
        if train_dl is None:
            raise RuntimeError(
                f"{name} needs a training DataLoader (from a datamodule, the LightningModule's "
                "train_dataloader, or trainer.fit(train_dataloaders=...)); none was found"
            )
        method = self.forward
        if method is not None and not callable(getattr(pl_module, method, None)):
            raise ValueError(
                f"{name}(forward={method!r}): {type(pl_module).__name__} has no method {method!r}; name a "
                "LightningModule method that maps a batch's inputs to logits"
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
                return model(inputs) if method is None else getattr(model, method)(inputs)

        hook = getattr(trainer.datamodule, "init_dataset", None)
        return FitContext(
            train_dl=train_dl,
            val_dl=stage_dataloader(trainer, "val") if self.evaluate else None,
            device=pl_module.device,
            to_device=to_device,
            forward=forward,
            init_dataset=hook() if callable(hook) else train_dl.dataset,
            batch_format=BatchFormat(self.input_key, self.label_key),
        )

    def _subset(self, ctx: FitContext, trainer: pl.Trainer) -> InitSubset:
        shard = (trainer.global_rank, trainer.world_size) if self.shard_subset else (0, 1)
        raw, labels, indices = balanced_subset(
            ctx.init_dataset,
            self.samples_per_class,
            self.seed,
            ctx.train_dl.collate_fn,
            require_labels=self.settings.requires_labels,
            shard=shard,
            batch_format=ctx.batch_format,
        )
        return InitSubset(
            raw=raw,
            inputs=ctx.to_device(raw, ctx.device),
            labels=None if labels is None else labels.to(ctx.device),
            indices=indices,
        )

    def _accuracy(self, ctx: FitContext, model: nn.Module, *, precision_aware: bool = True) -> float | None:
        """Validation accuracy of ``model`` (``None`` without labelled validation data). With
        ``precision_aware=False`` (e.g. a teacher in its own device and dtype) the inputs go to the
        model's device and dtype and ``model(inputs)`` runs."""
        if ctx.val_dl is None:
            return None
        split = ctx.batch_format.split
        if not precision_aware:
            first = next(iter(model.parameters()), None)
            device = ctx.device if first is None else first.device

            def to_model(inputs: Any, device: torch.device) -> Any:
                inputs = move_data_to_device(inputs, device)
                if first is not None and isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
                    return inputs.to(first.dtype)
                return inputs

            return evaluate_accuracy(
                model, ctx.val_dl, device, max_batches=self.eval_batches, to_device=to_model, split=split
            )
        return evaluate_accuracy(
            model,
            ctx.val_dl,
            ctx.device,
            max_batches=self.eval_batches,
            forward=ctx.forward,
            to_device=ctx.to_device,
            split=split,
        )
