"""FuseInit on the Sylvester engine: initialize a shallower network from a trained deeper one.

Lan, Studer, Ghods & Goldstein, *MSE-Optimal Neural Network Initialization via Layer Fusion*
(arXiv:2001.10509, 2020). Neighbouring layers of a trained deeper *teacher* (dense-dense,
conv-dense, conv-conv) are replaced by one layer of a shallower *student*; the student layer's weight
and bias are the mean-square-error-optimal fit of the pair's output from the student layer's input
on a data subset.

That fit is the Sylvester engine's problem with the teacher's activation as the code ``S``:
:class:`TeacherCode` is that code and :func:`fuse_init_` runs
:func:`lightning_sylv.engine.sylvester_init_` with it, at λ = ``teacher_lam``. ``teacher_lam=math.inf``
is the paper's least-squares (minimum-norm) fit, the encoding problem alone. It is ill-conditioned
whenever the student layer's input has directions of almost no variance (constant border pixels,
correlated hidden units, fewer samples than inputs): least squares then puts weights of any size
there, and a network that starts with weights 100x the teacher's diverges under ordinary SGD. The
finite default (1000) keeps the decoding term ``‖X − WᵀS‖²`` at a small weight; in the eigenbases
of ``SSᵀ`` (eigenvalues ``α``) and ``XXᵀ`` (``β``) every entry of ``W`` is
``(1+λ) C_ij / (α_i + λ β_j)`` with ``|C_ij| ≤ √(α_i β_j)``, hence at most ``(1+λ) / (2√λ)``, while
directions with ``λ β_j ≫ α_i`` keep their least-squares value. The student is
therefore fitted layer by layer in execution order, each layer from the activations of the already
fused student layers before it, in one forward pass (BatchNorm statistics recomputed).

**Which activation is the target.** The target of a student layer is the *output of the named
teacher module*. The intended choice is the second layer of the fused pair itself (a
``Linear``/``Conv``), i.e. the teacher's **pre-activation** output: the student layer replaces the
pair and the student's own nonlinearity after it then plays the role of the teacher's nonlinearity
after the pair. Naming a teacher activation module (``ReLU``) instead fits the student layer to the
post-activation output.

**Shapes.** A convolutional student layer needs a teacher activation of shape ``(N, C_out, *grid)``
with the student layer's output grid: two stride-1 convolutions with kernels ``k1, k2`` and paddings
``p1, p2`` become one convolution of kernel ``k1 + k2 − 1`` and padding ``p1 + p2`` (dilation 1).
With zero padding the pair and the fused layer differ in the border band of width ``p2``: there the
second convolution of the pair sees zeros, while the fused one sees the first convolution's
would-be outputs. With ``padding=0`` (and no nonlinearity in between) the fusion is exact. A dense
student layer takes the teacher's activation flattened per sample (``(N, C, H, W)`` →
``(N, C·H·W)``): conv-dense pairs fuse into one dense layer whose input is the conv's flattened
input.

:func:`compose_linear` and :func:`compose_conv` give the exact compositions of two linear layers
(what the fit recovers when the teacher pair has no nonlinearity in between).

This module imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sylv._batch import default_forward, move_batch
from lightning_sylv.codes import LatentCode
from lightning_sylv.engine import InitReport, sylvester_init_
from lightning_sylv.modules import target_modules
from lightning_sylv.passes import hooked_pass
from lightning_sylv.rows import LayerRows
from lightning_sylv.settings import FuseSettings, SylvesterSettings

__all__ = ["FuseSettings", "TeacherCode", "compose_conv", "compose_linear", "fuse_init_", "teacher_activations"]


class TeacherCode(LatentCode):
    """A teacher network's activation on the subset, as the code ``S`` of one student layer.

    Rows are aligned with the student layer's rows (:class:`~lightning_sylv.rows.LayerRows`
    passed by the engine): for a convolution, row ``i * p + j`` gets the teacher activation of sample
    ``i`` at the same output position ``positions[i, j]``; for a ``Linear`` on ``(N, d_in)`` inputs,
    the teacher activation of sample ``i`` flattened; for a ``Linear`` on ``(N, T, d_in)`` sequences,
    the teacher activation ``(N, T, d_out)`` at the same position. The samples must be the ones the
    student sees, in the same order (:func:`fuse_init_` makes sure of that).

    Grouped student convolutions are not supported (the code cannot tell which group it fits).

    Args:
        activation: The teacher module's output on the subset, shape ``(N, ...)``, floating point
            (any device; the rows are moved to the student's).
        source: Name of the teacher module, for messages and reports.

    Raises:
        ValueError: If ``activation`` is not a floating-point tensor with a batch dimension.
    """

    name = "teacher"
    requires_rows = True

    def __init__(self, activation: Tensor, source: str = "teacher") -> None:
        if not isinstance(activation, Tensor) or activation.ndim < 2 or not activation.is_floating_point():
            shape = tuple(activation.shape) if isinstance(activation, Tensor) else type(activation).__name__
            raise ValueError(f"activation of {source!r} must be a floating-point tensor (N, ...), got {shape}")
        if activation.shape[0] == 0:
            raise ValueError(f"activation of {source!r} holds no samples")
        self.activation = activation.detach()
        self.source = source

    def fit(
        self,
        x: Tensor,
        out_features: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: LayerRows | None = None,
    ) -> Tensor:
        """Return the teacher's activation rows aligned with the student layer's rows ``x``.

        Args:
            x: The student layer's input rows ``(N * p, d_in)``.
            out_features: The student layer's output units (channels).
            labels: Unused.
            generator: Unused.
            rows: Where the rows come from (positions and output grid); ``None`` means one row per
                sample.

        Returns:
            ``S`` of shape ``(N * p, out_features)`` on ``x``'s device and dtype.

        Raises:
            ValueError: If the teacher activation and the student layer's output do not match (the
                message gives both shapes), or the sample counts differ.
        """
        act = self.activation
        n = act.shape[0]
        conv = rows is not None and rows.x.ndim == 3
        if rows is None or rows.positions is None:
            per_sample, grid, pos = 1, (), None
        else:
            per_sample, grid, pos = rows.per_sample, tuple(rows.out_shape), rows.positions
        if x.shape[0] != n * per_sample:
            raise ValueError(
                f"the teacher activation at {self.source!r} covers {n} samples but the student layer has "
                f"{x.shape[0]} rows ({x.shape[0] // max(per_sample, 1)} samples): run the teacher on the same subset"
            )
        if conv:
            t_grid = tuple(act.shape[2:])
            if len(grid) == 2 and grid[0] == 1 and len(t_grid) == 1:  # Conv1d: (1, L_out) vs (L,)
                t_grid = (1, *t_grid)
            if act.ndim < 3 or act.shape[1] != out_features or t_grid != grid:
                raise ValueError(
                    f"the teacher activation at {self.source!r} has shape {tuple(act.shape)} but the student "
                    f"convolution outputs {(n, out_features, *grid)}: channels and spatial grid must match "
                    "(two stride-1 convs with kernels k1, k2 and paddings p1, p2 fuse into one of kernel "
                    "k1+k2-1 and padding p1+p2)"
                )
            flat = act.reshape(n, out_features, -1).transpose(1, 2)  # (N, P, C)
        elif grid:  # Linear on (N, *grid, d_in): channels last
            if tuple(act.shape[1:]) != (*grid, out_features):
                raise ValueError(
                    f"the teacher activation at {self.source!r} has shape {tuple(act.shape)} but the student "
                    f"layer outputs {(n, *grid, out_features)}"
                )
            flat = act.reshape(n, -1, out_features)
        else:  # Linear on (N, d_in): the flattened activation per sample
            flat = act.reshape(n, 1, -1)
            if flat.shape[2] != out_features:
                raise ValueError(
                    f"the teacher activation at {self.source!r} has shape {tuple(act.shape)} "
                    f"({flat.shape[2]} values per sample) but the student dense layer has {out_features} "
                    "outputs: they must be equal"
                )
        if pos is None:
            target = flat.reshape(n, -1)
        else:
            pos = pos.to(flat.device)
            target = flat.gather(1, pos[:, :, None].expand(-1, -1, out_features)).reshape(-1, out_features)
        return target.to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"TeacherCode(source={self.source!r}, shape={tuple(self.activation.shape)})"


def teacher_activations(
    teacher: nn.Module,
    inputs: Any,
    names: list[str] | tuple[str, ...],
    forward: Callable[[nn.Module, Any], Any] = default_forward,
) -> dict[str, Tensor]:
    """Outputs of the named teacher modules on ``inputs`` (one forward pass in eval mode, no grad).

    A module called several times in one forward contributes its first output. The teacher's
    train/eval mode is restored afterwards; its parameters are not changed.

    Args:
        teacher: The trained network.
        inputs: Its inputs (tensors are moved to the teacher's device, floating-point ones cast to its dtype).
        names: Qualified module names in ``teacher.named_modules()``.
        forward: ``forward(teacher, inputs)`` runs the teacher; defaults to ``teacher(inputs)``.

    Returns:
        ``{name: output}`` (detached tensors on the teacher's device).

    Raises:
        ValueError: If a name is not a module of the teacher, a module is not executed by the
            forward pass, or its output is not a tensor.
    """
    modules = dict(teacher.named_modules())
    unknown = [n for n in names if n not in modules or n == ""]
    if unknown:
        known = [n for n, m in modules.items() if n and not list(m.children())]
        raise ValueError(f"teacher modules {unknown} do not exist in the teacher; its leaf modules are {known}")
    out: dict[str, Tensor] = {}

    def make(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name in out:
                return
            if not isinstance(output, Tensor):
                raise ValueError(f"teacher module {name!r} returned {type(output).__name__}, not a tensor")
            out[name] = output.detach()

        return hook

    post = {modules[n]: make(n) for n in dict.fromkeys(names)}
    hooked_pass(teacher, move_batch(inputs, next(teacher.parameters(), None)), forward, post=post)
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"teacher modules {missing} were not executed by the teacher's forward pass")
    return out


def fuse_init_(
    student: nn.Module,
    teacher: nn.Module,
    inputs: Any,
    mapping: Mapping[str, str],
    labels: Tensor | None = None,
    *,
    settings: FuseSettings | None = None,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    teacher_forward: Callable[[nn.Module, Any], Any] = default_forward,
    teacher_inputs: Any = None,
    on_layer: Callable[[Any, int, int], None] | None = None,
    **options: Any,
) -> InitReport:
    """Initialize ``student``'s mapped layers in place from a trained ``teacher`` (FuseInit).

    Every student layer ``s`` in ``mapping`` gets the weight and bias mapping its input on the subset
    to the output of teacher module ``mapping[s]`` on the same samples: the Sylvester solution with
    the teacher's activation as the code and λ = ``teacher_lam`` (``math.inf``: least squares). See
    the module docstring for the choice of λ and target, and the shape rules.

    Args:
        student: The shallower network, initialized in place.
        teacher: The trained deeper network (not modified).
        inputs: The subset's inputs, on the student's device, as ``forward`` expects them.
        mapping: Student layer name → teacher module name, e.g. ``{"features.1": "features.3"}``.
        labels: Integer class labels ``(N,)``; used by a one-hot head with ``unmapped="sylvester"``.
        settings: What to do (:class:`~lightning_sylv.settings.FuseSettings`: ``unmapped``, ``lam``,
            ``teacher_lam``, patch draws, precision); ``None``: the defaults.
        forward: ``forward(student, inputs)``; defaults to ``student(inputs)``.
        teacher_forward: ``teacher_forward(teacher, inputs)``; defaults to ``teacher(inputs)``.
        teacher_inputs: The teacher's inputs if they differ from ``inputs`` (same samples, same
            order); tensors are moved to the teacher's device.
        on_layer: ``on_layer(layer_report, done, total)`` after each layer (a progress bar).
        **options: Fields of :class:`~lightning_sylv.settings.FuseSettings`, replacing those of ``settings``.

    Returns:
        The engine's :class:`~lightning_sylv.engine.InitReport` (mapped layers have code
        ``"teacher"``).

    Raises:
        ValueError: For an empty or non-string ``mapping``, a student name that is not a
            ``Linear``/``Conv1d``/``Conv2d`` of the student, a teacher name that is not a module of the
            teacher, or an invalid ``unmapped``.
        lightning_sylv.engine.SylvesterInitError: If a teacher activation does not match its student
            layer's output (the message names both and their shapes); the student is restored first.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"mapping must be a non-empty mapping of student -> teacher names, got {mapping!r}")
    bad = {k: v for k, v in mapping.items() if not isinstance(k, str) or not isinstance(v, str) or not k or not v}
    if bad:
        raise ValueError(f"mapping must map non-empty strings to non-empty strings, got {bad!r}")
    settings = settings or FuseSettings()
    settings = settings.replace(**options) if options else settings
    layers = target_modules(student)
    unknown = [n for n in mapping if n not in layers]
    if unknown:
        raise ValueError(
            f"student layers {unknown} in mapping are not Linear/Conv1d/Conv2d modules of the student; "
            f"its layers are {list(layers)}"
        )
    t_inputs = inputs if teacher_inputs is None else teacher_inputs
    acts = teacher_activations(teacher, t_inputs, list(mapping.values()), teacher_forward)
    codes: dict[str, str | LatentCode] = {s: TeacherCode(acts[t], t) for s, t in mapping.items()}
    # "keep": only the mapped layers; "sylvester": every layer, Sylvester with lam except the mapped ones.
    names: list[str] | Literal["all"] = list(mapping) if settings.unmapped == "keep" else "all"
    lams = {s: float(settings.teacher_lam) for s in mapping}  # inf: least squares, the MSE-optimal fit
    return sylvester_init_(
        student,
        inputs,
        labels,
        settings=SylvesterSettings(
            layers=names,
            lam=settings.lam,
            lams=lams,
            codes=codes,
            patches_per_image=settings.patches_per_image,
            seed=settings.seed,
            dtype=settings.dtype,
            gram_dtype=None,
            scale="solve",  # the mapped layers reproduce the teacher's activations, at the teacher's scale
        ),
        forward=forward,
        on_layer=on_layer,
    )


def _bias(layer: nn.Module, device: torch.device) -> Tensor:
    """A layer's bias in float64, zeros if it has none."""
    if layer.bias is None:
        return torch.zeros(layer.weight.shape[0], dtype=torch.float64, device=device)
    return layer.bias.detach().double()


def compose_linear(l1: nn.Linear, l2: nn.Linear) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``l2 ∘ l1`` (no nonlinearity in between): ``W2 W1`` and ``W2 b1 + b2``.

    Args:
        l1: The first layer, ``in → mid``.
        l2: The second layer, ``mid → out``.

    Returns:
        ``(W, b)`` of shapes ``(out, in)`` and ``(out,)`` (zeros where both biases are absent), in
        float64.

    Raises:
        ValueError: If ``l2.in_features != l1.out_features``.
    """
    if l2.in_features != l1.out_features:
        raise ValueError(f"cannot compose: l1 outputs {l1.out_features} features, l2 takes {l2.in_features}")
    w1, w2 = l1.weight.detach().double(), l2.weight.detach().double()
    b1, b2 = _bias(l1, w1.device), _bias(l2, w1.device)
    return w2 @ w1, w2 @ b1 + b2


def compose_conv(c1: nn.Conv1d | nn.Conv2d, c2: nn.Conv1d | nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ``c2 ∘ c1`` for two stride-1, dilation-1, ungrouped convolutions.

    PyTorch convolutions are cross-correlations, so composing them gives the *full convolution* of
    the kernels, summed over the middle channels:
    ``K[o, i] = Σ_m K2[o, m] ∗ K1[m, i]`` (kernel ``k1 + k2 − 1``), and ``b = b2 + Σ_m b1[m] ΣK2[o, m]``.
    The fused layer (padding ``p1 + p2``) equals the pair everywhere with ``padding=0``, and away from
    the border band of width ``p2`` with zero padding.

    Args:
        c1: The first convolution, ``C_in → C_mid``.
        c2: The second convolution, ``C_mid → C_out``, of the same dimensionality.

    Returns:
        ``(kernel, bias)`` of shapes ``(C_out, C_in, *(k1 + k2 − 1))`` and ``(C_out,)``, in float64.

    Raises:
        ValueError: If the convolutions are of different types, strided, dilated, grouped, or their
            channels do not chain.
    """
    if type(c1) is not type(c2) or not isinstance(c1, (nn.Conv1d, nn.Conv2d)):
        raise ValueError(
            f"compose_conv needs two Conv1d or two Conv2d, got {type(c1).__name__} and {type(c2).__name__}"
        )
    for tag, c in (("c1", c1), ("c2", c2)):
        if any(s != 1 for s in c.stride) or any(d != 1 for d in c.dilation) or c.groups != 1:
            raise ValueError(
                f"{tag} must have stride 1, dilation 1 and groups 1, got stride={c.stride}, "
                f"dilation={c.dilation}, groups={c.groups}"
            )
    if c2.in_channels != c1.out_channels:
        raise ValueError(f"cannot compose: c1 outputs {c1.out_channels} channels, c2 takes {c2.in_channels}")
    k1, k2 = c1.weight.detach().double(), c2.weight.detach().double()
    spatial = k1.ndim - 2
    conv = F.conv1d if spatial == 1 else F.conv2d
    # Batch = C_in, channels = C_mid; correlating with the flipped K2 is the full convolution.
    pad = [k - 1 for k in k2.shape[2:]]
    kernel = conv(k1.transpose(0, 1), k2.flip(list(range(2, k2.ndim))), padding=pad).transpose(0, 1)
    b1, b2 = _bias(c1, k1.device), _bias(c2, k1.device)
    bias = b2 + k2.sum(dim=tuple(range(2, k2.ndim))) @ b1
    return kernel.contiguous(), bias
