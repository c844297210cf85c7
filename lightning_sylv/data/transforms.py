"""Per-image tensor transforms, written in torch (no torchvision).

Each transform is a small picklable class taking and returning one ``(C, H, W)`` tensor, so it can
run inside ``DataLoader`` workers. Random transforms draw from torch's default generator unless
one is given: ``DataLoader`` seeds that generator differently in every worker (``base_seed +
worker_id``), so workers do not repeat each other's augmentations, and ``seed_everything`` makes
the main-process draws reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Compose", "Normalize", "RandomCropFlip"]


class Compose:
    """Apply transforms one after the other.

    Args:
        transforms: Callables ``Tensor -> Tensor``, applied in order.

    Raises:
        ValueError: If an element is not callable.
    """

    def __init__(self, transforms: Sequence[Callable[[Tensor], Tensor]]) -> None:
        for t in transforms:
            if not callable(t):
                raise ValueError(f"transforms must be callables, got {t!r}")
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        """Apply every transform to ``x`` in order."""
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize:
    """Scale an image to ``[0, 1]`` (``uint8`` inputs are divided by 255) and standardize per channel.

    Args:
        mean: Per-channel mean of the ``[0, 1]``-scaled data.
        std: Per-channel standard deviation of the ``[0, 1]``-scaled data (all ``> 0``).

    Raises:
        ValueError: If ``mean`` and ``std`` differ in length or a ``std`` entry is not positive.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std must be non-empty and of the same length, got {mean!r} and {std!r}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        """The standardized ``float32`` image."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCropFlip:
    """Random crop of the original size after zero padding, then a random horizontal flip.

    The standard CIFAR augmentation (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``).
    Apply it before :class:`Normalize` to pad with black pixels, as torchvision pipelines do.

    Args:
        padding: Zero padding added on each side before cropping (a non-negative int).
        flip: Flip horizontally with probability 1/2.
        generator: Generator for the random draws (default: torch's default generator, which
            ``DataLoader`` seeds per worker).

    Raises:
        ValueError: If ``padding`` is not a non-negative int.
    """

    def __init__(self, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        self.flip = flip
        self.generator = generator

    def __call__(self, x: Tensor) -> Tensor:
        """A randomly shifted (and possibly flipped) copy of the ``(C, H, W)`` image ``x``."""
        p = self.padding
        h, w = x.shape[-2:]
        if p:
            dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=self.generator).tolist()
            x = F.pad(x, (p, p, p, p))[..., dy : dy + h, dx : dx + w]
        if self.flip and bool(torch.rand((), generator=self.generator) < 0.5):
            x = x.flip(-1)
        return x.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
