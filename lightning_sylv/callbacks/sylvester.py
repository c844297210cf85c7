"""Lightning glue: the :class:`SylvesterInit` callback.

The callback holds no math. In ``on_fit_start`` it pulls a class-balanced subset from the training
dataloader's dataset (:mod:`lightning_sylv.subset`), measures validation accuracy, runs
:func:`lightning_sylv.engine.sylvester_init_`, measures again, and logs to every attached logger.
What goes to TensorBoard (report table, embeddings, t-SNE) and the progress bar are in
:mod:`lightning_sylv.callbacks._logging`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_sylv._checks import check_bool, check_choice, check_int, check_positive_int, check_positive_number
from lightning_sylv.callbacks._base import DataDrivenInit, percent
from lightning_sylv.callbacks._distributed import sum_across_processes
from lightning_sylv.callbacks._logging import FeatureInspection, layer_progress, log_callback_hparams, log_report
from lightning_sylv.codes import CODES
from lightning_sylv.engine import sylvester_init_
from lightning_sylv.report import InitReport, format_table

__all__ = ["SylvesterInit"]

#: precision -> (dtype of statistics and solves, dtype of the row products behind the second moments)
_DTYPES = {
    "float64": (torch.float64, None),
    "mixed": (torch.float64, torch.float32),
    "float32": (torch.float32, None),
}


class SylvesterInit(DataDrivenInit):
    r"""Data-driven initialization with Sylvester solvers (Das, Bhalgat & Porikli, 2021).

    At the start of ``trainer.fit`` the callback draws ``samples_per_class`` training examples of
    every class (seeded; from ``datamodule.init_dataset()`` when the datamodule defines it, e.g. the
    training set without augmentation, else from the training dataloader's dataset), then initializes the model's ``Linear``/``Conv1d``/``Conv2d`` layers in
    execution order: each layer's weight ``W`` minimizes ``‖X − WᵀS‖² + λ‖WX − S‖²`` for its input
    activations ``X`` on the subset and a latent code ``S`` (principal components for hidden
    layers, one-hot labels for the head), i.e. solves the Sylvester equation
    ``SSᵀW + W(λXXᵀ) = (1+λ)SXᵀ``. BatchNorm statistics are recomputed on the subset. Weights are
    written in place, so optimizers that already hold the parameters see the new values.

    It logs ``sylvester/pre_init_accuracy`` and ``sylvester/initial_accuracy`` (validation accuracy
    before and after, fractions in ``[0, 1]``; skipped when there is no labelled validation data)
    and ``sylvester/init_time_s`` (subset loading plus initialization, without the accuracy
    evaluations and the inspection) to every attached logger, and records its arguments as hparams
    ``sylvester/<argument>``. When training resumes from a checkpoint the callback does nothing: its
    state records that the model was initialized.

    With a ``TensorBoardLogger`` attached (rank zero only) it also logs the per-layer report (Text tab
    ``sylvester/layers``, scalars ``sylvester/layer/<name>/<field>``) and, on the first
    ``embedding_samples`` validation samples, the head's input features before and after
    initialization: Projector embeddings ``sylvester/features_before_init`` and
    ``sylvester/features_after_init`` (class labels, image thumbnails), a side-by-side t-SNE figure
    ``sylvester/tsne``, silhouette scores ``sylvester/silhouette_{before,after}_init`` and
    ``sylvester/inspection_time_s`` (the time all this took; also sent to the other loggers).

    Args:
        samples_per_class: Training examples drawn per class (classes with fewer use all of theirs,
            with a warning). Without labels, ``10 * samples_per_class`` random examples are used.
        layers: ``"all"`` initializes every layer; ``"head"`` only the classifier head (the last
            executed layer, or ``head``), leaving every other parameter and buffer bit-identical —
            for fine-tuning a pretrained body. ``"head"`` requires labelled data.
        latent: Latent code of the hidden layers, a name in :data:`lightning_sylv.codes.CODES`.
        head_latent: Latent code of the head (``"onehot"``: one-hot class labels).
        lam: λ, the weight of the encoding loss relative to the decoding loss (``> 0``; paper: 10).
        patches_per_image: Random patch positions per image for convolutions (``None``: all).
        batch_size: Stream the subset through the model in mini-batches of this size, accumulating
            each layer's statistics, so peak memory does not grow with ``samples_per_class`` (costs one
            partial forward pass per layer plus one for BatchNorm). ``None``: one pass, one batch.
        seed: Seed of the subset draw and the patch draw.
        head: Qualified name of the head module (default: the last ``Linear``/``Conv`` executed).
        precision: ``"float64"`` (default): statistics, codes and solves in float64; ``"mixed"``: the
            row products behind each layer's second moments (the ``O(n d²)`` bulk of the work) in
            float32, summed, factorized and solved in float64 — about twice as fast on CPUs, with
            entries accurate to ~1e-6 relative; ``"float32"``: everything in float32. Results are
            cast to each parameter's dtype either way.
        evaluate: Measure validation accuracy before and after initialization.
        eval_batches: Cap on validation batches per evaluation (``None``: the whole set).
        verbose: Print a summary line and the per-layer table when done, and show a progress bar over
            the layers when initialization takes more than a second (only while the trainer's
            progress bar is enabled).
        embedding_samples: Validation samples whose penultimate features (the head's input) are
            logged to TensorBoard, before and after initialization (the first ones in the validation
            dataloader's order). t-SNE time grows quickly with this number; 500 takes seconds.
        log_embeddings: Write the features to TensorBoard's Projector (needs a ``TensorBoardLogger``).
        log_tsne: Log a 2-D t-SNE scatter plot of the features before and after, side by side, as an
            image (needs a ``TensorBoardLogger``).

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).

    Example::

        trainer = Trainer(callbacks=[SylvesterInit(samples_per_class=100)])
        trainer.fit(model, datamodule=dm)
    """

    def __init__(
        self,
        samples_per_class: int = 100,
        layers: Literal["all", "head"] = "all",
        latent: str = "pca",
        head_latent: str = "onehot",
        lam: float = 10.0,
        patches_per_image: int | None = 16,
        batch_size: int | None = None,
        seed: int = 0,
        head: str | None = None,
        precision: Literal["float64", "mixed", "float32"] = "float64",
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
        embedding_samples: int = 500,
        log_embeddings: bool = True,
        log_tsne: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("samples_per_class", samples_per_class)
        check_choice("layers", layers, ("all", "head"))
        check_choice("latent", latent, CODES)
        check_choice("head_latent", head_latent, CODES)
        check_positive_number("lam", lam)
        check_positive_int("patches_per_image", patches_per_image, allow_none=True)
        check_positive_int("batch_size", batch_size, allow_none=True)
        check_int("seed", seed)
        if head is not None and (not isinstance(head, str) or not head):
            raise ValueError(f"head must be a module name or None, got {head!r}")
        check_choice("precision", precision, _DTYPES)
        check_positive_int("eval_batches", eval_batches, allow_none=True)
        check_positive_int("embedding_samples", embedding_samples)
        for arg, value in (("evaluate", evaluate), ("verbose", verbose), ("log_embeddings", log_embeddings), ("log_tsne", log_tsne)):
            check_bool(arg, value)
        self.samples_per_class = samples_per_class
        self.layers = layers
        self.latent = latent
        self.head_latent = head_latent
        self.lam = float(lam)
        self.patches_per_image = patches_per_image
        self.batch_size = batch_size
        self.seed = seed
        self.head = head
        self.precision = precision
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.verbose = verbose
        self.embedding_samples = embedding_samples
        self.log_embeddings = log_embeddings
        self.log_tsne = log_tsne

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            samples_per_class=self.samples_per_class,
            layers=self.layers,
            latent=self.latent,
            head_latent=self.head_latent,
            lam=self.lam,
            patches_per_image=self.patches_per_image,
            seed=self.seed,
            head=self.head,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        others = [c for c in trainer.callbacks if isinstance(c, SylvesterInit) and c is not self]
        if others and trainer.callbacks.index(self) > trainer.callbacks.index(others[0]):
            rank_zero_warn(
                f"{len(others) + 1} SylvesterInit callbacks are attached; each one initializes the model "
                "again in turn. Keep one unless that is intended."
            )

    def hyperparameters(self) -> dict[str, Any]:
        """The callback's arguments as hparams ``{"sylvester/<argument>": value}``."""
        names = (
            "samples_per_class", "layers", "latent", "head_latent", "lam", "patches_per_image", "batch_size",
            "seed", "head", "precision", "evaluate", "eval_batches", "verbose", "embedding_samples",
            "log_embeddings", "log_tsne",
        )  # fmt: skip
        return {f"sylvester/{n}": getattr(self, n) for n in names}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_callback_hparams(trainer, pl_module, self.hyperparameters())
        if not self._should_run(trainer):
            return
        ctx = self._context(trainer, pl_module, self.evaluate)
        pre = self._accuracy(ctx, pl_module, self.eval_batches)
        inspection = FeatureInspection.create(
            trainer,
            ctx.val_dl,
            samples=self.embedding_samples,
            projector=self.log_embeddings,
            tsne=self.log_tsne,
            seed=self.seed,
            device=ctx.device,
            forward=ctx.forward,
            to_device=ctx.to_device,
        )
        if inspection is not None:
            inspection.before(pl_module, self.head)
        start = time.perf_counter()
        subset = self._subset(
            ctx,
            self.samples_per_class,
            self.seed,
            require_labels=self.layers == "head",
            shard=(trainer.global_rank, trainer.world_size),
        )
        with layer_progress(trainer, self.verbose) as on_layer:
            self.report = sylvester_init_(
                pl_module,
                subset.inputs,
                subset.labels,
                layers=self.layers,
                latent=self.latent,
                head_latent=self.head_latent,
                lam=self.lam,
                patches_per_image=self.patches_per_image,
                head=self.head,
                seed=self.seed,
                dtype=_DTYPES[self.precision][0],
                gram_dtype=_DTYPES[self.precision][1],
                batch_size=self.batch_size,
                reduce=sum_across_processes(trainer.strategy) if trainer.world_size > 1 else None,
                forward=ctx.forward,
                on_layer=on_layer,
            )
        init_time = self._synced(trainer, pl_module, start, subset, recalibrated=self.layers != "head")
        post = self._accuracy(ctx, pl_module, self.eval_batches)
        self.initialized = True
        self.metrics = {"sylvester/init_time_s": init_time}
        if pre is not None:
            self.metrics["sylvester/pre_init_accuracy"] = pre
        if post is not None:
            self.metrics["sylvester/initial_accuracy"] = post
        if inspection is not None:
            inspection.after(pl_module, self.report.head, pre, post, f"layers={self.layers}, λ={self.lam:g}")
            self.metrics["sylvester/inspection_time_s"] = inspection.seconds
        self._publish(trainer)
        log_report(trainer, self.report, self.subset_size)
        if self.verbose:
            rank_zero_info(self._summary())

    def _summary(self) -> str:
        report = self.report or InitReport()
        m = self.metrics
        pre, post = m.get("sylvester/pre_init_accuracy"), m.get("sylvester/initial_accuracy")
        return (
            f"SylvesterInit: {len(report.layers)} layer(s) initialized in {m['sylvester/init_time_s']:.3f} s "
            f"from {self.subset_size} samples ({report.passes} pass(es)); validation accuracy without init "
            f"{percent(pre)} -> with init {percent(post)}\n" + format_table(report, self.subset_size or None)
        )
