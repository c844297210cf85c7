"""``python -m lightning_sylv`` runs the ``lightning-sylv`` CLI."""

from lightning_sylv.cli import main

main()
