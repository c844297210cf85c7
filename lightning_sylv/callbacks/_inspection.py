"""What SylvesterInit shows of the features: penultimate features before and after the init in
TensorBoard's Projector, an optional side-by-side t-SNE figure, and silhouette scores.

:class:`FeatureInspection` decides *when* and *where* (rank 0, TensorBoard loggers only, within the
callback's inspection budget); the computing and drawing live in :mod:`lightning_sylv.inspection`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader

from lightning_sylv.callbacks._logging import tensorboard_writers
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

__all__ = ["FeatureInspection"]

TAG_BEFORE = "sylvester/features_before_init"
TAG_AFTER = "sylvester/features_after_init"
TAG_TSNE = "sylvester/tsne"


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
