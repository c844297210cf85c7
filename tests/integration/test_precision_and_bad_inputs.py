"""Precision settings, determinism and the bad inputs a real run can throw at the callback."""

import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_sylv import SylvesterInit
from lightning_sylv.engine import SylvesterInitError


def _data(n_per_class: int = 12, classes: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat(n_per_class)
    x = torch.randn(classes, 1, 6, 6, generator=g)[y] + 0.3 * torch.randn(len(y), 1, 6, 6, generator=g)
    return TensorDataset(x, y)


class Net(LightningModule):
    def __init__(self, classes: int = 4, extra: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.extra = extra
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.body(x)
        if self.extra is not None:
            h = self.extra(h)
        return self.head(h)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(model, cb, train, val=None, **kwargs):
    opts = dict(
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    opts.update(kwargs)
    Trainer(callbacks=[cb], **opts).fit(
        model,
        train_dataloaders=DataLoader(train, batch_size=8),
        val_dataloaders=None if val is None else DataLoader(val, batch_size=16),
    )


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "bf16-true", "16-true"])
def test_precisions_give_finite_weights_of_the_right_dtype(precision):
    model = Net()
    cb = SylvesterInit(samples_per_class=6, verbose=False)
    ds = _data()
    _fit(model, cb, ds, ds, precision=precision, limit_train_batches=0)
    dtypes = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}
    expected = dtypes.get(precision, torch.float32)
    for name, p in model.named_parameters():
        assert p.dtype == expected and torch.isfinite(p).all(), name
    for b in model.buffers():
        if b.is_floating_point():
            assert torch.isfinite(b).all()
    assert cb.metrics["sylvester/initial_accuracy"] > 0.9


@pytest.mark.parametrize("cb_precision", ["mixed", "float32"])
def test_autocast_of_a_mixed_precision_trainer_does_not_reach_the_statistics(cb_precision):
    # The first layer sees the same float32 data under both trainers; under bf16 autocast its float32
    # Gram products would run in bfloat16 (weights off by ~1e-2) unless the engine turns autocast off.
    ds = _data()
    weights = {}
    for trainer_precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        model = Net()
        cb = SylvesterInit(samples_per_class=6, precision=cb_precision, verbose=False, evaluate=False)
        _fit(model, cb, ds, precision=trainer_precision, limit_train_batches=0)
        weights[trainer_precision] = model.body[0].weight.detach().clone()
    assert torch.equal(weights["32-true"], weights["bf16-mixed"])


def test_same_seed_same_weights_other_seed_other_subset():
    ds = _data(20)
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = Net()
        cb = SylvesterInit(samples_per_class=5, seed=seed, verbose=False, evaluate=False)
        _fit(model, cb, ds, limit_train_batches=0)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k])
    assert not torch.equal(states[0]["head.weight"], states[2]["head.weight"])


def test_rng_state_untouched():
    from lightning_sylv.engine import sylvester_init_

    model, ds = Net(), _data()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sylvester_init_(model, ds.tensors[0], ds.tensors[1])
    assert torch.equal(torch.rand(3), expected)


def test_missing_class_gets_zero_head_row_with_warning():
    ds = _data(classes=3)  # the head has 4 outputs; class 3 never appears
    model = Net(classes=4)
    with pytest.warns(UserWarning, match=r"classes \[3\] have no samples"):
        _fit(model, SylvesterInit(samples_per_class=5, verbose=False, evaluate=False), ds, limit_train_batches=0)
    assert model.head.weight[3].abs().max() == 0 and model.head.bias[3] == 0


def test_fewer_samples_than_input_dims_is_solved_min_norm():
    # 2 samples/class x 4 classes = 8 rows for a 32-dim head input: rank-deficient statistics.
    model = Net()
    cb = SylvesterInit(samples_per_class=2, patches_per_image=1, verbose=False, evaluate=False)
    _fit(model, cb, _data(), limit_train_batches=0)
    head = cb.report.layers[-1]
    assert head.rows == 8 and head.in_features == 32
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Mix(nn.Module):
    """A layer type the initializer does not know: a 2-D ``weight`` it cannot fit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def forward(self, x):
        return x @ self.weight


def test_unsupported_layer_is_skipped_warned_and_reported():
    model = Net(extra=Mix(32))
    before = model.extra.weight.detach().clone()
    cb = SylvesterInit(samples_per_class=3, verbose=False, evaluate=False)
    with pytest.warns(UserWarning, match=r"extra \(Mix\)"):
        _fit(model, cb, _data(), limit_train_batches=0)
    assert "unsupported layer type Mix" in cb.report.skipped["extra"]
    assert torch.equal(model.extra.weight, before)


def test_a_parameter_that_is_not_a_layer_is_reported_untouched_without_a_warning():
    """PReLU's slope (1-D) is a parameter, not a layer: kept, listed in ``report.untouched``."""
    model = Net(extra=nn.PReLU(32))
    cb = SylvesterInit(samples_per_class=3, verbose=False, evaluate=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="layers the Sylvester initializer does not handle")
        _fit(model, cb, _data(), limit_train_batches=0)
    assert "extra" not in cb.report.skipped
    assert "PReLU" in cb.report.untouched["extra.weight"]
    assert cb.report.initialized_parameters < cb.report.total_parameters


def test_nan_activations_name_the_layer_and_restore():
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ds = _data()
    ds.tensors[0][0, 0, 0, 0] = float("nan")
    ds = TensorDataset(ds.tensors[0][:1].repeat(48, 1, 1, 1), ds.tensors[1])
    with pytest.raises(SylvesterInitError, match=r"layer 'body\.0'.*NaN/Inf"):
        _fit(model, SylvesterInit(samples_per_class=3, verbose=False, evaluate=False), ds, limit_train_batches=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_iterable_dataset_rejected_clearly():
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(8):
                yield torch.zeros(1, 6, 6), i % 4

    with pytest.raises(TypeError, match="iterable-style"):
        _fit(Net(), SylvesterInit(verbose=False, evaluate=False), Stream())


def test_empty_dataset_rejected_clearly():
    empty = TensorDataset(torch.zeros(0, 1, 6, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        Trainer(callbacks=[SylvesterInit(verbose=False)], max_epochs=1, logger=False, enable_progress_bar=False).fit(
            Net(), train_dataloaders=DataLoader(empty, batch_size=4)
        )


def test_forward_failing_on_batch_format_is_explained():
    class Pairs(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return (torch.zeros(5), i % 4)  # the model expects (1, 6, 6) images

    with pytest.raises(SylvesterInitError, match="forward failed on the initialization batch"):
        _fit(Net(), SylvesterInit(verbose=False, evaluate=False), Pairs())


def test_streaming_batch_size_through_the_callback():
    model = Net()
    cb = SylvesterInit(samples_per_class=10, batch_size=8, verbose=False)
    ds = _data()
    _fit(model, cb, ds, ds, limit_train_batches=0)
    assert cb.report.passes == len(cb.report.layers) + 1
    assert cb.metrics["sylvester/initial_accuracy"] > 0.9


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "16-true"])
def test_mixed_statistics_precision_under_every_trainer_precision(precision):
    """precision='mixed' (float32 Gram products, float64 solves) with half- and double-precision activations."""
    model = Net()
    cb = SylvesterInit(samples_per_class=6, verbose=False, precision="mixed")
    ds = _data()
    _fit(model, cb, ds, ds, precision=precision, limit_train_batches=0)
    expected = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}[precision]
    for name, p in model.named_parameters():
        assert p.dtype == expected and torch.isfinite(p).all(), name
    assert cb.metrics["sylvester/initial_accuracy"] > 0.9


def test_the_default_precision_is_float32_products_summed_and_solved_in_float64():
    """``"mixed"`` is the default: the same weights as asking for float32 products explicitly, within
    float32 rounding of the all-float64 solve, and not bit-identical to it."""
    import inspect

    from torch import nn

    from lightning_sylv import SylvesterInit, sylvester_init_

    assert inspect.signature(SylvesterInit).parameters["precision"].default == "mixed"
    x, y = torch.randn(90, 12, generator=torch.Generator().manual_seed(0)), torch.arange(90) % 3
    weights = {}
    runs = {"default": {}, "float32": {"gram_dtype": torch.float32}, "float64": {"gram_dtype": None}}
    for key, kwargs in runs.items():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
        sylvester_init_(net, x, y, **kwargs)
        weights[key] = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert torch.equal(weights["default"], weights["float32"])
    assert not torch.equal(weights["default"], weights["float64"])
    torch.testing.assert_close(weights["default"], weights["float64"], rtol=1e-4, atol=1e-5)
