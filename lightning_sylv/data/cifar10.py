"""CIFAR-10 from the canonical ``cifar-10-batches-py`` folder, as a datamodule.

The file helpers (:func:`cifar10_present`, :func:`download_cifar10`, :func:`extract_tar_safely`,
:func:`read_cifar10`) work on any folder in the layout of the official python download::

    DATA_DIR/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}

each a pickled dict with ``b"data"`` (``uint8``, ``N x 3072``, channel-major 32x32 images) and
``b"labels"``. The files are Python pickles: only read copies from a source you trust.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_sylv._checks import is_int
from lightning_sylv.data.datasets import LabeledTensorDataset, few_shot_indices, stratified_split
from lightning_sylv.data.transforms import Compose, Normalize, RandomCropFlip

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "cifar10_present",
    "download_cifar10",
    "extract_tar_safely",
    "read_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and standard deviation of the 50,000 training images scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _require_files(data_dir: str | os.PathLike[str], names: tuple[str, ...]) -> None:
    folder = Path(data_dir) / FOLDER
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in data_dir={str(data_dir)!r}: missing {FOLDER}/{', '.join(missing)}. "
            "Pass download=True to download it, or place the official 'cifar-10-batches-py' folder there."
        )


def cifar10_present(data_dir: str | os.PathLike[str]) -> bool:
    """Whether ``data_dir/cifar-10-batches-py`` holds the five training batches and the test batch.

    Args:
        data_dir: Folder that contains (or will contain) ``cifar-10-batches-py``.
    """
    folder = Path(data_dir) / FOLDER
    return all((folder / name).is_file() for name in (*TRAIN_FILES, TEST_FILE))


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()  # a checksum against the published value, not security
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_tar_safely(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a (gzipped) tar archive into ``dest``, refusing members that could escape it.

    Only regular files and folders are accepted; absolute paths, ``..`` components, links and
    device files raise before anything is written.

    Args:
        archive: Path of the ``.tar`` / ``.tar.gz`` file.
        dest: Folder to extract into (created if needed).

    Raises:
        ValueError: If a member is unsafe (the message names it).
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if Path(m.name).is_absolute() or ".." in Path(m.name).parts or not target.is_relative_to(dest):
                raise ValueError(f"refusing to extract {m.name!r} from {archive}: it points outside {dest}")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"refusing to extract {m.name!r} from {archive}: not a regular file or folder")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; the members were checked above
            tar.extractall(dest, members=members)


def download_cifar10(
    data_dir: str | os.PathLike[str],
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Download, verify and extract CIFAR-10 into ``data_dir`` unless it is already there.

    The archive is streamed to a temporary file in ``data_dir``, its MD5 checked, then extracted
    with :func:`extract_tar_safely` and deleted. An archive with the right MD5 already in
    ``data_dir`` (``cifar-10-python.tar.gz``) is extracted, without downloading, and kept.

    Args:
        data_dir: Folder that receives ``cifar-10-batches-py``.
        url: Archive URL (default :data:`CIFAR10_URL`; ``file://`` URLs work too).
        md5: Expected MD5 hex digest of the archive (default :data:`CIFAR10_MD5`).

    Returns:
        The ``cifar-10-batches-py`` folder.

    Raises:
        RuntimeError: If the archive's MD5 does not match (the corrupt file is deleted) or it does
            not contain the CIFAR-10 batch files.
        ValueError: If the archive holds unsafe members.
        urllib.error.URLError: If the download fails.
    """
    url = CIFAR10_URL if url is None else url
    md5 = CIFAR10_MD5 if md5 is None else md5
    root = Path(data_dir)
    if cifar10_present(root):
        return root / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE
    downloaded = not (archive.is_file() and _md5(archive) == md5)
    if downloaded:
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=ARCHIVE, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, length=1 << 20)
            actual = _md5(tmp)
            if actual != md5:
                raise RuntimeError(f"MD5 mismatch for {url}: expected {md5}, got {actual}; the download is corrupt")
            tmp.replace(archive)
        finally:
            tmp.unlink(missing_ok=True)
    extract_tar_safely(archive, root)
    if not cifar10_present(root):
        raise RuntimeError(f"{archive} did not contain {FOLDER}/ with {', '.join((*TRAIN_FILES, TEST_FILE))}")
    if downloaded:
        archive.unlink()
    return root / FOLDER


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="bytes")  # the dataset's own format
    if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
        raise RuntimeError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise RuntimeError(f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape}")
    return data, labels


def read_cifar10(data_dir: str | os.PathLike[str], train: bool) -> tuple[Tensor, Tensor]:
    """Read the training batches (``train=True``) or the test batch from ``data_dir``.

    Args:
        data_dir: Folder that contains ``cifar-10-batches-py``.
        train: The five training batches, or the test batch.

    Returns:
        ``(images, labels)``: ``uint8`` images ``(N, 3, 32, 32)`` and ``LongTensor`` labels ``(N,)``.

    Raises:
        FileNotFoundError: If a batch file is missing (the message names ``data_dir`` and how to get
            the data).
        RuntimeError: If a file does not hold a CIFAR-10 batch.
    """
    folder = Path(data_dir) / FOLDER
    names = TRAIN_FILES if train else (TEST_FILE,)
    _require_files(data_dir, names)
    parts = [_read_batch(folder / n) for n in names]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data), torch.from_numpy(labels)


def _select_classes(images: Tensor, labels: Tensor, classes: list[int] | None) -> tuple[Tensor, Tensor]:
    """Keep the images of ``classes`` and relabel ``classes[i]`` as ``i``."""
    if classes is None:
        return images, labels
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    new = lookup[labels]
    keep = new >= 0
    return images[keep], new[keep]


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 (or a subset of its classes) with a seeded, stratified validation split.

    ``val_size`` images are held out of the 50,000 training images (stratified by class, seeded)
    for validation; the 10,000 official test images are only the test set. With ``classes`` only
    those classes are kept and relabelled ``0..k-1`` in the given order (e.g. pretrain on
    ``[0, 1, 2, 3, 4]``, fine-tune on ``[5, 6, 7, 8, 9]``). With ``train_per_class`` only that many
    training images per class are kept (few-shot; seeded). Images are normalized per channel with
    :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`; with ``augment`` the training images (only) get a
    random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip, drawn from
    torch's per-worker-seeded generator.

    Args:
        data_dir: Folder containing (or to receive) ``cifar-10-batches-py``.
        download: Download the official archive (with MD5 check) if the files are missing.
        batch_size: Images per batch in every dataloader.
        train_per_class: Keep only this many training images per class (``None``: all).
        val_size: Training images held out for validation (a positive int, stratified, seeded).
        classes: Original class indices (0..9, distinct) to keep, relabelled ``0..k-1`` in this
            order (``None``: all ten).
        augment: Random crop + horizontal flip on the training set.
        seed: Seed of the validation split, the few-shot draw and the training shuffle.
        num_workers: ``DataLoader`` worker processes (0: load in the main process).

    Attributes:
        num_classes: ``len(classes)``, or 10.
        input_shape: ``(3, 32, 32)``.
        class_names: Names of the kept classes, in label order.
        train_indices: After ``setup``, indices of the training set into the (class-filtered)
            50,000 training images; likewise ``val_indices`` for the validation set.

    Raises:
        ValueError: At construction, for any invalid argument (the message names it and its value);
            in ``setup`` if ``val_size`` leaves no training image or ``train_per_class`` exceeds
            the training images of a class.
        FileNotFoundError: In ``prepare_data``/``setup`` if the files are missing and ``download``
            is false.
    """

    input_shape: tuple[int, int, int] = (3, 32, 32)

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = False,
        batch_size: int = 128,
        train_per_class: int | None = None,
        val_size: int = 5000,
        classes: list[int] | None = None,
        augment: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir):
            raise ValueError(f"data_dir must be a non-empty path, got {data_dir!r}")
        if not isinstance(download, bool):
            raise ValueError(f"download must be a bool, got {download!r}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if train_per_class is not None and (not is_int(train_per_class) or train_per_class < 1):
            raise ValueError(f"train_per_class must be a positive int or None, got {train_per_class!r}")
        if not is_int(val_size) or val_size < 1:
            raise ValueError(f"val_size must be a positive int, got {val_size!r}")
        if classes is not None and (
            not isinstance(classes, (list, tuple))
            or not classes
            or any(not is_int(c) or not 0 <= c < 10 for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise ValueError(f"classes must be None or a non-empty list of distinct ints in 0..9, got {classes!r}")
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be a bool, got {augment!r}")
        if not is_int(seed):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not is_int(num_workers) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.download = download
        self.batch_size = batch_size
        self.train_per_class = train_per_class
        self.val_size = val_size
        self.classes = None if classes is None else list(classes)
        self.augment = augment
        self.seed = seed
        self.num_workers = num_workers
        self.num_classes = 10 if classes is None else len(classes)
        self.class_names = [CIFAR10_CLASSES[c] for c in (self.classes or range(10))]
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None
        self.train_dataset: LabeledTensorDataset | None = None
        self.val_dataset: LabeledTensorDataset | None = None
        self.test_dataset: LabeledTensorDataset | None = None

    def prepare_data(self) -> None:
        """Download the archive if asked and needed (Lightning calls this on one process per node)."""
        if self.download:
            download_cifar10(self.data_dir)
        else:
            _require_files(self.data_dir, (*TRAIN_FILES, TEST_FILE))

    def setup(self, stage: str | None = None) -> None:
        """Read the batch files and build the three datasets (once; later calls do nothing).

        Args:
            stage: Lightning's stage name; every split is built whatever the stage.
        """
        if self.train_dataset is not None:
            return
        images, labels = _select_classes(*read_cifar10(self.data_dir, train=True), self.classes)
        test_images, test_labels = _select_classes(*read_cifar10(self.data_dir, train=False), self.classes)
        n = labels.shape[0]
        if self.val_size >= n:
            raise ValueError(f"val_size must be below the {n} training images, got {self.val_size}")
        train_idx, val_idx = stratified_split(labels, [1 - self.val_size / n, self.val_size / n], self.seed)
        if self.train_per_class is not None:
            keep = few_shot_indices(labels[train_idx], self.train_per_class, self.seed + 1, self.num_classes)
            train_idx = train_idx[keep]
        self.train_indices, self.val_indices = train_idx, val_idx
        normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
        train_transform = Compose([RandomCropFlip(padding=4), normalize]) if self.augment else normalize
        self.train_dataset = LabeledTensorDataset(images[train_idx], labels[train_idx], train_transform)
        self.val_dataset = LabeledTensorDataset(images[val_idx], labels[val_idx], normalize)
        self.test_dataset = LabeledTensorDataset(test_images, test_labels, normalize)

    def init_dataset(self) -> LabeledTensorDataset:
        """The training images without augmentation (same images, normalized only).

        :class:`~lightning_sylv.SylvesterInit` draws its subset from here instead of the augmented
        training set when a datamodule provides this method.
        """
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before init_dataset() is called")
        normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
        return LabeledTensorDataset(self.train_dataset.inputs, self.train_dataset.targets, normalize)

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
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches (augmented if ``augment``), shuffled with a generator seeded by ``seed``."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (held out of the training images), in a fixed order."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Official test-set batches, in a fixed order."""
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set's ``(x, y)`` batches, in a fixed order."""
        return self._loader(self.test_dataset, shuffle=False)
