"""lightning_sylv.layer.collect: what a layer keeps of its input over batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sylv.codes import OneHotCode, PCACode, resolve_code
from lightning_sylv.layer.collect import LayerInitError, LayerInput, gram_stats, grouped_rows
from lightning_sylv.rows import conv_patches
from lightning_sylv.stats import InputStats


def _input(module: nn.Module, code=None, **kw) -> LayerInput:
    opts = dict(
        module=module, name="layer", code=code or PCACode(), patches_per_image=None,
        generator=torch.Generator().manual_seed(0), dtype=torch.float64, gram_dtype=None, samples=None,
        pooled=True, solver="exact", power_iterations=1, scale="solve",
    )  # fmt: skip
    opts.update(kw)
    return LayerInput(**opts)


def test_grouped_rows_slices_the_channels_of_each_group():
    x = torch.arange(24.0).reshape(2, 12)
    g = grouped_rows(x, 3)
    assert g.shape == (3, 2, 4)
    assert torch.equal(g[1], x[:, 4:8])


def test_gram_stats_of_channels_last_patches_match_the_reordered_rows():
    """Patches laid out (n, K, C) in memory are summed in that order and reordered in O(d²)."""
    conv = nn.Conv2d(3, 4, 3).double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    patches = conv_patches(x, conv, None).x
    fast = gram_stats(patches, 1, None, None, torch.float64, None)
    reference = InputStats.from_rows(grouped_rows(patches.contiguous(), 1), None, None, torch.float64)
    torch.testing.assert_close(fast.gram_x, reference.gram_x)
    torch.testing.assert_close(fast.sum_x, reference.sum_x)


@pytest.mark.parametrize("gram_dtype", [None, torch.float32])
def test_gram_stats_of_grouped_patches_strided_across_groups_match_each_groups_own_rows(gram_dtype):
    """Depthwise patches: each group's rows are strided across the other groups' in memory (copied to
    contiguous blocks before the batched products); the sums equal each group's rows taken alone."""
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6).double()
    x = torch.randn(300, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    patches = conv_patches(x, conv, None).x  # (n, C, K) over (n, K, C) memory
    stats = gram_stats(patches, 6, None, None, torch.float64, gram_dtype)
    rtol, atol = (1e-12, 1e-10) if gram_dtype is None else (1e-4, 1e-3)  # float32 products: ~1e-6 of ~300
    for g in range(6):
        rows = patches[:, g, :]
        torch.testing.assert_close(stats.gram_x[g], rows.T @ rows, rtol=rtol, atol=atol)
        torch.testing.assert_close(stats.sum_x[g], rows.sum(0), rtol=rtol, atol=atol)


def test_gram_mode_sums_batches_to_the_statistics_of_one_batch():
    layer = nn.Linear(4, 3).double()
    x = torch.randn(40, 4, dtype=torch.float64)
    whole, split = _input(layer), _input(layer, samples=40)
    whole.add(x, None)
    for part in x.split(15):
        split.add(part, None)
    assert whole.mode == split.mode == "gram"
    torch.testing.assert_close(split.stats.gram_x, whole.stats.gram_x)
    torch.testing.assert_close(split.stats.sum_x, whole.stats.sum_x)


def test_span_mode_keeps_the_rows_and_pools_them_in_an_order_that_ignores_the_split():
    layer = nn.Linear(50, 3).double()
    x = torch.randn(12, 50, dtype=torch.float64)
    a, b = _input(layer, samples=12), _input(layer, samples=12)
    a.add(x, None)
    for part in (x[7:], x[:7]):  # other batches, other order
        b.add(part, None)
    assert a.mode == "span" and a.stats is None
    pa, pb = a.pooled_rows(None)[0], b.pooled_rows(None)[0]
    assert pa.shape == (1, 12, 50) and torch.equal(pa, pb)
    assert a.empty  # the per-batch blocks were released


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 1, 2]), "its input has 4 samples but 3 labels were given"),
        (torch.tensor([0, -1, 1, 2]), "labels must be >= 0, got -1"),
        (torch.tensor([0, 1, 2, 3]), r"labels span \[0, 3\] but the layer has 3 outputs"),
    ],
)
def test_labels_that_do_not_fit_are_refused_naming_the_layer(labels, message):
    keeper = _input(nn.Linear(4, 3), code=OneHotCode())
    with pytest.raises(LayerInitError, match=f"layer 'layer': {message}"):
        keeper.add(torch.randn(4, 4), labels)


@pytest.mark.parametrize("d", [4, 40])  # Gram mode (sums) and span mode (rows)
def test_non_finite_input_is_refused_in_either_mode(d):
    keeper = _input(nn.Linear(d, 3), samples=8)
    x = torch.randn(8, d)
    x[3, 1] = float("inf")
    with pytest.raises(LayerInitError, match="NaN/Inf"):
        keeper.add(x, None)


def test_a_rows_only_code_cannot_be_streamed():
    code = resolve_code("kmeans")
    keeper = _input(nn.Linear(4, 3), code=code, samples=20)
    keeper.add(torch.randn(10, 4), None)
    with pytest.raises(LayerInitError, match="needs all rows at once"):
        keeper.add(torch.randn(10, 4), None)


def test_own_energy_adds_up_over_batches():
    layer = nn.Linear(4, 3).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    keeper = _input(layer, scale="own", samples=20)
    for part in x.split(6):
        keeper.add(part, None)
    expected = float(layer(x).detach().square().sum())
    assert keeper.energy == pytest.approx(expected, rel=1e-12)


def test_own_norm_is_taken_once_before_anything_is_written():
    layer = nn.Linear(4, 3).double()
    want = float(layer.weight.detach().square().sum())
    keeper = _input(layer, scale="norm", samples=20)
    keeper.add(torch.randn(6, 4, dtype=torch.float64), None)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # not the reference any more: the first batch's weights are
    for _ in range(2):
        keeper.add(torch.randn(7, 4, dtype=torch.float64), None)
    assert keeper.own_norm == pytest.approx(want, rel=1e-12)
    assert keeper.energy == 0.0  # the energy rule's sum is not kept
