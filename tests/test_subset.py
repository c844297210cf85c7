import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset

from lightning_sylv.subset import (
    NoLabelsError,
    balanced_subset,
    class_balanced_indices,
    dataset_targets,
    scan_targets,
    split_batch,
)


class WithTargets(Dataset):
    def __init__(self, n: int = 30) -> None:
        self.data = torch.arange(n, dtype=torch.float32)[:, None]
        self.targets = [i % 3 for i in range(n)]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        return self.data[i], self.targets[i]


class Opaque(WithTargets):
    """Same items, labels hidden: only a scan finds them."""

    def __init__(self, n: int = 30) -> None:
        super().__init__(n)
        self._t = self.targets
        del self.targets

    def __len__(self) -> int:
        return len(self._t)

    def __getitem__(self, i):
        self.reads += 1
        return {"x": self.data[i], "label": torch.tensor(self._t[i])}


class Unlabelled(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        return torch.full((2,), float(i))


def test_fast_path_reads_no_items():
    ds = WithTargets()
    t = dataset_targets(ds)
    assert t.tolist() == ds.targets and ds.reads == 0
    assert dataset_targets(Subset(ds, [4, 5])).tolist() == [1, 2]
    assert dataset_targets(ConcatDataset([ds, ds])).shape == (60,)
    td = TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))
    assert dataset_targets(td).tolist() == [0, 1, 1, 0]
    assert dataset_targets(TensorDataset(torch.zeros(4, 2), torch.zeros(4))) is None  # float: not labels
    assert dataset_targets(Opaque()) is None


def test_scan_targets_one_pass_and_no_labels():
    ds = Opaque()
    assert scan_targets(ds).tolist() == ds._t and ds.reads == len(ds)
    with pytest.raises(NoLabelsError, match="no integer class label"):
        scan_targets(Unlabelled())


def test_class_balanced_indices_seeded_and_balanced():
    targets = torch.tensor([0, 1, 2] * 20)
    a = class_balanced_indices(targets, 5, seed=1)
    assert np.bincount(targets[a].numpy()).tolist() == [5, 5, 5]
    assert torch.equal(a, class_balanced_indices(targets, 5, seed=1))
    assert not torch.equal(a, class_balanced_indices(targets, 5, seed=2))
    assert a.unique().numel() == 15


def test_short_class_uses_all_with_warning():
    targets = torch.tensor([0] * 10 + [1] * 2)
    with pytest.warns(UserWarning, match=r"1 \(2\)"):
        idx = class_balanced_indices(targets, 4)
    assert np.bincount(targets[idx].numpy()).tolist() == [4, 2]


def test_bad_arguments_and_empty():
    with pytest.raises(ValueError, match="samples_per_class must be >= 1"):
        class_balanced_indices(torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="empty"):
        class_balanced_indices(torch.tensor([], dtype=torch.long), 3)
    with pytest.raises(ValueError, match="empty"):
        balanced_subset(TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), 2)


def test_balanced_subset_end_to_end():
    ds = WithTargets()
    x, y, _idx = balanced_subset(ds, 4, seed=0)
    assert x.shape == (12, 1) and y.tolist().count(0) == 4
    assert torch.equal(x[:, 0].long() % 3, y)
    x2, y2, _ = balanced_subset(Opaque(), 4, seed=0)
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_unlabelled_and_iterable():
    x, y, _idx = balanced_subset(Unlabelled(), 2, unlabelled_count=5)
    assert y is None and x.shape == (5, 2)
    with pytest.raises(NoLabelsError):
        balanced_subset(Unlabelled(), 2, require_labels=True)

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2), 0

    with pytest.raises(TypeError, match="iterable-style"):
        balanced_subset(Stream(), 2)


def test_split_batch_formats():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert split_batch((x, y))[1] is y
    assert split_batch([x, y, "meta"])[1] is y
    assert split_batch(x)[1] is None
    assert split_batch({"input": x, "target": y})[0] is x
    assert split_batch((x, torch.zeros(2)))[1] is None  # float second element: not labels
    with pytest.raises(TypeError, match="cannot find the inputs"):
        split_batch("nope")


def test_fewer_samples_than_processes_fails_on_every_process():
    ds = TensorDataset(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    for rank in range(4):  # rank 0 alone would have gotten a sample: it must fail too, not wait
        with pytest.raises(ValueError, match="3 samples, fewer than the 4 processes"):
            balanced_subset(ds, 1, shard=(rank, 4))


class Relabelled(WithTargets):
    """``.targets`` holds the raw classes; loading applies a ``target_transform`` (c -> 2 - c)."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, 2 - y


def test_returned_labels_are_the_loaded_ones_after_a_target_transform():
    ds = Relabelled()
    x, labels, idx = balanced_subset(ds, 2, seed=0)
    assert torch.equal(labels, torch.tensor([2 - ds.targets[i] for i in idx.tolist()]))
    assert labels.dtype == torch.long and torch.equal(x[:, 0], idx.float())
