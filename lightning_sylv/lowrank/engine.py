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

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_sylv._batch import batch_len, default_forward, slice_batch
from lightning_sylv._checks import (
    check_choice,
    check_nonnegative_int,
    check_nonnegative_number,
    check_positive_int,
    check_positive_number,
)
from lightning_sylv.codes import LatentCode, resolve_code
from lightning_sylv.layer import LayerJob
from lightning_sylv.lowrank.factorize import METHODS
from lightning_sylv.lowrank.init import LowRankFit, init_low_rank_, input_rows
from lightning_sylv.lowrank.layers import LowRankLayer, LowRankLinear
from lightning_sylv.modules import BATCH_NORMS, target_modules
from lightning_sylv.passes import InitializationError, Job, hooked_pass, run_jobs, skip_reason
from lightning_sylv.report import LayerReport

__all__ = [
    "LowRankInitError",
    "LowRankLayerReport",
    "LowRankReport",
    "check_arguments",
    "format_low_rank_table",
    "low_rank_init_",
]


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


def format_low_rank_table(report: LowRankReport) -> str:
    """A fixed-width table of the per-layer records (ReLU errors of the method and of spectral init)."""
    lines = [
        f"  {'layer':<30} {'method':<8} {'rank':>4} {'in':>5} {'out':>5} {'rows':>7} "
        f"{'relu err':>9} {'spectral':>9} {'lin err':>8}"
    ]
    for r in report.layers:
        f = r.fit

        def num(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        lines.append(
            f"  {r.name[:30]:<30} {f.method:<8} {f.rank:>4} {f.in_features:>5} {f.out_features:>5} {f.rows:>7} "
            f"{num(f.relu_error):>9} {num(f.spectral_relu_error):>9} {num(f.linear_error):>8}"
        )
    for name, why in report.skipped.items():
        lines.append(f"  skipped {name}: {why}")
    return "\n".join(lines)


@dataclass
class _Trace:
    order: list[str] = field(default_factory=list)  # low-rank and (plain) supported layers, first calls
    followers: dict[str, str] = field(default_factory=dict)  # low-rank layer -> BatchNorm consuming its output


def _trace(
    model: nn.Module,
    inputs: Any,
    forward: Callable[[nn.Module, Any], Any],
    units: dict[nn.Module, str],
) -> _Trace:
    """Execution order of ``units``, and which BatchNorm directly consumes each low-rank layer's output."""
    trace = _Trace()
    outputs: dict[int, tuple[Tensor, str]] = {}
    names = {m: n for n, m in model.named_modules()}
    pre: dict[nn.Module, Any] = {}
    post: dict[nn.Module, Any] = {}
    for m, name in units.items():

        def first_call(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
            if name not in trace.order:
                trace.order.append(name)

        pre[m] = first_call
        if isinstance(m, LowRankLayer):

            def output(module: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                if isinstance(out, Tensor):
                    outputs[id(out)] = (out, name)

            post[m] = output

    def bn_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hit = outputs.get(id(args[0])) if args else None
        if hit is not None and hit[0] is args[0] and hit[1] not in trace.followers:
            trace.followers[hit[1]] = names[module]

    pre.update({m: bn_input for m in model.modules() if isinstance(m, BATCH_NORMS)})
    try:
        hooked_pass(model, inputs, forward, pre=pre, post=post)
    except Exception as err:
        raise LowRankInitError(
            f"the model's forward failed on the initialization batch ({type(err).__name__}: {err})"
        ) from err
    return trace


class _LowRankJob:
    """The runner's job for one layer: its input at the first call, then ``fit(name, module, x)``."""

    def __init__(self, module: nn.Module, name: str, fit: Callable[[str, nn.Module, Tensor], None]) -> None:
        self.module = module
        self.name = name
        self._fit = fit
        self._x: Tensor | None = None

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        self._x = args[0]

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        if self._x is None:
            raise LowRankInitError(f"layer {self.name!r}: no input was recorded")
        self._fit(self.name, self.module, self._x)
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


def check_arguments(
    *, method: Any, full_weight: Any, patches_per_image: Any, lam: Any, ridge: Any, relu_iters: Any
) -> None:
    """The checks of :func:`low_rank_init_`'s options, shared with
    :class:`~lightning_sylv.LowRankInit` (which runs them when it is constructed), so that a bad value
    fails before any pass, as ``ValueError`` naming the argument and the value."""
    check_choice("method", method, METHODS)
    check_choice("full_weight", full_weight, ("current", "sylvester"))
    check_positive_int("patches_per_image", patches_per_image, allow_none=True)
    check_positive_number("lam", lam)
    check_nonnegative_number("ridge", ridge)
    check_nonnegative_int("relu_iters", relu_iters)


def low_rank_init_(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None = None,
    *,
    method: str = "relu",
    full_weight: Literal["current", "sylvester"] = "current",
    patches_per_image: int | None = 16,
    seed: int = 0,
    ridge: float = 1e-6,
    relu_iters: int = 5,
    through_batchnorm: bool = True,
    recalibrate_bn: bool = True,
    lam: float = 10.0,
    latent: str | LatentCode = "pca",
    head_latent: str | LatentCode = "onehot",
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    on_layer: Callable[[Any, int, int], None] | None = None,
) -> LowRankReport:
    """Initialize the model's low-rank layers in place from a data subset.

    Args:
        model: A model containing :class:`~lightning_sylv.lowrank.layers.LowRankLinear` /
            ``LowRankConv2d`` layers (see :func:`~lightning_sylv.lowrank.convert.to_low_rank`).
        inputs: The subset's inputs, on the model's device, as ``forward`` expects them.
        labels: Integer labels ``(N,)``; used only by a one-hot head code with ``"sylvester"``.
        method: ``"spectral"``, ``"data"`` or ``"relu"``.
        full_weight: ``"current"``: approximate each layer's stored ``full_weight`` (the weight it was
            converted from; the product ``U V`` if none is stored). ``"sylvester"``: approximate the
            Sylvester solution for the layer's actual input (``lam``, ``latent``; ``head_latent`` for
            the last executed layer), and Sylvester-initialize the plain ``Linear``/``Conv`` layers
            in the same pass — a data-driven initialization of the whole low-rank network.
        patches_per_image: Random patch positions per image for convolutions (``None``: all).
        seed: Seed of the patch draws.
        ridge: Relative ridge on the input covariance (``"data"``, ``"relu"``).
        relu_iters: Refinement iterations of ``"relu"``.
        through_batchnorm: Fit (and report) the ReLU error through a BatchNorm that directly consumes
            the layer's output.
        recalibrate_bn: Recompute every BatchNorm's running statistics during the pass.
        lam: λ of the Sylvester solve (``"sylvester"`` only).
        latent: Code of hidden layers for the Sylvester solve.
        head_latent: Code of the head for the Sylvester solve.
        forward: ``forward(model, inputs)`` runs the model.
        on_layer: Called as ``on_layer(job, done, total)`` after each layer (``job.name`` names it;
            progress bars).

    Returns:
        A :class:`LowRankReport`.

    Raises:
        ValueError: On bad arguments or a model without executed low-rank layers.
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
    check_arguments(
        method=method, full_weight=full_weight, patches_per_image=patches_per_image, lam=lam, ridge=ridge,
        relu_iters=relu_iters,
    )  # fmt: skip
    start = time.perf_counter()
    report = LowRankReport()
    modules = dict(model.named_modules())
    low = {m: n for n, m in modules.items() if isinstance(m, LowRankLayer)}
    if not low:
        raise ValueError("the model has no LowRankLinear/LowRankConv2d layer: convert it with to_low_rank first")
    inner = tuple(n + "." for n in low.values())
    units: dict[nn.Module, str] = dict(low)
    if full_weight == "sylvester":
        units.update({m: n for n, m in target_modules(model).items() if not n.startswith(inner)})
    trace = _trace(model, slice_batch(inputs, 0, 2), forward, units)
    jobs: dict[str, nn.Module] = {}
    for m, name in units.items():
        why = skip_reason(name, m, trace.order, None)
        if why is None:
            jobs[name] = m
        else:
            report.skipped[name] = why
    if not any(isinstance(m, LowRankLayer) for m in jobs.values()):
        raise ValueError(f"no trainable low-rank layer is executed by the forward pass: {report.skipped}")
    head = trace.order[-1]
    hidden_code, head_code = resolve_code(latent), resolve_code(head_latent)
    if full_weight == "sylvester" and head_code.requires_labels and labels is None:
        warnings.warn(f"no labels: the head {head!r} gets the {hidden_code.name!r} code", stacklevel=2)
        head_code = hidden_code
    generator = torch.Generator().manual_seed(seed)
    fulls = {m: (m.full_weight, m.full_bias) for m in low}

    def run_job(name: str, module: nn.Module, x: Tensor) -> None:
        code = head_code if name == head else hidden_code
        if not isinstance(module, LowRankLayer):
            job = LayerJob(
                module=module, name=name, code=code, lam=lam, patches_per_image=patches_per_image, generator=generator
            )
            job.add(x, labels)
            report.sylvester.append(job.finish())
            return
        if full_weight == "sylvester":
            proxy = _dense_proxy(module)
            job = LayerJob(
                module=proxy, name=name, code=code, lam=lam, patches_per_image=patches_per_image, generator=generator
            )
            job.add(x, labels)
            job.finish()
            w, b = proxy.weight.detach(), None if proxy.bias is None else proxy.bias.detach()
            dtype = module.v.weight.dtype  # type: ignore[union-attr]
            module.set_full(w.to(dtype), None if b is None else b.to(dtype))
        elif module.full_weight is not None:
            w, b = module.full_weight, module.full_bias
        else:  # no stored full-rank weight: re-fit the current product
            w, b = module.merged_weight().detach(), None if module.bias is None else module.bias.detach()
        rows = input_rows(module, x, patches_per_image, generator)
        bn_name = trace.followers.get(name) if through_batchnorm else None
        affine = None
        if bn_name is not None:
            z = rows.double() @ w.reshape(w.shape[0], -1).double().T
            if b is not None:
                z = z + b.double()
            affine = _bn_affine(modules[bn_name], z, recalibrate_bn)
        fit = init_low_rank_(module, w, b, rows, method, ridge=ridge, relu_iters=relu_iters, affine=affine)
        report.layers.append(LowRankLayerReport(name, type(module).__name__, full_weight, bn_name, fit))

    def restore_fulls() -> None:
        for m, (fw, fb) in fulls.items():
            m.full_weight, m.full_bias = fw, fb

    ordered = [_LowRankJob(jobs[n], n, run_job) for n in trace.order if n in jobs]

    def on_result(job: Job, record: Any) -> None:
        if on_layer is not None:
            on_layer(job, ordered.index(job) + 1, len(ordered))

    report.passes = run_jobs(
        model, inputs, labels, ordered, n_samples=batch_len(inputs), forward=forward,
        recalibrate_bn=recalibrate_bn, on_result=on_result, on_failure=restore_fulls, error=LowRankInitError,
        what="low-rank initialization",
    )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report
