"""Layer-wise Sylvester initialization of an arbitrary ``nn.Module``.

:func:`sylvester_init_` initializes every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` of a model in the
order the forward pass executes them, each from the activations produced by the already-initialized
layers before it, in **one forward pass** over the subset:

1. A trace pass on two samples records the execution order (and proves the forward accepts the
   batch); the last executed layer is the head.
2. A forward pre-hook on every target layer receives the layer's actual input during the main pass,
   gathers rows (sampled patches for convolutions), fits the code, solves the Sylvester equation
   and writes ``weight``/``bias`` in place before the layer runs. The layer's output, computed with
   the new weights, feeds the next layer — so residual connections, pooling, BatchNorm and any
   custom forward code are handled by the model itself.
3. BatchNorm layers run in training mode with freshly reset, cumulative (``momentum=None``) running
   statistics during that pass, so they end up holding the statistics of the new network on the
   subset and the model is usable in eval mode right away.

On any exception every parameter and buffer is restored, all hooks are removed and train/eval modes
are put back before the error propagates (all-or-nothing).

This module imports no Lightning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_sylv.activations import SUPPORTED_LAYERS, layer_rows
from lightning_sylv.codes import LatentCode, resolve_code
from lightning_sylv.layer_fit import fit_layer

__all__ = ["InitReport", "LayerReport", "SylvesterInitError", "execution_order", "sylvester_init_"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SylvesterInitError(RuntimeError):
    """Initialization failed; the model was restored to its state before the call."""


@dataclass
class LayerReport:
    """What happened to one layer.

    Attributes:
        name: Qualified module name in the model.
        kind: Module class name.
        in_features: Input dimension of the dense problem (``C_in/groups * k_h * k_w`` for convs).
        out_features: Output units (per group for grouped convolutions).
        groups: Number of independent problems solved (convolution groups).
        rows: Rows used (samples, or samples x patches).
        code: Name of the latent code.
        encoding_loss: ``‖X Wᵀ − S‖² / ‖S‖²`` (mean over groups).
        decoding_loss: ``‖X − S W‖² / ‖X‖²`` (mean over groups).
        residual: Largest relative residual of the Sylvester solve over groups.
        cond_a: Largest condition number of ``A = SᵀS``.
        cond_b: Largest condition number of ``B = λ XᵀX``.
        seconds: Wall time spent on this layer (rows, code, solve, write).
    """

    name: str
    kind: str
    in_features: int
    out_features: int
    groups: int
    rows: int
    code: str
    encoding_loss: float
    decoding_loss: float
    residual: float
    cond_a: float
    cond_b: float
    seconds: float


@dataclass
class InitReport:
    """Result of :func:`sylvester_init_`.

    Attributes:
        layers: One :class:`LayerReport` per initialized layer, in execution order.
        skipped: Layers left untouched, mapped to the reason.
        head: Name of the layer treated as the classifier head.
        seconds: Wall time of the whole call.
    """

    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    seconds: float = 0.0


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    return model(inputs)


def _targets(model: nn.Module) -> dict[nn.Module, str]:
    return {m: name for name, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)}


@contextmanager
def _hooks(modules: dict[nn.Module, str], make: Callable[[str], Callable[..., Any]]) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(make(name)) for m, name in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def execution_order(model: nn.Module, inputs: Any, forward: Callable[[nn.Module, Any], Any] = _default_forward) -> list[str]:
    """Names of the supported layers in the order a forward pass first calls them.

    Runs ``forward(model, inputs)`` in eval mode under ``torch.no_grad()``; pass a small batch.

    Raises:
        SylvesterInitError: If the forward pass fails on ``inputs``.
    """
    order: list[str] = []

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in order:
                order.append(name)

        return hook

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(_targets(model), make):
            forward(model, inputs)
    except Exception as err:
        raise SylvesterInitError(
            f"the model's forward failed on the initialization batch ({type(err).__name__}: {err}); "
            "check that the datamodule's batches are (inputs, labels) or pass a matching forward function"
        ) from err
    finally:
        model.train(was_training)
    return order


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}


def _restore(model: nn.Module, snap: dict[str, Tensor]) -> None:
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in snap.items():
            state[k].copy_(v)


def _slice(inputs: Any, n: int) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[:n]
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_slice(v, n) for v in inputs)
    if isinstance(inputs, dict):
        return {k: _slice(v, n) for k, v in inputs.items()}
    return inputs


def sylvester_init_(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None = None,
    *,
    layers: Literal["all", "head"] = "all",
    latent: str | LatentCode = "pca",
    head_latent: str | LatentCode = "onehot",
    lam: float = 10.0,
    patches_per_image: int | None = 16,
    head: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    forward: Callable[[nn.Module, Any], Any] = _default_forward,
) -> InitReport:
    """Initialize ``model``'s layers in place from a data subset (Sylvester initialization).

    Args:
        model: Any module; its ``Linear``/``Conv1d``/``Conv2d`` layers with trainable weights are
            initialized. Other layer types are left as they are.
        inputs: The subset's inputs, already on the model's device, as ``forward`` expects them.
        labels: Integer class labels ``(N,)``, needed by the head's one-hot code.
        layers: ``"all"`` (every layer, in execution order, BatchNorm statistics recomputed) or
            ``"head"`` (only the head, from the current body's features; everything else, including
            BatchNorm buffers, stays bit-identical).
        latent: Code of the hidden layers (name in :data:`lightning_sylv.codes.CODES` or instance).
        head_latent: Code of the head.
        lam: λ, the weight of the encoding loss against the decoding loss (paper: 10 or more).
        patches_per_image: Convolution patches (and token positions of a ``Linear`` on sequences)
            drawn per sample; ``None`` for all.
        head: Name of the head module; defaults to the last layer the forward pass executes.
        seed: Seed of the patch draw and of random code fills.
        dtype: Precision of the statistics and solves (``torch.float64`` by default); results are
            cast to each parameter's dtype.
        forward: ``forward(model, inputs)`` runs the model; defaults to ``model(inputs)``.

    Returns:
        An :class:`InitReport`.

    Raises:
        ValueError: On invalid arguments, an unknown ``head``, or ``layers="head"`` with a
            supervised head code and no ``labels``.
        SylvesterInitError: If anything fails during initialization; the model is restored first.
    """
    if layers not in ("all", "head"):
        raise ValueError(f"layers must be 'all' or 'head', got {layers!r}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    if patches_per_image is not None and patches_per_image < 1:
        raise ValueError(f"patches_per_image must be >= 1 or None, got {patches_per_image!r}")
    hidden_code, head_code = resolve_code(latent), resolve_code(head_latent)
    start = time.perf_counter()
    report = InitReport()
    targets = _targets(model)
    order = execution_order(model, _slice(inputs, 2), forward)
    if not order:
        raise ValueError("the model's forward pass executes no Linear/Conv1d/Conv2d layer: nothing to initialize")
    head = head if head is not None else order[-1]
    if head not in order:
        raise ValueError(f"head {head!r} is not a Linear/Conv layer executed by the forward pass; executed: {order}")
    if head_code.requires_labels and labels is None:
        if layers == "head":
            raise ValueError(
                f"layers='head' needs class labels for the {head_code.name!r} head code, but the data "
                "provides none: use a labelled dataset or layers='all' with an unsupervised code"
            )
        warnings.warn(
            f"no labels: the head {head!r} gets the unsupervised {hidden_code.name!r} code instead of "
            f"{head_code.name!r}",
            stacklevel=2,
        )
        head_code = hidden_code
    report.head = head
    names = order if layers == "all" else [head]
    chosen: dict[nn.Module, str] = {}
    for m, name in targets.items():
        if name not in order:
            report.skipped[name] = "not executed by the forward pass"
        elif name not in names:
            report.skipped[name] = "not selected (layers='head')"
        elif not m.weight.requires_grad:
            report.skipped[name] = "frozen (requires_grad=False)"
        else:
            chosen[m] = name
    generator = torch.Generator().manual_seed(seed)
    done: set[str] = set()

    def make(name: str) -> Callable[..., None]:
        code = head_code if name == head else hidden_code

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name in done:  # shared module called again: it already holds its new weights
                return
            done.add(name)
            report.layers.append(_init_layer(module, name, args[0], labels, code, lam, patches_per_image, generator, dtype))

        return hook

    snap = _snapshot(model)
    was_training = model.training
    bn_state = [(m, m.training, m.momentum) for m in model.modules() if isinstance(m, _BN)]
    try:
        model.eval()
        if layers == "all":
            for m, _, _ in bn_state:
                if m.track_running_stats:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the pass
                m.train()
        with torch.no_grad(), _hooks(chosen, make):
            forward(model, inputs)
    except Exception as err:
        _restore(model, snap)
        if isinstance(err, SylvesterInitError):
            raise
        raise SylvesterInitError(f"Sylvester initialization failed, the model was restored: {err}") from err
    finally:
        for m, training, momentum in bn_state:
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _init_layer(
    module: nn.Module,
    name: str,
    x: Tensor,
    labels: Tensor | None,
    code: LatentCode,
    lam: float,
    patches_per_image: int | None,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> LayerReport:
    t0 = time.perf_counter()
    try:
        rows = layer_rows(module, x, patches_per_image, generator)
    except Exception as err:
        raise SylvesterInitError(f"layer {name!r}: could not gather its input rows: {err}") from err
    bad = int((~torch.isfinite(rows.x)).sum())
    if bad:
        raise SylvesterInitError(
            f"layer {name!r}: its input activations contain {bad} NaN/Inf values (check the data and the "
            "layers before it)"
        )
    row_labels = None
    if labels is not None and code.requires_labels:
        n_rows = rows.x.shape[0]
        if n_rows != labels.shape[0] * rows.per_sample:
            raise SylvesterInitError(
                f"layer {name!r}: its input has {n_rows // rows.per_sample} samples but {labels.shape[0]} labels were given"
            )
        row_labels = labels.to(rows.x.device).repeat_interleave(rows.per_sample)
    groups = getattr(module, "groups", 1)
    weight: Tensor = module.weight
    out_g = weight.shape[0] // groups
    fits = []
    for g in range(groups):
        xg = rows.x[:, g * (rows.x.shape[1] // groups) : (g + 1) * (rows.x.shape[1] // groups)] if groups > 1 else rows.x
        xg = xg.reshape(xg.shape[0], -1).to(dtype)
        try:
            s = code.fit(xg, out_g, labels=row_labels, generator=generator)
            fit = fit_layer(xg, s, lam, fit_bias=module.bias is not None, dtype=dtype)
        except ValueError as err:
            raise SylvesterInitError(f"layer {name!r}: {err}") from err
        fits.append(fit)
    with torch.no_grad():
        new_w = torch.cat([f.weight for f in fits], dim=0)
        weight.copy_(new_w.reshape(weight.shape).to(weight.dtype))
        if module.bias is not None:
            module.bias.copy_(torch.cat([f.bias for f in fits]).to(module.bias.dtype))  # type: ignore[misc]
    return LayerReport(
        name=name,
        kind=type(module).__name__,
        in_features=fits[0].weight.shape[1],
        out_features=out_g,
        groups=groups,
        rows=rows.x.shape[0],
        code=code.name,
        encoding_loss=sum(f.encoding_loss for f in fits) / groups,
        decoding_loss=sum(f.decoding_loss for f in fits) / groups,
        residual=max(f.residual for f in fits),
        cond_a=max(f.cond_a for f in fits),
        cond_b=max(f.cond_b for f in fits),
        seconds=time.perf_counter() - t0,
    )
