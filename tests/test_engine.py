import copy

import pytest
import torch
from torch import nn

from lightning_sylv.codes import OneHotCode, PCACode
from lightning_sylv.engine import SylvesterInitError, execution_order, sylvester_init_
from lightning_sylv.layer_fit import encoding_loss, fit_layer
from lightning_sylv.rows import layer_rows


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def tiny_resnet(in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        ResBlock(6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _data(n_per_class: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    means = torch.randn(3, 1, 4, 4, generator=g)
    x = means[y] + 0.5 * torch.randn(len(y), 1, 4, 4, generator=g)
    return x, y


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn, tiny_resnet])
def test_every_layer_encodes_better_than_its_random_init(make):
    torch.manual_seed(0)
    model = make()
    x, y = _data()
    before = {
        n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    inputs: dict[str, torch.Tensor] = {}
    for n, m in model.named_modules():
        if n in before:
            m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0].detach().clone()))
    # The solve as solved (scale="solve"): the default rescales to the own init's gain, see test_scale.py.
    report = sylvester_init_(model, x, y, latent="pca", patches_per_image=None, lam=10.0, scale="solve")
    assert [r.name for r in report.layers] == list(before)
    assert report.head == list(before)[-1]
    for r in report.layers:
        mod = model.get_submodule(r.name)
        rows = layer_rows(mod, inputs[r.name], None).x
        rows = rows.reshape(rows.shape[0], -1).double()
        labels = y.repeat_interleave(rows.shape[0] // len(y))
        code = OneHotCode() if r.name == report.head else PCACode()
        s = code.fit(rows, r.out_features, labels=labels, generator=torch.Generator().manual_seed(0))
        w_old, b_old = before[r.name]
        new = encoding_loss(
            mod.weight.detach().double().reshape(r.out_features, -1),
            rows,
            s,
            None if mod.bias is None else mod.bias.detach().double(),
        )
        old = encoding_loss(
            w_old.double().reshape(r.out_features, -1), rows, s, None if b_old is None else b_old.double()
        )
        assert new < old, (r.name, new, old)
        # The report's loss is the same quantity, computed from the statistics.
        assert r.encoding_loss == pytest.approx(new, rel=1e-4, abs=1e-8)
        assert r.residual <= 1e-6


def test_batchnorm_buffers_recomputed_and_finite():
    torch.manual_seed(0)
    model = tiny_resnet()
    x, y = _data()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(7.0)
    sylvester_init_(model, x, y, patches_per_image=4)
    for bn in bns:
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
        assert not torch.allclose(bn.running_mean, torch.full_like(bn.running_mean, 5.0))
        assert bn.momentum == 0.1  # restored
    # Eval-mode output equals train-mode (batch-statistics) output on the same subset.
    model.eval()
    with torch.no_grad():
        first = model[1](model[0](x))
    assert first.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (first.var(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_initial_accuracy_beats_chance_on_separable_data():
    torch.manual_seed(0)
    model = tiny_cnn()
    x, y = _data(40)
    sylvester_init_(model, x, y, patches_per_image=8)
    model.eval()
    xt, yt = _data(40, seed=0)
    acc = (model(xt).argmax(1) == yt).float().mean()
    assert acc > 0.9


def test_head_only_leaves_everything_else_bit_identical():
    torch.manual_seed(0)
    model = tiny_resnet()
    x, y = _data()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = sylvester_init_(model, x, y, layers="head")
    assert [r.name for r in report.layers] == ["6"]
    for k, v in model.state_dict().items():
        if k.startswith("6."):
            assert not torch.equal(v, state[k])
        else:
            assert torch.equal(v, state[k]), k
    assert model.training


def test_head_only_without_labels_fails_clearly():
    with pytest.raises(ValueError, match="layers='head' needs class labels"):
        sylvester_init_(tiny_mlp(), torch.randn(10, 1, 4, 4), None, layers="head")


def test_no_labels_all_layers_falls_back_to_pca_with_warning():
    model = tiny_mlp()
    with pytest.warns(UserWarning, match="no labels"):
        report = sylvester_init_(model, torch.randn(30, 1, 4, 4), None)
    assert report.layers[-1].code == "rotated_pca"  # the hidden layers' code (the default)


@pytest.mark.parametrize("batch_size", [None, 7])  # one pass, and streamed (the copies are taken per layer)
def test_failure_restores_everything(batch_size):
    torch.manual_seed(0)
    model = tiny_resnet()
    x, y = _data()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    class Boom(PCACode):
        calls = 0

        def moments(self, *args, **kwargs):
            Boom.calls += 1
            if Boom.calls == 3:
                raise RuntimeError("injected")
            return super().moments(*args, **kwargs)

    model.train()
    with pytest.raises(SylvesterInitError, match="injected"):
        sylvester_init_(model, x, y, latent=Boom(), batch_size=batch_size)
    assert Boom.calls == 3  # two layers were written before the failure
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(bn.momentum == 0.1 for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


def test_execution_order_follows_forward_not_registration():
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    model = Swapped()
    assert execution_order(model, torch.randn(2, 3)) == ["body", "head"]
    report = sylvester_init_(model, torch.randn(20, 3), torch.arange(2).repeat(10))
    assert report.head == "head"


def test_shared_module_called_twice_is_initialized_once():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))

    report = sylvester_init_(Twice(), torch.randn(20, 4), torch.arange(2).repeat(10))
    assert [r.name for r in report.layers] == ["shared", "head"]


def test_frozen_and_unused_layers_are_skipped():
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_mlp()
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.net(x)

    model = WithUnused()
    model.net[1].weight.requires_grad_(False)
    w = model.net[1].weight.clone()
    report = sylvester_init_(model, torch.randn(30, 1, 4, 4), torch.arange(3).repeat(10))
    assert torch.equal(model.net[1].weight, w)
    assert "frozen" in report.skipped["net.1"] and "not executed" in report.skipped["unused"]
    assert [r.name for r in report.layers] == ["net.3", "net.5"]


def test_grouped_and_depthwise_convs_are_solved_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    x = torch.randn(30, 4, 6, 6)
    report = sylvester_init_(model, x, torch.arange(3).repeat(10), latent="pca", patches_per_image=None, scale="solve")
    assert [(r.groups, r.in_features, r.out_features) for r in report.layers] == [(2, 18, 4), (8, 9, 1), (1, 8, 3)]
    # Group g's filters only see group g's channels: the fit equals a fit on that slice alone.
    rows = layer_rows(model[0], x, None).x
    fit = fit_layer(
        rows[:, 2:].reshape(rows.shape[0], -1).double(),
        PCACode().fit(rows[:, 2:].reshape(rows.shape[0], -1).double(), 4),
        10.0,
        True,
    )
    torch.testing.assert_close(model[0].weight[4:].reshape(4, -1).double(), fit.weight, rtol=1e-4, atol=1e-5)


def test_half_precision_model_gets_finite_weights():
    model = tiny_cnn().to(torch.bfloat16)
    x, y = _data()
    sylvester_init_(model, x.to(torch.bfloat16), y)
    assert all(torch.isfinite(p).all() and p.dtype == torch.bfloat16 for p in model.parameters())


def test_bad_arguments():
    model, x, y = tiny_mlp(), torch.randn(6, 1, 4, 4), torch.arange(3).repeat(2)
    with pytest.raises(ValueError, match="layers must be"):
        sylvester_init_(model, x, y, layers="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lam must be a finite number > 0"):
        sylvester_init_(model, x, y, lam=0)
    with pytest.raises(ValueError, match="patches_per_image"):
        sylvester_init_(model, x, y, patches_per_image=0)
    with pytest.raises(ValueError, match="head 'nope'"):
        sylvester_init_(model, x, y, head="nope")
    with pytest.raises(SylvesterInitError, match="forward failed"):
        sylvester_init_(model, torch.randn(6, 5), y)
    with pytest.raises(SylvesterInitError, match="NaN/Inf"):
        sylvester_init_(model, torch.full((6, 1, 4, 4), float("nan")), y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="returns 3 values per sample, but there are 6 classes"):
        sylvester_init_(model, x, torch.tensor([0, 1, 2, 3, 4, 5]))  # refused at the probe
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    head = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    with pytest.raises(SylvesterInitError, match="one output per class"):  # a named head: its own check
        sylvester_init_(model, x, torch.tensor([0, 1, 2, 3, 4, 5]), head=head)


@pytest.mark.parametrize(
    ("width", "labels", "num_classes", "refused"),
    [(3, 3, None, False), (5, 3, None, False), (7, 3, None, True), (2, 3, None, True), (5, 3, 3, True)],
)
def test_logits_that_cannot_take_the_one_hot_code_are_refused_at_the_probe(width, labels, num_classes, refused):
    """Without num_classes the class count is the largest label + 1 (up to twice as many outputs pass);
    with it the width must match."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, width))
    x, y = torch.randn(12, 4), torch.arange(labels).repeat(12 // labels)
    if refused:
        with pytest.raises(ValueError, match=f"returns {width} values per sample"):
            sylvester_init_(model, x, y, num_classes=num_classes)
    else:
        sylvester_init_(model, x, y, num_classes=num_classes)


def test_streaming_matches_single_pass_without_batchnorm():
    torch.manual_seed(0)
    a = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    b = nn.Sequential(*[m for m in __import__("copy").deepcopy(a)])
    x, y = _data(20)
    # float64 products: float32 blocks would be cut differently in the two runs (~1e-6 apart)
    r1 = sylvester_init_(a, x, y, patches_per_image=None, gram_dtype=None)
    r2 = sylvester_init_(b, x, y, patches_per_image=None, batch_size=7, gram_dtype=None)
    assert r1.passes == 1 and r2.passes == 3
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_streaming_with_batchnorm_recomputes_running_stats():
    torch.manual_seed(0)
    model = tiny_resnet()
    x, y = _data(20)
    report = sylvester_init_(model, x, y, batch_size=15, patches_per_image=4)  # 4 equal batches
    assert report.passes == len(report.layers) + 1
    bn = model[1]
    model.eval()
    with torch.no_grad():
        out = bn(model[0](x))
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # running mean = mean over all batches
    assert bn.momentum == 0.1


def test_statistics_path_matches_rows_path():
    from lightning_sylv.layer_fit import moments_from_rows, solve_moments
    from lightning_sylv.stats import InputStats

    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
        + 3
    )
    y = torch.randint(0, 4, (200,), generator=g)
    for code, out in ((PCACode(), 20), (PCACode(), 5), (OneHotCode(), 4)):
        for bias in (True, False):
            st = InputStats.from_rows(x[:90], y[:90], 4) + InputStats.from_rows(x[90:], y[90:], 4)
            via_stats = solve_moments(code.moments(st, out, bias, torch.Generator().manual_seed(1)), 10.0)
            s = code.fit(x, out, labels=y, generator=torch.Generator().manual_seed(1))
            via_rows = solve_moments(moments_from_rows(x, s, bias), 10.0)
            torch.testing.assert_close(via_stats.weight, via_rows.weight, rtol=1e-6, atol=1e-8)
            if bias:
                torch.testing.assert_close(via_stats.bias, via_rows.bias, rtol=1e-6, atol=1e-8)


def test_rows_only_code_cannot_stream():
    from lightning_sylv.codes import LatentCode

    class RowsOnly(LatentCode):
        name = "rows"

        def fit(self, x, out_features, labels=None, generator=None):
            return x[:, :out_features]

    model = tiny_mlp()
    x, y = _data(5)
    with pytest.raises(ValueError, match="needs all rows at once"):
        sylvester_init_(model, x, y, latent=RowsOnly(), batch_size=4)
    report = sylvester_init_(model, x, y, latent=RowsOnly())  # single batch: fine
    assert report.layers[0].code == "rows"


def test_explicit_layer_list_and_per_layer_codes():
    torch.manual_seed(0)
    model = tiny_mlp()
    x, y = _data()
    w_first = model[1].weight.clone()
    report = sylvester_init_(model, x, y, layers=["3", "5"], codes={"3": "pca"})
    assert [r.name for r in report.layers] == ["3", "5"]
    assert torch.equal(model[1].weight, w_first)
    assert "not selected" in report.skipped["1"]
    with pytest.raises(ValueError, match=r"layers=\['9'\] matches none of the model's layers"):
        sylvester_init_(model, x, y, layers=["9"])
    patterned = sylvester_init_(tiny_mlp(), x, y, layers=["[35]"])  # fnmatch patterns, as the callback's
    assert [r.name for r in patterned.layers] == ["3", "5"]
    with pytest.raises(ValueError, match=r"codes given for \['9'\]"):
        sylvester_init_(model, x, y, codes={"9": "pca"})


def test_infinite_lambda_is_least_squares():
    from lightning_sylv.layer_fit import fit_layer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g, dtype=torch.float64)
    w_true = torch.randn(3, 6, generator=g, dtype=torch.float64)
    s = x @ w_true.T + 0.5
    fit = fit_layer(x, s, float("inf"), fit_bias=True)
    torch.testing.assert_close(fit.weight, w_true)
    torch.testing.assert_close(fit.bias, torch.full((3,), 0.5, dtype=torch.float64))
    assert fit.encoding_loss < 1e-12 and fit.residual < 1e-10
    # Finite but large lambda approaches the same solution.
    near = fit_layer(x, s, 1e8, fit_bias=True)
    torch.testing.assert_close(near.weight, w_true, rtol=1e-5, atol=1e-6)


def test_on_layer_progress_callback():
    seen = []
    x, y = _data()
    sylvester_init_(tiny_mlp(), x, y, on_layer=lambda r, done, total: seen.append((r.name, done, total)))
    assert seen == [("1", 1, 3), ("3", 2, 3), ("5", 3, 3)]
    seen.clear()
    sylvester_init_(tiny_mlp(), x, y, batch_size=16, on_layer=lambda r, done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(("latent", "tol"), [("pca", 1e-3), ("rotated_pca", 2e-2)])
def test_float32_gram_products_match_float64_on_real_digits(latent, tol):
    """gram_dtype=float32 ("mixed" precision) is safe: same weights to ~1e-4 (deep layers ~1e-3 with
    plain PCA; a rotation mixes the least certain directions into every unit: ~1e-2), same predictions."""
    from sklearn.datasets import load_digits

    from lightning_sylv.models import build_network

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(data.target)
    nets = []
    for gram_dtype in (None, torch.float32):
        torch.manual_seed(0)
        net = build_network("cnn", (1, 8, 8), 10)
        sylvester_init_(net, x[:500], y[:500], latent=latent, gram_dtype=gram_dtype, patches_per_image=16)
        nets.append(net.eval())
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        if a.is_floating_point():
            rel = float((a - b).norm() / a.norm().clamp_min(1e-12))
            assert rel < tol, (name, rel)
    with torch.no_grad():
        pred = [net(x[500:]).argmax(1) for net in nets]
    assert float((pred[0] == pred[1]).float().mean()) > 0.99


def test_input_stats_blockwise_low_precision_gram():
    from lightning_sylv.stats import GRAM_BLOCK, InputStats

    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2 * GRAM_BLOCK + 17, 40, generator=g)) + 1.0  # mean >> spread of some entries
    ref = InputStats.from_rows(x.double())
    low = InputStats.from_rows(x, dtype=torch.float64, gram_dtype=torch.float32)
    assert low.gram_x.dtype == torch.float64 and torch.equal(low.gram_x, low.gram_x.T)
    torch.testing.assert_close(low.gram_x, ref.gram_x, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        low.covariance(), ref.covariance(), rtol=2e-5, atol=2e-5 * float(ref.covariance().abs().max())
    )
    same = InputStats.from_rows(x.double(), gram_dtype=torch.float64)
    torch.testing.assert_close(same.gram_x, ref.gram_x, rtol=0, atol=0)


def test_float32_gram_products_tolerate_rounding_on_singular_inputs():
    """Rank-deficient inputs (duplicated features) with float32 products: tiny negative eigenvalues of
    XᵀX from rounding are within the precision-aware tolerance, not a 'not PSD' failure."""
    g = torch.Generator().manual_seed(0)
    base = torch.relu(torch.randn(6000, 40, generator=g)) * torch.logspace(0, -3, 40) + 3.0
    x = torch.cat([base, base, 0.5 * base], dim=1)  # rank 40 of 120 columns, raw (uncentred) Gram
    net = nn.Sequential(nn.Linear(120, 30, bias=False), nn.ReLU(), nn.Linear(30, 3))
    y = torch.arange(3).repeat(2000)
    rep = sylvester_init_(net, x, y, gram_dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert len(rep.layers) == 2


def test_patch_statistics_in_gather_order_match_unfold():
    """The sums formed in the gather's (K, C) memory order and reordered equal those of F.unfold's (C, K) rows."""
    from lightning_sylv.layer.collect import gram_stats as _gram_stats
    from lightning_sylv.rows import conv_patches
    from lightning_sylv.stats import InputStats

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    conv = nn.Conv2d(5, 4, (3, 2), padding=1, bias=False).double()
    rows = conv_patches(x, conv, None)
    assert rows.x.transpose(1, 2).is_contiguous()  # the layout the fast path relies on
    stack = _gram_stats(rows.x, 1, y.repeat_interleave(rows.per_sample), 3, torch.float64, None)
    fast = InputStats(stack.n, stack.sum_x[0], stack.gram_x[0], stack.counts, stack.class_sums[0])
    ref_rows = torch.nn.functional.unfold(x, (3, 2), padding=1).transpose(1, 2).reshape(-1, 5 * 6)  # (C, K) order
    ref = InputStats.from_rows(ref_rows, y.repeat_interleave(rows.per_sample), 3)
    for name in ("n", "sum_x", "gram_x", "counts", "class_sums"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-12, atol=1e-12)


def test_input_stats_low_precision_row_sums():
    from lightning_sylv.stats import GRAM_BLOCK, InputStats

    x = torch.rand(3 * GRAM_BLOCK + 5, 7, generator=torch.Generator().manual_seed(0)) + 100.0
    low = InputStats.from_rows(x, dtype=torch.float64, gram_dtype=torch.float32)
    torch.testing.assert_close(low.sum_x, x.double().sum(0), rtol=1e-6, atol=0)


class ViewFlattenCNN(nn.Module):
    """Flattens with ``.view``, which an activation in channels-last layout does not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).view(x.shape[0], -1))


def _rgb_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data()
    g = torch.Generator().manual_seed(1)
    return x.repeat(1, 3, 1, 1) + 0.3 * torch.randn(len(y), 3, 4, 4, generator=g), y


def test_init_pass_runs_channels_last_on_cpu_with_the_same_result(monkeypatch):
    x, y = _rgb_data()
    torch.manual_seed(0)
    model = tiny_resnet(3)
    plain = tiny_resnet(3)
    plain.load_state_dict(model.state_dict())
    seen: list[bool] = []
    handle = model[3].conv2.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last) and not a[0].is_contiguous())
    )
    report = sylvester_init_(model, x, y, dtype=torch.float64)
    handle.remove()
    assert seen[-1], "the initialization pass should feed the convolutions channels-last activations"
    assert all(p.is_contiguous() for p in model.parameters())  # the weights keep their layout
    assert x.is_contiguous()  # the caller's inputs are untouched

    monkeypatch.setattr("lightning_sylv.passes.hooks.channels_last", lambda t: t)
    ref = sylvester_init_(plain, x, y, dtype=torch.float64)
    # The first layer sees the same values gathered in the same order: bit-identical weights. Later
    # layers see activations that differ by float rounding only.
    assert torch.equal(model[0].weight, plain[0].weight)
    for a, b in zip(report.layers, ref.layers):
        assert a.encoding_loss == pytest.approx(b.encoding_loss, rel=1e-3, abs=1e-6), a.name


def test_forward_that_needs_the_default_layout_runs_as_given(monkeypatch):
    x, y = _rgb_data()
    torch.manual_seed(0)
    model = ViewFlattenCNN()
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    plain = ViewFlattenCNN()
    plain.load_state_dict(model.state_dict())
    sylvester_init_(model, x, y)  # probes channels-last on two samples, then falls back
    monkeypatch.setattr("lightning_sylv.passes.hooks.channels_last", lambda t: t)
    sylvester_init_(plain, x, y)
    for (name, p), q in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(p, q), name


class _ThreadAllReduce:
    """An all-reduce (sum, fixed order) between threads that stand in for processes."""

    def __init__(self, world: int) -> None:
        import threading

        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list = [None] * world

    def for_rank(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total

        return reduce


def test_uneven_shards_give_every_process_the_same_weights():
    # 9 samples on 2 "processes" (5 + 4): the patch draws consume the shared generator unevenly, but
    # the first conv's random code fills (24 outputs from 9 input dims) must agree across processes.
    import threading

    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(1, 24, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 36, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 1, 6, 6, generator=g), torch.arange(9) % 3
    shards = [(x[0::2], y[0::2]), (x[1::2], y[1::2])]
    models = [copy.deepcopy(base) for _ in shards]
    comm = _ThreadAllReduce(len(shards))
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            sylvester_init_(models[rank], *shards[rank], patches_per_image=4, reduce=comm.for_rank(rank))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), f"{name} differs between processes"


def test_a_failure_on_one_process_fails_every_process_instead_of_hanging():
    import threading

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 4, generator=g), torch.arange(12) % 3
    bad = x[1::2].clone()
    bad[0, 0] = float("nan")
    shards = [(x[0::2], y[0::2]), (bad, y[1::2])]
    models = [copy.deepcopy(base) for _ in shards]
    comm = _ThreadAllReduce(len(shards))
    errors: dict[int, BaseException] = {}

    def work(rank: int) -> None:
        try:
            sylvester_init_(models[rank], *shards[rank], reduce=comm.for_rank(rank))
        except BaseException as err:
            errors[rank] = err

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(errors.get(1), SylvesterInitError) and "NaN/Inf" in str(errors[1])
    assert isinstance(errors.get(0), SylvesterInitError) and "another process" in str(errors[0])
    for m in models:  # all or nothing: restored on both
        assert torch.equal(m[0].weight, base[0].weight)


def test_a_refusal_of_the_logits_on_one_process_is_raised_on_every_process():
    """Labels differ between processes: one sees a class the head has no output for. Every process must
    raise (none may wait in the next all-reduce); the one that refused says why."""
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    models = [model, copy.deepcopy(model)]
    shards = [(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])), (torch.randn(6, 4), torch.tensor([0, 1, 3] * 2))]
    comm = _ThreadAllReduce(2)
    errors: dict[int, BaseException] = {}

    def work(rank: int) -> None:
        try:
            sylvester_init_(models[rank], *shards[rank], reduce=comm.for_rank(rank))
        except BaseException as err:  # surfaced below
            errors[rank] = err

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a process is still waiting in an all-reduce"
    assert isinstance(errors[0], ValueError) and "another process refused" in str(errors[0])
    assert isinstance(errors[1], ValueError) and "returns 3 values per sample, but there are 4 classes" in str(
        errors[1]
    )
