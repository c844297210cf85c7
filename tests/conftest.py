"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    # Not imported at load time: Lightning turns off propagation of its logger when it is imported
    # before pytest's log capture is installed, and caplog would then see nothing.
    from lightning.pytorch import Callback, Trainer


def build_trainer(root: Path | None, callbacks: Sequence[Callback] | None = None, **overrides: Any) -> Trainer:
    """A small, quiet ``Trainer``: one epoch of 2 training and 2 validation batches, no sanity check,
    no checkpoints, a ``CSVLogger`` under ``root/csv`` (none without ``root``). ``overrides`` win."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    opts: dict[str, Any] = dict(
        default_root_dir=root,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        limit_test_batches=2,
        logger=CSVLogger(root, name="csv") if root is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    opts.update(overrides)
    return Trainer(callbacks=list(callbacks or []), **opts)


@pytest.fixture(scope="session")
def make_trainer() -> Callable[..., Trainer]:
    """:func:`build_trainer`: ``make_trainer(root, callbacks, **overrides)`` (session-scoped, so module
    fixtures can use it too)."""
    return build_trainer
