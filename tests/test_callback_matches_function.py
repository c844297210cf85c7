"""Each initializer's callback writes the weights its function writes on the same subset.

The callback adds the Lightning lifecycle (subset from the datamodule, metrics, logging); the math is
the function's. A fit without training steps (``max_steps=0``) leaves the callback's weights in place.
"""

import copy

import pytest
import torch

from lightning_sylv import LowRankInit, SylvesterInit, sylvester_init_
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.lowrank import low_rank_init_, to_low_rank
from lightning_sylv.models import ImageClassifier
from lightning_sylv.subset import balanced_subset

SPC = 8


def _sylvester(model, x, y, layers):
    sylvester_init_(model, x, y, layers=layers, num_classes=10)


def _lowrank(model, x, y, _):
    low_rank_init_(model, x, y, method="data")


CASES = {
    "sylvester-all": (lambda: SylvesterInit(samples_per_class=SPC, verbose=False, evaluate=False), _sylvester, "all"),
    "sylvester-head": (
        lambda: SylvesterInit(samples_per_class=SPC, layers="head", verbose=False, evaluate=False),
        _sylvester,
        "head",
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
