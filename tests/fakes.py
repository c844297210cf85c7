"""Helpers shared by test modules (importable as ``fakes`` from any test: ``tests/`` is on ``sys.path``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from lightning_sylv.data import cifar10 as cifar

#: Images per class and per batch file of the fake CIFAR-10: 5 x 30 training images, 30 test images.
PER_CLASS = 3
#: The columns of ``examples/results/runs.csv`` (``examples/reproduce.py`` ``FIELDS``; a test checks they agree).
RUN_FIELDS = (
    "experiment", "setup", "initializer", "shots", "seed", "epochs", "samples_per_class", "lam", "latent",
    "patches_per_image", "initial_acc", "final_acc", "init_time_s", "forward_time_s", "wall_s", "curve", "machine",
    "date",
)  # fmt: skip


def write_fake_cifar10(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny CIFAR-10 in the canonical ``cifar-10-batches-py`` layout under ``root``; returns what each
    batch file holds ``{file: (data, labels)}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        labels = [c for c in range(10) for _ in range(PER_CLASS)]
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)
        written[name] = (data, labels)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in cifar.CIFAR10_CLASSES]}, f)
    return written
