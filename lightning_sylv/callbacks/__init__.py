"""Lightning callbacks: thin glue around the engine, one callback per module."""

from lightning_sylv.callbacks.fuse import FuseInit
from lightning_sylv.callbacks.lowrank import LowRankInit
from lightning_sylv.callbacks.sylvester import SylvesterInit

__all__ = ["FuseInit", "LowRankInit", "SylvesterInit"]
