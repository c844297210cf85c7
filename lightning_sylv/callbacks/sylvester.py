"""Lightning glue: the :class:`SylvesterInit` callback.

The callback holds no math. In ``on_fit_start`` it pulls a class-balanced subset from the training
dataloader's dataset (:mod:`lightning_sylv.subset`), measures validation accuracy, runs
:func:`lightning_sylv.engine.sylvester_init_`, measures again, and logs to every attached logger.
What goes to TensorBoard (report table, embeddings, t-SNE) and the progress bar are in
:mod:`lightning_sylv.callbacks._logging`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_sylv._checks import check_bool, check_choice, check_positive_int
from lightning_sylv.callbacks._base import DTYPES, DataDrivenInit, FitContext, InitSubset, percent
from lightning_sylv.callbacks._distributed import gather_across_processes, sum_across_processes
from lightning_sylv.callbacks._inspection import FeatureInspection
from lightning_sylv.codes import CODES
from lightning_sylv.engine import sylvester_init_
from lightning_sylv.report import InitReport, format_table
from lightning_sylv.scale import Scale
from lightning_sylv.settings import SylvesterSettings

__all__ = ["SylvesterInit"]


class SylvesterInit(DataDrivenInit):
    r"""Data-driven initialization with Sylvester solvers (Das, Bhalgat & Porikli, 2021).

    At the start of ``trainer.fit`` the callback draws ``samples_per_class`` training examples of
    every class (seeded; from ``datamodule.init_dataset()`` when the datamodule defines it, e.g. the
    training set without augmentation, else from the training dataloader's dataset), then
    initializes the model's ``Linear``/``Conv1d``/``Conv2d`` layers in execution order: each layer's
    weight ``W`` minimizes ``‖X − WᵀS‖² + λ‖WX − S‖²`` for its input activations ``X`` on the subset
    and a latent code ``S`` (principal components for hidden layers, one-hot labels for the head),
    i.e. solves the Sylvester equation ``SSᵀW + W(λXXᵀ) = (1+λ)SXᵀ``. BatchNorm statistics are
    recomputed on the subset. Weights are written in place, so optimizers that already hold the
    parameters see the new values.

    It logs ``sylvester/pre_init_accuracy`` and ``sylvester/initial_accuracy`` (validation accuracy
    before and after, fractions in ``[0, 1]``; skipped when there is no labelled validation data)
    and ``sylvester/init_time_s`` (subset loading plus initialization, without the accuracy
    evaluations and the inspection) to every attached logger and to ``trainer.callback_metrics``
    (so ``ModelCheckpoint``/``EarlyStopping`` can monitor them), and records its arguments as hparams
    ``sylvester/<argument>`` (in TensorBoard with the init metrics as the HParams metrics). When
    training resumes from a checkpoint (``trainer.fit(..., ckpt_path=...)``) the callback does
    nothing; a callback reused for another ``fit`` initializes that model again.

    Under DDP the statistics are summed across processes; under ``ModelParallelStrategy`` with FSDP2
    (``fully_shard``, data parallel) likewise, and each process writes its own shard of every weight
    in place. That strategy restores a checkpoint only after ``on_fit_start``, so there the callback
    runs at ``on_train_start`` (a fit without training steps: ``on_fit_end``). Tensor parallelism,
    ``FSDPStrategy`` and DeepSpeed are refused with a message naming what is supported.

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
            executed layer, or ``head``), leaving every other parameter and buffer bit-identical, for
            fine-tuning a pretrained body (``"head"`` requires labelled data); a list of ``fnmatch``
            patterns of layer names (``["net.layer3.*", "net.head"]``) initializes only the matching
            layers, in execution order, with BatchNorm statistics recomputed. ``LowRankInit``'s
            ``layers`` takes the same patterns (or ``"all"``) to choose the layers it converts.
        latent: Latent code of the hidden layers, one of: {latents}. The default, ``"rotated_pca"``,
            was chosen on validation accuracy over torchvision/timm models and ResNet-20; on the
            paper's ResNet-20 with 100 samples per class ``"signed_pca"`` is better.
        head_latent: Latent code of the head (``"onehot"``: one-hot class labels), one of the same.
        lam: λ, the weight of the encoding loss relative to the decoding loss (``> 0``; paper: 10).
        patches_per_image: Random patch positions per image for convolutions (``None``: all).
        batch_size: Stream the subset through the model in mini-batches of this size, accumulating
            each layer's statistics, so peak memory does not grow with ``samples_per_class`` (costs one
            partial forward pass per layer plus one for BatchNorm). ``None``: one pass, one batch.
        seed: Seed of the subset draw and the patch draw.
        head: Qualified name of the head module (default: the last ``Linear``/``Conv`` executed).
        precision: ``"mixed"`` (default): the row products behind each layer's second moments (the
            ``O(n d²)`` part, the one that grows with the data) in float32, summed, factorized and
            solved in float64, with entries accurate to ~1e-6 relative and initial accuracy within the
            seed spread of ``"float64"`` (statistics, codes and solves all in float64); ``"float32"``:
            everything in float32. Results are cast to each parameter's dtype either way.
        solver: ``"exact"`` (default): every layer solved exactly; ``"randomized"``: hidden layers
            with PCA codes whose outputs are far fewer than their inputs use a randomized principal
            subspace, ``O(n d k)`` instead of ``O(n d² + d³)`` (ResNet-18: 2.7 s instead of 4.9 s,
            accuracy within ±2.5 points on the zoo benchmark of examples/RESULTS.md).
        scale: Output scale of the hidden layers: ``"solve"`` writes the solved weights as they are;
            ``"norm"`` keeps their directions at the Frobenius norm of each layer's own weights, so
            the optimizer moves them as far, relative to their size, as it would move the model's
            own init; ``"own"`` at the output gain the own weights have on the same input;
            ``"auto"`` (default): ``"own"`` for layers whose output goes straight into a
            normalization (they compute the same function either way), ``"norm"`` for the others
            (see ``sylvester_init_``).
        head_scale: Output scale of the head, likewise (``"solve"``: logits at the one-hot code's size).
        evaluate: Measure validation accuracy before and after initialization.
        eval_batches: Cap on validation batches per evaluation (``None``: the whole set).
        verbose: Print a summary line and the per-layer table when done, and show a progress bar over
            the layers when initialization takes more than a second (only while the trainer's
            progress bar is enabled).
        embedding_samples: Validation samples whose penultimate features (the head's input) are
            logged to TensorBoard, before and after initialization (the first ones in the validation
            dataloader's order). t-SNE time grows quickly with this number.
        log_embeddings: Write the features to TensorBoard's Projector (needs a ``TensorBoardLogger``).
        log_tsne: Log a 2-D t-SNE scatter plot of the features before and after, side by side, as an
            image (needs a ``TensorBoardLogger``). Off by default: two t-SNE maps of 200 samples take
            1-2 s, twenty times the digits demo's initialization, while the Projector computes t-SNE
            in the browser for free; the default inspection (features, Projector, silhouette) costs
            two forward passes over ``embedding_samples`` samples.
        forward: Name of a LightningModule method that maps a batch's inputs to logits, for models
            whose ``forward`` returns features (e.g. ``"logits"`` for
            ``def logits(self, x): return self.head(self(x))``). Used for the init pass, the
            accuracy and the features. ``None``: ``forward``.
        num_classes: Number of classes the head must output. ``None``: the datamodule's or the
            LightningModule's ``num_classes`` attribute or hparam; a model whose logits have another
            width is refused before anything is changed. Without either, the largest label + 1, and a
            model with fewer outputs, or more than twice as many, is refused.
        input_key: Where a batch keeps its inputs: a dict key (``"pixel_values"``) or a position in a
            tuple batch. ``None``: the first element of a tuple, or the usual dict keys.
        label_key: Where a batch keeps its integer class labels, likewise (``None``: the second
            element of a tuple, or the usual dict keys such as ``"labels"``).

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[SylvesterInit(samples_per_class=100)])
        trainer.fit(model, datamodule=dm)
    """

    prefix = "sylvester"
    shard_subset = True
    sharding_refusal = None  # FSDP2: each process writes its shard (lightning_sylv.sharding)
    hparam_names = (
        "samples_per_class", "layers", "latent", "head_latent", "lam", "patches_per_image", "batch_size",
        "seed", "head", "precision", "solver", "scale", "head_scale", "evaluate", "eval_batches", "verbose",
        "embedding_samples", "log_embeddings", "log_tsne", "forward", "num_classes", "input_key", "label_key",
    )  # fmt: skip

    def __init__(
        self,
        samples_per_class: int = 100,
        layers: Literal["all", "head"] | list[str] = "all",
        latent: str = "rotated_pca",
        head_latent: str = "onehot",
        lam: float = 10.0,
        patches_per_image: int | None = 16,
        batch_size: int | None = None,
        seed: int = 0,
        head: str | None = None,
        precision: Literal["float64", "mixed", "float32"] = "mixed",
        solver: Literal["exact", "randomized"] = "exact",
        scale: Scale = "auto",
        head_scale: Scale = "solve",
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
        embedding_samples: int = 200,
        log_embeddings: bool = True,
        log_tsne: bool = False,
        forward: str | None = None,
        num_classes: int | None = None,
        input_key: str | int | None = None,
        label_key: str | int | None = None,
    ) -> None:
        super().__init__(
            samples_per_class=samples_per_class, seed=seed, evaluate=evaluate, eval_batches=eval_batches,
            verbose=verbose, forward=forward, input_key=input_key, label_key=label_key,
        )  # fmt: skip
        check_choice("precision", precision, DTYPES)
        dtype, gram_dtype = DTYPES[precision]
        self.settings = SylvesterSettings(
            layers=list(layers) if isinstance(layers, (list, tuple)) else layers, latent=latent,
            head_latent=head_latent, lam=lam, patches_per_image=patches_per_image, head=head, seed=seed,
            dtype=dtype, gram_dtype=gram_dtype, batch_size=batch_size, num_classes=num_classes, solver=solver,
            scale=scale, head_scale=head_scale,
        )  # fmt: skip
        check_positive_int("embedding_samples", embedding_samples)
        check_bool("log_embeddings", log_embeddings)
        check_bool("log_tsne", log_tsne)
        self.precision = precision
        self.embedding_samples = embedding_samples
        self.log_embeddings = log_embeddings
        self.log_tsne = log_tsne
        self._inspection: FeatureInspection | None = None

    @property
    def state_key(self) -> str:
        s = self.settings
        return self._generate_state_key(
            samples_per_class=self.samples_per_class,
            layers=list(s.layers) if isinstance(s.layers, tuple) else s.layers,
            latent=s.latent,
            head_latent=s.head_latent,
            lam=s.lam,
            patches_per_image=s.patches_per_image,
            seed=self.seed,
            head=s.head,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        others = [c for c in trainer.callbacks if isinstance(c, SylvesterInit) and c is not self]
        if others and trainer.callbacks.index(self) > trainer.callbacks.index(others[0]):
            rank_zero_warn(
                f"{len(others) + 1} SylvesterInit callbacks are attached; each one initializes the model "
                "again in turn. Keep one unless that is intended."
            )

    @override
    def on_init_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext) -> dict[str, float]:
        """Validation accuracy before the init, and the features the inspection compares against."""
        out: dict[str, float] = {}
        pre = self._accuracy(ctx, pl_module)
        if pre is not None:
            out["pre_init_accuracy"] = pre
        self._inspection = FeatureInspection.create(
            trainer,
            ctx.val_dl,
            samples=self.embedding_samples,
            projector=self.log_embeddings,
            tsne=self.log_tsne,
            seed=self.seed,
            device=ctx.device,
            forward=ctx.forward,
            to_device=ctx.to_device,
            split=ctx.batch_format.split,
        )
        if self._inspection is not None:
            self._inspection.before(pl_module, self.settings.head)
        return out

    def _declared_classes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
        """The class count the head must output, when something declares it: ``num_classes``, else the
        datamodule's or the LightningModule's ``num_classes`` attribute or hparam. ``None``: the
        function guesses it from the labels."""
        if self.settings.num_classes is not None:
            return self.settings.num_classes
        for owner in (trainer.datamodule, pl_module):
            value = getattr(owner, "num_classes", None) if owner is not None else None
            if value is None and owner is not None:
                value = getattr(owner, "hparams", {}).get("num_classes")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    @override
    def initialize(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        ctx: FitContext,
        subset: InitSubset,
        on_layer: Callable[[Any, int, int], None] | None,
    ) -> InitReport:
        """:func:`~lightning_sylv.sylvester_init_` with the callback's settings (a class count the
        datamodule or the model declares added), summed and gathered across processes under DDP/FSDP2."""
        classes = self._declared_classes(trainer, pl_module)
        settings = self.settings if classes is None else self.settings.replace(num_classes=classes)
        distributed = trainer.world_size > 1
        return sylvester_init_(
            pl_module,
            subset.inputs,
            subset.labels,
            settings=settings,
            reduce=sum_across_processes(trainer.strategy) if distributed else None,
            gather=gather_across_processes(trainer.strategy) if distributed else None,
            forward=ctx.forward,
            on_layer=on_layer,
        )

    @override
    def on_init_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext, metrics: dict[str, float]
    ) -> dict[str, float]:
        """The inspection's after-init features, t-SNE and silhouette (with a TensorBoard logger)."""
        inspection, self._inspection = self._inspection, None
        if inspection is None:
            return {}
        inspection.after(
            pl_module,
            self.report.head,
            metrics.get("pre_init_accuracy"),
            metrics.get("initial_accuracy"),
            f"layers={self.hyperparameters()['sylvester/layers']}, λ={self.settings.lam:g}",
        )
        return {"inspection_time_s": inspection.seconds}

    @override
    def summary(self) -> str:
        report = self.report or InitReport()
        m = self.metrics
        pre, post = m.get("sylvester/pre_init_accuracy"), m.get("sylvester/initial_accuracy")
        return (
            f"SylvesterInit: {len(report.layers)} layer(s) initialized in {m['sylvester/init_time_s']:.3f} s "
            f"from {self.subset_size} samples ({report.passes} pass(es)); validation accuracy without init "
            f"{percent(pre)} -> with init {percent(post)}\n" + format_table(report, self.subset_size or None)
        )


if SylvesterInit.__doc__:  # the latent codes in the help (CLI) and the docs
    SylvesterInit.__doc__ = SylvesterInit.__doc__.replace("{latents}", ", ".join(f'"{c}"' for c in CODES))
