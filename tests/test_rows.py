import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sylv.rows import conv_patches, layer_rows


def _all_patches(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N * L, C * kh * kw)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
        dict(kernel_size=1),
    ],
)
def test_all_patches_match_unfold_and_reproduce_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, bias=False, **kwargs)
    x = torch.randn(2, 3, 9, 10)
    rows = conv_patches(x, conv, None)
    ref = _all_patches(x, conv)
    torch.testing.assert_close(rows.x.reshape(rows.x.shape[0], -1), ref)
    # W' X' reproduces the convolution's output.
    out = rows.x.reshape(rows.x.shape[0], -1) @ conv.weight.reshape(4, -1).T
    y = conv(x)
    torch.testing.assert_close(out.reshape(2, -1, 4), y.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_sampled_patches_are_a_subset_and_seeded():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 8, 8)
    a = conv_patches(x, conv, 5, torch.Generator().manual_seed(1))
    b = conv_patches(x, conv, 5, torch.Generator().manual_seed(1))
    c = conv_patches(x, conv, 5, torch.Generator().manual_seed(2))
    assert a.x.shape == (4 * 5, 2, 9) and a.per_sample == 5
    torch.testing.assert_close(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    full = _all_patches(x, conv).reshape(4, 64, -1)
    for i in range(4):  # each sampled patch is one of its own image's patches, no repeats
        mine = a.x.reshape(4, 5, -1)[i]
        match = (mine[:, None, :] == full[i][None]).all(-1)
        assert match.any(1).all()
        assert match.float().argmax(1).unique().numel() == 5


def test_same_padding_reflect_mode_and_conv1d():
    conv = nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect", bias=False)
    x = torch.randn(1, 2, 5, 6)
    rows = conv_patches(x, conv, None)
    out = rows.x.reshape(rows.x.shape[0], -1) @ conv.weight.reshape(3, -1).T
    torch.testing.assert_close(out.T.reshape(1, 3, 5, 6), conv(x), rtol=1e-5, atol=1e-5)
    conv1 = nn.Conv1d(2, 3, 4, stride=2, padding=1, bias=False)
    x1 = torch.randn(3, 2, 11)
    rows = conv_patches(x1, conv1, None)
    out = rows.x.reshape(rows.x.shape[0], -1) @ conv1.weight.reshape(3, -1).T
    torch.testing.assert_close(out.reshape(3, -1, 3).transpose(1, 2), conv1(x1), rtol=1e-5, atol=1e-5)


def test_linear_rows_and_sequence_positions():
    lin = nn.Linear(5, 2)
    rows = layer_rows(lin, torch.randn(7, 5), 3)
    assert rows.x.shape == (7, 5) and rows.per_sample == 1
    seq = torch.randn(4, 10, 5)
    rows = layer_rows(lin, seq, 3, torch.Generator().manual_seed(0))
    assert rows.x.shape == (12, 5) and rows.per_sample == 3


def test_errors():
    conv = nn.Conv2d(2, 3, 5)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv_patches(torch.randn(1, 2, 3, 3), conv, None)
    with pytest.raises(ValueError, match="4-D input"):
        conv_patches(torch.randn(2, 3, 3), conv, None)
    with pytest.raises(TypeError, match="unsupported layer type LSTM"):
        layer_rows(nn.LSTM(2, 2), torch.randn(1, 2), None)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=4, padding="same"),
        dict(kernel_size=(2, 3), padding="same", dilation=2),
        dict(kernel_size=3, stride=3, padding=2),
    ],
)
def test_zero_padding_by_mask_reproduces_conv(kwargs):
    """Zero padding (also asymmetric 'same' padding) is a mask on the gathered patches, not a padded copy."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, bias=False, **kwargs)
    x = torch.randn(2, 2, 7, 8)
    rows = conv_patches(x, conv, None)
    out = rows.x.reshape(rows.x.shape[0], -1) @ conv.weight.reshape(3, -1).T
    y = conv(x)
    torch.testing.assert_close(out.reshape(2, -1, 3), y.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert rows.out_shape == tuple(y.shape[2:])


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(3, 3, 7, padding=3, groups=3), (2, 2)),  # ConvNeXt's depthwise kernel on a 2 x 2 map
        (nn.Conv2d(4, 5, 3, padding=1), (1, 1)),  # a ResNet stage-4 convolution at 32 px
        (nn.Conv2d(4, 5, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2)), (3, 6)),
        (nn.Conv2d(4, 5, 5, padding="same"), (2, 6)),
        (nn.Conv1d(4, 5, 7, padding=3), (1,)),
        (nn.Conv3d(2, 3, 3, padding=1), (1, 2, 3)),
        (nn.Conv2d(4, 5, 3, padding=1), (5, 5)),  # every tap sees the input: nothing dropped
    ],
)
def test_drop_unseen_leaves_out_exactly_the_taps_that_only_ever_see_padding(conv, size):
    x = torch.randn(6, conv.in_channels, *size)
    full = conv_patches(x, conv, None)
    kept = conv_patches(x, conv, None, drop_unseen=True)
    if kept.taps is None:
        assert torch.equal(kept.x, full.x) and bool((full.x != 0).any(0).any(0).all())
        return
    torch.testing.assert_close(kept.x, full.x[:, :, kept.taps], rtol=0, atol=0)
    dropped = torch.ones(full.x.shape[-1], dtype=torch.bool)
    dropped[kept.taps] = False
    assert bool(dropped.any())
    assert float(full.x[:, :, dropped].abs().max()) == 0.0  # zero in every row: nothing lost
    assert bool((kept.x != 0).any(0).any(0).all())  # each kept tap sees the input somewhere
    # Kept in the (n, K, C) memory order the Gram sums take without a copy.
    assert kept.x.transpose(1, 2).is_contiguous()


def test_drop_unseen_does_not_change_the_draw_of_positions():
    conv = nn.Conv2d(2, 2, 7, padding=3)
    x = torch.randn(4, 2, 2, 2)
    a = conv_patches(x, conv, 3, torch.Generator().manual_seed(5))
    b = conv_patches(x, conv, 3, torch.Generator().manual_seed(5), drop_unseen=True)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.x[:, :, b.taps], b.x)
