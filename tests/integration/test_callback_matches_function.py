"""Each initializer's callback writes the weights its function writes on the same subset, and both
refuse a bad option with the same message (one validator: the settings object).

The callback adds the Lightning lifecycle (subset from the datamodule, metrics, logging); the math is
the function's. A fit without training steps (``max_steps=0``) leaves the callback's weights in place.
"""

import copy

import pytest
import torch

from lightning_sylv import FuseInit, LowRankInit, SylvesterInit, sylvester_init_
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.fuse import fuse_init_
from lightning_sylv.lowrank import low_rank_init_, to_low_rank
from lightning_sylv.models import ImageClassifier
from lightning_sylv.subset import balanced_subset

SPC = 8


def _sylvester(model, x, y, layers):
    sylvester_init_(model, x, y, layers=layers, num_classes=10)


def _lowrank(model, x, y, _):
    low_rank_init_(model, x, y, method="data")


def _teacher() -> ImageClassifier:
    torch.manual_seed(1)  # a fixed, untrained deeper MLP: the fit only needs its activations
    return ImageClassifier(arch="mlp", hidden=[32, 32, 16])


FUSE_MAPPING = {"net.features.1": "net.features.3", "net.head": "net.head"}


def _fuse(model, x, y, _):
    fuse_init_(model, _teacher(), x, FUSE_MAPPING, y, unmapped="sylvester")


CASES = {
    "sylvester-all": (lambda: SylvesterInit(samples_per_class=SPC, verbose=False, evaluate=False), _sylvester, "all"),
    "sylvester-head": (
        lambda: SylvesterInit(samples_per_class=SPC, layers="head", verbose=False, evaluate=False),
        _sylvester,
        "head",
    ),
    "fuse-sylvester": (
        lambda: FuseInit(
            mapping=FUSE_MAPPING,
            teacher=_teacher(),
            unmapped="sylvester",
            samples_per_class=SPC,
            verbose=False,
            evaluate=False,
        ),
        _fuse,
        None,
    ),
    "lowrank-data": (
        lambda: LowRankInit(ranks=0.5, method="data", samples_per_class=SPC, verbose=False, evaluate=False),
        _lowrank,
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_callback_and_function_write_the_same_weights(tmp_path, make_trainer, case):
    make_callback, function, layers = CASES[case]
    torch.manual_seed(0)
    model = ImageClassifier(arch="mlp", hidden=[32, 16])
    reference = copy.deepcopy(model)
    dm = DigitsDataModule(seed=0)
    callback = make_callback()
    make_trainer(tmp_path, [callback], logger=False, max_steps=0).fit(model, datamodule=dm)
    assert callback.initialized
    written = [r.name for r in callback.report.layers]
    assert written

    if case.startswith("lowrank"):  # the callback converts in setup, with the same ranks
        to_low_rank(reference, 0.5)
    x, y, _ = balanced_subset(dm.train_dataset, SPC, 0, require_labels=True)
    function(reference, x, y, layers)
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) <= set(want)  # the callback drops the low-rank layers' stored full weights
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize(
    "bad",
    [
        {"layers": "body"},
        {"layers": ["net.*", ""]},
        {"latent": "svd"},
        {"head_latent": 3},
        {"lam": 0},
        {"lam": float("nan")},
        {"patches_per_image": 0},
        {"head": ""},
        {"batch_size": 0},
        {"solver": "fast"},
        {"num_classes": 0},
        {"scale": "model"},
        {"head_scale": None},
    ],
    ids=lambda d: next(iter(d)),
)
def test_the_callback_and_the_function_refuse_an_argument_with_the_same_message(bad):
    """One validator (SylvesterSettings) serves both: the callback at construction, the function
    before it touches the model."""
    from torch import nn

    with pytest.raises(ValueError) as by_callback:
        SylvesterInit(**bad)
    model = nn.Sequential(nn.Linear(4, 3))
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError) as by_function:
        sylvester_init_(model, torch.randn(6, 4), torch.arange(6) % 3, **bad)
    assert str(by_callback.value) == str(by_function.value)
    assert str(by_callback.value).startswith(next(iter(bad)) + " must be")
    assert torch.equal(model[0].weight, before)


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "svd"},
        {"full_weight": "x"},
        {"patches_per_image": 0},
        {"lam": -1.0},
        {"ridge": -1},
        {"relu_iters": 1.5},
    ],
    ids=lambda d: next(iter(d)),
)
def test_low_rank_callback_and_function_refuse_an_argument_with_the_same_message(bad):
    from torch import nn

    with pytest.raises(ValueError) as by_callback:
        LowRankInit(**bad)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    to_low_rank(model, 0.5, exclude=["2"])
    with pytest.raises(ValueError) as by_function:
        low_rank_init_(model, torch.randn(16, 8), **bad)
    assert str(by_callback.value) == str(by_function.value)
    assert str(by_callback.value).startswith(next(iter(bad)) + " must be")
