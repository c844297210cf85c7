"""CIFAR ResNets (He et al., 2016, section 4.2): 6n+2 layers, 16/32/64 channels.

Shortcuts use option B: identity when shapes match, otherwise a strided 1x1 convolution and
BatchNorm. PyTorch's default init (no custom initialization).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "CIFARResNet",
    "DEPTHS",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet_cifar",
]

DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with a residual connection, then ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """Stem conv3x3(16)-BN-ReLU, three stages of ``n`` basic blocks (16, 32, 64 channels; stride 1,
    2, 2), global average pooling and a ``Linear`` head (the last module executed in ``forward``).

    Args:
        blocks_per_stage: ``n``; the depth is ``6n + 2``.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Raises:
        ValueError: If an argument is not a positive int.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (
            ("blocks_per_stage", blocks_per_stage),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages: list[nn.Module] = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_channels, H, W)``."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.pool(x))


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """The CIFAR ResNet of the given depth.

    Args:
        depth: One of 20, 32, 44, 56, 110 (``6n + 2``).
        num_classes: Number of output logits.
        in_channels: Channels of the input images.

    Returns:
        A :class:`CIFARResNet` with ``(depth - 2) // 6`` blocks per stage.

    Raises:
        ValueError: If ``depth`` is not one of :data:`DEPTHS`.
    """
    if isinstance(depth, bool) or depth not in DEPTHS:
        raise ValueError(f"depth must be one of {list(DEPTHS)}, got {depth!r}")
    return CIFARResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """ResNet-20 (about 0.27M parameters).

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    return resnet_cifar(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """ResNet-32.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    return resnet_cifar(32, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """ResNet-44.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    return resnet_cifar(44, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """ResNet-56.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    return resnet_cifar(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CIFARResNet:
    """ResNet-110.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
    """
    return resnet_cifar(110, num_classes, in_channels)
