"""Looking inside a network: penultimate features, their t-SNE map, and the figure of that map.

What the Sylvester initialization does to a classifier shows in the features its head receives: with
a random initialization the classes are mixed, after the data-driven initialization they start to
form clusters (Das, Bhalgat & Porikli, 2021, Fig. 2). This module captures those features on a
held-out sample (:func:`take_sample`, :func:`capture_features`), embeds them in 2-D with
scikit-learn's t-SNE (:func:`tsne_2d`), scores how well the classes separate (:func:`cluster_score`)
and draws before/after scatter plots side by side (:func:`tsne_figure`, rendered to pixels by
:func:`figure_to_array` with matplotlib's Agg canvas; pyplot and its global figure registry are not
used).

This module imports no Lightning: every function takes an ``nn.Module`` and batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_sylv._batch import batch_len, default_forward, map_batch, slice_batch
from lightning_sylv.modules import model_device, target_modules
from lightning_sylv.passes import hooked_pass
from lightning_sylv.subset import split_batch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FeatureCapture",
    "HeldOutSample",
    "TsnePanel",
    "capture_features",
    "cluster_score",
    "figure_to_array",
    "safe_perplexity",
    "take_sample",
    "thumbnails",
    "tsne_2d",
    "tsne_figure",
]


@dataclass
class HeldOutSample:
    """The first samples of a (validation) dataloader, kept to run the model on them twice.

    Attributes:
        batches: ``(inputs, labels)`` mini-batches as loaded (``labels`` ``None`` when unlabelled).
        size: Number of samples.
        labels: All labels, ``(size,)`` ``LongTensor`` on the CPU, or ``None`` if any batch has none.
        images: Thumbnails ``(size, C, H, W)`` in ``[0, 1]`` for image inputs with 1 or 3 channels
            (see :func:`thumbnails`), else ``None``.
    """

    batches: list[tuple[Any, Tensor | None]]
    size: int
    labels: Tensor | None
    images: Tensor | None


@dataclass
class FeatureCapture:
    """Input of one layer on a :class:`HeldOutSample`.

    Attributes:
        layer: Qualified name of the layer whose input was captured.
        features: ``(n, d)`` float32 CPU tensor, one flattened row per sample.
        labels: ``(n,)`` labels or ``None``.
        accuracy: Top-1 accuracy of the model's output on the sample (when the output is
            ``(n, classes)`` logits and labels exist), else ``None``.
    """

    layer: str
    features: Tensor
    labels: Tensor | None
    accuracy: float | None


@dataclass
class TsnePanel:
    """One scatter plot of a t-SNE map.

    Attributes:
        points: ``(n, 2)`` coordinates.
        labels: ``(n,)`` integer classes (colours), or ``None`` for one colour.
        title: Panel title.
    """

    points: np.ndarray
    labels: np.ndarray | None
    title: str


def thumbnails(images: Tensor, max_side: int = 64) -> Tensor | None:
    """Image thumbnails for TensorBoard's projector sprite, each min-max scaled to ``[0, 1]``.

    Args:
        images: ``(N, C, H, W)`` with ``C`` 1 or 3 (anything else gives ``None``).
        max_side: Larger images are downscaled (antialiased) so that their longer side is this many
            pixels; the projector's sprite must stay below 8192 x 8192 pixels.

    Returns:
        ``(N, C, H', W')`` float32 CPU tensor, or ``None`` when ``images`` are not such images.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        return None
    x = images.detach().float().cpu()
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    side = max(x.shape[2], x.shape[3])
    if side > max_side:
        size = (max(1, round(x.shape[2] * max_side / side)), max(1, round(x.shape[3] * max_side / side)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((x - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)).clamp_(0, 1)


def take_sample(
    batches: Iterable[Any],
    max_samples: int,
    split: Callable[[Any], tuple[Any, Tensor | None]] | None = None,
) -> HeldOutSample:
    """Keep the first ``max_samples`` samples of ``batches`` (a validation dataloader, say).

    Iterating a ``DataLoader`` draws its base seed from torch's global generator; that draw is
    undone (``torch.random.fork_rng``), so taking a sample does not change what training sees.

    Args:
        batches: Iterable of batches in a format :func:`lightning_sylv.subset.split_batch` reads.
        max_samples: Stop once this many samples are collected (``>= 1``).
        split: ``split(batch) -> (inputs, labels)``; defaults to
            :func:`~lightning_sylv.subset.split_batch`.

    Returns:
        A :class:`HeldOutSample` (``size`` 0 when ``batches`` is empty).

    Raises:
        ValueError: If ``max_samples < 1``.
        TypeError: For batches :func:`~lightning_sylv.subset.split_batch` does not understand.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples!r}")
    kept: list[tuple[Any, Tensor | None]] = []
    size = 0
    unpack = split or split_batch
    with torch.random.fork_rng(devices=[]):
        for batch in batches:
            x, y = unpack(batch)
            k = min(batch_len(x), max_samples - size)
            if k <= 0:
                break
            kept.append((slice_batch(x, 0, k), None if y is None else y[:k]))
            size += k
            if size >= max_samples:
                break
    labels = None
    if kept and all(y is not None for _, y in kept):
        labels = torch.cat([y.detach().long().cpu().reshape(-1) for _, y in kept])  # type: ignore[union-attr]
    images = None
    if kept and all(isinstance(x, Tensor) for x, _ in kept):
        images = thumbnails(torch.cat([x.detach().cpu() for x, _ in kept]))
    return HeldOutSample(batches=kept, size=size, labels=labels, images=images)


def capture_features(
    model: nn.Module,
    batches: Iterable[Any],
    layer: str | None = None,
    *,
    device: torch.device | str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    to_device: Callable[[Any, torch.device], Any] | None = None,
) -> FeatureCapture:
    """Capture the input of ``layer`` (the penultimate features) over ``batches``.

    A forward pre-hook records the layer's input at its first call in each forward pass, one
    :func:`~lightning_sylv.passes.hooked_pass` per batch (eval mode, no gradients, the train/eval
    mode put back afterwards).

    Args:
        model: The network.
        batches: Iterable of batches as :func:`lightning_sylv.subset.split_batch` reads them, e.g.
            :attr:`HeldOutSample.batches`.
        layer: Qualified name of the module whose input is captured; ``None``: the last
            ``Linear``/``Conv1d``/``Conv2d`` the forward pass calls (the classifier head).
        device: Device the inputs are moved to (default: the device of the model's first parameter).
        forward: ``forward(model, inputs)``; defaults to ``model(inputs)``.
        to_device: ``to_device(inputs, device)``; defaults to ``Tensor.to``.

    Returns:
        A :class:`FeatureCapture` (features flattened to one row per sample, float32, CPU).

    Raises:
        ValueError: If ``layer`` is not a module of ``model``, the forward pass never calls it (or
            calls no supported layer when ``layer`` is ``None``), or ``batches`` is empty.
    """
    device = model_device(model) if device is None else torch.device(device)
    run = forward or default_forward
    move = to_device or (lambda x, d: map_batch(lambda t: t.to(d), x))
    if layer is not None:
        try:
            targets = {model.get_submodule(layer): layer}
        except AttributeError as err:
            raise ValueError(f"layer {layer!r} is not a module of the model") from err
    else:
        targets = {m: n for n, m in target_modules(model).items()}
    # Per forward pass: the input of the target called first-most-recently (for ``layer=None`` the last
    # supported layer to be called for the first time is the head, as in the engine's execution order).
    seen: set[str] = set()
    current: list[tuple[str, Tensor]] = []

    def make(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in seen or not args or not isinstance(args[0], Tensor):
                return
            seen.add(name)
            current[:] = [(name, args[0].detach())]

        return hook

    pre = {m: make(n) for m, n in targets.items()}
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    captured: set[str] = set()
    correct, counted, scored = 0, 0, True
    for batch in batches:
        x, y = split_batch(batch)
        seen.clear()
        current.clear()
        out = hooked_pass(model, move(x, device), run, pre=pre)
        if not current:
            continue
        name, inp = current[0]
        captured.add(name)
        feats.append(inp.float().reshape(inp.shape[0], -1).cpu())
        if y is None:
            scored = False
            continue
        labels.append(y.detach().long().cpu().reshape(-1))
        if isinstance(out, Tensor) and out.ndim == 2 and out.shape[0] == labels[-1].shape[0]:
            correct += int((out.argmax(1).cpu() == labels[-1]).sum())
            counted += labels[-1].shape[0]
        else:
            scored = False
    if not feats:
        what = f"layer {layer!r}" if layer is not None else "any Linear/Conv1d/Conv2d layer"
        raise ValueError(f"no features captured: the batches are empty or the forward pass never calls {what}")
    if len(captured) > 1 or len({f.shape[1] for f in feats}) > 1:
        raise ValueError(f"the captured layer changed between batches ({sorted(captured)}); pass layer= explicitly")
    label_t = torch.cat(labels) if len(labels) == len(feats) else None
    accuracy = correct / counted if scored and counted else None
    return FeatureCapture(layer=captured.pop(), features=torch.cat(feats), labels=label_t, accuracy=accuracy)


def _standardized(features: Tensor | np.ndarray) -> np.ndarray | None:
    """Float64 copy, non-finite values set to 0, centred and divided by the overall standard deviation;
    ``None`` when all rows are (numerically) identical."""
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    x = np.nan_to_num(x.reshape(x.shape[0], -1), nan=0.0, posinf=0.0, neginf=0.0)
    x = x - x.mean(0, keepdims=True)
    scale = float(np.sqrt((x**2).mean())) if x.size else 0.0
    if not scale > 1e-12 * (1.0 + float(np.abs(x).max(initial=0.0))):
        return None
    return x / scale


def safe_perplexity(n_samples: int, perplexity: float = 30.0) -> float:
    """A t-SNE perplexity valid for ``n_samples`` points: at most ``(n - 1) / 3``, at least 1.

    scikit-learn requires ``perplexity < n_samples``; ``(n - 1) / 3`` keeps about three times the
    perplexity in neighbours, the usual rule for the nearest-neighbour approximation.
    """
    return float(max(1.0, min(float(perplexity), (n_samples - 1) / 3.0)))


def tsne_2d(
    features: Tensor | np.ndarray,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    max_iter: int = 1000,
    threads: int = 1,
) -> np.ndarray:
    """2-D t-SNE map of ``features`` (scikit-learn's ``TSNE``, Barnes-Hut, PCA initialization).

    Features are standardized first; NaN/Inf become 0. Fewer than 3 points, or points that are all
    identical, give zeros (there is nothing to map, and scikit-learn does not handle it). The
    perplexity is capped by :func:`safe_perplexity`.

    Args:
        features: ``(n, d)`` features.
        perplexity: Target perplexity (capped for small ``n``).
        seed: ``random_state`` of the embedding (the map is reproducible).
        max_iter: Optimization iterations (scikit-learn's minimum is 250).
        threads: CPU threads for scikit-learn's native code (OpenMP/BLAS, temporarily limited with
            ``threadpoolctl``): on a few hundred points more threads mostly add contention.

    Returns:
        ``(n, 2)`` float64 coordinates.
    """
    from sklearn.manifold import TSNE  # heavy imports: only when a map is made
    from threadpoolctl import threadpool_limits

    n = int(features.shape[0])
    x = _standardized(features) if n >= 3 else None
    if x is None:
        return np.zeros((n, 2))
    tsne = TSNE(
        n_components=2,
        perplexity=safe_perplexity(n, perplexity),
        init="pca" if x.shape[1] >= 2 else "random",
        learning_rate="auto",
        max_iter=max(250, int(max_iter)),
        random_state=seed,
    )
    with threadpool_limits(limits=threads):
        return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def cluster_score(features: Tensor | np.ndarray, labels: Tensor | np.ndarray | None) -> float | None:
    """Silhouette score of the classes in feature space (scikit-learn's ``silhouette_score``).

    In ``[-1, 1]``: near 0 or below when the classes overlap (random initialization), higher when
    samples sit closer to their own class than to the nearest other class.

    Returns:
        The score, or ``None`` without labels, with fewer than 2 classes or fewer samples than
        classes + 1, or for identical features.
    """
    if labels is None:
        return None
    from sklearn.metrics import silhouette_score

    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    k = len(np.unique(y))
    x = _standardized(features)
    if x is None or not 2 <= k <= x.shape[0] - 1:
        return None
    return float(silhouette_score(x, y))


def _colours(k: int) -> list[Any]:
    from matplotlib import colormaps

    if k <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(k)]
    if k <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(k)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(1, k - 1)) for i in range(k)]


def tsne_figure(
    panels: Sequence[TsnePanel],
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float = 5.0,
    dpi: int = 100,
) -> Figure:
    """Scatter plots of t-SNE maps side by side, coloured by class, with one shared legend.

    Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot, no global figure
    state, no display needed).

    Args:
        panels: The maps, left to right.
        class_names: Legend names of classes ``0, 1, ...`` (default: the class numbers).
        title: Figure title.
        panel_size: Width and height of one panel in inches.
        dpi: Resolution.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = sorted({int(c) for p in panels if p.labels is not None for c in np.asarray(p.labels).reshape(-1)})
    legend = 0 < len(classes) <= 20
    fig = Figure(figsize=(panel_size * len(panels) + (1.2 if legend else 0.2), panel_size + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = dict(zip(classes, _colours(len(classes))))
    marker = max(4.0, min(18.0, 4000.0 / max(1, max(len(p.points) for p in panels))))

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c)

    for ax, panel in zip(axes, panels):
        pts = np.asarray(panel.points, dtype=np.float64).reshape(-1, 2)
        if panel.labels is None:
            ax.scatter(pts[:, 0], pts[:, 1], s=marker, color="tab:blue", alpha=0.8, linewidths=0)
        else:
            lab = np.asarray(panel.labels).reshape(-1)
            for c in classes:
                sel = lab == c
                ax.scatter(pts[sel, 0], pts[sel, 1], s=marker, color=colours[c], alpha=0.8, linewidths=0, label=name(c))
        ax.set_title(panel.title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if legend:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="center right", title="class", fontsize=8, markerscale=2.0, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, (1 - 1.2 / fig.get_figwidth()) if legend else 1, 1))
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure with the Agg canvas to an ``(H, W, 3)`` ``uint8`` RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
