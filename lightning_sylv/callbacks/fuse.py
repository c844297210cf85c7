"""Lightning glue: the :class:`FuseInit` callback (initialize a shallower net from a trained deeper one).

The callback holds no math: it loads the teacher and measures its accuracy (``on_init_start``), and runs
:func:`lightning_sylv.fuse.fuse_init_` (``initialize``); the rest of ``on_fit_start`` is the template
of :class:`~lightning_sylv.callbacks._base.DataDrivenInit`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_sylv._checks import check_choice
from lightning_sylv.callbacks._base import DTYPES, DataDrivenInit, FitContext, InitSubset, percent
from lightning_sylv.fuse import fuse_init_
from lightning_sylv.report import InitReport, format_table
from lightning_sylv.settings import FuseSettings

__all__ = ["FuseInit", "resolve_lightning_class"]


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

    At the start of ``trainer.fit`` every student layer named in ``mapping`` is fitted so that it maps
    its input on a class-balanced subset of the training data to the output of the mapped teacher
    module on the same samples. Map a student layer to the *second* layer of the teacher pair it
    replaces (the teacher's pre-activation output): dense-dense, conv-dense (the student's dense
    layer takes the conv's flattened input) and conv-conv (two stride-1 convs with kernels
    ``k1, k2`` and paddings ``p1, p2`` become one conv of kernel ``k1+k2−1`` and padding ``p1+p2``).
    A one-to-one mapping copies a layer's function. Layers are fitted in execution order, each from
    the already fused layers' activations; BatchNorm statistics are recomputed on the subset.

    The fit is the Sylvester engine's problem with the teacher's activation as the code and
    λ = ``teacher_lam``. With ``teacher_lam=inf`` it is plain least squares, the
    mean-square-error-optimal fit on the subset; but the student's inputs have directions of almost
    no variance (constant border pixels, correlated hidden units), and least squares puts huge weights
    there (on the digits demo: weight norms 80-900x the teacher's, and SGD at the config's learning
    rate then diverges). A finite λ adds the decoding term, which bounds every weight entry (in the
    eigenbases of the two Gram matrices) by about ``√λ/2`` while leaving well-conditioned directions
    near the least-squares fit. With the default ``1000`` the digits demo's fused layers keep their
    weights at the teacher's scale (norms 9 / 11 / 5 against the teacher's 5-8) with relative fit
    errors of 0.02-0.04 (least squares: 0.01-0.03), and train from 96 % on.

    Layers without a mapping keep their current initialization (``unmapped="keep"``) or get the
    Sylvester initialization in the same pass (``unmapped="sylvester"``, λ = ``lam``).

    It logs ``fuse/teacher_accuracy`` and ``fuse/initial_accuracy`` (validation accuracy of the
    teacher and of the fused student, fractions in ``[0, 1]``; skipped without labelled validation
    data) and ``fuse/init_time_s`` (teacher activations, subset loading and fit, without loading the
    teacher or the evaluations) to every logger and ``trainer.callback_metrics``, its arguments as
    hparams ``fuse/<argument>``, and with TensorBoard the per-layer report (``fuse/layers``,
    ``fuse/layer/<name>/<field>``). When training resumes from a checkpoint the callback does nothing.

    Args:
        mapping: Student layer name to teacher module name, as in ``named_modules()`` of the
            LightningModules (e.g. ``{"net.features.1": "net.features.3"}``).
        teacher_class: The teacher's ``LightningModule`` class: a dotted path
            (``"lightning_sylv.models.ImageClassifier"``) or a short name in ``lightning_sylv.models``.
            Used with ``teacher_checkpoint``.
        teacher_checkpoint: Path of the teacher's Lightning checkpoint, loaded with
            ``teacher_class.load_from_checkpoint`` onto the student's device at fit start.
        teacher: Python only: a teacher ``nn.Module`` instance instead of ``teacher_class`` and
            ``teacher_checkpoint``; it is not moved or modified (inputs go to its device).
        samples_per_class: Training examples drawn per class (classes with fewer use all of theirs).
            Without labels, ``10 * samples_per_class`` random examples are used.
        unmapped: ``"keep"`` or ``"sylvester"`` (see above).
        lam: λ of the Sylvester initialization of unmapped layers (``> 0``, finite).
        teacher_lam: λ of the fit to the teacher (``> 0``; ``inf``: plain least squares, see above).
        patches_per_image: Random output positions per image for convolutions (``None``: all).
        seed: Seed of the subset draw and the patch draw.
        precision: ``"float64"`` (default) or ``"float32"`` for the statistics and solves.
        evaluate: Measure the teacher's and the student's validation accuracy.
        eval_batches: Cap on validation batches per evaluation (``None``: the whole set).
        verbose: Print a summary line and the per-layer table when done.
        forward: Name of a LightningModule method of the student that maps inputs to logits (as for
            ``SylvesterInit``; ``None``: ``forward``).
        input_key: Where a batch keeps its inputs (a dict key or a tuple position; ``None``: default).
        label_key: Where a batch keeps its labels (likewise).

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).
        FileNotFoundError: At construction, if ``teacher_checkpoint`` does not exist.

    Example::

        fuse = FuseInit(
            mapping={"net.features.1": "net.features.3", "net.features.3": "net.features.7", "net.head": "net.head"},
            teacher_class="ImageClassifier", teacher_checkpoint="teacher.ckpt",
        )
        Trainer(max_epochs=5, callbacks=[fuse]).fit(ImageClassifier(arch="mlp", hidden=[128, 64]), datamodule=dm)
    """

    prefix = "fuse"
    sharding_refusal = (
        "the teacher and the fused student layers are not built for parameters split across processes "
        "(not supported yet)"
    )
    hparam_names = (
        "mapping", "teacher_class", "teacher_checkpoint", "samples_per_class", "unmapped", "lam", "teacher_lam",
        "patches_per_image", "seed", "precision", "evaluate", "eval_batches", "verbose", "forward",
        "input_key", "label_key",
    )  # fmt: skip

    def __init__(
        self,
        mapping: dict[str, str],
        teacher_class: str | None = None,
        teacher_checkpoint: str | None = None,
        teacher: Any = None,
        samples_per_class: int = 100,
        unmapped: Literal["keep", "sylvester"] = "keep",
        lam: float = 10.0,
        teacher_lam: float = 1000.0,
        patches_per_image: int | None = 16,
        seed: int = 0,
        precision: Literal["float64", "float32"] = "float64",
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
        forward: str | None = None,
        input_key: str | int | None = None,
        label_key: str | int | None = None,
    ) -> None:
        if (
            not isinstance(mapping, dict)
            or not mapping
            or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items())
        ):
            raise ValueError(
                f"mapping must be a non-empty dict of student layer -> teacher module names, got {mapping!r}"
            )
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
                raise ValueError(
                    f"teacher_class must name a LightningModule class (or give teacher), got {teacher_class!r}"
                )
            resolve_lightning_class(teacher_class)
            if not isinstance(teacher_checkpoint, (str, Path)) or not str(teacher_checkpoint):
                raise ValueError(f"teacher_checkpoint must be a checkpoint path, got {teacher_checkpoint!r}")
            if not Path(teacher_checkpoint).is_file():
                raise FileNotFoundError(f"teacher_checkpoint {str(teacher_checkpoint)!r} is not a file")
        super().__init__(
            samples_per_class=samples_per_class, seed=seed, evaluate=evaluate, eval_batches=eval_batches,
            verbose=verbose, forward=forward, input_key=input_key, label_key=label_key,
        )  # fmt: skip
        check_choice("precision", precision, ("float64", "float32"))
        self.settings = FuseSettings(
            unmapped=unmapped, lam=lam, teacher_lam=teacher_lam, patches_per_image=patches_per_image,
            seed=seed, dtype=DTYPES[precision][0],
        )  # fmt: skip
        self.mapping = dict(mapping)
        self.teacher_class = teacher_class
        self.teacher_checkpoint = None if teacher_checkpoint is None else str(teacher_checkpoint)
        self.teacher = teacher
        self.precision = precision
        self._teacher: nn.Module | None = None

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

    @override
    def on_init_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext) -> dict[str, float]:
        """Load the teacher and measure its validation accuracy."""
        self._teacher = self._load_teacher(ctx.device)
        acc = self._accuracy(ctx, self._teacher, precision_aware=False)
        return {} if acc is None else {"teacher_accuracy": acc}

    @override
    def initialize(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        ctx: FitContext,
        subset: InitSubset,
        on_layer: Callable[[Any, int, int], None] | None,
    ) -> InitReport:
        """:func:`~lightning_sylv.fuse.fuse_init_` with the callback's settings and the loaded teacher."""
        # Every process draws and fits on the whole subset (the teacher code needs all rows at
        # once), so all processes compute the same weights; rank 0's are then broadcast.
        teacher, self._teacher = self._teacher, None
        return fuse_init_(
            pl_module,
            teacher,
            subset.inputs,
            self.mapping,
            subset.labels,
            settings=self.settings,
            forward=ctx.forward,
            teacher_inputs=subset.raw,
            on_layer=on_layer,
        )

    @override
    def summary(self) -> str:
        report = self.report or InitReport()
        m = self.metrics
        fused = sum(1 for r in report.layers if r.code == "teacher")
        return (
            f"FuseInit: {fused} layer(s) fitted to the teacher ({len(report.layers) - fused} by Sylvester) in "
            f"{m['fuse/init_time_s']:.3f} s from {self.subset_size} samples; validation accuracy: teacher "
            f"{percent(m.get('fuse/teacher_accuracy'))}, fused student {percent(m.get('fuse/initial_accuracy'))}\n"
            + format_table(report)
        )
