"""lightning_sylv.scale: solved directions at the own output gain (``scale="own"``) or weight norm (``"norm"``)."""

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.layer_fit import LayerFit
from lightning_sylv.scale import energy_from_rows, energy_from_stats, gain_factor, rescale, weight_energy
from lightning_sylv.stats import InputStats


def _reference_energy(x, w, b):
    out = np.einsum("gnd,god->gno", x, w)
    if b is not None:
        out = out + b[:, None, :]
    return float((out**2).sum())


@pytest.mark.parametrize("with_bias", [True, False])
def test_energies_from_rows_and_from_sums_match_numpy(with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 5, generator=g, dtype=torch.float64) + 2.0
    w = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64) if with_bias else None
    want = _reference_energy(x.numpy(), w.numpy(), None if b is None else b.numpy())
    assert float(energy_from_rows(x, w, b)) == pytest.approx(want, rel=1e-12)
    assert float(energy_from_stats(InputStats.from_rows(x), w, b)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    ("own", "solved", "want"),
    [(4.0, 1.0, 2.0), (0.0, 3.0, 1.0), (1.0, 0.0, 1.0), (float("nan"), 1.0, 1.0), (1.0, float("inf"), 1.0)],
)
def test_gain_factor(own, solved, want):
    assert gain_factor(own, solved) == want


def _mlp(d: int, hidden: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _energy(layer: nn.Linear, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(layer(x).double().square().sum())


def _size(rule: str, layer: nn.Linear, x: torch.Tensor) -> float:
    """What the rule matches: the output energy on ``x`` (``"own"``) or the weight norm (``"norm"``)."""
    return _energy(layer, x) if rule == "own" else float(layer.weight.detach().norm())


@pytest.mark.parametrize("rule", ["own", "norm"])
@pytest.mark.parametrize(
    ("n", "d", "options", "mode"),
    [
        (120, 6, {}, "gram"),  # more rows than inputs: from the sums
        (30, 60, {}, "span"),  # fewer rows than inputs: in an orthonormal basis of the rows' span
        (400, 200, {"solver": "randomized"}, "randomized"),  # a randomized subspace of the rows
        (60, 6, {"latent": "ica"}, "rows"),  # a code that needs the rows themselves
    ],
)
def test_a_rescaled_layer_has_the_solved_directions_at_its_own_size(n, d, options, mode, rule):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g) * 3 + 1, torch.arange(n) % 3
    own, solved, scaled = _mlp(d, 4), _mlp(d, 4), _mlp(d, 4)
    sylvester_init_(solved, x, y, scale="solve", **options)
    report = sylvester_init_(scaled, x, y, scale=rule, **options)
    first = report.layers[0]
    assert first.solver.startswith(mode)
    # Same directions, another size: the own layer's output energy on the same input, or its norm.
    c = first.gain
    assert c != pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(scaled[0].weight, c * solved[0].weight, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scaled[0].bias, c * solved[0].bias, rtol=1e-5, atol=1e-7)
    assert _size(rule, scaled[0], x) == pytest.approx(_size(rule, own[0], x), rel=1e-5)
    assert report.layers[-1].gain == 1.0  # the head keeps the solve's scale by default


def test_norm_and_energy_rules_differ_by_the_inputs_anisotropy():
    # Rows concentrated in one direction: the solved weights follow it, so at the own output energy
    # they are much smaller than the own weights; at the own norm they are as large.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g) * torch.tensor([20.0] + [0.5] * 7)
    y = torch.arange(200) % 3
    own = _mlp(8, 4)
    by_energy, by_norm = copy.deepcopy(own), copy.deepcopy(own)
    sylvester_init_(by_energy, x, y, scale="own", gram_dtype=None)
    sylvester_init_(by_norm, x, y, scale="norm", gram_dtype=None)
    assert float(by_energy[0].weight.detach().norm()) < 0.5 * float(own[0].weight.detach().norm())
    assert float(by_norm[0].weight.detach().norm()) == pytest.approx(float(own[0].weight.detach().norm()), rel=1e-6)
    # Same directions either way.
    cos = F.cosine_similarity(by_energy[0].weight.detach().flatten(), by_norm[0].weight.detach().flatten(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_rescale_by_norm_uses_the_weight_alone():
    w = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)  # norm 5
    fit = LayerFit(w, torch.tensor([[10.0]], dtype=torch.float64), 0.0, 0.0, 0.0, 1.0, 1.0, 0)
    rows = torch.randn(1, 7, 2, dtype=torch.float64)
    scaled, gain = rescale(fit, rows, own=float(weight_energy(torch.ones(1, 1, 2))), by="norm")
    assert gain == pytest.approx(2**0.5 / 5)
    assert float(scaled.weight.detach().norm()) == pytest.approx(2**0.5)
    assert float(scaled.bias) == pytest.approx(10.0 * gain)


def test_norm_scale_of_a_convolution_counts_the_taps_the_solve_sees():
    # A 3 x 3 kernel with padding 1 on a 1 x 1 map sees the input only with its centre tap: the
    # other taps are written as zeros, and the norm matched is the own kernel's centre's.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6, 3))
    own = copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, 1, 1, generator=g), torch.arange(60) % 3
    sylvester_init_(net, x, y, scale="norm")
    w = net[0].weight.detach()
    assert float(w[..., [0, 0, 2, 2], [0, 2, 0, 2]].abs().max()) == 0.0
    assert float(w.norm()) == pytest.approx(float(own[0].weight.detach()[..., 1, 1].norm()), rel=1e-5)


def test_head_scale_own_rescales_the_logits_and_keeps_the_predictions():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=g), torch.arange(90) % 3
    own, solved, scaled = _mlp(6, 8), _mlp(6, 8), _mlp(6, 8)
    sylvester_init_(solved, x, y)
    report = sylvester_init_(scaled, x, y, head_scale="own")
    assert report.layers[0].gain != 1.0
    hidden = torch.relu(scaled[0](x))
    assert _energy(scaled[2], hidden) == pytest.approx(_energy(own[2], hidden), rel=1e-5)
    assert torch.equal(scaled(x).argmax(1), solved(x).argmax(1))


@pytest.mark.parametrize("scale", ["own", "norm"])
def test_a_layer_followed_by_batchnorm_computes_the_same_function(scale):
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.arange(60) % 3
    solved, scaled = copy.deepcopy(base), copy.deepcopy(base)
    sylvester_init_(solved, x, y, scale="solve")
    report = sylvester_init_(scaled, x, y, scale=scale)
    assert all(r.gain != 1.0 for r in report.layers[:-1])
    assert not torch.allclose(scaled[3].weight, solved[3].weight)
    # BatchNorm (recalibrated on the subset) undoes the factor: same features, same head.
    solved.eval(), scaled.eval()
    torch.testing.assert_close(scaled[:-1](x), solved[:-1](x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scaled[-1].weight, solved[-1].weight, rtol=1e-4, atol=1e-4)


def test_a_zero_initialized_layer_keeps_the_solved_scale():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=g), torch.arange(90) % 3
    solved, scaled = _mlp(6, 8), _mlp(6, 8)
    for m in (solved, scaled):
        nn.init.zeros_(m[0].weight), nn.init.zeros_(m[0].bias)
    sylvester_init_(solved, x, y, scale="solve")
    report = sylvester_init_(scaled, x, y, scale="own")
    assert report.layers[0].gain == 1.0
    torch.testing.assert_close(scaled[0].weight, solved[0].weight)


def test_attention_projections_take_their_own_gain():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 5, 8, generator=g) * 4, torch.arange(30) % 3
    own, scaled = Block(), Block()
    scaled.load_state_dict(own.state_dict())
    report = sylvester_init_(scaled, x, y, scale="own", patches_per_image=None)
    gains = {r.name: r.gain for r in report.layers}
    assert gains["attn.in_proj"] != 1.0 and gains["attn.out_proj"] != 1.0
    tokens = x.reshape(-1, 8).double()
    q_own, q_new = own.attn.in_proj_weight[:8].double(), scaled.attn.in_proj_weight[:8].double()
    b_own, b_new = own.attn.in_proj_bias[:8].double(), scaled.attn.in_proj_bias[:8].double()
    energy = lambda w, b: float((tokens @ w.T + b).detach().square().sum())  # noqa: E731
    assert energy(q_new, b_new) == pytest.approx(energy(q_own, b_own), rel=1e-5)


@pytest.mark.parametrize("scale", ["own", "norm"])
def test_processes_agree_on_the_gain_and_match_one_process(scale):
    from tests.test_engine import _ThreadAllReduce

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 6, generator=g) * 2, torch.arange(80) % 3
    whole = _mlp(6, 4)
    sylvester_init_(whole, x, y, scale=scale, head_scale=scale)
    shards = [(x[0::2], y[0::2]), (x[1::2], y[1::2])]
    models = [_mlp(6, 4) for _ in shards]
    comm = _ThreadAllReduce(2)
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            sylvester_init_(models[rank], *shards[rank], scale=scale, head_scale=scale, reduce=comm.for_rank(rank))
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for m in models:
        for a, b in zip(m.parameters(), whole.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("arg", "value"), [("scale", "model"), ("head_scale", None)])
def test_unknown_scales_are_refused(arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be one of"):
        sylvester_init_(_mlp(6, 4), torch.randn(9, 6), torch.arange(9) % 3, **{arg: value})


def test_the_report_shows_each_layers_gain():
    from lightning_sylv.report import format_markdown, format_table, layer_scalars

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=g), torch.arange(90) % 3
    report = sylvester_init_(_mlp(6, 8), x, y)
    gain = report.layers[0].gain
    assert gain != 1.0 and report.layers[1].gain == 1.0
    assert "gain" in format_table(report).splitlines()[0] and f"{gain:.3g}" in format_table(report)
    assert f"| {gain:.3g} |" in format_markdown(report)
    assert layer_scalars(report)["sylvester/layer/0/gain"] == pytest.approx(gain)


def test_the_energy_of_grouped_rows_in_blocks_matches_one_product_and_survives_no_rows():
    from lightning_sylv.scale import energy_from_rows

    x = torch.randn(2000, 49, 96).permute(2, 0, 1)  # (groups, n, d), strided like depthwise patches
    w, b = torch.randn(96, 1, 49), torch.randn(96, 1)
    reference = torch.baddbmm(b.unsqueeze(1), x, w.mT).double().square().sum()
    torch.testing.assert_close(energy_from_rows(x, w, b), reference, rtol=1e-5, atol=0)
    assert float(energy_from_rows(torch.zeros(3, 0, 4), torch.ones(3, 1, 4), torch.ones(3, 1))) == 0.0


def test_the_default_scale_of_a_net_without_normalization_is_the_own_weight_norm():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=g) * 3, torch.arange(90) % 3
    own, default, by_norm = _mlp(6, 8), _mlp(6, 8), _mlp(6, 8)
    sylvester_init_(default, x, y)  # scale="auto"
    sylvester_init_(by_norm, x, y, scale="norm")
    for a, b in zip(default.parameters(), by_norm.parameters()):
        assert torch.equal(a, b)
    assert float(default[0].weight.detach().norm()) == pytest.approx(float(own[0].weight.detach().norm()), rel=1e-5)


def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def test_auto_leaves_a_net_whose_convolutions_all_feed_batchnorm_as_the_own_gain_rule_wrote_it():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.arange(60) % 3
    default, by_energy = _conv_bn_net(), _conv_bn_net()
    report = sylvester_init_(default, x, y)
    sylvester_init_(by_energy, x, y, scale="own")
    assert all(r.gain != 1.0 for r in report.layers[:-1])
    for (name, a), b in zip(default.state_dict().items(), by_energy.state_dict().values()):
        assert torch.equal(a, b), name


def test_auto_gives_each_layer_the_rule_of_its_context():
    # conv 0 feeds BatchNorm: the own output energy; conv 3 feeds a ReLU: the own weight norm.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    own, by_energy = copy.deepcopy(net), copy.deepcopy(net)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, 8, 8, generator=g) * 2, torch.arange(60) % 3
    sylvester_init_(net, x, y)
    sylvester_init_(by_energy, x, y, scale="own")
    assert torch.equal(net[0].weight, by_energy[0].weight)
    assert float(net[3].weight.detach().norm()) == pytest.approx(float(own[3].weight.detach().norm()), rel=1e-5)
    assert float(by_energy[3].weight.detach().norm()) != pytest.approx(float(own[3].weight.detach().norm()), rel=1e-2)


def test_a_layer_job_takes_a_resolved_rule_only():
    from lightning_sylv.codes import PCACode
    from lightning_sylv.layer import LayerJob

    with pytest.raises(ValueError, match="scale must be one of"):
        LayerJob(module=nn.Linear(4, 2), name="fc", code=PCACode(), lam=1.0, patches_per_image=None,
                 generator=torch.Generator(), scale="auto")  # type: ignore[arg-type]  # fmt: skip
