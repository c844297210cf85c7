"""Lightning glue: the :class:`FuseInit` callback (initialize a shallower net from a trained deeper one).

The callback holds no math. In ``on_fit_start`` it loads the teacher, pulls a class-balanced subset
from the training dataloader's dataset, measures the teacher's and the student's validation
accuracy, runs :func:`lightning_sylv.fuse.fuse_init_`, measures again, and logs to every logger.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_sylv._checks import check_bool, check_choice, check_int, check_positive_int, check_positive_number
from lightning_sylv.callbacks._base import DataDrivenInit, percent
from lightning_sylv.fuse import fuse_init_
from lightning_sylv.report import InitReport, format_table

__all__ = ["FuseInit", "resolve_lightning_class"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_lightning_class(path: str) -> type[pl.LightningModule]:
    """The ``LightningModule`` subclass named by a dotted path, or by a short name in
    :mod:`lightning_sylv.models` (``"ImageClassifier"``).

    Args:
        path: ``"package.module.ClassName"`` or ``"ClassName"``.

    Raises:
        ValueError: If the path cannot be imported or does not name a ``LightningModule`` subclass.
    """
    module_name, _, attr = path.rpartition(".")
    module_name = module_name or "lightning_sylv.models"
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"teacher_class {path!r} cannot be imported ({type(err).__name__}: {err})") from None
    if not isinstance(cls, type) or not issubclass(cls, pl.LightningModule):
        raise ValueError(f"teacher_class {path!r} is not a LightningModule subclass")
    return cls


class FuseInit(DataDrivenInit):
    r"""FuseInit (Lan, Studer, Ghods & Goldstein, 2020): initialize a shallower student from a trained
    deeper teacher by fusing neighbouring teacher layers.

    At the start of ``trainer.fit`` every student layer named in ``mapping`` gets the
    mean-square-error-optimal weight and bias mapping its input on a class-balanced subset of the
    training data to the output of the mapped teacher module on the same samples (least squares:
    the Sylvester engine's encoding problem with the teacher's activation as the code, ``lam=inf``).
    Map a student layer to the *second* layer of the teacher pair it replaces (the teacher's
    pre-activation output): dense-dense, conv-dense (the student's dense layer takes the conv's
    flattened input) and conv-conv (two stride-1 convs with kernels ``k1, k2`` and paddings
    ``p1, p2`` → one conv of kernel ``k1+k2−1`` and padding ``p1+p2``). A one-to-one mapping copies
    a layer's function. Layers are fitted in execution order, each from the already fused layers'
    activations; BatchNorm statistics are recomputed on the subset.

    Layers without a mapping keep their current initialization (``unmapped="keep"``) or get the
    Sylvester initialization in the same pass (``unmapped="sylvester"``, λ = ``lam``).

    It logs ``fuse/teacher_accuracy`` and ``fuse/initial_accuracy`` (validation accuracy of the
    teacher and of the fused student, fractions in ``[0, 1]``; skipped without labelled validation
    data) and ``fuse/init_time_s`` (teacher activations, subset loading and fit, without loading the
    teacher or the evaluations) to every attached logger. When training resumes from a checkpoint
    the callback does nothing (its state records that the student was initialized).

    Args:
        mapping: Student layer name → teacher module name, as in ``named_modules()`` of the
            LightningModules (e.g. ``{"net.features.1": "net.features.3"}``).
        teacher_class: The teacher's ``LightningModule`` class: a dotted path
            (``"lightning_sylv.models.ImageClassifier"``) or a short name in
            :mod:`lightning_sylv.models`. Used with ``teacher_checkpoint``.
        teacher_checkpoint: Path of the teacher's Lightning checkpoint, loaded with
            ``teacher_class.load_from_checkpoint`` onto the student's device at fit start.
        teacher: A teacher module instance instead of ``teacher_class``/``teacher_checkpoint``
            (from Python); it is not moved or modified (inputs go to its device).
        samples_per_class: Training examples drawn per class (classes with fewer use all of theirs).
            Without labels, ``10 * samples_per_class`` random examples are used.
        unmapped: ``"keep"`` or ``"sylvester"`` (see above).
        lam: λ of the Sylvester initialization of unmapped layers (``> 0``, finite).
        patches_per_image: Random output positions per image for convolutions (``None``: all).
        seed: Seed of the subset draw and the patch draw.
        precision: ``"float64"`` (default) or ``"float32"`` for the statistics and solves.
        evaluate: Measure the teacher's and the student's validation accuracy.
        eval_batches: Cap on validation batches per evaluation (``None``: the whole set).
        verbose: Print a summary line and the per-layer table when done.

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).
        FileNotFoundError: At construction, if ``teacher_checkpoint`` does not exist.

    Example::

        fuse = FuseInit(
            mapping={"net.features.1": "net.features.3", "net.features.3": "net.features.5", "net.head": "net.head"},
            teacher_class="ImageClassifier", teacher_checkpoint="teacher.ckpt",
        )
        Trainer(callbacks=[fuse]).fit(ImageClassifier(arch="mlp", hidden=[128, 64]), datamodule=dm)
    """

    def __init__(
        self,
        mapping: dict[str, str],
        teacher_class: str | None = None,
        teacher_checkpoint: str | None = None,
        teacher: nn.Module | None = None,
        samples_per_class: int = 100,
        unmapped: Literal["keep", "sylvester"] = "keep",
        lam: float = 10.0,
        patches_per_image: int | None = 16,
        seed: int = 0,
        precision: Literal["float64", "float32"] = "float64",
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
    ) -> None:
        if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items()
        ):
            raise ValueError(f"mapping must be a non-empty dict of student layer -> teacher module names, got {mapping!r}")
        if teacher is not None:
            if not isinstance(teacher, nn.Module):
                raise ValueError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
            if teacher_class is not None or teacher_checkpoint is not None:
                raise ValueError(
                    f"give either teacher or teacher_class + teacher_checkpoint, not both (got teacher_class="
                    f"{teacher_class!r}, teacher_checkpoint={teacher_checkpoint!r})"
                )
        else:
            if not isinstance(teacher_class, str) or not teacher_class:
                raise ValueError(f"teacher_class must name a LightningModule class (or give teacher), got {teacher_class!r}")
            resolve_lightning_class(teacher_class)
            if not isinstance(teacher_checkpoint, (str, Path)) or not str(teacher_checkpoint):
                raise ValueError(f"teacher_checkpoint must be a checkpoint path, got {teacher_checkpoint!r}")
            if not Path(teacher_checkpoint).is_file():
                raise FileNotFoundError(f"teacher_checkpoint {str(teacher_checkpoint)!r} is not a file")
        check_positive_int("samples_per_class", samples_per_class)
        check_choice("unmapped", unmapped, ("keep", "sylvester"))
        check_positive_number("lam", lam)
        check_positive_int("patches_per_image", patches_per_image, allow_none=True)
        check_int("seed", seed)
        check_choice("precision", precision, _DTYPES)
        check_positive_int("eval_batches", eval_batches, allow_none=True)
        check_bool("evaluate", evaluate)
        check_bool("verbose", verbose)
        super().__init__()
        self.mapping = dict(mapping)
        self.teacher_class = teacher_class
        self.teacher_checkpoint = None if teacher_checkpoint is None else str(teacher_checkpoint)
        self.teacher = teacher
        self.samples_per_class = samples_per_class
        self.unmapped = unmapped
        self.lam = float(lam)
        self.patches_per_image = patches_per_image
        self.seed = seed
        self.precision = precision
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.verbose = verbose

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            mapping=sorted(self.mapping.items()), teacher_checkpoint=self.teacher_checkpoint
        )

    def _load_teacher(self, device: torch.device) -> nn.Module:
        if self.teacher is not None:
            return self.teacher
        cls = resolve_lightning_class(self.teacher_class)  # type: ignore[arg-type]
        teacher = cls.load_from_checkpoint(self.teacher_checkpoint, map_location=device)  # type: ignore[arg-type]
        return teacher.eval()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_run(trainer):
            return
        ctx = self._context(trainer, pl_module, self.evaluate)
        teacher = self._load_teacher(ctx.device)
        teacher_acc = self._accuracy(ctx, teacher, self.eval_batches, precision_aware=False)
        start = time.perf_counter()
        # Every process draws and fits on the whole subset (the teacher code needs all rows at
        # once), so all processes compute the same weights; rank 0's are broadcast to be exact.
        subset = self._subset(ctx, self.samples_per_class, self.seed, require_labels=False)
        self.report = fuse_init_(
            pl_module,
            teacher,
            subset.inputs,
            self.mapping,
            subset.labels,
            unmapped=self.unmapped,
            lam=self.lam,
            patches_per_image=self.patches_per_image,
            seed=self.seed,
            dtype=_DTYPES[self.precision],
            forward=ctx.forward,
            teacher_inputs=subset.raw,
        )
        init_time = self._synced(trainer, pl_module, start, subset)
        post = self._accuracy(ctx, pl_module, self.eval_batches)
        self.initialized = True
        self.metrics = {"fuse/init_time_s": init_time}
        if teacher_acc is not None:
            self.metrics["fuse/teacher_accuracy"] = teacher_acc
        if post is not None:
            self.metrics["fuse/initial_accuracy"] = post
        self._publish(trainer)
        if self.verbose:
            rank_zero_info(self._summary())

    def _summary(self) -> str:
        report = self.report or InitReport()
        m = self.metrics
        fused = sum(1 for r in report.layers if r.code == "teacher")
        return (
            f"FuseInit: {fused} layer(s) fitted to the teacher ({len(report.layers) - fused} by Sylvester) in "
            f"{m['fuse/init_time_s']:.3f} s from {self.subset_size} samples; validation accuracy: teacher "
            f"{percent(m.get('fuse/teacher_accuracy'))}, fused student {percent(m.get('fuse/initial_accuracy'))}\n"
            + format_table(report)
        )
