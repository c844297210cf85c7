"""scikit-learn's bundled handwritten digits (1797 8x8 grey images, 10 classes) as a datamodule.

Real data that ships with scikit-learn, so it works offline: the default dataset of the examples,
tests and ``configs/digits.yaml``.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_sylv._checks import is_int
from lightning_sylv.data.datasets import LabeledTensorDataset, few_shot_indices, stratified_split

__all__ = ["DigitsDataModule"]


def _is_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1


class DigitsDataModule(LightningDataModule):
    """Train/validation/test splits of ``sklearn.datasets.load_digits``.

    The 1797 images are split once, stratified by class and seeded, into training, validation
    (``val_fraction``) and test (``test_fraction``) sets; the validation set is never the test set.
    With ``train_per_class`` only that many training images per class are kept (few-shot; seeded),
    the validation and test sets stay whole. Pixels (0..16) are standardized with the mean and
    standard deviation (one scalar each) of the training images actually used.

    Args:
        batch_size: Images per batch in every dataloader.
        train_per_class: Keep only this many training images per class (``None``: all of them,
            about 108 per class with the default fractions).
        val_fraction: Fraction of the 1797 images in the validation set, in ``(0, 1)``.
        test_fraction: Fraction of the 1797 images in the test set, in ``(0, 1)``; together with
            ``val_fraction`` below 1.
        seed: Seed of the split, the few-shot draw and the training shuffle.
        num_workers: ``DataLoader`` worker processes (0: load in the main process).
        flatten: Give ``(64,)`` vectors instead of ``(1, 8, 8)`` images.

    Attributes:
        num_classes: 10.
        input_shape: ``(1, 8, 8)``, or ``(64,)`` with ``flatten``.
        train_indices: After ``setup``, indices (into the 1797 images) of the training set; likewise
            ``val_indices`` and ``test_indices``.
        mean: After ``setup``, the pixel mean used for standardization; likewise ``std``.

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value);
            in ``setup`` if ``train_per_class`` exceeds the training images of a class.
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 64,
        train_per_class: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if train_per_class is not None and (not is_int(train_per_class) or train_per_class < 1):
            raise ValueError(f"train_per_class must be a positive int or None, got {train_per_class!r}")
        if not _is_fraction(val_fraction):
            raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
        if not _is_fraction(test_fraction):
            raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction!r} + {test_fraction!r}")
        if not is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not is_int(num_workers) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        if not isinstance(flatten, bool):
            raise ValueError(f"flatten must be a bool, got {flatten!r}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.train_per_class = train_per_class
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.num_workers = num_workers
        self.flatten = flatten
        self.input_shape: tuple[int, ...] = (64,) if flatten else (1, 8, 8)
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.test_indices: torch.Tensor | None = None
        self.train_dataset: LabeledTensorDataset | None = None
        self.val_dataset: LabeledTensorDataset | None = None
        self.test_dataset: LabeledTensorDataset | None = None
        self.mean = 0.0
        self.std = 1.0

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and build the three datasets (once; later calls do nothing).

        Args:
            stage: Lightning's stage name; every split is built whatever the stage.
        """
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits  # scikit-learn is slow to import: only when needed

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
        targets = torch.as_tensor(bunch.target, dtype=torch.long)
        train_fraction = 1.0 - self.val_fraction - self.test_fraction
        train_idx, val_idx, test_idx = stratified_split(
            targets, [train_fraction, self.val_fraction, self.test_fraction], self.seed
        )
        if self.train_per_class is not None:
            keep = few_shot_indices(targets[train_idx], self.train_per_class, self.seed + 1, self.num_classes)
            train_idx = train_idx[keep]
        train_images = images[train_idx]
        self.mean = float(train_images.mean())
        self.std = float(train_images.std()) or 1.0
        shape = (-1, *self.input_shape)

        def make(idx: torch.Tensor) -> LabeledTensorDataset:
            x = ((images[idx] - self.mean) / self.std).reshape(shape).contiguous()
            return LabeledTensorDataset(x, targets[idx])

        self.train_indices, self.val_indices, self.test_indices = train_idx, val_idx, test_idx
        self.train_dataset, self.val_dataset, self.test_dataset = make(train_idx), make(val_idx), make(test_idx)

    def _loader(self, dataset: LabeledTensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are requested")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled with a generator seeded by ``seed``."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in a fixed order."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in a fixed order."""
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set's ``(x, y)`` batches, in a fixed order."""
        return self._loader(self.test_dataset, shuffle=False)
