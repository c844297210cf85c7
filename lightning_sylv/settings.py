"""What an initializer is asked to do, as one frozen, validated object per initializer.

A callback holds one of these and hands it to its function as is (the low-rank initializer's,
:class:`~lightning_sylv.lowrank.LowRankSettings`, lives with it); the function builds one from its
keyword options (``sylvester_init_(model, x, y, lam=5.0)`` is
``sylvester_init_(model, x, y, settings=SylvesterSettings(lam=5.0))``). Validation happens once, when
the object is made (``__post_init__``), with messages that name the argument and its value — so a
callback refuses a bad value at construction, before any fit, with the message the function gives.

What is not a setting stays an argument of the function: the data, and what the run supplies
(``reduce``/``gather`` across processes, the ``forward`` that maps inputs to logits, a progress
callback).

This module imports no Lightning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lightning_sylv._checks import (
    check_choice,
    check_int,
    check_nonnegative_int,
    check_patterns,
    check_positive_int,
    check_positive_number,
)
from lightning_sylv.codes import CODES, LatentCode
from lightning_sylv.layer import SOLVERS
from lightning_sylv.scale import SCALES, Scale

__all__ = ["FuseSettings", "SylvesterSettings", "check_codes"]


@dataclass(frozen=True, kw_only=True)
class SylvesterSettings:
    """The options of :func:`~lightning_sylv.sylvester_init_` and :class:`~lightning_sylv.SylvesterInit`.

    Attributes:
        layers: ``"all"`` (every layer, in execution order, BatchNorm statistics recomputed),
            ``"head"`` (only the head, from the current body's features; everything else, including
            BatchNorm buffers, stays bit-identical), or ``fnmatch`` patterns of layer names
            (``["net.layer3.*", "net.head"]``; a plain name matches itself): only the matching layers,
            in execution order, BatchNorm statistics recomputed as for ``"all"``.
        latent: Code of the hidden layers (name in :data:`lightning_sylv.codes.CODES` or instance).
            The default, ``"rotated_pca"`` (the principal subspace of each layer's input, randomly
            rotated; see :class:`~lightning_sylv.codes.PCACode`), was chosen on validation accuracy
            over torchvision/timm models and ResNet-20 (``examples/RESULTS.md``); on the paper's
            ResNet-20 with 100 samples per class ``"signed_pca"`` is better.
        head_latent: Code of the head.
        lam: λ, the weight of the encoding loss against the decoding loss (paper: 10 or more).
        patches_per_image: Convolution patches (and token positions of a ``Linear`` on sequences)
            drawn per sample; ``None`` for all.
        head: Name of the head module; defaults to the last layer the forward pass executes.
        seed: Seed of the patch draw and of random code fills.
        dtype: Precision of the statistics and solves; results are cast to each parameter's dtype.
        gram_dtype: Precision of the row products that form each layer's second moments (the
            ``O(n d²)`` part of the work, the only one that grows with the data); ``None`` for
            ``dtype``. The default, ``torch.float32`` with the default ``dtype``, forms them in float32
            blocks summed in float64 (entries accurate to ~1e-6 relative), while codes, the
            ``d x d`` decomposition and the solves stay in ``dtype``: the design does not depend on
            fast float64 (consumer GPUs run it at 1/32-1/64 of float32). Initial accuracy within the
            seed spread of the float64 products on ResNet-20 and the zoo (``examples/RESULTS.md``);
            ``None`` gives float64 products (weights reproducible to ~1e-12 against a reference).
        batch_size: Stream the subset in mini-batches of this size (statistics codes only); ``None``
            runs the whole subset as one batch in a single forward pass.
        codes: Per-layer code overrides, by layer name (e.g. a teacher's activations for FuseInit).
        lams: Per-layer λ overrides, by layer name (e.g. ``math.inf`` for FuseInit's teacher targets).
        num_classes: Classes of the data. With it, a head whose output count differs (a ``forward``
            that returns features, not logits) is refused before anything is written.
        solver: ``"exact"``: every layer solved exactly, from ``d x d`` statistics or in the span of
            fewer rows than inputs. ``"randomized"``: the fast mode for hidden layers with PCA codes
            whose outputs are far fewer than their inputs and rows: a randomized leading principal
            subspace (``O(n d k)`` instead of ``O(n d² + d³)``; :mod:`lightning_sylv.layer.mode`). It
            keeps the rows of such layers (memory ``n x d``, as their activations) and needs a
            ``gather`` across processes.
        power_iterations: Subspace iterations of the randomized mode (``>= 0``).
        scale: Output scale of the hidden layers: ``"solve"`` keeps the solved weights as they are;
            ``"norm"`` keeps their directions and rescales each layer to the Frobenius norm of its
            weights before the call (the size the model's own init and its optimizer settings
            expect); ``"own"`` to the output energy those weights have on the same input rows (the
            own init's gain); ``"auto"`` (default): ``"own"`` for a layer whose output goes straight
            into a normalization (``Conv → BatchNorm``; the function is the same at any scale),
            ``"norm"`` for the others (residual branches, attention, MLPs). See
            :mod:`lightning_sylv.scale`.
        head_scale: Output scale of the head, likewise (``"own"`` shrinks the logits to the own
            head's size; a zero-initialized head keeps the solve's scale).

    Raises:
        ValueError: At construction, naming the first invalid argument and its value.

    Example:
        >>> settings = SylvesterSettings(lam=5.0, layers=["net.*"])
        >>> settings.layers, settings.requires_labels, settings.recalibrates_norms
        (('net.*',), False, True)
        >>> SylvesterSettings(lam=0)
        Traceback (most recent call last):
        ...
        ValueError: lam must be a finite number > 0, got 0
    """

    layers: Literal["all", "head"] | Sequence[str] = "all"
    latent: str | LatentCode = "rotated_pca"
    head_latent: str | LatentCode = "onehot"
    lam: float = 10.0
    patches_per_image: int | None = 16
    head: str | None = None
    seed: int = 0
    dtype: torch.dtype = torch.float64
    gram_dtype: torch.dtype | None = torch.float32
    batch_size: int | None = None
    codes: Mapping[str, str | LatentCode] | None = None
    lams: Mapping[str, float] | None = None
    num_classes: int | None = None
    solver: Literal["exact", "randomized"] = "exact"
    power_iterations: int = 1
    scale: Scale = "auto"
    head_scale: Scale = "solve"

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            check_choice("layers", self.layers, ("all", "head"))
        else:
            check_patterns("layers", self.layers)
            object.__setattr__(self, "layers", tuple(self.layers))
        check_codes(self)
        check_positive_number("lam", self.lam)
        check_positive_int("patches_per_image", self.patches_per_image, allow_none=True)
        check_int("seed", self.seed)
        if self.head is not None and (not isinstance(self.head, str) or not self.head):
            raise ValueError(f"head must be a module name or None, got {self.head!r}")
        check_positive_int("batch_size", self.batch_size, allow_none=True)
        check_choice("solver", self.solver, SOLVERS)
        check_nonnegative_int("power_iterations", self.power_iterations)
        check_positive_int("num_classes", self.num_classes, allow_none=True)
        check_choice("scale", self.scale, SCALES)
        check_choice("head_scale", self.head_scale, SCALES)
        if not all(v > 0 for v in (self.lams or {}).values()):
            raise ValueError(f"every value of lams must be > 0, got {self.lams!r}")
        object.__setattr__(self, "lam", float(self.lam))

    @property
    def requires_labels(self) -> bool:
        """Whether the data must carry labels (the head alone, with its supervised code)."""
        return self.layers == "head"

    @property
    def recalibrates_norms(self) -> bool:
        """Whether BatchNorm statistics are recomputed (everything but the head alone)."""
        return self.layers != "head"

    def replace(self, **changes: Any) -> SylvesterSettings:
        """A copy with ``changes`` (validated like the original)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class FuseSettings:
    """The options of :func:`~lightning_sylv.fuse.fuse_init_` and :class:`~lightning_sylv.FuseInit`.

    Attributes:
        unmapped: ``"keep"``: student layers without a mapping keep their current weights (their
            BatchNorm statistics are still recomputed); ``"sylvester"``: they get the Sylvester
            initialization (PCA code for hidden layers, one-hot for the head, with ``lam``), in the
            same pass.
        lam: λ of the Sylvester initialization of unmapped layers (``unmapped="sylvester"``).
        teacher_lam: λ of the fit of the mapped layers to the teacher (``> 0``; ``math.inf``: plain
            least squares, which recovers a linear teacher pair exactly but is ill-conditioned).
        patches_per_image: Output positions drawn per image for convolutions (``None``: all).
        seed: Seed of the patch draws.
        dtype: Precision of the statistics and solves.

    Raises:
        ValueError: At construction, naming the first invalid argument and its value.

    Example:
        >>> FuseSettings(teacher_lam=float("inf")).teacher_lam
        inf
    """

    unmapped: Literal["keep", "sylvester"] = "keep"
    lam: float = 10.0
    teacher_lam: float = 1000.0
    patches_per_image: int | None = 16
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        check_choice("unmapped", self.unmapped, ("keep", "sylvester"))
        check_positive_number("lam", self.lam)
        check_positive_number("teacher_lam", self.teacher_lam, allow_inf=True)
        check_positive_int("patches_per_image", self.patches_per_image, allow_none=True)
        check_int("seed", self.seed)
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "teacher_lam", float(self.teacher_lam))

    #: FuseInit draws every process's subset whole and recomputes BatchNorm statistics.
    requires_labels = False
    recalibrates_norms = True

    def replace(self, **changes: Any) -> FuseSettings:
        """A copy with ``changes`` (validated like the original)."""
        return dataclasses.replace(self, **changes)


def check_codes(settings: Any) -> None:
    """Check a settings object's ``latent`` and ``head_latent``: code names or :class:`LatentCode` instances."""
    for name in ("latent", "head_latent"):
        if not isinstance(getattr(settings, name), LatentCode):
            check_choice(name, getattr(settings, name), CODES)
