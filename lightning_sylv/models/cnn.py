"""A small convolutional network with BatchNorm, for 8x8 digits as well as 32x32 CIFAR images."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Three conv3x3-BatchNorm-ReLU stages (2x2 max-pooling after the first two), global average
    pooling and a ``Linear`` head.

    Widths are ``width``, ``2 * width``, ``4 * width``; the spatial size shrinks by 4 overall, so
    any input of at least 4x4 works (8x8 -> 2x2, 32x32 -> 8x8 before pooling). ``head`` is the last
    module executed in ``forward``. PyTorch's default init.

    Args:
        in_channels: Channels of the input images (1 for digits, 3 for CIFAR).
        num_classes: Number of output logits.
        width: Channels of the first stage.

    Raises:
        ValueError: If an argument is not a positive int.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.features = nn.Sequential(
            _stage(in_channels, width, pool=True),
            _stage(width, 2 * width, pool=True),
            _stage(2 * width, 4 * width, pool=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_channels, H, W)``."""
        return self.head(self.features(x))
