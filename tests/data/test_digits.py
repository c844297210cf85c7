"""DigitsDataModule (real, bundled scikit-learn digits) and the dataset helpers it is built on."""

import pytest
import torch

from lightning_sylv.data import DigitsDataModule, LabeledTensorDataset, few_shot_indices, stratified_split


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    return dm


# -- LabeledTensorDataset ---------------------------------------------------------------------------


def test_labeled_tensor_dataset_items_targets_and_transform():
    ds = LabeledTensorDataset(torch.arange(12.0).view(4, 3), torch.tensor([0, 1, 1, 2]), transform=lambda x: 2 * x)
    assert len(ds) == 4 and ds.targets.dtype == torch.long
    x, y = ds[1]
    assert torch.equal(x, torch.tensor([6.0, 8.0, 10.0])) and y.ndim == 0 and int(y) == 1
    batch = torch.utils.data.default_collate([ds[0], ds[3]])
    assert batch[1].tolist() == [0, 2] and batch[1].dtype == torch.long


def test_labeled_tensor_dataset_exposes_targets_to_the_subset_fast_path():
    from lightning_sylv.subset import dataset_targets

    ds = LabeledTensorDataset(torch.zeros(5, 2), torch.tensor([3, 1, 4, 1, 0]))
    assert dataset_targets(ds).tolist() == [3, 1, 4, 1, 0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(3, 2), torch.tensor([0, 1])), "same length, got 3 and 2"),
        ((torch.zeros(2, 2), torch.tensor([0.0, 1.0])), "targets must be a 1-D integer tensor"),
        ((torch.zeros(2, 2), torch.tensor([0, -1])), "non-negative class indices"),
        (([[0.0]], torch.tensor([0])), "inputs must be a tensor"),
        ((torch.zeros(1, 2), torch.tensor([0]), "flip"), "transform must be callable"),
    ],
)
def test_labeled_tensor_dataset_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        LabeledTensorDataset(*args)


# -- stratified_split / few_shot_indices ------------------------------------------------------------


def test_stratified_split_exact_sizes_disjoint_cover_and_balanced():
    targets = torch.arange(3).repeat_interleave(torch.tensor([50, 30, 20]))
    parts = stratified_split(targets, [0.6, 0.2, 0.2], seed=1)
    assert [len(p) for p in parts] == [60, 20, 20]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(100))
    assert torch.bincount(targets[parts[1]]).tolist() == [10, 6, 4]
    assert torch.equal(parts[0], stratified_split(targets, [0.6, 0.2, 0.2], seed=1)[0])
    assert not torch.equal(parts[0], stratified_split(targets, [0.6, 0.2, 0.2], seed=2)[0])


@pytest.mark.parametrize(("fractions", "match"), [([0.5, 0.4], "sum to 1"), ([1.0, 0.0], "positive"), ([], "positive")])
def test_stratified_split_rejects_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(torch.zeros(10, dtype=torch.long), fractions, seed=0)


def test_few_shot_indices_counts_seeding_and_shortfall():
    targets = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
    idx = few_shot_indices(targets, 3, seed=0)
    assert torch.bincount(targets[idx]).tolist() == [3, 3, 3]
    assert torch.equal(idx, few_shot_indices(targets, 3, seed=0))
    with pytest.raises(ValueError, match="class 1 has 3 samples, fewer than the 4 per class requested"):
        few_shot_indices(targets, 4, seed=0)
    with pytest.raises(ValueError, match="class 3 has 0 samples"):
        few_shot_indices(targets, 1, seed=0, num_classes=4)
    with pytest.raises(ValueError, match="per_class must be a positive int, got 0"):
        few_shot_indices(targets, 0, seed=0)


# -- DigitsDataModule -------------------------------------------------------------------------------


def test_splits_are_disjoint_stratified_and_cover_the_dataset(dm):
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    train, val, test = dm.train_indices, dm.val_indices, dm.test_indices
    assert (len(train), len(val), len(test)) == (1078, 360, 359)
    assert torch.equal(torch.sort(torch.cat([train, val, test])).values, torch.arange(1797))
    for ds in (dm.val_dataset, dm.test_dataset):
        counts = torch.bincount(ds.targets, minlength=10)
        assert counts.min() >= 34 and counts.max() <= 38  # ~10% of every class


def test_inputs_standardized_on_the_training_split(dm):
    x = dm.train_dataset.inputs
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-4)
    assert abs(float(dm.val_dataset.inputs.mean())) < 0.1  # same statistics, other images


def test_dataloaders_batches_and_seeded_shuffle(dm):
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.long
    again = DigitsDataModule(seed=0)
    again.setup()
    assert torch.equal(next(iter(again.train_dataloader()))[1], y)
    val_y = torch.cat([b[1] for b in dm.val_dataloader()])
    assert torch.equal(val_y, dm.val_dataset.targets)  # validation in a fixed order
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 359
    assert sum(len(b[1]) for b in dm.predict_dataloader()) == 359


def test_different_seed_gives_a_different_split(dm):
    other = DigitsDataModule(seed=1)
    other.setup()
    assert not torch.equal(other.val_indices, dm.val_indices)


def test_few_shot_keeps_that_many_training_images_per_class(dm):
    few = DigitsDataModule(train_per_class=5, seed=0, flatten=True, batch_size=16)
    few.setup()
    assert torch.bincount(few.train_dataset.targets).tolist() == [5] * 10
    assert set(few.train_indices.tolist()) <= set(dm.train_indices.tolist())
    assert torch.equal(few.val_indices, dm.val_indices)  # validation and test sets stay whole
    assert few.input_shape == (64,) and few.train_dataset.inputs.shape == (50, 64)


def test_few_shot_larger_than_a_class_fails_in_setup():
    dm = DigitsDataModule(train_per_class=1000)
    with pytest.raises(ValueError, match="fewer than the 1000 per class requested"):
        dm.setup()


def test_dataloader_before_setup_fails_clearly():
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"train_per_class": 0}, "train_per_class must be a positive int or None, got 0"),
        ({"train_per_class": 2.0}, "train_per_class must be a positive int or None, got 2.0"),
        ({"val_fraction": 0.0}, r"val_fraction must be a number in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.5}, r"test_fraction must be a number in \(0, 1\), got 1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must be below 1"),
        ({"seed": "0"}, "seed must be an int, got '0'"),
        ({"num_workers": -1}, "num_workers must be a non-negative int, got -1"),
        ({"flatten": 1}, "flatten must be a bool, got 1"),
    ],
)
def test_bad_arguments_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_hyperparameters_saved():
    assert DigitsDataModule(batch_size=32, train_per_class=3).hparams["train_per_class"] == 3
