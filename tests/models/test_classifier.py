"""ImageClassifier under a real Trainer on the digits, and its argument checks."""

import pytest
import torch

from lightning_sylv.data import DigitsDataModule
from lightning_sylv.models import ImageClassifier


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_fit_and_test_on_digits_log_every_metric(arch, make_trainer):
    torch.manual_seed(0)
    model = ImageClassifier(arch=arch, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(None, limit_train_batches=3)
    dm = DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert "val/acc" in trainer.progress_bar_metrics
    assert all(torch.isfinite(metrics[k]) for k in ("train/loss", "val/loss"))
    assert 0 <= float(metrics["val/acc"]) <= 1
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()), "training changed nothing"
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert set(result) == {"test/loss", "test/acc"}
    logits = trainer.predict(model, dataloaders=dm.val_dataloader())
    assert logits[0].shape == (32, 10)


def test_accuracy_metric_is_micro_averaged_top1():
    model = ImageClassifier()
    logits = torch.eye(10)[[0, 1, 2, 0]]  # predictions 0, 1, 2, 0
    model.val_acc.update(logits, torch.tensor([0, 1, 0, 0]))
    assert float(model.val_acc.compute()) == pytest.approx(0.75)  # a macro average would give 0.83


def test_optimizers_and_schedule():
    sgd = ImageClassifier(lr=0.1, momentum=0.8, weight_decay=0.0).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.1
    conf = ImageClassifier(optimizer="adam", lr=1e-3, milestones=[2, 4], gamma=0.5).configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    sched = conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR) and dict(sched.milestones) == {2: 1, 4: 1}


def test_init_scheme_applied_and_hparams_saved():
    torch.manual_seed(0)
    model = ImageClassifier(arch="cnn", input_shape=[3, 32, 32], num_classes=5, width=4, init="he_normal")
    assert model.hparams["init"] == "he_normal" and model.hparams["input_shape"] == [3, 32, 32]
    assert not model.net.head.bias.any()  # he_* zeroes biases; PyTorch's default does not
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert ImageClassifier(arch="resnet20", input_shape=[3, 32, 32]).net.head.out_features == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "vgg"}, r"arch must be one of \['mlp', 'cnn', 'resnet20', 'resnet32', 'resnet56'\], got 'vgg'"),
        ({"input_shape": []}, r"input_shape must be a non-empty list of positive ints, got \[\]"),
        ({"input_shape": [1, 0, 8]}, r"input_shape must be a non-empty list of positive ints, got \[1, 0, 8\]"),
        ({"arch": "cnn", "input_shape": [64]}, r"input_shape must be \[channels, height, width\] for arch 'cnn'"),
        ({"num_classes": 1}, "num_classes must be an int >= 2, got 1"),
        ({"hidden": [64, -1]}, r"hidden must be a list of positive ints, got \[64, -1\]"),
        ({"width": 0}, "width must be a positive int, got 0"),
        ({"init": "orthogonal"}, "init must be one of .* got 'orthogonal'"),
        ({"optimizer": "rmsprop"}, r"optimizer must be one of \['sgd', 'adam'\], got 'rmsprop'"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0, got -0.0001"),
        (
            {"milestones": [5, 3]},
            r"milestones must be None or a strictly increasing list of positive ints, got \[5, 3\]",
        ),
        ({"gamma": 0}, r"gamma must be a number in \(0, 1\], got 0"),
    ],
)
def test_bad_arguments_rejected_with_the_argument_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageClassifier(**kwargs)
