"""Layer-wise Sylvester initialization of an arbitrary ``nn.Module``.

:func:`sylvester_init_` initializes every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` and
``nn.MultiheadAttention`` of a model in the
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

With ``batch_size`` set, the subset is streamed in mini-batches instead: layer ``k``'s statistics
are accumulated over all batches (forward passes stop right after layer ``k``), then the next layer
follows, and a last pass recomputes the BatchNorm statistics — ``L + 1`` partial-to-full passes for
``L`` layers, with peak memory set by the batch size. With ``reduce`` (a sum across processes), every
layer's statistics are combined over all processes before solving, so every process writes the same
weights.

The passes themselves (hooks, streaming, BatchNorm recalibration, restore on failure) are the shared
runner of :mod:`lightning_sylv.passes`; this module plans one job per layer
(:class:`~lightning_sylv.layer.LayerJob`, and the two jobs of an ``nn.MultiheadAttention``,
:mod:`lightning_sylv.attention`). On any exception every parameter and buffer is restored, all hooks
are removed and train/eval modes are put back before the error propagates (all-or-nothing).

This module imports no Lightning.
"""

from __future__ import annotations

import fnmatch
import time
import warnings
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sylv._batch import batch_len, default_forward, slice_batch
from lightning_sylv.attention import attention_jobs
from lightning_sylv.codes import LatentCode, resolve_code
from lightning_sylv.layer import LayerJob
from lightning_sylv.modules import NORMS, model_device, target_modules
from lightning_sylv.passes import (
    InitializationError,
    Job,
    execution_order,
    probe_forward,
    run_jobs,
    skip_reason,
)
from lightning_sylv.report import InitReport, LayerReport
from lightning_sylv.rows import SUPPORTED_LAYERS
from lightning_sylv.scale import layer_scale
from lightning_sylv.settings import SylvesterSettings

__all__ = [
    "InitReport",
    "LayerReport",
    "SylvesterInitError",
    "SylvesterSettings",
    "execution_order",
    "plan",
    "sylvester_init_",
    "units",
]


class SylvesterInitError(InitializationError):
    """Initialization failed; the model was restored to its state before the call."""


def units(model: nn.Module) -> dict[nn.Module, str]:
    """The modules the Sylvester initializer writes, by name: the layers of
    :data:`~lightning_sylv.rows.SUPPORTED_LAYERS` and ``nn.MultiheadAttention`` (whose
    ``out_proj`` belongs to it, not to the list of layers)."""
    attention = target_modules(model, (nn.MultiheadAttention,))
    owned = {m.out_proj for m in attention.values()}
    layers = {n: m for n, m in target_modules(model).items() if m not in owned}
    return {m: n for n, m in (*attention.items(), *layers.items())}


def _untouched(model: nn.Module, written: set[nn.Module]) -> tuple[dict[str, str], dict[str, str]]:
    """``(unsupported layers, untouched parameters)`` of the model, each mapped to a reason.

    A module with a ``weight*`` parameter of two or more dimensions that the initializer does not
    handle (``nn.Embedding``, ``nn.ConvTranspose2d``, an RNN) is an unsupported layer. Other
    parameters outside the written layers and normalization layers (layer-scale γ, class tokens,
    position embeddings) are untouched parameters: they keep their values, and nothing is wrong.
    """
    layers: dict[str, str] = {}
    params: dict[str, str] = {}
    inside = {p for m in written for p in m.parameters()}
    for name, m in model.named_modules():
        if m in written or isinstance(m, (*NORMS, *SUPPORTED_LAYERS)):
            continue
        own = [(n, p) for n, p in m.named_parameters(recurse=False) if p not in inside]
        if any(n.startswith("weight") and p.ndim >= 2 for n, p in own):
            layers[name] = f"unsupported layer type {type(m).__name__} (keeps its current initialization)"
        else:
            for n, _ in own:
                params[f"{name}.{n}" if name else n] = f"parameter of {type(m).__name__} (not a layer; kept)"
    return layers, params


def sylvester_init_(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None = None,
    *,
    settings: SylvesterSettings | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    on_layer: Callable[[LayerReport, int, int], None] | None = None,
    **options: Any,
) -> InitReport:
    """Initialize ``model``'s layers in place from a data subset (Sylvester initialization).

    Validate (:class:`~lightning_sylv.settings.SylvesterSettings`), probe the forward on two samples
    (execution order, the head), plan one job per layer (:func:`plan`), run the plan in one pass
    (:func:`lightning_sylv.passes.run_jobs`).

    Args:
        model: Any module; its ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` layers and
            ``nn.MultiheadAttention`` projections with trainable weights are initialized. Other
            layer types are left as they are (reported as unsupported layers), and so are
            parameters that are not layers (reported as untouched parameters).
        inputs: The subset's inputs, already on the model's device, as ``forward`` expects them.
        labels: Integer class labels ``(N,)``, needed by the head's one-hot code.
        settings: What to do (:class:`~lightning_sylv.settings.SylvesterSettings`: layers, codes, λ,
            precision, scale, ...); ``None``: the defaults.
        reduce: Sum of a tensor across processes (an all-reduce); every layer's statistics go through
            it before solving. ``None`` for a single process.
        gather: Concatenation of a tensor along its first dimension across processes (an
            all-gather). With it, layers with fewer rows than inputs pool their rows and solve in
            their span (``O(n² d)``); without it, under ``reduce`` they sum ``d x d`` Gram matrices.
        forward: ``forward(model, inputs)`` runs the model to its logits; defaults to
            ``model(inputs)``. A 4-D floating-point CPU ``inputs`` reaches it as a channels-last copy
            when a two-sample probe shows the forward accepts that layout (about twice as fast
            convolutions on CPUs); the values are the same.
        on_layer: Called as ``on_layer(layer_report, done, total)`` after each layer (progress bars).
        **options: Fields of :class:`~lightning_sylv.settings.SylvesterSettings`, replacing those of
            ``settings`` (``lam=5.0``, ``layers="head"``, ``gram_dtype=None``, ...).

    Returns:
        An :class:`InitReport`.

    Raises:
        ValueError: On invalid options (naming the option and its value), an unknown ``head``, a head
            that does not match ``num_classes``, ``layers="head"`` with a supervised head code and no
            ``labels``, or a rows-only code with ``batch_size``/``reduce``.
        TypeError: On an option that is not a field of the settings.
        SylvesterInitError: If anything fails during initialization; the model is restored first.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_sylv import sylvester_init_
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(60, 8), torch.arange(3).repeat(20)
        >>> report = sylvester_init_(model, x, y)
        >>> [(layer.name, layer.code) for layer in report.layers]
        [('0', 'rotated_pca'), ('2', 'onehot')]
        >>> report.passes
        1
    """
    settings = settings or SylvesterSettings()
    settings = settings.replace(**options) if options else settings
    start = time.perf_counter()
    n_samples = batch_len(inputs)
    if n_samples == 0:
        raise ValueError("inputs hold no samples: nothing to initialize from")
    if labels is not None and labels.shape != (n_samples,):
        raise ValueError(f"labels must have shape ({n_samples},) to match the inputs, got {tuple(labels.shape)}")
    targets = units(model)
    try:
        forward, order, logits, normalized = probe_forward(model, slice_batch(inputs, 0, 2), forward, targets)
    except InitializationError as err:
        raise SylvesterInitError(str(err)) from err.__cause__
    problem = _logits_problem(logits, settings, labels)
    # Every process learns the total row count and whether any refuses its logits (their labels differ).
    counts = torch.tensor([float(n_samples), float(problem is not None)], device=model_device(model))
    counts = counts if reduce is None else reduce(counts)
    total, refused = int(counts[0]), bool(counts[1] > 0)
    if refused:
        raise ValueError(problem or "another process refused the model's logits (its message is in its output)")
    jobs, report = plan(
        model, targets, order, settings, has_labels=labels is not None, samples=total, gather=gather,
        distributed=reduce is not None, streaming=settings.batch_size is not None and settings.batch_size < n_samples,
        normalized=normalized,
    )  # fmt: skip

    def on_result(job: Job, record: LayerReport) -> None:
        report.layers.append(record)
        if on_layer is not None:
            on_layer(record, len(report.layers), len(jobs))

    report.passes = run_jobs(
        model, inputs, labels, jobs, n_samples=n_samples, forward=forward, batch_size=settings.batch_size,
        reduce=reduce, recalibrate_bn=settings.recalibrates_norms, on_result=on_result, error=SylvesterInitError,
        what="Sylvester initialization",
    )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


def plan(
    model: nn.Module,
    targets: Mapping[nn.Module, str],
    order: Sequence[str],
    settings: SylvesterSettings,
    *,
    has_labels: bool,
    samples: int,
    gather: Callable[[Tensor], Tensor] | None,
    distributed: bool,
    streaming: bool,
    normalized: Collection[str] = frozenset(),
) -> tuple[list[Job], InitReport]:
    """The jobs of one Sylvester initialization, in execution order, and its report so far.

    Resolves the head and each layer's code and λ, and records every layer that is not initialized
    with the reason (not executed, not selected, frozen, unsupported type) and the parameters left as
    they are.

    Args:
        model: The model.
        targets: Its candidate modules by name (:func:`units`).
        order: The names the forward executed, in order (:func:`~lightning_sylv.passes.probe_forward`).
        settings: The options.
        has_labels: Whether the data carries labels.
        samples: Samples every layer will see in all (over processes).
        gather: The all-gather across processes, if any.
        distributed: Whether the statistics are summed across processes.
        streaming: Whether the subset runs in several batches.
        normalized: The names whose output a scale-free normalization takes directly (the probe's;
            ``scale="auto"`` gives them the own output energy, the other layers the own norm).

    Raises:
        ValueError: On an unknown head, layer name or pattern, a head that does not match
            ``num_classes``, a supervised head alone without labels, or a rows-only code that cannot be
            streamed or reduced.
    """
    modules = {name: m for m, name in targets.items()}
    head = _resolve_head(modules, order, settings.head, settings.num_classes)
    selected = _selected(settings, modules, order, head)
    hidden, head_code, overrides = _codes(settings, head, selected, has_labels)
    for code in {hidden, head_code, *overrides.values()}:
        if (streaming or distributed) and not code.from_statistics:
            raise ValueError(
                f"the {code.name!r} code needs all rows at once, so it works neither with batch_size "
                "(streaming) nor across processes; use a statistics code such as 'pca'"
            )
    generator = torch.Generator().manual_seed(settings.seed)
    lams = settings.lams or {}

    def make_job(module: nn.Module, name: str, code: LatentCode | None = None) -> LayerJob:
        return LayerJob(
            module=module, name=name, code=code or hidden, lam=lams.get(name, settings.lam),
            patches_per_image=settings.patches_per_image, generator=generator, dtype=settings.dtype,
            gram_dtype=settings.gram_dtype, code_generator=_layer_generator(settings.seed, name), samples=samples,
            gather=gather, distributed=distributed, solver=settings.solver, power_iterations=settings.power_iterations,
            scale=layer_scale(settings.head_scale if name == head else settings.scale, name in normalized),
        )  # fmt: skip

    report = InitReport(head=head)
    jobs: list[Job] = []
    written: set[nn.Module] = set()
    for name in list(order) + [n for n in modules if n not in order]:
        m = modules[name]
        why = skip_reason(name, m, order, selected)
        if why is not None:
            layers = list(settings.layers) if isinstance(settings.layers, tuple) else settings.layers
            report.skipped[name] = why if why != "not selected" else f"not selected (layers={layers!r})"
        elif isinstance(m, nn.MultiheadAttention):
            written.add(m)
            jobs.extend(attention_jobs(m, name, make_job))
        else:
            written.add(m)
            jobs.append(make_job(m, name, overrides.get(name, head_code if name == head else hidden)))
    _record_untouched(report, model, set(modules.values()), written)
    return jobs, report


def _selected(
    settings: SylvesterSettings, modules: Mapping[str, nn.Module], order: Sequence[str], head: str
) -> list[str] | None:
    """The names of the layers to initialize (``None``: all), checked against what the forward executes."""
    if settings.layers == "all":
        selected = None
    elif settings.layers == "head":
        selected = [head]
    else:
        patterns = list(settings.layers)
        selected = [n for n in modules if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not selected:
            raise ValueError(f"layers={patterns!r} matches none of the model's layers {list(modules)}")
    named = (
        ("layers", selected or []),
        ("codes given for", settings.codes or {}),
        ("lams given for", settings.lams or {}),
    )
    for what, names in named:
        unknown = [n for n in names if n not in order]
        if unknown:
            raise ValueError(f"{what} {unknown} are not layers executed by the forward pass; executed: {list(order)}")
    return selected


def _codes(
    settings: SylvesterSettings, head: str, selected: list[str] | None, has_labels: bool
) -> tuple[LatentCode, LatentCode, dict[str, LatentCode]]:
    """The hidden layers' code, the head's and the per-layer overrides; an unsupervised head code
    (with a warning) when the data has no labels."""
    hidden, head_code = resolve_code(settings.latent), resolve_code(settings.head_latent)
    overrides = {name: resolve_code(c) for name, c in (settings.codes or {}).items()}
    head_in_use = selected is None or head in selected
    if head_code.requires_labels and not has_labels and head_in_use and head not in overrides:
        if settings.layers == "head":
            raise ValueError(
                f"layers='head' needs class labels for the {head_code.name!r} head code, but the data "
                "provides none: use a labelled dataset or layers='all' with an unsupervised code"
            )
        warnings.warn(
            f"no labels: the head {head!r} gets the unsupervised {hidden.name!r} code instead of {head_code.name!r}",
            stacklevel=4,
        )
        head_code = hidden
    return hidden, head_code, overrides


def _record_untouched(
    report: InitReport, model: nn.Module, candidates: set[nn.Module], written: set[nn.Module]
) -> None:
    """Record the unsupported layers (with a warning), the untouched parameters and the parameter counts."""
    unsupported, report.untouched = _untouched(model, candidates)
    if unsupported:
        report.skipped.update(unsupported)
        warnings.warn(
            "layers the Sylvester initializer does not handle keep their initialization: "
            + ", ".join(f"{n or '<root>'} ({v.split()[3]})" for n, v in unsupported.items()),
            stacklevel=4,
        )
    report.initialized_parameters = sum(p.numel() for m in written for p in m.parameters())
    report.total_parameters = sum(p.numel() for p in model.parameters())


def _logits_problem(logits: Any, settings: SylvesterSettings, labels: Tensor | None) -> str | None:
    """Why the logits cannot take the head's one-hot code (``None``: they can), before anything is written.

    A ``forward`` that returns features (512 values per sample for 10 classes) would have its last
    layer fitted to a one-hot code of the wrong size. With ``num_classes`` the width must match; without
    it the class count is guessed as the largest label + 1 (some classes may be absent from a small
    subset): fewer outputs, or more than twice as many, are refused. Checked on the probe's output,
    when the head is the default (last executed layer) and its code is one-hot.

    Returns:
        A message naming the width, the class count and the ways out, or ``None``.
    """
    if labels is None or labels.numel() == 0 or settings.head_latent != "onehot" or settings.head is not None:
        return None
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        return None  # e.g. a dict of outputs; a declared class count is still checked against the head
    width = logits.shape[1]
    declared = settings.num_classes is not None
    classes = settings.num_classes if declared else int(labels.max()) + 1
    if width != classes and (declared or width < classes or width > 2 * classes):
        source = f"num_classes={classes}" if declared else "the largest label + 1"
        return (
            f"the model's forward returns {width} values per sample, but there are {classes} classes ({source}), "
            "so the head (the last layer it runs) cannot be given a one-hot code. If forward returns features "
            "and another module maps them to logits, pass a forward that returns logits "
            "(SylvesterInit(forward='logits') names a LightningModule method; from the CLI: "
            "--trainer.callbacks.forward logits), or name the classifier layer with head=. If the class count "
            "is wrong, pass num_classes=. Nothing was changed."
        )
    return None


def _resolve_head(
    modules: Mapping[str, nn.Module], order: Sequence[str], head: str | None, num_classes: int | None
) -> str:
    """The head's name: ``head``, or the last ``Linear``/``Conv`` layer the forward executes.

    Raises:
        ValueError: If the forward executes no layer, ``head`` is not an executed layer, or the head's
            output count differs from ``num_classes`` (a forward that returns features).
    """
    if not order:
        raise ValueError(
            "the model's forward pass executes no Linear/Conv/MultiheadAttention layer: nothing to initialize"
        )
    layer_order = [n for n in order if not isinstance(modules[n], nn.MultiheadAttention)]
    head = head if head is not None else (layer_order or list(order))[-1]
    if head not in layer_order:
        raise ValueError(f"head {head!r} is not a Linear/Conv layer executed by the forward pass; executed: {order}")
    head_out = modules[head].weight.shape[0]
    if num_classes is not None and head_out != num_classes:
        raise ValueError(
            f"the head {head!r} (the last layer the forward executes) has {head_out} outputs but the data has "
            f"{num_classes} classes: the forward probably returns features, not logits. Pass a forward that "
            "maps inputs to logits, or name the classifier layer with head="
        )
    return head


def _layer_generator(seed: int, name: str) -> torch.Generator:
    """The generator of a layer's random code fills: a function of ``seed`` and the layer's name only.

    Patch draws consume the shared generator in proportion to a process's share of the subset, so
    after an uneven split (1,000 samples on 3 processes) its state differs between processes; fills
    drawn from it would give the processes different weights for the same all-reduced statistics.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
