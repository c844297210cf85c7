"""lightning_sylv.passes.state: the guarded model state (snapshot, BatchNorm reset, restore on error)."""

import pytest
import torch
from torch import nn

from lightning_sylv.passes import InitializationError, Snapshot, guarded


class _Failed(InitializationError):
    pass


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_guarded_restores_everything_on_failure_and_wraps_the_error():
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    cleaned = []
    expect = pytest.raises(_Failed, match="my init failed, the model was restored: boom")
    state = guarded(net, on_failure=lambda: cleaned.append(True), error=_Failed, what="my init")
    with expect as err, state as (_, bns, snapshot):
        assert not net.training and bns[0].training and bns[0].momentum is None  # cumulative stats
        snapshot.save(net[0])  # what a job does before it writes a layer
        with torch.no_grad():
            net[0].weight.add_(1.0)
            net(torch.randn(8, 3))  # moves the BatchNorm statistics and the RNG
        raise ValueError("boom")
    assert isinstance(err.value.__cause__, ValueError) and cleaned == [True]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training and net[1].momentum == 0.1
    assert torch.equal(torch.get_rng_state(), rng)


def test_guarded_keeps_the_writes_and_restores_modes_on_success():
    net = _net().eval()
    with guarded(net, recalibrate_bn=False) as (_, bns, _):
        assert not bns[0].training and bns[0].momentum == 0.1  # no recalibration asked
        with torch.no_grad():
            net[0].weight.fill_(2.0)
    assert torch.equal(net[0].weight, torch.full((4, 3), 2.0)) and not net.training


def test_snapshot_copies_buffers_on_entry_and_parameters_only_when_saved():
    net = _net()
    snap = Snapshot(net)
    assert {id(t) for t in snap.saved()} == {id(t) for t in net.buffers()}
    snap.save(net[3])
    snap.save(net[3])  # a second save keeps the first copy
    ids = {id(t) for t in snap.saved()}
    assert {id(net[3].weight), id(net[3].bias)} <= ids and id(net[0].weight) not in ids
    before = net[3].weight.clone()
    with torch.no_grad():
        net[3].weight.mul_(2.0)
        net[1].running_mean.add_(1.0)
    snap.save(net[3])
    snap.restore()
    assert torch.equal(net[3].weight, before) and torch.equal(net[1].running_mean, torch.zeros(4))
    assert len(Snapshot(net, whole=True).saved()) == len(list(net.parameters())) + len(list(net.buffers()))


def test_a_head_only_init_copies_the_head_not_the_body():
    from lightning_sylv import passes, sylvester_init_

    net = _net()
    sizes = []
    real = passes.Snapshot.save

    def spy(self, module):
        real(self, module)
        sizes.append(sum(t.numel() for t in self.saved() if isinstance(t, nn.Parameter)))

    x, y = torch.randn(40, 3), torch.arange(40) % 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(passes.Snapshot, "save", spy)
        sylvester_init_(net, x, y, layers="head")
    assert sizes == [4 * 2 + 2]  # the head's weight and bias; nothing of the body
