"""Datamodules and datasets: scikit-learn digits (offline default) and CIFAR-10 (canonical layout)."""

from lightning_sylv.data.cifar10 import CIFAR10DataModule
from lightning_sylv.data.datasets import LabeledTensorDataset, few_shot_indices, stratified_split
from lightning_sylv.data.digits import DigitsDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "LabeledTensorDataset",
    "few_shot_indices",
    "stratified_split",
]
