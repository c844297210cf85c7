"""lightning_sylv.inspection (no Lightning) and the report renderers: small, fast, no Trainer."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sylv.inspection import (
    TsnePanel,
    capture_features,
    cluster_score,
    figure_to_array,
    safe_perplexity,
    take_sample,
    thumbnails,
    tsne_2d,
    tsne_figure,
)
from lightning_sylv.report import InitReport, LayerReport, format_markdown, format_table, layer_scalars


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _loader(n: int = 30, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3), batch_size=batch_size)


@pytest.mark.parametrize(("n", "expected"), [(1, 1.0), (2, 1.0), (4, 1.0), (10, 3.0), (91, 30.0), (500, 30.0)])
def test_safe_perplexity_stays_below_the_sample_count(n, expected):
    p = safe_perplexity(n)
    assert p == pytest.approx(expected)
    assert p < n or n == 1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 12])
def test_tsne_handles_tiny_samples(n):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
    y = tsne_2d(x, max_iter=250)
    assert y.shape == (n, 2) and np.isfinite(y).all()


def test_tsne_of_identical_or_non_finite_features_does_not_crash():
    # scikit-learn segfaults on all-identical rows with init="pca"; they map to the origin instead.
    assert not tsne_2d(torch.zeros(20, 4)).any()
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    x[3, 1] = float("nan")
    x[5, 0] = float("inf")
    assert np.isfinite(tsne_2d(x, max_iter=250)).all()


def test_tsne_is_seeded_and_cluster_score_sees_clusters():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(12)
    clustered = 6 * torch.eye(3, 5)[labels] + 0.3 * torch.randn(36, 5, generator=g)
    a, b = tsne_2d(clustered, seed=3, max_iter=250), tsne_2d(clustered, seed=3, max_iter=250)
    np.testing.assert_array_equal(a, b)
    assert cluster_score(clustered, labels) > 0.7
    assert cluster_score(torch.randn(36, 5, generator=g), labels) < 0.1
    assert cluster_score(clustered, None) is None
    assert cluster_score(clustered, torch.zeros(36, dtype=torch.long)) is None  # one class


def test_thumbnails_are_min_max_scaled_per_image_and_only_for_1_or_3_channels():
    x = torch.randn(4, 3, 5, 5) * 7 + 2
    t = thumbnails(x)
    assert t.shape == x.shape
    flat = t.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(4))
    torch.testing.assert_close(flat.max(1).values, torch.ones(4))
    assert thumbnails(torch.ones(2, 1, 3, 3)).eq(0).all()  # constant image: no division by zero
    assert thumbnails(torch.randn(2, 2, 4, 4)) is None
    assert thumbnails(torch.randn(2, 16)) is None
    assert thumbnails(torch.randn(2, 1, 256, 128)).shape == (2, 1, 64, 32)  # the sprite stays small


def test_take_sample_truncates_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dl = DataLoader(_loader().dataset, batch_size=8, shuffle=True)  # draws from the global generator
    sample = take_sample(dl, 20)
    assert torch.equal(torch.rand(3), expected)
    assert sample.size == 20 and [len(y) for _, y in sample.batches] == [8, 8, 4]
    assert sample.labels.shape == (20,) and sample.images.shape == (20, 1, 4, 4)
    assert take_sample(_loader(5), 500).size == 5
    with pytest.raises(ValueError, match="max_samples must be >= 1, got 0"):
        take_sample(_loader(), 0)


def test_capture_features_default_is_the_head_input():
    model = _net()
    model.train()
    sample = take_sample(_loader(), 30)
    auto = capture_features(model, sample.batches)
    explicit = capture_features(model, sample.batches, "3")
    assert auto.layer == "3" and model.training  # mode restored
    assert torch.equal(auto.features, explicit.features)
    x = torch.cat([x for x, _ in sample.batches])
    torch.testing.assert_close(auto.features, model[2](model[1](model[0](x))))
    logits = model(x)
    assert auto.accuracy == pytest.approx(float((logits.argmax(1) == sample.labels).float().mean()))
    assert torch.equal(auto.labels, sample.labels)
    with pytest.raises(ValueError, match="layer 'nope' is not a module"):
        capture_features(model, sample.batches, "nope")


def test_figure_renders_side_by_side_panels_to_rgb():
    pts = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    fig = tsne_figure(
        [TsnePanel(pts, labels, "before"), TsnePanel(pts, labels, "after")], class_names=["a", "b", "c"], title="t"
    )
    assert [ax.get_title() for ax in fig.axes] == ["before", "after"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    img = figure_to_array(fig)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[1] > img.shape[0]
    assert figure_to_array(tsne_figure([TsnePanel(pts, None, "no labels")])).shape[2] == 3


def _report() -> InitReport:
    def row(name, kind, rows, code, enc, cond_a):
        return LayerReport(name, kind, 9, 4, 1, rows, code, enc, 0.5, 1e-15, cond_a, 20.0, 0, 0.01)

    return InitReport(
        layers=[row("conv", "Conv2d", 160, "pca", 0.25, math.inf), row("fc", "Linear", 10, "onehot", 0.125, math.nan)],
        skipped={"frozen": "frozen (requires_grad=False)"},
        head="fc",
        passes=1,
        seconds=0.5,
    )


def test_report_renderers():
    report = _report()
    md = format_markdown(report, samples=10).splitlines()
    assert md[0].startswith("| layer | type |") and md[1].count("---") == md[0].count("|") - 1
    assert md[2].startswith("| `conv` | Conv2d | 9 | 4 | 1 | 160 | 16 | pca | 0.2500 |")
    assert md[3].startswith("| `fc` (head) | Linear |") and "| - |" in md[3]  # NaN cond A shown as '-'
    assert "`frozen`: frozen" in md[-1]
    table = format_table(report, samples=10)
    assert "rows/smp" in table and "cond A" in table and "skipped frozen" in table
    assert "      16 pca" in table.splitlines()[1]
    scalars = layer_scalars(report)
    assert scalars["sylvester/layer/conv/encoding_loss"] == 0.25
    assert scalars["sylvester/layer/fc/rows"] == 10
    assert "sylvester/layer/conv/cond_a" not in scalars and "sylvester/layer/fc/cond_a" not in scalars
