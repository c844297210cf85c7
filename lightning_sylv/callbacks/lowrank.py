"""Lightning glue: the :class:`LowRankInit` callback (low-rank layers with function-aware init).

The callback holds no math. In ``setup`` — before Lightning calls ``configure_optimizers`` — it
converts the chosen layers with :func:`lightning_sylv.lowrank.to_low_rank`, so the optimizer is built
over the factors. In ``on_fit_start`` it draws a class-balanced subset of the training data (from
``datamodule.init_dataset()`` when defined, e.g. without augmentation) and runs
:func:`lightning_sylv.lowrank.low_rank_init_`. Resume/skip logic, the subset, the precision-aware
forward, the accuracy and the logging come from :class:`~lightning_sylv.callbacks._base.DataDrivenInit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_sylv._checks import (
    check_bool,
    check_patterns,
)
from lightning_sylv.callbacks._base import DataDrivenInit, FitContext, InitSubset, percent
from lightning_sylv.callbacks.sylvester import SylvesterInit
from lightning_sylv.lowrank import (
    LowRankLayer,
    LowRankReport,
    LowRankSettings,
    format_low_rank_table,
    low_rank_init_,
    to_low_rank,
)

__all__ = ["LowRankInit"]


def _is_rank(value: object) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return (is_int and value >= 1) or _is_fraction(value)  # type: ignore[operator]


def _is_fraction(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0 < value <= 1


class LowRankInit(DataDrivenInit):
    r"""Train a low-rank (factorized, ``W = U·V``) version of the model, initialized from data.

    **Conversion (in ``setup``).** The chosen ``nn.Linear``/``nn.Conv2d`` layers of the
    LightningModule are replaced in place by ``LowRankLinear``/``LowRankConv2d`` layers (a ``k x k``
    convolution to ``rank`` channels, then a ``1 x 1`` one). This happens in ``setup``, before
    Lightning calls ``configure_optimizers``, so the optimizer holds the factor parameters. An
    already-converted model works too: low-rank layers are left as they are (conversion is
    idempotent), which is also what happens when training resumes from a checkpoint.

    **Initialization (in ``on_fit_start``).** Each low-rank layer approximates the full-rank layer it
    replaced — its weight when converted (a random init or a pretrained layer), or with
    ``full_weight="sylvester"`` the Sylvester solution for its input — by ``method``:

    * ``"spectral"``: truncated SVD of ``W`` (prior art; ignores the data);
    * ``"data"``: the rank-``r`` factors that best reproduce ``W x`` on the subset (reduced-rank
      regression in the metric of the input covariance);
    * ``"relu"``: the data-aware factors refined so that ``relu(U V x + b)`` matches
      ``relu(W x + b)`` (through a BatchNorm that directly follows the layer).

    Layers are processed in one forward pass over ``samples_per_class`` training examples per class
    (from ``datamodule.init_dataset()`` when the datamodule defines it, else the training dataset),
    in execution order, each from the activations of the already-initialized layers before it;
    BatchNorm statistics are recomputed in the same pass. Logs ``lowrank/relu_error`` and
    ``lowrank/spectral_relu_error`` (mean over layers, on the subset), ``lowrank/init_time_s`` and,
    with a labelled validation set, ``lowrank/initial_accuracy``. When training resumes from a
    checkpoint nothing is initialized; under ``fast_dev_run`` the layers keep their spectral init.

    Args:
        ranks: A fraction in ``(0, 1]`` of each layer's full rank ``min(out, in)``, applied to the
            layers chosen by ``layers``/``exclude``; or ``{layer name: rank}`` (int, or fraction),
            naming layers relative to the LightningModule (e.g. ``"net.layer1.0.conv1"``).
        method: ``"spectral"``, ``"data"`` or ``"relu"``.
        layers: With a float ``ranks``: ``fnmatch`` patterns of the layer names to convert;
            ``None`` or ``"all"``: every ``nn.Linear`` and ungrouped ``nn.Conv2d`` (as in
            ``SylvesterInit``, where ``layers`` also takes ``"all"`` or name patterns; ``"head"`` has no
            low-rank meaning).
        exclude: With a float ``ranks``: patterns of layers kept full-rank (e.g. ``["net.stem.*",
            "net.head"]``).
        full_weight: ``"current"``: approximate the weights the layers had when converted.
            ``"sylvester"``: approximate the Sylvester solution for each layer's input, and
            Sylvester-initialize the remaining ``Linear``/``Conv`` layers in the same pass.
        samples_per_class: Training examples drawn per class (unlabelled data: ``10 *`` that many).
        patches_per_image: Random patch positions per image for convolutions (``None``: all).
        seed: Seed of the subset and patch draws.
        relu_iters: Refinement iterations of ``"relu"`` (each costs less than one data-aware solve).
        ridge: Relative ridge added to the input covariance (``ridge * trace / d``), for singular
            covariances; larger values move ``"data"`` towards ``"spectral"``.
        through_batchnorm: For a layer followed directly by a BatchNorm, fit the ReLU after the
            BatchNorm (its statistics on the subset), as the network computes it.
        lam: λ of the Sylvester solve (``full_weight="sylvester"`` only).
        keep_full: Keep the full-rank weights in the layers' ``full_weight`` buffers after
            initialization (they are never saved in checkpoints); ``False`` frees their memory.
        evaluate: Measure validation accuracy after initialization.
        eval_batches: Cap on validation batches for that evaluation (``None``: all).
        verbose: Print a summary and a per-layer table.
        forward: Name of a LightningModule method that maps inputs to logits (as for
            ``SylvesterInit``; ``None``: ``forward``).
        input_key: Where a batch keeps its inputs (a dict key or a tuple position; ``None``: default).
        label_key: Where a batch keeps its labels (likewise).

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).

    Example::

        trainer = Trainer(callbacks=[LowRankInit(ranks=0.25, method="relu", exclude=["net.head"])])
        trainer.fit(model, datamodule=dm)
    """

    prefix = "lowrank"
    sharding_refusal = (
        "it replaces each converted layer by a new low-rank module in setup, which cannot happen once "
        "fully_shard has split the model's parameters across processes (and the new modules would not be sharded)"
    )
    hparam_names = (
        "ranks", "method", "layers", "exclude", "full_weight", "samples_per_class", "patches_per_image", "seed",
        "relu_iters", "ridge", "through_batchnorm", "lam", "keep_full", "evaluate", "eval_batches", "verbose",
        "forward", "input_key", "label_key",
    )  # fmt: skip

    def __init__(
        self,
        ranks: dict[str, int | float] | float = 0.25,
        method: Literal["spectral", "data", "relu"] = "relu",
        layers: list[str] | Literal["all"] | None = None,
        exclude: list[str] | None = None,
        full_weight: Literal["current", "sylvester"] = "current",
        samples_per_class: int = 100,
        patches_per_image: int | None = 16,
        seed: int = 0,
        relu_iters: int = 5,
        ridge: float = 1e-6,
        through_batchnorm: bool = True,
        lam: float = 10.0,
        keep_full: bool = False,
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
        forward: str | None = None,
        input_key: str | int | None = None,
        label_key: str | int | None = None,
    ) -> None:
        if layers == "all":
            layers = None
        if isinstance(ranks, dict):
            for name, r in ranks.items():
                if not isinstance(name, str) or not name or not _is_rank(r):
                    raise ValueError(
                        f"ranks must map layer names to positive ints or fractions in (0, 1], got {name!r}: {r!r}"
                    )
            if not ranks:
                raise ValueError("ranks must name at least one layer, got {}")
            if layers is not None or exclude:
                raise ValueError("layers and exclude only apply to a float ranks; with a dict, name the layers in it")
        elif not _is_fraction(ranks):
            raise ValueError(f"ranks must be a fraction in (0, 1] or a dict of layer ranks, got {ranks!r}")
        check_patterns("layers", layers, allow_none=True)
        check_patterns("exclude", exclude, allow_none=True)
        check_bool("keep_full", keep_full)
        super().__init__(
            samples_per_class=samples_per_class, seed=seed, evaluate=evaluate, eval_batches=eval_batches,
            verbose=verbose, forward=forward, input_key=input_key, label_key=label_key,
        )  # fmt: skip
        self.settings = LowRankSettings(
            method=method, full_weight=full_weight, patches_per_image=patches_per_image, seed=seed, ridge=ridge,
            relu_iters=relu_iters, through_batchnorm=through_batchnorm, lam=lam,
        )  # fmt: skip
        self.ranks = dict(ranks) if isinstance(ranks, dict) else float(ranks)
        self.layers = None if layers is None else list(layers)
        self.exclude = list(exclude or [])
        self.keep_full = keep_full
        self.converted: list[str] = []
        self.report: LowRankReport | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            ranks=self.ranks, method=self.settings.method, full_weight=self.settings.full_weight, seed=self.seed
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # refuses sharded strategies (sharding_refusal)
        if any(isinstance(c, SylvesterInit) for c in trainer.callbacks):
            rank_zero_warn(
                "LowRankInit and SylvesterInit are both attached: SylvesterInit treats the two factors of each "
                "low-rank layer as separate layers, and whichever runs last decides their values. For a "
                "Sylvester-initialized low-rank network use LowRankInit(full_weight='sylvester') alone."
            )
        if isinstance(self.ranks, dict):
            to_low_rank(pl_module, self.ranks, keep_full=True)
        else:
            to_low_rank(pl_module, self.ranks, layers=self.layers, exclude=self.exclude, keep_full=True)
        self.converted = [n for n, m in pl_module.named_modules() if isinstance(m, LowRankLayer)]

    @staticmethod
    def _drop_full(pl_module: pl.LightningModule) -> None:
        for m in pl_module.modules():
            if isinstance(m, LowRankLayer):
                m.drop_full()

    @override
    def on_init_skip(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drop the full weights ``setup`` kept for an initialization that does not come."""
        if not self.keep_full:  # setup() stored them for an initialization that does not come
            self._drop_full(pl_module)

    @override
    def on_init_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ctx: FitContext) -> dict[str, float]:
        """Warn when the optimizers were built before the conversion."""
        self._check_optimizers(trainer, pl_module)
        return {}

    @override
    def initialize(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        ctx: FitContext,
        subset: InitSubset,
        on_layer: Callable[[Any, int, int], None] | None,
    ) -> LowRankReport:
        """:func:`~lightning_sylv.lowrank.low_rank_init_` with the callback's settings."""
        # Every process draws and loads the whole subset, so all compute the same factors.
        report = low_rank_init_(
            pl_module, subset.inputs, subset.labels, settings=self.settings, forward=ctx.forward, on_layer=on_layer
        )
        if not self.keep_full:
            self._drop_full(pl_module)
        return report

    @override
    def summary(self) -> str:
        m, nan = self.metrics, float("nan")
        return (
            f"LowRankInit: {len(self.report.layers) if self.report else 0} low-rank layer(s) initialized "
            f"({self.settings.method}, W: {self.settings.full_weight}) in {m['lowrank/init_time_s']:.3f} s from "
            f"{self.subset_size} samples; mean ReLU error {m.get('lowrank/relu_error', nan):.4f} (spectral "
            f"{m.get('lowrank/spectral_relu_error', nan):.4f}); validation accuracy "
            f"{percent(m.get('lowrank/initial_accuracy'))}\n"
            + (format_low_rank_table(self.report) if self.report else "")
        )

    def _check_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn if the optimizers were built before the conversion (they would not train the factors)."""
        if not trainer.optimizers:
            return
        held = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [
            n
            for n, m in pl_module.named_modules()
            if isinstance(m, LowRankLayer) and any(p.requires_grad and id(p) not in held for p in m.parameters())
        ]
        if missing:
            rank_zero_warn(
                f"LowRankInit: the optimizer does not hold the factors of {missing}; were the optimizers "
                "created before the conversion? Build them in configure_optimizers from self.parameters()."
            )
