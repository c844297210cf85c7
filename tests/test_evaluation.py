"""evaluate_accuracy: the metric against scikit-learn, modes and the global random stream left alone."""

import pytest
import torch
from sklearn.metrics import accuracy_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sylv.evaluation import evaluate_accuracy


def _setup():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 5, generator=g), torch.randint(0, 3, (50,), generator=g)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    return model, x, y


def test_accuracy_matches_scikit_learn_and_restores_the_mode():
    model, x, y = _setup()
    model.train()
    acc = evaluate_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=16), "cpu")
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = accuracy_score(y.numpy(), model(x).argmax(1).numpy())
    assert acc == pytest.approx(expected, abs=1e-6)


def test_global_random_stream_is_unchanged_by_a_shuffling_loader():
    model, x, y = _setup()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    evaluate_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_no_labels_gives_none():
    model, x, _ = _setup()
    assert evaluate_accuracy(model, [x[:10], x[10:]], "cpu") is None


class _Seen(Exception):
    pass


def test_the_default_mover_moves_every_tensor_of_a_nested_batch():
    """Like every other batch walk of the package (``_batch.map_batch``): a dict's tensors travel too."""
    seen = []

    def forward(model, inputs):
        seen.append(inputs["x"].device.type)
        raise _Seen

    model, x, y = _setup()
    with pytest.raises(_Seen):
        evaluate_accuracy(model, [({"x": x}, y)], "meta", forward=forward)
    assert seen == ["meta"]
