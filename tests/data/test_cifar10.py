"""CIFAR10DataModule and its file helpers, on tiny fake ``cifar-10-batches-py`` folders (no network)."""

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import write_fake_cifar10

from lightning_sylv.data import CIFAR10DataModule
from lightning_sylv.data import cifar10 as cifar
from lightning_sylv.data.transforms import Compose, Normalize, RandomCropFlip


@pytest.fixture
def fake(tmp_path):
    return tmp_path, write_fake_cifar10(tmp_path)


def _tar_gz(src_root: Path, out: Path) -> str:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src_root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return hashlib.md5(out.read_bytes()).hexdigest()


def _dm(root: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(root), val_size=kwargs.pop("val_size", 20), batch_size=8, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- reading ------------------------------------------------------------------------------------------


def test_read_gives_channel_major_uint8_images_and_labels(fake):
    root, written = fake
    x, y = cifar.read_cifar10(root, train=True)
    assert x.shape == (150, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.long
    data, labels = written["data_batch_2"]
    assert torch.equal(x[30], torch.from_numpy(data[0].reshape(3, 32, 32))) and int(y[30]) == labels[0]
    xt, yt = cifar.read_cifar10(root, train=False)
    assert xt.shape == (30, 3, 32, 32) and yt.tolist() == written["test_batch"][1]


def test_missing_files_without_download_raise_a_clear_error(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"data_dir='.*nowhere'.*download=True"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="download=True"):
        dm.setup()


def test_a_file_that_is_not_a_batch_is_rejected(fake):
    root, _ = fake
    with (root / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(RuntimeError, match="not a CIFAR-10 batch"):
        cifar.read_cifar10(root, train=False)


# -- download and extraction -------------------------------------------------------------------------


def test_download_from_a_file_url_verifies_and_extracts(tmp_path):
    src = tmp_path / "src"
    written = write_fake_cifar10(src)
    md5 = _tar_gz(src, tmp_path / "c.tar.gz")
    dest = tmp_path / "dest"
    folder = cifar.download_cifar10(dest, url=(tmp_path / "c.tar.gz").as_uri(), md5=md5)
    assert folder == dest / "cifar-10-batches-py" and cifar.cifar10_present(dest)
    assert not list(dest.glob("*.tar.gz*")), "the downloaded archive and temporary files are removed"
    assert cifar.read_cifar10(dest, train=False)[1].tolist() == written["test_batch"][1]


def test_datamodule_download_true_uses_the_module_url(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_fake_cifar10(src)
    md5 = _tar_gz(src, tmp_path / "c.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_URL", (tmp_path / "c.tar.gz").as_uri())
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    dm = _dm(tmp_path / "data", download=True)
    assert len(dm.train_dataset) == 130 and len(dm.test_dataset) == 30


def test_corrupted_download_is_rejected_and_removed(tmp_path):
    src = tmp_path / "src"
    write_fake_cifar10(src)
    _tar_gz(src, tmp_path / "c.tar.gz")
    dest = tmp_path / "dest"
    with pytest.raises(RuntimeError, match=r"MD5 mismatch.*expected 0{32}"):
        cifar.download_cifar10(dest, url=(tmp_path / "c.tar.gz").as_uri(), md5="0" * 32)
    assert list(dest.iterdir()) == [] and not cifar.cifar10_present(dest)


def test_download_is_skipped_when_the_files_are_there(fake):
    root, _ = fake
    assert cifar.download_cifar10(root, url="http://invalid.invalid/never-fetched") == root / "cifar-10-batches-py"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_archive_members_are_refused(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt", "symlink": "link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ValueError, match="refusing to extract"):
        cifar.extract_tar_safely(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not list((tmp_path / "out").iterdir())


# -- splits, classes, few-shot -------------------------------------------------------------------------


def test_validation_is_a_stratified_holdout_of_the_training_set(fake):
    root, written = fake
    dm = _dm(root, augment=False)
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (130, 20, 30)
    assert torch.bincount(dm.val_dataset.targets).tolist() == [2] * 10
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    # The validation images are training images, not test images.
    raw_train, _ = cifar.read_cifar10(root, train=True)
    assert torch.equal(dm.val_dataset.inputs, raw_train[dm.val_indices])
    test_rows = {bytes(r) for r in written["test_batch"][0]}
    assert not any(bytes(v.flatten().numpy()) in test_rows for v in dm.val_dataset.inputs)
    assert torch.equal(dm.test_dataset.targets, torch.tensor(written["test_batch"][1]))
    again = _dm(root, augment=False)
    assert torch.equal(again.val_indices, dm.val_indices)


def test_classes_are_filtered_and_remapped_in_the_given_order(fake):
    root, written = fake
    dm = _dm(root, classes=[7, 5, 9], val_size=6)
    assert dm.num_classes == 3 and dm.class_names == ["horse", "dog", "truck"]
    assert len(dm.train_dataset) + len(dm.val_dataset) == 45 and len(dm.test_dataset) == 9
    test_data, test_labels = written["test_batch"]
    old = {7: 0, 5: 1, 9: 2}
    expected = [old[c] for c in test_labels if c in old]
    assert dm.test_dataset.targets.tolist() == expected
    first_horse = test_labels.index(7)
    assert torch.equal(
        dm.test_dataset.inputs[0 if expected[0] == 0 else expected.index(0)],
        torch.from_numpy(test_data[first_horse].reshape(3, 32, 32)),
    )
    assert torch.bincount(dm.val_dataset.targets).tolist() == [2, 2, 2]


def test_few_shot_counts_per_class(fake):
    root, _ = fake
    dm = _dm(root, train_per_class=4)
    assert torch.bincount(dm.train_dataset.targets).tolist() == [4] * 10
    assert len(dm.val_dataset) == 20
    with pytest.raises(ValueError, match="fewer than the 14 per class"):
        _dm(root, train_per_class=14)


def test_val_size_must_leave_training_images(fake):
    root, _ = fake
    with pytest.raises(ValueError, match="val_size must be below the 150 training images, got 150"):
        _dm(root, val_size=150)


# -- normalization and augmentation --------------------------------------------------------------------


def test_augmentation_only_on_the_training_set(fake):
    root, _ = fake
    dm = _dm(root, augment=True)
    assert isinstance(dm.train_dataset.transform, Compose)
    assert isinstance(dm.train_dataset.transform.transforms[0], RandomCropFlip)
    assert isinstance(dm.val_dataset.transform, Normalize) and isinstance(dm.test_dataset.transform, Normalize)
    norm = Normalize(cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    for ds in (dm.val_dataset, dm.test_dataset):
        x, _ = ds[0]
        assert x.dtype == torch.float32 and torch.equal(x, norm(ds.inputs[0])) and torch.equal(ds[0][0], x)
    torch.manual_seed(0)
    views = torch.stack([dm.train_dataset[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32
    assert len({v.sum().item() for v in views}) > 1, "training views should vary"
    plain = _dm(root, augment=False)
    assert isinstance(plain.train_dataset.transform, Normalize)


def test_dataloaders_give_normalized_float_batches(fake):
    root, _ = fake
    dm = _dm(root)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    vx, _ = next(iter(dm.val_dataloader()))
    assert abs(float(vx.mean())) < 0.5  # uniform noise images: (0.5 - mean) / std is small
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 30


def test_random_crop_flip_shifts_with_zero_padding_and_flips():
    x = torch.arange(1, 3 * 6 * 6 + 1, dtype=torch.uint8).view(3, 6, 6)
    g = torch.Generator().manual_seed(0)
    crop = RandomCropFlip(padding=2, flip=False, generator=g)
    outs = [crop(x) for _ in range(30)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = [
        {(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(o, padded[:, dy : dy + 6, dx : dx + 6])}
        for o in outs
    ]
    assert all(len(s) == 1 for s in shifts), "every output is one zero-padded shift of the input"
    assert len(set.union(*shifts)) > 5
    flip = RandomCropFlip(padding=0, generator=g)
    flips = [flip(x) for _ in range(20)]
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f in flips)
    assert any(torch.equal(f, x.flip(-1)) for f in flips) and any(torch.equal(f, x) for f in flips)
    with pytest.raises(ValueError, match="padding must be a non-negative int, got -1"):
        RandomCropFlip(padding=-1)


def test_normalize_scales_uint8_to_unit_range_then_standardizes():
    x = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize([0.5, 0.5, 0.5], [0.25, 0.5, 1.0])(x)
    assert out[:, 0, 0].tolist() == [2.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.0], [0.0])


# -- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data_dir": ""}, "data_dir must be a non-empty path, got ''"),
        ({"download": "yes"}, "download must be a bool, got 'yes'"),
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"train_per_class": -2}, "train_per_class must be a positive int or None, got -2"),
        ({"val_size": 0}, "val_size must be a positive int, got 0"),
        ({"classes": []}, r"classes must be None or a non-empty list of distinct ints in 0..9, got \[\]"),
        ({"classes": [1, 1]}, r"classes must be .* got \[1, 1\]"),
        ({"classes": [10]}, r"classes must be .* got \[10\]"),
        ({"augment": None}, "augment must be a bool, got None"),
        ({"seed": 1.5}, "seed must be an int, got 1.5"),
        ({"num_workers": -1}, "num_workers must be a non-negative int, got -1"),
    ],
)
def test_bad_arguments_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule(**kwargs)


def test_num_classes_known_before_setup():
    assert CIFAR10DataModule(classes=[5, 6, 7, 8, 9]).num_classes == 5
    assert CIFAR10DataModule().num_classes == 10


def test_init_dataset_is_the_training_set_without_augmentation(fake):
    root, _ = fake
    dm = _dm(root, augment=True)
    plain = dm.init_dataset()
    assert len(plain) == len(dm.train_dataset)
    assert plain.inputs is dm.train_dataset.inputs  # shared storage, no copy
    a = torch.stack([plain[i][0] for i in range(len(plain))])
    b = torch.stack([plain[i][0] for i in range(len(plain))])
    assert torch.equal(a, b)  # deterministic: no random crop/flip
    with pytest.raises(RuntimeError, match="setup"):
        CIFAR10DataModule(data_dir=str(root)).init_dataset()
