"""A multilayer perceptron: Flatten, Linear+ReLU hidden layers, Linear head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected classifier on flattened inputs.

    ``features`` is ``Flatten`` followed by ``Linear(·, h) + ReLU`` per hidden width; ``head`` is
    the final ``Linear`` (the last module executed in ``forward``). PyTorch's default init.

    Args:
        in_features: Number of input features after flattening (e.g. 64 for 8x8 images).
        num_classes: Number of output logits.
        hidden: Width of each hidden layer, in order (empty: a linear classifier).

    Raises:
        ValueError: If ``in_features`` or ``num_classes`` is not a positive int, or ``hidden`` holds a
            value that is not a positive int.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(hidden, (str, bytes))
            or not isinstance(hidden, Sequence)
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)
        ):
            raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of a batch ``(N, ...)`` with ``in_features`` values per item."""
        return self.head(self.features(x))
