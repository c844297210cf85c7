"""Low-rank layers and their initializers: math against direct computations, layers, engine, callback."""

import copy
import csv
import re
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_sylv import LowRankInit
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.lowrank import (
    METHODS,
    LowRankConv2d,
    LowRankInitError,
    LowRankLayer,
    LowRankLinear,
    data_factors,
    factorize,
    init_low_rank_,
    input_rows,
    linear_error,
    low_rank_init_,
    relu_error,
    relu_factors,
    spectral_factors,
    to_low_rank,
)
from lightning_sylv.models import ImageClassifier, resnet20

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _relu_rows(n: int, d: int, latent: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Correlated, non-negative rows (like post-ReLU activations) with a singular-ish covariance."""
    g = _gen(seed)
    mix = torch.randn(d, latent, generator=g, dtype=D)
    return torch.relu(
        torch.randn(n, latent, generator=g, dtype=D) @ mix.T + shift + 0.05 * torch.randn(n, d, generator=g, dtype=D)
    )


def _lin_obj(w, x, f, b=None) -> float:
    z = x @ w.T if b is None else x @ w.T + b
    return float((f.pre_activation(x) - z).norm())


# ---------------------------------------------------------------------------------------------- math


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
def test_data_aware_never_worse_than_spectral_on_its_objective(seed, with_bias):
    x = _relu_rows(300, 40, 12, seed, shift=0.5)
    x[:, :3] = 0.0  # dead inputs: a singular covariance
    g = _gen(100 + seed)
    w = torch.randn(30, 40, generator=g, dtype=D)
    b = torch.randn(30, generator=g, dtype=D) if with_bias else None
    for rank in (1, 3, 8, 20, 30):
        spec = factorize(w, rank, "spectral", bias=b)
        data = data_factors(w, x, rank, b)
        assert _lin_obj(w, x, data, b) <= _lin_obj(w, x, spec, b) * (1 + 1e-9) + 1e-9
        assert linear_error(w, x, data, b) <= linear_error(w, x, spec, b) + 1e-12
    # Strictly better at low rank on correlated data, and exact at full rank.
    assert linear_error(w, x, data_factors(w, x, 3, b), b) < 0.8 * linear_error(
        w, x, factorize(w, 3, "spectral", bias=b), b
    )
    assert linear_error(w, x, data_factors(w, x, 30, b), b) < 1e-6


def test_data_aware_equals_truncated_svd_under_identity_covariance():
    g = _gen(3)
    n, d, m = 200, 12, 9
    a = torch.randn(n, d, generator=g, dtype=D)
    q, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal columns orthogonal to the ones vector
    x = q * n**0.5  # mean 0, xᵀx / n = I
    assert torch.allclose(x.T @ x / n, torch.eye(d, dtype=D), atol=1e-10)
    w = torch.randn(m, d, generator=g, dtype=D)
    b = torch.randn(m, generator=g, dtype=D)
    for rank in (1, 4, 9):
        u, v = spectral_factors(w, rank)
        for bias in (None, b):
            f = data_factors(w, x, rank, bias, ridge=1e-3)
            assert torch.allclose(f.weight, u @ v, atol=1e-9)
            if bias is not None:
                assert torch.allclose(f.bias, b, atol=1e-9)  # zero-mean inputs: the bias is unchanged
            # Same even split as spectral init: singular values of U and V are √σ.
            assert torch.allclose(torch.linalg.svdvals(f.u), torch.linalg.svdvals(u), atol=1e-9)


def test_relu_aware_error_not_above_linear_and_usually_below():
    gains = []
    for seed in range(3):
        x = _relu_rows(500, 48, 10, seed)
        g = _gen(50 + seed)
        w = torch.randn(40, 48, generator=g, dtype=D) / 48**0.5
        b = 0.1 * torch.randn(40, generator=g, dtype=D)
        for rank in (2, 6, 16):
            for bias in (None, b):
                lin = data_factors(w, x, rank, bias)
                rel = relu_factors(w, x, rank, bias, iters=4)
                e_lin, e_rel = relu_error(w, x, lin, bias), relu_error(w, x, rel, bias)
                assert e_rel <= e_lin + 1e-12
                gains.append(e_lin - e_rel)
    assert max(gains) > 0.01  # the refinement actually does something


def test_relu_aware_with_affine_and_zero_iterations():
    x = _relu_rows(300, 20, 6, 4)
    w = torch.randn(10, 20, generator=_gen(4), dtype=D)
    scale = torch.linspace(-1.0, 2.0, 10, dtype=D)  # negative, zero-crossing and positive channels
    offset = torch.linspace(-0.5, 0.5, 10, dtype=D)
    data = data_factors(w, x, 3)
    rel = relu_factors(w, x, 3, iters=3, affine=(scale, offset))
    assert relu_error(w, x, rel, affine=(scale, offset)) <= relu_error(w, x, data, affine=(scale, offset)) + 1e-12
    zero = relu_factors(w, x, 3, iters=0)
    assert torch.allclose(zero.weight, data.weight) and zero.best_iteration == 0


def test_relu_aware_keeps_its_best_iterate_when_a_refinement_step_gets_worse(monkeypatch):
    """The safeguard: an iterate with a larger ReLU error than an earlier one is never returned."""
    import importlib

    fz = importlib.import_module("lightning_sylv.lowrank.factorize")  # the package re-exports a function of that name

    x = _relu_rows(300, 24, 6, 7)
    w = torch.randn(16, 24, generator=_gen(7), dtype=D) / 24**0.5
    data = data_factors(w, x, 3)
    calls = []
    original = fz._rrr

    def spoiled(*args, **kwargs):  # the first refinement is genuine, later ones flip V's sign
        u, v = original(*args, **kwargs)
        calls.append(1)
        return (u, v) if len(calls) == 1 else (u, -v)

    monkeypatch.setattr(fz, "_rrr", spoiled)
    rel = relu_factors(w, x, 3, iters=4)
    assert len(calls) == 4
    assert rel.best_iteration in (0, 1)
    monkeypatch.setattr(fz, "_rrr", original)
    first = relu_factors(w, x, 3, iters=1)
    assert torch.equal(rel.weight, first.weight)  # the genuine step (or the start), not the last
    assert relu_error(w, x, rel) <= relu_error(w, x, data) + 1e-12


def test_factorize_argument_errors_name_argument_and_value():
    w = torch.randn(6, 5, dtype=D)
    x = torch.randn(20, 5, dtype=D)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 5\].*got 6"):
        factorize(w, 6, "data", x)
    with pytest.raises(ValueError, match=r"rank .* got 0"):
        spectral_factors(w, 0)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'svd'"):
        factorize(w, 2, "svd", x)
    with pytest.raises(ValueError, match=r"x \(the layer's input rows\) is required by method 'relu'"):
        factorize(w, 2, "relu")
    with pytest.raises(ValueError, match=r"x must be input rows of shape \(n >= 1, 5\)"):
        factorize(w, 2, "data", torch.randn(20, 4, dtype=D))
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0, got -1"):
        data_factors(w, x, 2, ridge=-1)
    with pytest.raises(ValueError, match=re.escape("iters must be an int >= 0, got 1.5")):
        relu_factors(w, x, 2, iters=1.5)
    with pytest.raises(ValueError, match="NaN/Inf"):
        data_factors(w, torch.full((3, 5), float("nan"), dtype=D), 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        data_factors(w, x, 2, torch.zeros(5, dtype=D))


# -------------------------------------------------------------------------------------------- layers


def test_full_rank_layers_compute_the_original_function():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    x = torch.randn(4, 7)
    low = LowRankLinear.from_dense(lin, 5)
    assert isinstance(low, LowRankLayer) and low.rank == 5
    assert torch.allclose(low(x), lin(x), atol=1e-5)
    assert torch.allclose(low.merged_weight(), lin.weight, atol=1e-5)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, padding_mode="reflect")
    img = torch.randn(2, 3, 9, 9)
    lowc = LowRankConv2d.from_dense(conv, 1.0)
    assert lowc.rank == 4 and lowc(img).shape == conv(img).shape == (2, 4, 5, 5)
    assert torch.allclose(lowc(img), conv(img), atol=1e-5)
    assert lowc.full_weight is not None and torch.equal(lowc.full_weight, conv.weight.detach())
    # More inputs than outputs the other way round: full rank is C_in * k * k.
    thin = nn.Conv2d(1, 16, 2, bias=False)
    lowt = LowRankConv2d.from_dense(thin, 4)
    assert lowt.bias is None and lowt.rank == 4
    assert torch.allclose(lowt(img[:, :1]), thin(img[:, :1]), atol=1e-5)


def test_low_rank_layer_shapes_and_rank_validation():
    low = LowRankLinear(10, 6, 3)
    assert low.v.weight.shape == (3, 10) and low.u.weight.shape == (6, 3) and low(torch.randn(2, 10)).shape == (2, 6)
    assert [t.shape for t in low.factor_matrices()] == [(6, 3), (3, 10)]
    conv = LowRankConv2d(4, 8, 3, rank=5, padding=1)
    assert conv.v.weight.shape == (5, 4, 3, 3) and conv.u.weight.shape == (8, 5, 1, 1)
    assert conv.merged_weight().shape == (8, 4, 3, 3) and conv(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 6\] .* got 7"):
        LowRankLinear(10, 6, 7)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 8\] .* got 9"):
        LowRankConv2d(4, 8, 3, rank=9)
    with pytest.raises(ValueError, match=re.escape("rank must be a positive int, got 0.5")):
        LowRankLinear(10, 6, 0.5)
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        LowRankLinear(0, 6, 1)
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
        LowRankConv2d(4, 8, (3, 0), rank=2)
    with pytest.raises(ValueError, match=r"factors must have shapes \(6, 3\) and \(3, 10\)"):
        low.set_factors(torch.zeros(6, 2), torch.zeros(2, 10))


def test_to_low_rank_converts_in_place_idempotently_and_validates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = to_low_rank(net, 0.25, exclude=["4"])
    assert set(done) == {"0", "2"} and isinstance(net[0], LowRankLinear) and isinstance(net[4], nn.Linear)
    assert net[0].rank == 2 and net[2].rank == 3  # round(0.25 * min(out, in))
    assert to_low_rank(net, 0.25, exclude=["4"]) == {}  # the factor sublayers are never converted
    assert to_low_rank(net, {"2": 3}) == {}  # same rank: nothing to do
    with pytest.raises(ValueError, match=r"already low-rank with rank 3, but ranks asks for 2"):
        to_low_rank(net, {"2": 2})
    with pytest.raises(ValueError, match=r"ranks\['4'\] must be in \[1, 3\] .* got 5"):
        to_low_rank(net, {"4": 5})
    with pytest.raises(ValueError, match="ranks names layer 'nope'"):
        to_low_rank(net, {"nope": 1})
    factor = next(n for n, m in net.named_modules() if n.startswith("0.") and isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match=rf"'{factor}', a factor inside a low-rank layer"):
        to_low_rank(net, {factor: 1})
    with pytest.raises(ValueError, match="ranks names layer '1' of type ReLU"):
        to_low_rank(net, {"1": 1})
    with pytest.raises(ValueError, match=r"ranks must be a dict of layer ranks or a fraction in \(0, 1\], got 1.5"):
        to_low_rank(net, 1.5)
    with pytest.raises(ValueError, match=re.escape("selects no nn.Linear")):
        to_low_rank(nn.Sequential(nn.Linear(3, 3)), 0.5, layers=["missing*"])
    with pytest.raises(ValueError, match=r"layer .0. is a grouped convolution \(groups=2\)"):
        to_low_rank(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), {"0": 1})
    with pytest.warns(UserWarning, match="does not reduce its parameter count"):
        to_low_rank(nn.Sequential(nn.Linear(4, 4)), 1.0)


def test_input_rows_are_the_original_convolution_patches_and_conv_math_is_consistent():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, stride=1, padding=1)
    low = LowRankConv2d.from_dense(conv, 3)
    x = torch.relu(torch.randn(16, 6, 8, 8) + 0.3)
    rows = input_rows(low, x, None)
    assert rows.shape == (16 * 64, 54)
    # Rows times the reshaped weight reproduce the convolution's output at every position.
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(rows @ conv.weight.reshape(12, -1).T + conv.bias, out, atol=1e-4)
    errs = {}
    for method in METHODS:
        layer = copy.deepcopy(low)
        init_low_rank_(layer, x_rows=rows, method=method)
        with torch.no_grad():
            errs[method] = float((layer(x) - conv(x)).norm() / conv(x).norm())
    assert errs["data"] < errs["spectral"]


def test_init_low_rank_uses_stored_weight_and_validates():
    lin = nn.Linear(9, 7)
    low = LowRankLinear.from_dense(lin, 2)
    x = torch.randn(50, 9)
    fit = init_low_rank_(low, x_rows=x, method="relu", relu_iters=2)
    assert fit.rank == 2 and fit.rows == 50 and fit.relu_error <= fit.spectral_relu_error + 1e-9
    assert low.u.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="x \\(the layer's input rows\\) is required by method 'data'"):
        init_low_rank_(low, method="data")
    with pytest.raises(ValueError, match=r"full_weight must have shape \(7, 9\)"):
        init_low_rank_(low, torch.zeros(9, 7), x_rows=x)
    with pytest.raises(TypeError, match="layer must be a LowRankLinear or LowRankConv2d, got Linear"):
        init_low_rank_(lin, x_rows=x)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'exact'"):
        init_low_rank_(low, x_rows=x, method="exact")


# -------------------------------------------------------------------------------------------- engine


def _small_resnet() -> nn.Module:
    torch.manual_seed(0)
    net = resnet20()
    to_low_rank(net, 0.25, layers=["layer1.*.conv*", "layer3.2.conv1"])
    return net


def test_engine_one_pass_finds_batchnorms_and_beats_spectral():
    net = _small_resnet()
    x = torch.randn(24, 3, 32, 32)
    rep = low_rank_init_(net, x, method="relu", relu_iters=2, patches_per_image=8)
    assert [r.name for r in rep.layers][:2] == ["layer1.0.conv1", "layer1.0.conv2"] and len(rep.layers) == 7
    assert all(r.batchnorm == r.name.replace("conv", "bn") for r in rep.layers)
    assert all(r.fit.relu_error < r.fit.spectral_relu_error for r in rep.layers)
    assert rep.passes == 1
    net.eval()
    assert torch.isfinite(net(x[:2])).all()


def test_engine_sylvester_full_weight_initializes_every_layer():
    net = _small_resnet()
    x = torch.randn(30, 3, 32, 32)
    rep = low_rank_init_(net, x, torch.arange(30) % 10, method="data", full_weight="sylvester", patches_per_image=4)
    assert len(rep.layers) == 7 and {r.full_weight for r in rep.layers} == {"sylvester"}
    names = [r.name for r in rep.sylvester]
    assert names[0] == "stem.0" and names[-1] == "head" and rep.sylvester[-1].code == "onehot"


def test_engine_restores_the_model_on_failure():
    net = _small_resnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    x[3:] = float("nan")  # the trace pass (2 samples) succeeds, the main pass fails
    with pytest.raises(LowRankInitError, match="restored"):
        low_rank_init_(net, x, method="data")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="no LowRankLinear/LowRankConv2d layer"):
        low_rank_init_(nn.Sequential(nn.Linear(2, 2)), torch.zeros(2, 2))
    refused = re.escape("full_weight must be one of ['current', 'sylvester'], got 'pretrained'")
    with pytest.raises(ValueError, match=refused):
        low_rank_init_(net, x, full_weight="pretrained")
    # Caught before the pass, as ValueError (not a LowRankInitError after a restore).
    with pytest.raises(ValueError, match="relu_iters must be an int >= 0, got -1"):
        low_rank_init_(net, x, relu_iters=-1)
    with pytest.raises(ValueError, match=re.escape("ridge must be a finite number >= 0, got -1.0")):
        low_rank_init_(net, x, ridge=-1.0)


# ------------------------------------------------------------------------------------------ callback


def test_callback_converts_before_optimizers_and_trains_the_factors(tmp_path, make_trainer):
    model = ImageClassifier(arch="mlp", hidden=[32, 32])
    cb = LowRankInit(ranks=0.25, method="relu", exclude=["net.head"], samples_per_class=10, relu_iters=2)
    seen = {}

    class Spy(Callback):  # a plain Callback recording the factors right after init
        def on_fit_start(self, trainer, pl_module):
            seen["u"] = pl_module.net.features[1].u.weight.detach().clone()
            seen["opt"] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    make_trainer(tmp_path, [cb, Spy()], limit_train_batches=3).fit(model, datamodule=DigitsDataModule(seed=0))
    layer = model.net.features[1]
    assert isinstance(layer, LowRankLinear) and layer.rank == 8 and isinstance(model.net.head, nn.Linear)
    assert cb.converted == ["net.features.1", "net.features.3"] and cb.initialized
    assert all(id(p) in seen["opt"] for p in layer.parameters())
    assert not torch.equal(layer.u.weight, seen["u"])  # the optimizer trained the factors
    assert layer.full_weight is None  # freed after initialization (keep_full=False)
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_*/metrics.csv")).open()))
    logged = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("lowrank/")}
    assert {
        "lowrank/relu_error",
        "lowrank/spectral_relu_error",
        "lowrank/init_time_s",
        "lowrank/initial_accuracy",
    } <= set(logged)
    assert logged["lowrank/relu_error"] < logged["lowrank/spectral_relu_error"]


def test_callback_skips_on_resume_and_keeps_the_checkpoint(tmp_path, make_trainer):
    dm = DigitsDataModule(seed=0)
    cb = LowRankInit(ranks={"net.features.1": 4}, method="data", samples_per_class=5, evaluate=False, verbose=False)
    model = ImageClassifier(arch="mlp", hidden=[16])
    trainer = make_trainer(tmp_path, [cb], logger=False)
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "net.features.1.u.weight" in saved and not any("full_weight" in k for k in saved)
    fresh = ImageClassifier(arch="mlp", hidden=[16])  # full-rank again: setup converts before loading
    cb2 = LowRankInit(ranks={"net.features.1": 4}, method="data", samples_per_class=5, evaluate=False, verbose=False)
    make_trainer(tmp_path, [cb2], logger=False, max_epochs=1, limit_train_batches=0).fit(
        fresh, datamodule=dm, ckpt_path=ckpt
    )
    assert cb2.report is None and cb2.initialized
    assert torch.equal(fresh.net.features[1].u.weight, saved["net.features.1.u.weight"])
    assert fresh.net.features[1].full_weight is None  # keep_full=False: no full-rank copy kept on resume


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranks": 0}, "ranks must be a fraction in (0, 1] or a dict of layer ranks, got 0"),
        ({"ranks": 1.5}, "ranks must be a fraction in (0, 1] or a dict of layer ranks, got 1.5"),
        ({"ranks": {"a": 0}}, "ranks must map layer names to positive ints or fractions in (0, 1], got 'a': 0"),
        ({"ranks": {"a": 2}, "exclude": ["b"]}, "layers and exclude only apply to a float ranks"),
        ({"method": "svd"}, "method must be one of ['data', 'relu', 'spectral'], got 'svd'"),
        ({"full_weight": "x"}, "full_weight must be one of ['current', 'sylvester'], got 'x'"),
        ({"samples_per_class": 0}, "samples_per_class must be a positive int, got 0"),
        ({"patches_per_image": 0}, "patches_per_image must be a positive int or None, got 0"),
        ({"relu_iters": -1}, "relu_iters must be an int >= 0, got -1"),
        ({"ridge": float("nan")}, "ridge must be a finite number >= 0, got nan"),
        ({"lam": 0}, "lam must be a finite number > 0, got 0"),
        ({"layers": "net.*"}, "layers must be a list of layer-name patterns or None, got 'net.*'"),
        ({"keep_full": "yes"}, "keep_full must be a bool, got 'yes'"),
        ({"seed": 1.0}, "seed must be an int, got 1.0"),
        ({"eval_batches": 0}, "eval_batches must be a positive int or None, got 0"),
    ],
)
def test_callback_validates_arguments_eagerly(kwargs, message):
    with pytest.raises(ValueError) as err:
        LowRankInit(**kwargs)
    assert message in str(err.value)


def test_cli_builds_the_callback_from_flags(tmp_path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    import lightning_sylv.cli  # noqa: F401 - registers the package's classes by short name, as the CLI does

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-sylv"])
    cli = LightningCLI(
        args=[
            "fit",
            "--seed_everything=0",
            "--model=ImageClassifier",
            "--model.arch=mlp",
            "--data=DigitsDataModule",
            "--trainer.callbacks+=LowRankInit",
            "--trainer.callbacks.ranks=0.5",
            "--trainer.callbacks.method=data",
            "--trainer.callbacks.exclude=[net.head]",
            "--trainer.callbacks.samples_per_class=5",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
        save_config_kwargs={"overwrite": True},
    )
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, LowRankInit))
    assert cb.ranks == 0.5 and cb.settings.method == "data" and cb.exclude == ["net.head"] and cb.initialized
    assert isinstance(cli.model.net.features[1], LowRankLinear) and cli.model.net.features[1].rank == 32


def test_callback_draws_its_subset_from_init_dataset_when_the_datamodule_defines_it(tmp_path, make_trainer):
    class WithInitData(DigitsDataModule):
        def init_dataset(self):
            x, y = self.train_dataset[:][0][:20], torch.arange(20) % 10  # 2 per class
            return torch.utils.data.TensorDataset(x, y)

    cb = LowRankInit(
        ranks=0.25, method="data", exclude=["net.head"], samples_per_class=5, evaluate=False, verbose=False
    )
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=1).fit(
        ImageClassifier(arch="mlp", hidden=[16]), datamodule=WithInitData(seed=0)
    )
    assert cb.initialized and cb.subset_size == 20  # not 50: the training set has >= 5 per class
    assert cb.report is not None and cb.report.layers[0].fit.rows == 20


def test_callback_shows_its_layer_progress_bar(tmp_path, capsys, monkeypatch, make_trainer):
    """The bar's on_layer reaches low_rank_init_ (it used to be dropped by a signature check)."""
    from lightning_sylv.callbacks import _logging

    monkeypatch.setattr(_logging, "PROGRESS_DELAY_S", 0.0)  # show it even for a fast init
    cb = LowRankInit(ranks=0.25, method="data", exclude=["net.head"], samples_per_class=3, evaluate=False)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0, enable_progress_bar=True).fit(
        ImageClassifier(arch="mlp", hidden=[16, 16]), datamodule=DigitsDataModule(seed=0)
    )
    out = capsys.readouterr()
    assert re.search(r"LowRankInit: +\d+%\|", out.out + out.err), (out.out + out.err)[-1000:]


def test_low_rank_init_reports_each_layer_to_on_layer():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    to_low_rank(model, 0.5)
    seen = []
    low_rank_init_(model, torch.randn(20, 6), method="data", on_layer=lambda job, i, n: seen.append((job.name, i, n)))
    assert seen == [("0", 1, 2), ("2", 2, 2)]
