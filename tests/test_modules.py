"""lightning_sylv.modules: module walking in one home."""

import pytest
import torch
from torch import nn

from lightning_sylv.modules import BATCH_NORMS, NORMS, evaluating, model_device, target_modules


def test_target_modules_filters_by_type_and_pattern_in_registration_order():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    assert list(target_modules(net)) == ["0", "2.0", "2.1"]
    assert list(target_modules(net, patterns=["2.1", "0"])) == ["0", "2.1"]
    assert list(target_modules(net, types=BATCH_NORMS)) == ["1"]
    assert target_modules(net, patterns=["nothing*"]) == {}


def test_norm_types():
    assert all(isinstance(m, NORMS) for m in (nn.BatchNorm1d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2)))
    assert isinstance(nn.SyncBatchNorm(2), BATCH_NORMS) and not isinstance(nn.LayerNorm(2), BATCH_NORMS)


def test_model_device():
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_evaluating_restores_the_mode_also_on_error():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net.train()
    with pytest.raises(RuntimeError), evaluating(net):
        assert not net.training and not torch.is_grad_enabled()
        raise RuntimeError
    assert net.training and torch.is_grad_enabled()
