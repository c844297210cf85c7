"""The image classification LightningModule used by the CLI, the examples and the tests."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_sylv._checks import is_int
from lightning_sylv.models.factory import ARCHS, build_network
from lightning_sylv.models.init import INIT_SCHEMES, random_init_

__all__ = ["ImageClassifier"]

OPTIMIZERS = ("sgd", "adam")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(is_int(v) and v > 0 for v in value)


class ImageClassifier(LightningModule):
    """A classifier (``self.net``, built by :func:`build_network`) trained with cross entropy.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (on the progress bar),
    ``test/loss`` and ``test/acc`` per epoch; accuracies are micro-averaged top-1
    (``MulticlassAccuracy``). Batches are ``(x, y)`` tuples.

    Args:
        arch: Network architecture, one of ``"mlp"``, ``"cnn"``, ``"resnet20"``, ``"resnet32"``,
            ``"resnet56"``.
        input_shape: Shape of one input, e.g. ``[1, 8, 8]`` (digits) or ``[3, 32, 32]`` (CIFAR).
        num_classes: Number of classes (at least 2).
        hidden: Hidden layer widths of the ``"mlp"`` (ignored by other architectures).
        width: First-stage channels of the ``"cnn"`` (ignored by other architectures).
        init: Random init applied at construction, one of ``"default"`` (PyTorch's), ``"he_uniform"``,
            ``"he_normal"``, ``"xavier_uniform"``, ``"xavier_normal"`` (see
            :func:`~lightning_sylv.models.init.random_init_`).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (``momentum`` unused).
        lr: Learning rate (> 0).
        momentum: SGD momentum, in ``[0, 1)``.
        weight_decay: L2 weight decay (>= 0), applied to every parameter.
        milestones: Epochs at which the learning rate is multiplied by ``gamma`` (``MultiStepLR``);
            ``None`` or empty: a constant learning rate.
        gamma: Learning-rate factor at each milestone, in ``(0, 1]``.

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value).
    """

    def __init__(
        self,
        arch: str = "mlp",
        input_shape: list[int] = [1, 8, 8],  # noqa: B006 - never mutated; a list reads well in the CLI
        num_classes: int = 10,
        hidden: list[int] = [128, 64],  # noqa: B006 - never mutated
        width: int = 32,
        init: str = "default",
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(arch, str) or arch not in ARCHS:
            raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
        if not _is_int_list(input_shape) or not input_shape:
            raise ValueError(f"input_shape must be a non-empty list of positive ints, got {input_shape!r}")
        if arch != "mlp" and len(input_shape) != 3:
            raise ValueError(f"input_shape must be [channels, height, width] for arch {arch!r}, got {input_shape!r}")
        if not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not _is_int_list(hidden):
            raise ValueError(f"hidden must be a list of positive ints, got {hidden!r}")
        if not is_int(width) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if not isinstance(init, str) or init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {list(INIT_SCHEMES)}, got {init!r}")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if not _is_number(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if not _is_number(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if milestones is not None and (not _is_int_list(milestones) or any(a >= b for a, b in pairwise(milestones))):
            raise ValueError(
                f"milestones must be None or a strictly increasing list of positive ints, got {milestones!r}"
            )
        if not _is_number(gamma) or not 0 < gamma <= 1:
            raise ValueError(f"gamma must be a number in (0, 1], got {gamma!r}")
        self.save_hyperparameters()
        arch_kwargs: dict[str, Any] = {"mlp": {"hidden": list(hidden)}, "cnn": {"width": width}}.get(arch, {})
        self.net = build_network(arch, list(input_shape), num_classes, **arch_kwargs)
        random_init_(self.net, init)
        self.example_input_array = torch.zeros(2, *input_shape)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of a batch of inputs ``(N, *input_shape)``."""
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=y.shape[0])
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy loss of a training batch; logs ``train/loss`` and ``train/acc``.

        Args:
            batch: ``(inputs, integer labels)``.
            batch_idx: Index of the batch in the epoch.
        """
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Logs ``val/loss`` and ``val/acc`` of a validation batch.

        Args:
            batch: ``(inputs, integer labels)``.
            batch_idx: Index of the batch.
        """
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Logs ``test/loss`` and ``test/acc`` of a test batch.

        Args:
            batch: ``(inputs, integer labels)``.
            batch_idx: Index of the batch.
        """
        return self._step(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logits of a batch given as ``(inputs, labels)`` or as bare inputs.

        Args:
            batch: ``(inputs, labels)`` (labels ignored) or an input tensor.
            batch_idx: Index of the batch.
        """
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def configure_optimizers(self) -> Any:
        """SGD (with momentum) or Adam, with ``MultiStepLR`` when ``milestones`` are given."""
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
