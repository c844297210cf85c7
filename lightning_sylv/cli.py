"""The ``lightning-sylv`` command: LightningCLI with the package's models, datamodules and callbacks.

Importing :mod:`lightning_sylv.models`, :mod:`lightning_sylv.data` and :mod:`lightning_sylv.callbacks`
registers their classes, so they can be named by their short class name::

    lightning-sylv fit --config configs/digits.yaml
    lightning-sylv fit --model ImageClassifier --data DigitsDataModule --trainer.callbacks+=SylvesterInit
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

import lightning_sylv.callbacks  # registers SylvesterInit
import lightning_sylv.data  # registers the datamodules
import lightning_sylv.models  # noqa: F401 - registers the LightningModules

__all__ = ["cli", "main"]


def cli(args: list[str] | None = None) -> LightningCLI:
    """Build and run the CLI (``args`` defaults to ``sys.argv[1:]``); return the ``LightningCLI`` object."""
    return LightningCLI(
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Train with data-driven (Sylvester) weight initialization."},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-sylv`` console script and ``python -m lightning_sylv``."""
    cli(args)


if __name__ == "__main__":  # pragma: no cover
    main()
