"""Networks (MLP, small CNN, CIFAR ResNets), random init schemes and the ImageClassifier module."""

from lightning_sylv.models.classifier import ImageClassifier
from lightning_sylv.models.cnn import SmallCNN
from lightning_sylv.models.factory import ARCHS, build_network
from lightning_sylv.models.init import INIT_SCHEMES, random_init_
from lightning_sylv.models.mlp import MLP
from lightning_sylv.models.resnet import (
    CIFARResNet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet_cifar,
)

__all__ = [
    "ARCHS",
    "CIFARResNet",
    "INIT_SCHEMES",
    "ImageClassifier",
    "MLP",
    "SmallCNN",
    "build_network",
    "random_init_",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet_cifar",
]
