"""Model surgery: replace chosen ``nn.Linear``/``nn.Conv2d`` layers of a model by their low-rank form.

This module imports no Lightning.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Sequence

from torch import nn

from lightning_sylv.lowrank.layers import (
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    full_rank_of,
    resolve_rank,
)

__all__ = ["to_low_rank"]


def _eligible(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d) and getattr(module, "groups", 1) == 1


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def to_low_rank(
    model: nn.Module,
    ranks: dict[str, int | float] | float,
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    keep_full: bool = True,
) -> dict[str, LowRankLayer]:
    """Replace layers of ``model`` in place by their low-rank form, spectrally initialized.

    Each converted ``nn.Linear``/``nn.Conv2d`` becomes a :class:`LowRankLinear`/:class:`LowRankConv2d`
    under the same name, with the truncated-SVD factors of its current weight (so at full rank it
    computes the same function), the same bias, device, dtype and ``requires_grad``. Layers that are
    already low-rank, and the sublayers inside them, are left alone, so calling this twice is
    harmless. Optimizers built before the call still hold the old parameters: convert first.

    Args:
        model: The model, modified in place.
        ranks: Either ``{qualified layer name: rank}`` (int, or fraction of that layer's full rank
            ``min(out, in)``), converting exactly those layers; or one float fraction in ``(0, 1]``
            applied to every ``nn.Linear``/ungrouped ``nn.Conv2d`` selected by ``layers``/``exclude``.
        layers: With a float ``ranks``: ``fnmatch`` patterns of the layer names to convert
            (``None``: all eligible layers).
        exclude: With a float ``ranks``: patterns of layer names to keep full-rank (e.g. the stem and
            the classifier head).
        keep_full: Store each original weight and bias in the new layer's ``full_weight``/``full_bias``
            buffers for the function-aware initializers.

    Returns:
        ``{name: new layer}`` for the layers converted by this call.

    Raises:
        ValueError: If ``ranks`` is neither a dict nor a fraction in ``(0, 1]``; a named layer does
            not exist, is not an ``nn.Linear``/ungrouped ``nn.Conv2d`` (or a low-rank layer of that
            rank), or its rank is out of range; or a float selects no layer.
    """
    modules = dict(model.named_modules())
    low_rank_names = [n for n, m in modules.items() if isinstance(m, LowRankLayer)]

    def in_low_rank(name: str) -> bool:
        return any(name.startswith(p + ".") for p in low_rank_names)

    plan: dict[str, int | float] = {}
    if isinstance(ranks, dict):
        if layers is not None or exclude:
            raise ValueError("layers and exclude only apply to a float ranks; with a dict, name the layers in it")
        for name, rank in ranks.items():
            if not isinstance(name, str) or name not in modules:
                raise ValueError(f"ranks names layer {name!r}, which is not a submodule of the model")
            m = modules[name]
            if isinstance(m, LowRankLayer):
                want = resolve_rank(rank, m.full_rank, f"ranks[{name!r}]")
                if want != m.rank:
                    raise ValueError(
                        f"layer {name!r} is already low-rank with rank {m.rank}, but ranks asks for {want}"
                    )
                continue
            if in_low_rank(name):
                raise ValueError(
                    f"ranks names layer {name!r}, a factor inside a low-rank layer; name the low-rank layer"
                )
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ValueError(
                    f"layer {name!r} is a grouped convolution (groups={m.groups}); only ungrouped ones can be converted"
                )
            if not _eligible(m):
                raise ValueError(
                    f"ranks names layer {name!r} of type {type(m).__name__}; only nn.Linear and ungrouped "
                    "nn.Conv2d layers can be converted"
                )
            resolve_rank(rank, full_rank_of(m), f"ranks[{name!r}]")  # type: ignore[arg-type]
            plan[name] = rank
    elif isinstance(ranks, float) and not isinstance(ranks, bool):
        if not (math.isfinite(ranks) and 0 < ranks <= 1):
            raise ValueError(f"ranks must be a dict of layer ranks or a fraction in (0, 1], got {ranks!r}")
        if isinstance(layers, str) or isinstance(exclude, str):
            raise ValueError(f"layers and exclude must be lists of name patterns, got {layers!r} and {exclude!r}")
        candidates = [n for n, m in modules.items() if _eligible(m) and n and not in_low_rank(n)]
        chosen = [n for n in candidates if (layers is None or _matches(n, layers)) and not _matches(n, exclude)]
        if not chosen and not low_rank_names:
            raise ValueError(
                f"ranks={ranks!r} with layers={layers!r} and exclude={list(exclude)!r} selects no nn.Linear/"
                f"nn.Conv2d layer; eligible layers: {candidates}"
            )
        plan = {n: ranks for n in chosen}
    else:
        raise ValueError(f"ranks must be a dict of layer ranks or a fraction in (0, 1], got {ranks!r}")
    converted: dict[str, LowRankLayer] = {}
    for name, rank in plan.items():
        m = modules[name]
        new: LowRankLayer
        if isinstance(m, nn.Linear):
            new = LowRankLinear.from_dense(m, rank, keep_full)
        else:
            new = LowRankConv2d.from_dense(m, rank, keep_full)  # type: ignore[arg-type]
        shape = new.weight_shape
        if new.rank * (shape[0] + math.prod(shape[1:])) >= math.prod(shape):
            warnings.warn(
                f"layer {name!r}: rank {new.rank} does not reduce its parameter count "
                f"({new.rank} x ({shape[0]} + {math.prod(shape[1:])}) >= {math.prod(shape)})",
                stacklevel=2,
            )
        new.train(m.training)
        _set_submodule(model, name, new)
        converted[name] = new
    return converted
