"""lightning_sylv.passes.hooks: the execution order and the one probe every initialization starts with."""

import pytest
import torch
from torch import nn

from lightning_sylv.passes import execution_order, probe_forward


def test_execution_order_follows_the_forward_not_the_definition():
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.second, self.first = nn.Linear(4, 2), nn.Linear(3, 4)

        def forward(self, x):
            return self.second(self.first(x))

    net = Swapped()
    assert execution_order(net, torch.randn(2, 3)) == ["first", "second"]
    assert execution_order(net, torch.randn(2, 3), units={net.second: "b"}) == ["b"]


def test_the_callback_runs_the_subset_through_the_model_once(tmp_path, make_trainer):
    """One probe of two samples (execution order, logits width, layout), then one forward pass over
    the subset: nothing else runs the model (evaluation and inspection are off)."""
    from lightning_sylv import SylvesterInit
    from lightning_sylv.data import DigitsDataModule
    from lightning_sylv.models import ImageClassifier

    model = ImageClassifier(arch="mlp")
    sizes: list[int] = []
    model.net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    cb = SylvesterInit(samples_per_class=5, verbose=False, evaluate=False, log_embeddings=False)
    trainer = make_trainer(tmp_path, [cb], logger=False, max_steps=0)
    trainer.fit(model, datamodule=DigitsDataModule())
    assert cb.report is not None and cb.report.passes == 1
    assert sizes == [2, 50], sizes  # the probe, then 10 classes x 5 samples once


@pytest.mark.parametrize("layers", ["all", "head"])
def test_the_function_probes_once_and_passes_once(layers):
    """A CNN that accepts the channels-last layout: one two-sample probe, one pass, for every layer
    or the head alone."""
    from lightning_sylv import sylvester_init_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    sizes: list[int] = []
    net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    sylvester_init_(net, torch.randn(30, 3, 6, 6), torch.arange(3).repeat(10), layers=layers)
    assert sizes == [2, 30], sizes


def test_a_forward_that_rejects_channels_last_is_probed_again_as_given():
    """The only second probe: the channels-last layout failed, the given layout runs."""

    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(x.shape[0], -1))  # .view needs the contiguous layout

    net = Viewing()
    sizes: list[int] = []
    net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    probe = probe_forward(net, torch.randn(2, 3, 6, 6), lambda m, x: m(x), {net.conv: "conv", net.fc: "fc"})
    assert probe.order == ["conv", "fc"] and probe.output.shape == (2, 2)
    assert sizes == [2, 2]
    assert probe.forward(net, torch.randn(2, 3, 6, 6)).shape == (2, 2)


class _Contexts(nn.Module):
    """One layer per context: straight into BatchNorm, through a permute into LayerNorm, through an
    in-place ReLU into BatchNorm, into a residual sum before a LayerNorm, into nothing normalized."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.ln_conv, self.ln = nn.Conv2d(4, 4, 1), nn.LayerNorm(4)
        self.relu_conv, self.relu, self.bn2 = nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(4)
        self.res_fc, self.ln2 = nn.Linear(4, 4), nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.bn(self.bn_conv(x))
        h = self.ln(self.ln_conv(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = self.bn2(self.relu(self.relu_conv(h)))
        t = h.mean((2, 3))
        t = self.ln2(t + self.res_fc(t))
        return self.head(t)


def test_the_probe_finds_the_layers_a_normalization_takes_directly():
    net = _Contexts()
    names = {m: n for n, m in net.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
    probe = probe_forward(net, torch.randn(2, 3, 5, 5), lambda m, x: m(x), names)
    # The in-place ReLU changed the conv's output before BatchNorm saw it; the residual sum is a new tensor.
    assert probe.normalized == {"bn_conv", "ln_conv"}
    plain = probe_forward(net, torch.randn(2, 3, 5, 5), lambda m, x: m(x).contiguous(), names)
    assert plain.normalized == probe.normalized
