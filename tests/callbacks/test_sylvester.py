import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_sylv import SylvesterInit
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.models import ImageClassifier


def _logged(tmp_path: Path) -> dict[str, float]:
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_*/metrics.csv")).open()))
    out = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if v and k.startswith("sylvester/")})
    return out


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_fit_on_digits_logs_accuracies_and_improves_them(tmp_path, arch, make_trainer):
    cb = SylvesterInit(samples_per_class=20, patches_per_image=8)
    model = ImageClassifier(arch=arch)
    make_trainer(tmp_path, [cb]).fit(model, datamodule=DigitsDataModule(seed=0))
    logged = _logged(tmp_path)
    assert set(logged) == {"sylvester/pre_init_accuracy", "sylvester/initial_accuracy", "sylvester/init_time_s"}
    assert 0 <= logged["sylvester/pre_init_accuracy"] <= 1
    assert logged["sylvester/initial_accuracy"] > 0.8 > logged["sylvester/pre_init_accuracy"]
    assert logged["sylvester/init_time_s"] > 0
    assert cb.initialized and len(cb.report.layers) >= 3


def test_accuracy_matches_torchmetrics_on_val_set(tmp_path, make_trainer):
    from torchmetrics.functional.classification import multiclass_accuracy

    dm = DigitsDataModule(seed=0)
    cb = SylvesterInit(samples_per_class=10)
    model = ImageClassifier(arch="mlp")
    make_trainer(tmp_path, [cb], limit_train_batches=0).fit(model, datamodule=dm)
    model.eval()
    x, y = zip(*[b for b in dm.val_dataloader()])
    acc = multiclass_accuracy(model(torch.cat(x)), torch.cat(y), num_classes=10, average="micro")
    # limit_train_batches=0: no training step ran, so the logged value is the model's accuracy now.
    assert cb.metrics["sylvester/initial_accuracy"] == pytest.approx(float(acc), abs=1e-6)


def test_head_only_leaves_body_bit_identical(tmp_path, make_trainer):
    model = ImageClassifier(arch="cnn")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cb = SylvesterInit(samples_per_class=10, layers="head")
    make_trainer(tmp_path, [cb], limit_train_batches=0).fit(model, datamodule=DigitsDataModule())
    head = cb.report.head
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.startswith(head + ".") for k in changed), changed


class Unlabelled(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i):
        return torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(i))


class UnlabelledModule(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(Unlabelled(), batch_size=8)


def test_head_only_without_labels_fails_clearly(tmp_path, make_trainer):
    with pytest.raises(ValueError, match="no integer class label"):
        make_trainer(tmp_path, [SylvesterInit(layers="head")]).fit(UnlabelledModule())


def test_all_layers_without_labels_runs_unsupervised(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=2)
    with pytest.warns(UserWarning, match="no labels"):
        make_trainer(tmp_path, [cb]).fit(UnlabelledModule())
    assert cb.report.layers[0].code == "rotated_pca" and cb.report.layers[0].rows == 20
    assert "sylvester/initial_accuracy" not in cb.metrics


def test_randomized_solver_through_the_trainer(tmp_path, make_trainer):
    """solver="randomized" reaches the engine: wide hidden layers with few outputs take that path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 24, 24, generator=g)[torch.arange(10).repeat(30)] + 0.3 * torch.randn(300, 1, 24, 24)
    y = torch.arange(10).repeat(30)
    dl = DataLoader(TensorDataset(x, y), batch_size=64)
    cb = SylvesterInit(samples_per_class=30, solver="randomized", verbose=False)
    model = ImageClassifier(arch="mlp", input_shape=(1, 24, 24), hidden=[16])
    make_trainer(tmp_path, [cb], limit_train_batches=0).fit(model, train_dataloaders=dl, val_dataloaders=dl)
    solvers = {r.name: r.solver for r in cb.report.layers}
    assert solvers[cb.report.layers[0].name].startswith("randomized"), solvers
    assert cb.metrics["sylvester/initial_accuracy"] > 0.5
    with pytest.raises(ValueError, match="solver"):
        SylvesterInit(solver="fast")


def test_dataloaders_passed_to_fit(tmp_path, make_trainer):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 8, 8, generator=g)
    y = torch.arange(10).repeat(6)
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    cb = SylvesterInit(samples_per_class=3)
    make_trainer(tmp_path, [cb]).fit(ImageClassifier(arch="mlp"), train_dataloaders=dl, val_dataloaders=dl)
    assert cb.report.layers[0].rows == 30
    assert "sylvester/initial_accuracy" in cb.metrics


class AugmentsOnDevice(ImageClassifier):
    """GPU-style augmentation in ``on_after_batch_transfer``, written for whole ``(x, y)`` batches."""

    def __init__(self) -> None:
        super().__init__(arch="mlp")
        self.transfer_calls = 0
        self.calls_before_training = None

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch  # fails on inputs alone
        self.transfer_calls += 1
        return (x + torch.randn_like(x) if self.trainer.training else x), y

    def on_train_start(self) -> None:
        self.calls_before_training = self.transfer_calls


def test_batch_transfer_hooks_are_not_run_on_the_subset_or_the_evaluation(tmp_path, make_trainer):
    model = AugmentsOnDevice()
    cb = SylvesterInit(samples_per_class=10)
    make_trainer(tmp_path, [cb]).fit(model, datamodule=DigitsDataModule(seed=0))
    assert model.calls_before_training == 0  # neither the subset nor the accuracies went through it
    assert model.transfer_calls > 0  # training batches still do
    assert cb.metrics["sylvester/initial_accuracy"] > 0.8


def test_resume_from_checkpoint_does_not_reinitialize(tmp_path, make_trainer):
    dm = DigitsDataModule()
    cb = SylvesterInit(samples_per_class=5)
    trainer = make_trainer(tmp_path, [cb], enable_checkpointing=True)
    model = ImageClassifier(arch="mlp")
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert any(v.get("initialized") for k, v in saved["callbacks"].items() if "SylvesterInit" in k)

    cb2 = SylvesterInit(samples_per_class=5)
    model2 = ImageClassifier(arch="mlp")
    trainer2 = make_trainer(tmp_path, [cb2], max_epochs=2, enable_checkpointing=True)
    trainer2.fit(model2, datamodule=dm, ckpt_path=ckpt)
    assert cb2.initialized and cb2.report is None  # restored state: no second initialization


def test_fast_dev_run_skips_with_warning(tmp_path):
    cb = SylvesterInit()
    with pytest.warns(UserWarning, match="fast_dev_run"):
        Trainer(fast_dev_run=True, callbacks=[cb], logger=False, enable_progress_bar=False).fit(
            ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
        )
    assert not cb.initialized


def test_no_logger_still_works(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=5, verbose=False)
    make_trainer(tmp_path, [cb], logger=False).fit(ImageClassifier(arch="mlp"), datamodule=DigitsDataModule())
    assert cb.metrics["sylvester/initial_accuracy"] > 0.5


def test_summary_is_printed(tmp_path, caplog, make_trainer):
    import logging

    with caplog.at_level(logging.INFO):
        make_trainer(tmp_path, [SylvesterInit(samples_per_class=5)]).fit(
            ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
        )
    text = caplog.text
    assert "without init" in text and "with init" in text and "net." in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples_per_class": 0}, "samples_per_class must be a positive int, got 0"),
        ({"samples_per_class": 2.5}, "samples_per_class must be a positive int, got 2.5"),
        ({"layers": "body"}, r"layers must be one of \['all', 'head'\], got 'body'"),
        ({"latent": "svd"}, "latent must be one of .* got 'svd'"),
        ({"head_latent": "x"}, "head_latent must be one of .* got 'x'"),
        ({"lam": 0}, "lam must be a finite number > 0, got 0"),
        ({"lam": float("nan")}, "lam must be a finite number > 0, got nan"),
        ({"patches_per_image": 0}, "patches_per_image must be a positive int or None, got 0"),
        ({"seed": "a"}, "seed must be an int, got 'a'"),
        ({"head": ""}, "head must be a module name or None, got ''"),
        ({"precision": "float16"}, "precision must be one of .* got 'float16'"),
        ({"eval_batches": -1}, "eval_batches must be a positive int or None, got -1"),
    ],
)
def test_bad_arguments_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SylvesterInit(**kwargs)


def test_duplicate_callbacks_warn(tmp_path, make_trainer):
    with pytest.warns(UserWarning, match="2 SylvesterInit callbacks"):
        make_trainer(tmp_path, [SylvesterInit(samples_per_class=3), SylvesterInit(samples_per_class=4)]).fit(
            ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
        )


@pytest.mark.parametrize("limit", [{"max_steps": 0}, {"max_epochs": 0}])
def test_metrics_reach_callback_metrics_when_the_fit_runs_no_step(tmp_path, make_trainer, limit):
    """An init run only to inspect or save the model (no training step) still leaves its metrics, with
    the default sanity check (after which Lightning empties callback_metrics)."""
    cb = SylvesterInit(samples_per_class=3, verbose=False)
    trainer = make_trainer(tmp_path, [cb], logger=False, num_sanity_val_steps=2, **limit)
    trainer.fit(ImageClassifier(arch="mlp"), datamodule=DigitsDataModule())
    assert cb.initialized
    assert {"sylvester/init_time_s", "sylvester/initial_accuracy"} <= set(trainer.callback_metrics)


def test_a_fit_that_crashed_while_deferred_does_not_initialize_the_next_fit_twice(tmp_path, make_trainer):
    """A deferred init (ModelParallelStrategy) pending when its fit crashed: the next fit, under a
    strategy that initializes at on_fit_start, initializes once, not again at on_train_start."""
    cb = SylvesterInit(samples_per_class=3, verbose=False, evaluate=False)
    cb._pending = True  # as left by a ModelParallelStrategy fit that crashed before on_train_start
    starts = []
    real = cb._start
    cb._start = lambda trainer, module: starts.append(1) or real(trainer, module)
    make_trainer(tmp_path, [cb], logger=False).fit(ImageClassifier(arch="mlp"), datamodule=DigitsDataModule())
    assert starts == [1]
