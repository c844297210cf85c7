"""What a Lightning user runs into with their own modules and data (issue 17): models whose forward
returns features, reused callbacks, batches in other layouts, and init metrics Lightning can see."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_sylv import LowRankInit, SylvesterInit
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.models import ImageClassifier


class FeatureNet(LightningModule):
    """``forward`` returns 64-d embeddings; ``training_step`` applies ``self.head`` (a common pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.body(x)

    def logits(self, x):
        return self.head(self(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.logits(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.logits(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_a_forward_returning_features_is_refused_naming_the_fix(tmp_path, make_trainer):
    model = FeatureNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"returns 64 values per sample, but there are 10 classes.*forward='logits'"):
        make_trainer(tmp_path, [SylvesterInit(samples_per_class=10)], logger=False).fit(
            model, datamodule=DigitsDataModule(seed=0)
        )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was changed


def test_forward_names_the_method_that_gives_logits(tmp_path, make_trainer):
    model = FeatureNet()
    cb = SylvesterInit(samples_per_class=20, forward="logits")
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(model, datamodule=DigitsDataModule(seed=0))
    assert cb.report.head == "head" and [r.name for r in cb.report.layers] == ["body.1", "body.3", "head"]
    assert cb.metrics["sylvester/initial_accuracy"] > 0.8  # measured through logits() as well
    with pytest.raises(ValueError, match="has no method 'nope'"):
        make_trainer(tmp_path, [SylvesterInit(forward="nope")], logger=False).fit(
            FeatureNet(), datamodule=DigitsDataModule(seed=0)
        )


def test_a_reused_callback_initializes_a_fresh_model(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=5, verbose=False)
    dm = DigitsDataModule(seed=0)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(ImageClassifier(arch="mlp"), datamodule=dm)
    first = cb.report
    fresh = ImageClassifier(arch="mlp")
    head = fresh.net.head.weight.clone()
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(fresh, datamodule=dm)
    assert cb.report is not first and not torch.equal(fresh.net.head.weight, head)
    assert cb.metrics["sylvester/initial_accuracy"] > 0.5


class DictDigits(Dataset):
    """Digits as dict items, under keys given at construction."""

    def __init__(self, split: str, x_key: str, y_key: str) -> None:
        dm = DigitsDataModule(seed=0)
        dm.setup()
        self.ds = dm.train_dataset if split == "train" else dm.val_dataset
        self.x_key, self.y_key = x_key, y_key

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return {self.x_key: x, self.y_key: y}


class DictModel(ImageClassifier):
    def __init__(self, x_key: str, y_key: str) -> None:
        super().__init__(arch="mlp")
        self.keys = (x_key, y_key)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[self.keys[0]]), batch[self.keys[1]])

    def validation_step(self, batch, batch_idx):
        pass


def _dict_fit(make_trainer, tmp_path, cb, x_key, y_key):
    train = DataLoader(DictDigits("train", x_key, y_key), batch_size=64)
    val = DataLoader(DictDigits("val", x_key, y_key), batch_size=64)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(
        DictModel(x_key, y_key), train_dataloaders=train, val_dataloaders=val
    )


def test_hugging_face_style_batches_work_and_other_keys_can_be_named(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=10, verbose=False)
    _dict_fit(make_trainer, tmp_path, cb, "pixel_values", "labels")
    assert cb.metrics["sylvester/initial_accuracy"] > 0.8

    with pytest.raises(TypeError, match=r"keys \['pixels', 'cls'\].*input_key=/label_key="):
        _dict_fit(make_trainer, tmp_path, SylvesterInit(samples_per_class=10, verbose=False), "pixels", "cls")
    cb = SylvesterInit(samples_per_class=10, verbose=False, input_key="pixels", label_key="cls")
    _dict_fit(make_trainer, tmp_path, cb, "pixels", "cls")
    assert cb.subset_size == 100 and cb.metrics["sylvester/initial_accuracy"] > 0.8
    with pytest.raises(ValueError, match="input_key must be None, a dict key"):
        SylvesterInit(input_key=1.5)


def test_an_iterable_dataset_error_points_to_init_dataset(tmp_path, make_trainer):
    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(64):
                yield torch.zeros(1, 8, 8), i % 10

    with pytest.raises(TypeError, match=r"iterable-style.*define init_dataset\(\) on the LightningDataModule"):
        make_trainer(tmp_path, [SylvesterInit(samples_per_class=2)], logger=False).fit(
            ImageClassifier(arch="mlp"), train_dataloaders=DataLoader(Stream(), batch_size=8)
        )


def test_init_metrics_are_callback_metrics_and_tensorboard_hparams_metrics(tmp_path, make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cb = SylvesterInit(samples_per_class=10, verbose=False, log_tsne=False, log_embeddings=False)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="sylvester/initial_accuracy", mode="max")
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(tmp_path, [cb, best], logger=logger, enable_checkpointing=True, num_sanity_val_steps=2)
    trainer.fit(ImageClassifier(arch="mlp"), datamodule=DigitsDataModule(seed=0))
    for name in ("pre_init_accuracy", "initial_accuracy", "init_time_s"):
        key = f"sylvester/{name}"
        assert float(trainer.callback_metrics[key]) == pytest.approx(cb.metrics[key], rel=1e-6)
    assert float(best.best_model_score) == pytest.approx(cb.metrics["sylvester/initial_accuracy"], rel=1e-6)
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    md = ea.SummaryMetadata("_hparams_/experiment")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(md.plugin_data.content).experiment
    tags = {m.name.tag for m in experiment.metric_infos}
    assert {"sylvester/initial_accuracy", "sylvester/pre_init_accuracy", "sylvester/init_time_s"} <= tags
    assert "hp_metric" not in tags


def test_lowrank_init_publishes_metrics_hparams_and_its_report(tmp_path, make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = LowRankInit(ranks=0.25, exclude=["net.head"], samples_per_class=10, relu_iters=1, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(tmp_path, [cb], logger=logger, limit_train_batches=0)
    trainer.fit(ImageClassifier(arch="mlp"), datamodule=DigitsDataModule(seed=0))
    for key in ("lowrank/init_time_s", "lowrank/relu_error", "lowrank/initial_accuracy"):
        assert float(trainer.callback_metrics[key]) == pytest.approx(cb.metrics[key], rel=1e-6)
    ea = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    ea.Reload()
    assert "lowrank/layers/text_summary" in ea.Tags()["tensors"]
    assert "lowrank/layer/net.features.1/relu_error" in ea.Tags()["scalars"]
    saved = (tmp_path / "tb" / "version_0" / "hparams.yaml").read_text()
    assert "lowrank/method: relu" in saved and "lowrank/ranks: 0.25" in saved


def test_layers_takes_name_patterns_in_both_callbacks(tmp_path, make_trainer):
    model = ImageClassifier(arch="mlp")
    first = model.net.features[1].weight.clone()
    cb = SylvesterInit(samples_per_class=5, layers=["net.features.3", "net.h*"], verbose=False)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(model, datamodule=DigitsDataModule(seed=0))
    assert [r.name for r in cb.report.layers] == ["net.features.3", "net.head"]
    assert torch.equal(model.net.features[1].weight, first)
    with pytest.raises(ValueError, match=r"matches none of the model's layers"):
        make_trainer(tmp_path, [SylvesterInit(layers=["nope*"])], logger=False).fit(
            ImageClassifier(arch="mlp"), datamodule=DigitsDataModule(seed=0)
        )
    assert LowRankInit(layers="all").layers is None


def test_the_default_inspection_skips_the_costly_tsne_figure(tmp_path, make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = SylvesterInit(samples_per_class=5, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    make_trainer(tmp_path, [cb], logger=logger, limit_train_batches=0).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule(seed=0)
    )
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    assert not ea.Tags()["images"] and "sylvester/silhouette_after_init" in ea.Tags()["scalars"]
    assert (tmp_path / "tb" / "version_0" / "projector_config.pbtxt").is_file()
