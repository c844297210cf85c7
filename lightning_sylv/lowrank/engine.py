"""Initialize every low-rank layer of a model from data, in execution order, in one forward pass.

:func:`low_rank_init_` is the model-level counterpart of :func:`lightning_sylv.engine.sylvester_init_`:

1. A trace pass on two samples records the execution order of the low-rank layers, which
   BatchNorm (if any) directly consumes each one's output, and (for ``full_weight="sylvester"``) the
   plain ``Linear``/``Conv`` layers and the head.
2. During the main pass a forward pre-hook on each low-rank layer receives its real input — the
   output of the already-initialized layers before it — gathers rows (random patches of the
   original convolution's geometry), takes the full-rank ``W`` (the stored one, or the Sylvester
   solution on this input), computes the factors with :func:`lightning_sylv.lowrank.init.init_low_rank_`
   and writes them before the layer runs. BatchNorm layers recompute their statistics in the same
   pass (as in the Sylvester engine), so the model is usable in eval mode right away.
3. With ``through_batchnorm`` the ReLU-aware fit of a layer feeding a BatchNorm matches
   ``relu(BN(W x))`` instead of ``relu(W x)``: the BatchNorm's affine map, with the statistics of
   ``W x`` on the subset (or its running statistics when BatchNorm is not recomputed), is passed
   as ``affine``.

The passes are the shared runner of :mod:`lightning_sylv.passes` (hooks, BatchNorm recalibration,
restore on failure, RNG isolation); this module supplies the per-layer job. On any exception the
model's parameters and buffers (and the layers' stored full-rank weights) are restored before the
error propagates. This module imports no Lightning.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sylv._batch import batch_len, default_forward, slice_batch
from lightning_sylv.codes import LatentCode, resolve_code
from lightning_sylv.layer import LayerJob
from lightning_sylv.lowrank.init import LowRankFit, init_low_rank_, input_rows
from lightning_sylv.lowrank.layers import LowRankLayer, LowRankLinear
from lightning_sylv.lowrank.settings import LowRankSettings
from lightning_sylv.modules import BATCH_NORMS, target_modules
from lightning_sylv.passes import InitializationError, Job, PostHook, execution_order, run_jobs, skip_reason
from lightning_sylv.report import LayerReport, fixed_width

__all__ = [
    "LowRankInitError",
    "LowRankLayerReport",
    "LowRankReport",
    "format_low_rank_table",
    "low_rank_init_",
]


#: Per-layer fit fields reported as TensorBoard scalars.
_FIT_FIELDS = ("rank", "rows", "linear_error", "relu_error", "spectral_relu_error", "best_iteration", "seconds")


class LowRankInitError(InitializationError):
    """Low-rank initialization failed; the model was restored to its state before the call."""


@dataclass(frozen=True)
class LowRankLayerReport:
    """One low-rank layer's initialization (errors on the subset's rows, through ``batchnorm`` if set).

    Attributes:
        name: Qualified module name.
        kind: ``LowRankLinear`` or ``LowRankConv2d``.
        full_weight: Where ``W`` came from: ``"current"`` or ``"sylvester"``.
        batchnorm: Name of the BatchNorm whose affine map the ReLU errors go through, or ``None``.
        fit: The :class:`~lightning_sylv.lowrank.init.LowRankFit` (method, rank, errors, time).
    """

    name: str
    kind: str
    full_weight: str
    batchnorm: str | None
    fit: LowRankFit


@dataclass
class LowRankReport:
    """Result of :func:`low_rank_init_`.

    Attributes:
        layers: One record per low-rank layer, in execution order.
        sylvester: Records of the plain layers Sylvester-initialized (``full_weight="sylvester"``).
        skipped: Low-rank layers left untouched, mapped to the reason.
        passes: Forward passes over the subset (after the trace).
        seconds: Wall time of the call.
    """

    layers: list[LowRankLayerReport] = field(default_factory=list)
    sylvester: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    passes: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Mean ReLU errors of the ReLU-aware fits, and of spectral init on the same rows (none without)."""
        fits = [r.fit for r in self.layers if r.fit.relu_error is not None]
        if not fits:
            return {}
        return {
            "relu_error": sum(f.relu_error or 0.0 for f in fits) / len(fits),
            "spectral_relu_error": sum(f.spectral_relu_error or 0.0 for f in fits) / len(fits),
        }

    def tensorboard(self, prefix: str, samples: int | None = None) -> tuple[str, dict[str, float]]:
        """``(the fixed-width table as Markdown code, per-layer scalars <prefix>/layer/<name>/<field>)``."""
        scalars: dict[str, float] = {}
        for r in self.layers:
            for f in _FIT_FIELDS:
                value = getattr(r.fit, f, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    scalars[f"{prefix}/layer/{r.name}/{f}"] = float(value)
        return "```\n" + format_low_rank_table(self) + "\n```", scalars


_TABLE = (
    ("layer", "<", 30), ("method", "<", 8), ("rank", ">", 4), ("in", ">", 5), ("out", ">", 5), ("rows", ">", 7),
    ("relu err", ">", 9), ("spectral", ">", 9), ("lin err", ">", 8),
)  # fmt: skip


def format_low_rank_table(report: LowRankReport) -> str:
    """A fixed-width table of the per-layer records (ReLU errors of the method and of spectral init)."""

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    rows = [
        [
            r.name,
            r.fit.method,
            str(r.fit.rank),
            str(r.fit.in_features),
            str(r.fit.out_features),
            str(r.fit.rows),
            num(r.fit.relu_error),
            num(r.fit.spectral_relu_error),
            num(r.fit.linear_error),
        ]
        for r in report.layers
    ]
    return fixed_width(_TABLE, rows, [f"skipped {name}: {why}" for name, why in report.skipped.items()])


def _trace(
    model: nn.Module, probe: Any, forward: Callable[[nn.Module, Any], Any], units: dict[nn.Module, str]
) -> tuple[list[str], dict[str, str]]:
    """The execution order of ``units`` (:func:`~lightning_sylv.passes.execution_order`), and which
    BatchNorm directly consumes each low-rank layer's output, learned in the same probe."""
    followers: dict[str, str] = {}
    outputs: dict[int, tuple[Tensor, str]] = {}
    names = {m: n for n, m in model.named_modules()}

    def output_of(name: str) -> PostHook:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, Tensor):
                outputs[id(out)] = (out, name)

        return hook

    def bn_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hit = outputs.get(id(args[0])) if args else None
        if hit is not None and hit[0] is args[0] and hit[1] not in followers:
            followers[hit[1]] = names[module]

    post = {m: output_of(n) for m, n in units.items() if isinstance(m, LowRankLayer)}
    pre = {m: bn_input for m in model.modules() if isinstance(m, BATCH_NORMS)}
    try:
        order = execution_order(model, probe, forward, units, pre=pre, post=post)
    except InitializationError as err:
        raise LowRankInitError(str(err)) from err.__cause__
    return order, followers


class _LowRankJob:
    """The runner's job for one layer: its input at the first call, then its fit (:func:`_fit_layer`)."""

    def __init__(self, module: nn.Module, name: str, plan: _Plan) -> None:
        self.module = module
        self.name = name
        self._plan = plan
        self._x: Tensor | None = None

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        self._x = args[0]

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        if self._x is None:
            raise LowRankInitError(f"layer {self.name!r}: no input was recorded")
        _fit_layer(self._plan, self.name, self.module, self._x)
        self._x = None


def _dense_proxy(layer: LowRankLayer) -> nn.Module:
    """A float64 full-rank layer with ``layer``'s geometry holding its ``W`` (for the Sylvester solve)."""
    dev = layer.v.weight.device  # type: ignore[union-attr]
    bias = layer.bias is not None
    if isinstance(layer, LowRankLinear):
        proxy: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=bias, device=dev, dtype=torch.float64)
    else:
        v: nn.Conv2d = layer.v  # type: ignore[assignment]
        proxy = nn.Conv2d(
            v.in_channels,
            layer.out_channels,
            v.kernel_size,
            stride=v.stride,
            padding=v.padding,  # type: ignore[arg-type]
            dilation=v.dilation,
            bias=bias,
            padding_mode=v.padding_mode,
            device=dev,
            dtype=torch.float64,
        )
    return proxy


def _bn_affine(bn: nn.Module, z: Tensor, recalibrated: bool) -> tuple[Tensor, Tensor]:
    """``(scale, offset)`` of ``bn`` on pre-activations ``z`` ``(n, C)``: batch statistics of ``z`` when the
    BatchNorm uses batch statistics (recomputed, or no running statistics), else its running ones."""
    c = z.shape[1]
    if recalibrated or not bn.track_running_stats or bn.running_mean is None:  # type: ignore[union-attr]
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean = bn.running_mean.to(z)  # type: ignore[union-attr]
        var = bn.running_var.to(z)  # type: ignore[union-attr]
    ones = torch.ones(c, dtype=z.dtype, device=z.device)
    gamma = bn.weight.detach().to(z) if bn.affine else ones  # type: ignore[union-attr]
    beta = bn.bias.detach().to(z) if bn.affine else torch.zeros_like(ones)  # type: ignore[union-attr]
    scale = gamma / (var + bn.eps).sqrt()  # type: ignore[operator]
    return scale, beta - scale * mean


def low_rank_init_(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None = None,
    *,
    settings: LowRankSettings | None = None,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    on_layer: Callable[[Any, int, int], None] | None = None,
    **options: Any,
) -> LowRankReport:
    """Initialize the model's low-rank layers in place from a data subset.

    Validate (:class:`~lightning_sylv.settings.LowRankSettings`), probe the forward on two samples
    (execution order, BatchNorm followers, the head), plan one job per layer, run them in one pass.

    Args:
        model: A model containing :class:`~lightning_sylv.lowrank.layers.LowRankLinear` /
            ``LowRankConv2d`` layers (see :func:`~lightning_sylv.lowrank.convert.to_low_rank`).
        inputs: The subset's inputs, on the model's device, as ``forward`` expects them.
        labels: Integer labels ``(N,)``; used only by a one-hot head code with ``"sylvester"``.
        settings: What to do (:class:`~lightning_sylv.settings.LowRankSettings`: method, full weight,
            ridge, ...); ``None``: the defaults.
        forward: ``forward(model, inputs)`` runs the model.
        on_layer: Called as ``on_layer(job, done, total)`` after each layer (``job.name`` names it;
            progress bars).
        **options: Fields of :class:`~lightning_sylv.settings.LowRankSettings`, replacing those of
            ``settings`` (``method="data"``, ``full_weight="sylvester"``, ...).

    Returns:
        A :class:`LowRankReport`.

    Raises:
        ValueError: On bad options or a model without executed low-rank layers.
        LowRankInitError: If the initialization fails; the model is restored first.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_sylv.lowrank import low_rank_init_, to_low_rank
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> converted = to_low_rank(model, 0.5, exclude=["2"])
        >>> report = low_rank_init_(model, torch.randn(64, 8), method="data")
        >>> [(layer.name, layer.fit.rank) for layer in report.layers]
        [('0', 4)]
    """
    settings = settings or LowRankSettings()
    settings = settings.replace(**options) if options else settings
    start = time.perf_counter()
    jobs, state = _plan(model, slice_batch(inputs, 0, 2), labels, forward, settings)
    fulls = {m: (m.full_weight, m.full_bias) for m in model.modules() if isinstance(m, LowRankLayer)}

    def restore_fulls() -> None:
        for m, (fw, fb) in fulls.items():
            m.full_weight, m.full_bias = fw, fb

    def on_result(job: Job, record: Any) -> None:
        if on_layer is not None:
            on_layer(job, jobs.index(job) + 1, len(jobs))  # type: ignore[arg-type]

    report = state.report
    report.passes = run_jobs(
        model, inputs, labels, jobs, n_samples=batch_len(inputs), forward=forward,
        recalibrate_bn=settings.recalibrate_bn, on_result=on_result, on_failure=restore_fulls, error=LowRankInitError,
        what="low-rank initialization",
    )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Plan:
    """What every layer's fit needs: the options, the head and codes, BatchNorm followers, the report."""

    settings: LowRankSettings
    head: str
    hidden: LatentCode
    head_code: LatentCode
    followers: dict[str, str]
    modules: dict[str, nn.Module]
    labels: Tensor | None
    generator: torch.Generator
    report: LowRankReport

    def code(self, name: str) -> LatentCode:
        return self.head_code if name == self.head else self.hidden


def _plan(
    model: nn.Module, probe: Any, labels: Tensor | None, forward: Callable[[nn.Module, Any], Any], s: LowRankSettings
) -> tuple[list[_LowRankJob], _Plan]:
    """The jobs in execution order (low-rank layers, and plain layers with ``full_weight="sylvester"``)."""
    low = {m: n for n, m in model.named_modules() if isinstance(m, LowRankLayer)}
    if not low:
        raise ValueError("the model has no LowRankLinear/LowRankConv2d layer: convert it with to_low_rank first")
    inner = tuple(n + "." for n in low.values())
    units: dict[nn.Module, str] = dict(low)
    if s.full_weight == "sylvester":
        units.update({m: n for n, m in target_modules(model).items() if not n.startswith(inner)})
    order, followers = _trace(model, probe, forward, units)
    report = LowRankReport()
    chosen: dict[str, nn.Module] = {}
    for m, name in units.items():
        why = skip_reason(name, m, order, None)
        if why is None:
            chosen[name] = m
        else:
            report.skipped[name] = why
    if not any(isinstance(m, LowRankLayer) for m in chosen.values()):
        raise ValueError(f"no trainable low-rank layer is executed by the forward pass: {report.skipped}")
    head = order[-1]
    hidden, head_code = resolve_code(s.latent), resolve_code(s.head_latent)
    if s.full_weight == "sylvester" and head_code.requires_labels and labels is None:
        warnings.warn(f"no labels: the head {head!r} gets the {hidden.name!r} code", stacklevel=4)
        head_code = hidden
    state = _Plan(
        settings=s, head=head, hidden=hidden, head_code=head_code, followers=followers,
        modules=dict(model.named_modules()), labels=labels, generator=torch.Generator().manual_seed(s.seed),
        report=report,
    )  # fmt: skip
    return [_LowRankJob(chosen[n], n, state) for n in order if n in chosen], state


def _fit_layer(plan: _Plan, name: str, module: nn.Module, x: Tensor) -> None:
    """One layer, at its first call: a plain layer gets the Sylvester solve; a low-rank one its factors
    of ``W`` (stored, current or solved on ``x``), through its BatchNorm when one follows."""
    s = plan.settings
    if not isinstance(module, LowRankLayer):
        plan.report.sylvester.append(_sylvester_solve(plan, name, module, x))
        return
    if s.full_weight == "sylvester":
        proxy = _dense_proxy(module)
        _sylvester_solve(plan, name, proxy, x)
        w, b = proxy.weight.detach(), None if proxy.bias is None else proxy.bias.detach()
        dtype = module.v.weight.dtype  # type: ignore[union-attr]
        module.set_full(w.to(dtype), None if b is None else b.to(dtype))
    elif module.full_weight is not None:
        w, b = module.full_weight, module.full_bias
    else:  # no stored full-rank weight: re-fit the current product
        w, b = module.merged_weight().detach(), None if module.bias is None else module.bias.detach()
    rows = input_rows(module, x, s.patches_per_image, plan.generator)
    bn_name = plan.followers.get(name) if s.through_batchnorm else None
    affine = None
    if bn_name is not None:
        z = rows.double() @ w.reshape(w.shape[0], -1).double().T
        if b is not None:
            z = z + b.double()
        affine = _bn_affine(plan.modules[bn_name], z, s.recalibrate_bn)
    fit = init_low_rank_(module, w, b, rows, s.method, ridge=s.ridge, relu_iters=s.relu_iters, affine=affine)
    plan.report.layers.append(LowRankLayerReport(name, type(module).__name__, s.full_weight, bn_name, fit))


def _sylvester_solve(plan: _Plan, name: str, module: nn.Module, x: Tensor) -> LayerReport:
    s = plan.settings
    job = LayerJob(
        module=module, name=name, code=plan.code(name), lam=s.lam, patches_per_image=s.patches_per_image,
        generator=plan.generator,
    )  # fmt: skip
    job.add(x, plan.labels)
    return job.finish()
