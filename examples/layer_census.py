"""Census of a model's layer problems: where a truncated (top-``k``) eigensolver could pay.

For every ``Linear``/``Conv`` layer the Sylvester initializer writes, ``k`` is the number of directions
its PCA code needs (outputs per group) and ``d`` its inputs per group; a layer costs about one ``d x d``
decomposition (fewer rows than inputs: ``n x n``). A truncated eigensolver (subspace iteration,
LOBPCG, block Lanczos) only beats the full one where ``k`` is a small share of ``d``. This prints, per
model, the smallest and median ``k/d``, how many layers have ``k/d <= 1/16``, and their share of the
summed ``d³`` (the decompositions' cost), from the models' structure alone (no data, no init)::

    zoo-venv/bin/python examples/layer_census.py --models resnet18 resnet50 vit_b_16

The zoo models come from ``examples/zoo.py`` (torchvision and timm: the ``zoo`` extra);
:func:`census` takes any ``nn.Module``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

from torch import nn

#: ``k/d`` at or below which a layer counts as one a truncated solver could pay on.
SMALL = 1 / 16


@dataclass(frozen=True)
class Census:
    """``k/d`` over a model's layers."""

    layers: int
    min_ratio: float
    median_ratio: float
    small_layers: int
    small_cost_share: float


def census(model: nn.Module) -> Census:
    """``k/d`` over every ``nn.Linear``/``nn.Conv{1,2,3}d`` of ``model`` with ``d >= 2``.

    Example:
        >>> from torch import nn
        >>> c = census(nn.Sequential(nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Linear(64, 2)))
        >>> c.layers, round(c.min_ratio, 4), c.small_layers
        (3, 0.0312, 1)
    """
    ratios, costs = [], []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            groups = getattr(m, "groups", 1)
            d = math.prod(m.weight.shape[1:])
            if d < 2:
                continue
            ratios.append(m.weight.shape[0] // groups / d)
            costs.append(groups * d**3)
    if not ratios:
        raise ValueError("the model has no Linear/Conv layer with two or more inputs")
    small = [c for r, c in zip(ratios, costs) if r <= SMALL]
    return Census(len(ratios), min(ratios), statistics.median(ratios), len(small), sum(small) / sum(costs))


def main(argv: list[str] | None = None) -> None:
    from zoo import MODELS, build  # torchvision and timm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = p.parse_args(argv)
    print("| model | layers | k/d min | k/d median | layers with k/d <= 1/16 | their share of Σ d³ |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        c = census(build(name))
        print(
            f"| {name} | {c.layers} | {c.min_ratio:.3f} | {c.median_ratio:.3f} | {c.small_layers} "
            f"| {c.small_cost_share:.1%} |"
        )


if __name__ == "__main__":
    main()
