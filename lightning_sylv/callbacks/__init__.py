"""Lightning callbacks: thin glue around the engine, one callback per module."""

from lightning_sylv.callbacks.sylvester import SylvesterInit

__all__ = ["SylvesterInit"]
