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

import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_sylv._batch import batch_len, default_forward, slice_batch
from lightning_sylv._checks import (
    check_choice,
    check_nonnegative_int,
    check_patterns,
    check_positive_int,
    check_positive_number,
)
from lightning_sylv.attention import attention_jobs
from lightning_sylv.codes import CODES, LatentCode, resolve_code
from lightning_sylv.layer import SOLVERS, LayerJob
from lightning_sylv.modules import NORMS, model_device
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
from lightning_sylv.scale import SCALES, Scale

__all__ = [
    "InitReport",
    "LayerReport",
    "SylvesterInitError",
    "check_arguments",
    "execution_order",
    "sylvester_init_",
    "units",
]


class SylvesterInitError(InitializationError):
    """Initialization failed; the model was restored to its state before the call."""


def units(model: nn.Module) -> dict[nn.Module, str]:
    """The modules the Sylvester initializer writes, by name: the layers of
    :data:`~lightning_sylv.rows.SUPPORTED_LAYERS` and ``nn.MultiheadAttention`` (whose
    ``out_proj`` belongs to it, not to the list of layers)."""
    out: dict[nn.Module, str] = {}
    owned: set[nn.Module] = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            out[m] = name
            owned.add(m.out_proj)
    for name, m in model.named_modules():
        if isinstance(m, SUPPORTED_LAYERS) and m not in owned:
            out[m] = name
    return out


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


def check_arguments(
    *,
    layers: Any,
    latent: Any,
    head_latent: Any,
    lam: Any,
    patches_per_image: Any,
    head: Any,
    batch_size: Any,
    solver: Any,
    power_iterations: Any,
    num_classes: Any,
    scale: Any,
    head_scale: Any,
) -> None:
    """The checks of :func:`sylvester_init_`'s options, one per argument, shared with
    :class:`~lightning_sylv.SylvesterInit` (which runs them when it is constructed).

    ``layers`` is ``"all"``, ``"head"`` or a list of non-empty strings (layer names for the function,
    name patterns for the callback); codes are names in :data:`~lightning_sylv.codes.CODES` or
    :class:`~lightning_sylv.codes.LatentCode` instances.

    Raises:
        ValueError: Naming the first invalid argument and its value.
    """
    if isinstance(layers, str):
        check_choice("layers", layers, ("all", "head"))
    else:
        check_patterns("layers", layers)
    for name, code in (("latent", latent), ("head_latent", head_latent)):
        if not isinstance(code, LatentCode):
            check_choice(name, code, CODES)
    check_positive_number("lam", lam)
    check_positive_int("patches_per_image", patches_per_image, allow_none=True)
    if head is not None and (not isinstance(head, str) or not head):
        raise ValueError(f"head must be a module name or None, got {head!r}")
    check_positive_int("batch_size", batch_size, allow_none=True)
    check_choice("solver", solver, SOLVERS)
    check_nonnegative_int("power_iterations", power_iterations)
    check_positive_int("num_classes", num_classes, allow_none=True)
    check_choice("scale", scale, SCALES)
    check_choice("head_scale", head_scale, SCALES)


def sylvester_init_(
    model: nn.Module,
    inputs: Any,
    labels: Tensor | None = None,
    *,
    layers: Literal["all", "head"] | Sequence[str] = "all",
    latent: str | LatentCode = "rotated_pca",
    head_latent: str | LatentCode = "onehot",
    lam: float = 10.0,
    patches_per_image: int | None = 16,
    head: str | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    gram_dtype: torch.dtype | None = torch.float32,
    batch_size: int | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
    codes: Mapping[str, str | LatentCode] | None = None,
    lams: Mapping[str, float] | None = None,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    num_classes: int | None = None,
    solver: Literal["exact", "randomized"] = "exact",
    power_iterations: int = 1,
    scale: Scale = "own",
    head_scale: Scale = "solve",
    on_layer: Callable[[LayerReport, int, int], None] | None = None,
) -> InitReport:
    """Initialize ``model``'s layers in place from a data subset (Sylvester initialization).

    Args:
        model: Any module; its ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` layers and
            ``nn.MultiheadAttention`` projections with trainable weights are initialized. Other
            layer types are left as they are (reported as unsupported layers), and so are
            parameters that are not layers (reported as untouched parameters).
        inputs: The subset's inputs, already on the model's device, as ``forward`` expects them.
        labels: Integer class labels ``(N,)``, needed by the head's one-hot code.
        layers: ``"all"`` (every layer, in execution order, BatchNorm statistics recomputed),
            ``"head"`` (only the head, from the current body's features; everything else, including
            BatchNorm buffers, stays bit-identical), or a list of layer names (only those, in
            execution order; BatchNorm statistics recomputed as for ``"all"``).
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
        dtype: Precision of the statistics and solves (``torch.float64`` by default); results are
            cast to each parameter's dtype.
        gram_dtype: Precision of the row products that form each layer's second moments (the
            ``O(n d²)`` part of the work, the only one that grows with the data); ``None`` for
            ``dtype``. The default, ``torch.float32`` with the default ``dtype``, forms them in float32
            blocks summed in float64 (entries accurate to ~1e-6 relative), while codes, the
            ``d x d`` decomposition and the solves stay in ``dtype``: the design does not depend on
            fast float64 (consumer GPUs run it at 1/32-1/64 of float32). Initial accuracy within the
            seed spread of the float64 products on ResNet-20 and the zoo (``examples/RESULTS.md``);
            pass ``None`` for float64 products (weights reproducible to ~1e-12 against a reference).
        batch_size: Stream the subset in mini-batches of this size (statistics codes only); ``None``
            runs the whole subset as one batch in a single forward pass.
        reduce: Sum of a tensor across processes (an all-reduce); every layer's statistics go through
            it before solving. ``None`` for a single process.
        gather: Concatenation of a tensor along its first dimension across processes (an
            all-gather). With it, layers with fewer rows than inputs pool their rows and solve in
            their span (``O(n² d)``); without it, under ``reduce`` they sum ``d x d`` Gram matrices.
        codes: Per-layer code overrides, by layer name (e.g. a teacher's activations for FuseInit).
        lams: Per-layer λ overrides, by layer name (e.g. ``math.inf`` for FuseInit's teacher targets).
        forward: ``forward(model, inputs)`` runs the model to its logits; defaults to
            ``model(inputs)``. A 4-D floating-point CPU ``inputs`` reaches it as a channels-last copy
            when a two-sample probe shows the forward accepts that layout (about twice as fast
            convolutions on CPUs); the values are the same.
        num_classes: Classes of the data. With it, a head whose output count differs (a ``forward``
            that returns features, not logits) is refused before anything is written.
        solver: ``"exact"``: every layer solved exactly, from ``d x d`` statistics or in the span of
            fewer rows than inputs. ``"randomized"``: the fast mode for hidden layers with PCA codes
            whose outputs are far fewer than their inputs and rows: a randomized leading principal
            subspace (``O(n d k)``, the order of the layer's forward pass, instead of
            ``O(n d² + d³)``); see :mod:`lightning_sylv.layer.mode`. It keeps the rows of such layers
            (memory ``n x d``, as their activations) and needs ``gather`` under ``reduce``.
        power_iterations: Subspace iterations of the randomized mode (``>= 0``).
        scale: Output scale of the hidden layers: ``"solve"`` keeps the solved weights as they
            are; ``"own"`` keeps their directions and rescales each layer to the output energy its
            weights before the call have on the same input rows (the model's own init's gain; see
            :mod:`lightning_sylv.scale`). A layer followed by a normalization computes the same
            function either way; residual branches, attention and unnormalized layers keep the
            gain their architecture was built for.
        head_scale: Output scale of the head, likewise (``"own"`` shrinks the logits to the own
            head's size; a zero-initialized head keeps the solve's scale).
        on_layer: Called as ``on_layer(layer_report, done, total)`` after each layer (progress bars).

    Returns:
        An :class:`InitReport`.

    Raises:
        ValueError: On invalid arguments, an unknown ``head``, a head that does not match
            ``num_classes``, ``layers="head"`` with a supervised head code and no ``labels``, or a
            rows-only code with ``batch_size``/``reduce``.
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
    check_arguments(
        layers=layers, latent=latent, head_latent=head_latent, lam=lam, patches_per_image=patches_per_image,
        head=head, batch_size=batch_size, solver=solver, power_iterations=power_iterations, num_classes=num_classes,
        scale=scale, head_scale=head_scale,
    )  # fmt: skip
    if not all(v > 0 for v in (lams or {}).values()):
        raise ValueError(f"every value of lams must be > 0, got {lams!r}")
    hidden_code, head_code = resolve_code(latent), resolve_code(head_latent)
    overrides = {name: resolve_code(c) for name, c in (codes or {}).items()}
    start = time.perf_counter()
    report = InitReport()
    n_samples = batch_len(inputs)
    if n_samples == 0:
        raise ValueError("inputs hold no samples: nothing to initialize from")
    if labels is not None and labels.shape != (n_samples,):
        raise ValueError(f"labels must have shape ({n_samples},) to match the inputs, got {tuple(labels.shape)}")
    targets = units(model)
    try:
        forward, order = probe_forward(model, slice_batch(inputs, 0, 2), forward, targets)
    except InitializationError as err:
        raise SylvesterInitError(str(err)) from err.__cause__
    modules = {name: m for m, name in targets.items()}
    head = _resolve_head(modules, order, head, num_classes)
    explicit = not isinstance(layers, str)
    named = (("layers", layers if explicit else []), ("codes given for", overrides), ("lams given for", lams or {}))
    for what, names in named:
        unknown = [n for n in names if n not in order]
        if unknown:
            raise ValueError(f"{what} {unknown} are not layers executed by the forward pass; executed: {order}")
    head_in_use = layers in ("all", "head") or (explicit and head in layers)
    if head_code.requires_labels and labels is None and head_in_use and head not in overrides:
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
    streaming = batch_size is not None and batch_size < n_samples
    for code in {hidden_code, head_code, *overrides.values()}:
        if (streaming or reduce is not None) and not code.from_statistics:
            raise ValueError(
                f"the {code.name!r} code needs all rows at once, so it works neither with batch_size "
                "(streaming) nor across processes; use a statistics code such as 'pca'"
            )
    report.head = head
    selected = None if layers == "all" else [head] if layers == "head" else list(layers)
    count = torch.tensor([float(n_samples)], device=model_device(model))
    total = n_samples if reduce is None else int(reduce(count)[0])
    generator = torch.Generator().manual_seed(seed)

    def make_job(
        module: nn.Module, name: str, code: LatentCode | None = None, layer_lam: float | None = None
    ) -> LayerJob:
        return LayerJob(
            module=module, name=name, code=code or hidden_code, lam=lam if layer_lam is None else layer_lam,
            patches_per_image=patches_per_image, generator=generator, dtype=dtype, gram_dtype=gram_dtype,
            code_generator=_layer_generator(seed, name), samples=total, gather=gather,
            distributed=reduce is not None, solver=solver, power_iterations=power_iterations,
            scale=head_scale if name == head else scale,
        )  # fmt: skip

    jobs: list[Job] = []
    written: set[nn.Module] = set()
    for name in order + [n for n in modules if n not in order]:
        m = modules[name]
        why = skip_reason(name, m, order, selected)
        if why is not None:
            report.skipped[name] = why if why != "not selected" else f"not selected (layers={layers!r})"
            continue
        written.add(m)
        if isinstance(m, nn.MultiheadAttention):
            jobs.extend(attention_jobs(m, name, make_job))
        else:
            code = overrides.get(name, head_code if name == head else hidden_code)
            jobs.append(make_job(m, name, code, (lams or {}).get(name)))
    unsupported, report.untouched = _untouched(model, set(modules.values()))
    if unsupported:
        report.skipped.update(unsupported)
        warnings.warn(
            "layers the Sylvester initializer does not handle keep their initialization: "
            + ", ".join(f"{n or '<root>'} ({v.split()[3]})" for n, v in unsupported.items()),
            stacklevel=2,
        )
    report.initialized_parameters = sum(p.numel() for m in written for p in m.parameters())
    report.total_parameters = sum(p.numel() for p in model.parameters())

    def on_result(job: Job, record: LayerReport) -> None:
        report.layers.append(record)
        if on_layer is not None:
            on_layer(record, len(report.layers), len(jobs))

    report.passes = run_jobs(
        model, inputs, labels, jobs, n_samples=n_samples, forward=forward, batch_size=batch_size, reduce=reduce,
        recalibrate_bn=layers != "head", on_result=on_result, error=SylvesterInitError,
        what="Sylvester initialization",
    )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


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
