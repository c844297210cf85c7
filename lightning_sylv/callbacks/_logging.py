"""Logger glue of the initialization callbacks, parameterized by their prefix (``sylvester``,
``fuse``, ``lowrank``): hparams with the init metrics, the per-layer report, TensorBoard's Projector /
t-SNE figure, and a progress bar over layers.

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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader

from lightning_sylv.callbacks._trainer_data import stage_dataloader
from lightning_sylv.inspection import (
    FeatureCapture,
    HeldOutSample,
    TsnePanel,
    capture_features,
    cluster_score,
    figure_to_array,
    take_sample,
    tsne_2d,
    tsne_figure,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "PROGRESS_DELAY_S",
    "TAG_AFTER",
    "TAG_BEFORE",
    "TAG_LAYERS",
    "TAG_TSNE",
    "FeatureInspection",
    "layer_progress",
    "log_callback_hparams",
    "log_report",
    "publish_metrics",
    "tensorboard_writers",
]

TAG_BEFORE = "sylvester/features_before_init"
TAG_AFTER = "sylvester/features_after_init"
TAG_TSNE = "sylvester/tsne"
TAG_LAYERS = "sylvester/layers"  # f"{prefix}/layers" for the other callbacks
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


def _class_names(trainer: pl.Trainer, val_dl: DataLoader) -> list[str] | None:
    for source in (trainer.datamodule, val_dl.dataset):
        for attr in ("class_names", "classes"):
            names = getattr(source, attr, None)
            if (
                isinstance(names, Sequence)
                and not isinstance(names, str)
                and names
                and all(isinstance(n, str) for n in names)
            ):
                return list(names)
    return None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


class FeatureInspection:
    """Penultimate features of a held-out validation sample before and after initialization, logged to
    TensorBoard as Projector embeddings (``sylvester/features_before_init``, ``.../after_init``) and a
    side-by-side t-SNE figure (``sylvester/tsne``), plus silhouette scores.

    Create with :meth:`create` (which returns ``None`` when there is nothing to do); call
    :meth:`before` before initializing and :meth:`after` once done. Failures are turned into warnings:
    a picture must not end a training run. :attr:`seconds` is the time spent in here.

    Args:
        writers: The ``SummaryWriter`` objects to write to.
        sample: The held-out validation sample.
        projector: Write Projector embeddings.
        tsne: Write the t-SNE figure.
        seed: Seed of the t-SNE maps.
        step: Global step the records are written at.
        device: Device the sample is moved to.
        forward: ``forward(model, inputs)`` (the run's precision context).
        to_device: ``to_device(inputs, device)`` (the run's strategy and precision).
        class_names: Names of classes ``0, 1, ...`` for the legend and the Projector, or ``None``.
    """

    def __init__(
        self,
        writers: list[SummaryWriter],
        sample: HeldOutSample,
        *,
        projector: bool,
        tsne: bool,
        seed: int,
        step: int,
        device: torch.device,
        forward: Callable[[nn.Module, Any], Any],
        to_device: Callable[[Any, torch.device], Any],
        class_names: list[str] | None,
    ) -> None:
        self.writers = writers
        self.sample = sample
        self.projector = projector
        self.tsne = tsne
        self.seed = seed
        self.step = step
        self.device = device
        self.forward = forward
        self.to_device = to_device
        self.class_names = class_names
        self.seconds = 0.0
        self.scores: dict[str, float] = {}
        self._before: FeatureCapture | None = None
        self._failed = False

    @classmethod
    def create(
        cls,
        trainer: pl.Trainer,
        val_dl: DataLoader | None,
        *,
        samples: int,
        projector: bool,
        tsne: bool,
        seed: int,
        device: torch.device,
        forward: Callable[[nn.Module, Any], Any],
        to_device: Callable[[Any, torch.device], Any],
        split: Callable[[Any], tuple[Any, Any]] | None = None,
    ) -> FeatureInspection | None:
        """An inspection if something is to be logged: ``projector`` or ``tsne``, a TensorBoardLogger on
        this (global rank 0) process, and validation data (else a warning and ``None``).

        Args:
            trainer: The trainer (its loggers, rank, datamodule and step).
            val_dl: The run's validation dataloader if already loaded; when ``None`` it is looked up.
            samples: Validation samples to keep (the first ones).
            projector: Write Projector embeddings.
            tsne: Write the t-SNE figure.
            seed: Seed of the t-SNE maps.
            device: Device the sample is moved to.
            forward: ``forward(model, inputs)``.
            to_device: ``to_device(inputs, device)``.
            split: ``split(batch) -> (inputs, labels)`` for the validation batches.
        """
        if not (projector or tsne):
            return None
        writers = tensorboard_writers(trainer)
        if not writers:
            return None
        if val_dl is None:
            val_dl = stage_dataloader(trainer, "val")
        if val_dl is None:
            rank_zero_warn(
                "SylvesterInit: no validation dataloader, so no embeddings or t-SNE are logged to TensorBoard "
                "(set log_embeddings=False and log_tsne=False to silence this)."
            )
            return None
        start = time.perf_counter()
        try:
            sample = take_sample(val_dl, samples, split)
        except Exception as err:  # a visualization must not stop training
            rank_zero_warn(
                f"SylvesterInit: could not take the validation sample for TensorBoard ({type(err).__name__}: {err})."
            )
            return None
        if sample.size == 0:
            return None
        inspection = cls(
            writers,
            sample,
            projector=projector,
            tsne=tsne,
            seed=seed,
            step=trainer.global_step,
            device=device,
            forward=forward,
            to_device=to_device,
            class_names=_class_names(trainer, val_dl),
        )
        inspection.seconds += time.perf_counter() - start
        return inspection

    def _capture(self, model: nn.Module, layer: str | None) -> FeatureCapture | None:
        if self._failed:
            return None
        try:
            return capture_features(
                model, self.sample.batches, layer, device=self.device, forward=self.forward, to_device=self.to_device
            )
        except Exception as err:  # a visualization must not stop training
            self._failed = True
            rank_zero_warn(f"SylvesterInit: could not capture the penultimate features ({type(err).__name__}: {err}).")
            return None

    def before(self, model: nn.Module, head: str | None) -> None:
        """Capture the input of ``head`` (``None``: the last executed layer) before initialization."""
        start = time.perf_counter()
        self._before = self._capture(model, head)
        self.seconds += time.perf_counter() - start

    def after(
        self,
        model: nn.Module,
        head: str | None,
        accuracy_before: float | None,
        accuracy_after: float | None,
        description: str,
    ) -> None:
        """Capture again after initialization and write the embeddings and the t-SNE figure.

        Args:
            model: The initialized model.
            head: The head the engine used (``report.head``).
            accuracy_before: Validation accuracy before (for the titles; default: on the sample).
            accuracy_after: Validation accuracy after (likewise).
            description: What was done, for the right panel's title (e.g. ``"layers=all, λ=10"``).
        """
        start = time.perf_counter()
        try:
            after = self._capture(model, head)
            if after is not None and self._before is not None:
                self._write(self._before, after, accuracy_before, accuracy_after, description)
        except Exception as err:  # a visualization must not stop training
            rank_zero_warn(f"SylvesterInit: could not log the features to TensorBoard ({type(err).__name__}: {err}).")
        finally:
            self.seconds += time.perf_counter() - start

    def _write(
        self,
        before: FeatureCapture,
        after: FeatureCapture,
        acc_before: float | None,
        acc_after: float | None,
        description: str,
    ) -> None:
        labels = self.sample.labels
        names = self.class_names
        if labels is not None and names is not None and int(labels.max()) >= len(names):
            names = None
        if self.projector:
            if labels is None:
                metadata, header = None, None
            elif names is None:
                metadata, header = [str(int(c)) for c in labels], None
            else:
                metadata, header = [[str(int(c)), names[int(c)]] for c in labels], ["label", "class"]
            for writer in self.writers:
                for tag, cap in ((TAG_BEFORE, before), (TAG_AFTER, after)):
                    writer.add_embedding(
                        cap.features,
                        metadata=metadata,
                        label_img=self.sample.images,
                        global_step=self.step,
                        tag=tag,
                        metadata_header=header,
                    )
        for key, cap in (("before_init", before), ("after_init", after)):
            score = cluster_score(cap.features, labels)
            if score is not None:
                self.scores[f"sylvester/silhouette_{key}"] = score
        if self.tsne:
            lab = None if labels is None else labels.numpy()
            acc_before = acc_before if acc_before is not None else before.accuracy
            acc_after = acc_after if acc_after is not None else after.accuracy

            def title(state: str, acc: float | None, key: str) -> str:
                score = self.scores.get(f"sylvester/silhouette_{key}")
                tail = "" if score is None else f", silhouette {score:.2f}"
                return f"{state}\nval. accuracy {_percent(acc)}{tail}"

            panels = [
                TsnePanel(
                    tsne_2d(before.features, seed=self.seed),
                    lab,
                    title("before SylvesterInit (model's own init)", acc_before, "before_init"),
                ),
                TsnePanel(
                    tsne_2d(after.features, seed=self.seed),
                    lab,
                    title(f"after SylvesterInit ({description})", acc_after, "after_init"),
                ),
            ]
            fig = tsne_figure(
                panels,
                class_names=names,
                title=f"t-SNE of the head's input ({after.layer}), {self.sample.size} validation samples",
            )
            image = figure_to_array(fig)
            for writer in self.writers:
                writer.add_image(TAG_TSNE, image, global_step=self.step, dataformats="HWC")
        for writer in self.writers:
            for tag, value in self.scores.items():
                writer.add_scalar(tag, value, global_step=self.step)
            writer.flush()

