"""Networks, the architecture factory and the random init schemes."""

import pytest
import torch
from torch import nn

from lightning_sylv.models import MLP, SmallCNN, build_network, random_init_, resnet20, resnet_cifar
from lightning_sylv.models.init import INIT_SCHEMES


def _executed_layers(net: nn.Module, x: torch.Tensor) -> list[str]:
    names = {m: n for n, m in net.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return order


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet20", "resnet32", "resnet56"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_output_shapes_and_head_is_the_last_executed_layer(arch, shape):
    torch.manual_seed(0)
    net = build_network(arch, shape, num_classes=7)
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 7)
    order = _executed_layers(net, x)
    assert order[-1] == "head" and isinstance(net.head, nn.Linear) and order.count("head") == 1


def test_mlp_on_flat_inputs_and_hidden_widths():
    net = MLP(64, 10, hidden=(32, 16, 8))
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [32, 16, 8, 10]
    assert net(torch.randn(5, 64)).shape == (5, 10)
    assert MLP(64, 3, hidden=()).head.in_features == 64


def test_small_cnn_uses_batchnorm_and_width():
    net = SmallCNN(3, 10, width=8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    assert net.head.in_features == 32


def test_resnet20_parameter_count_and_structure():
    net = resnet20()
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.27e6, rel=0.02)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 19  # 1 stem + 3 stages x 3 blocks x 2
    assert sum(m.kernel_size == (1, 1) for m in convs) == 2  # option B projections at the 2 downsamplings
    assert net.head.in_features == 64


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_resnet_depths_have_6n_plus_2_weighted_layers(depth):
    net = resnet_cifar(depth, num_classes=5, in_channels=1)
    n3x3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())
    assert n3x3 + 1 == depth  # + the Linear head


@pytest.mark.parametrize("depth", [18, 21, 0, "20", True])
def test_resnet_bad_depth_rejected(depth):
    with pytest.raises(ValueError, match=r"depth must be one of \[20, 32, 44, 56, 110\]"):
        resnet_cifar(depth)


def test_build_network_rejects_bad_arguments():
    with pytest.raises(
        ValueError, match=r"arch must be one of \['mlp', 'cnn', 'resnet20', 'resnet32', 'resnet56'\], got 'vgg'"
    ):
        build_network("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="input_shape must be \\(channels, height, width\\) for arch 'cnn'"):
        build_network("cnn", (64,), 10)
    with pytest.raises(ValueError, match="input_shape must be a non-empty sequence of positive ints"):
        build_network("mlp", (0, 8), 10)
    with pytest.raises(ValueError, match="hidden must be a sequence of positive ints"):
        build_network("mlp", (64,), 10, hidden=[0])
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        build_network("cnn", (1, 8, 8), 10, width=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_network("resnet20", (3, 32, 32), 0)


def _weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("scheme", [s for s in INIT_SCHEMES if s != "default"])
def test_random_init_schemes_change_weights_zero_biases_reset_batchnorm(scheme):
    torch.manual_seed(0)
    net = SmallCNN(1, 10, width=4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(3.0)
                m.bias.fill_(1.0)
    before = _weights(net)
    random_init_(net, scheme, generator=torch.Generator().manual_seed(1))
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert not torch.equal(m.weight, before[f"{name}.weight"])
            assert m.bias is None or not m.bias.any()
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and not m.bias.any()


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [
        ("he_uniform", (2 / 500) ** 0.5),
        ("he_normal", (2 / 500) ** 0.5),
        ("xavier_uniform", (2 / (500 + 1000)) ** 0.5),
        ("xavier_normal", (2 / (500 + 1000)) ** 0.5),
    ],
)
def test_random_init_scales(scheme, expected_std):
    layer = nn.Linear(500, 1000)
    random_init_(layer, scheme, generator=torch.Generator().manual_seed(0))
    assert float(layer.weight.detach().std()) == pytest.approx(expected_std, rel=0.02)


def test_random_init_default_leaves_the_weights_and_is_seedable():
    net = MLP(64, 10)
    before = _weights(net)
    random_init_(net, "default")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    a, b = MLP(64, 10), MLP(64, 10)
    random_init_(a, "he_normal", generator=torch.Generator().manual_seed(3))
    random_init_(b, "he_normal", generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("scheme", ["kaiming", "", None, "HE_UNIFORM"])
def test_random_init_rejects_unknown_schemes(scheme):
    with pytest.raises(ValueError, match=f"scheme must be one of .* got {scheme!r}"):
        random_init_(MLP(4, 2), scheme)
