"""What SylvesterInit writes to TensorBoard, read back from the event files and from a real
``tensorboard`` server (loopback only), and what it writes elsewhere (CSV, no logger)."""

import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_sylv import SylvesterInit
from lightning_sylv.callbacks import _logging
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.layer_fit import encoding_loss
from lightning_sylv.models import ImageClassifier
from lightning_sylv.subset import balanced_subset

SAMPLES = 40  # embedding_samples in the shared run: keeps t-SNE well under a second


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_trainer):
    """One real fit with a TensorBoardLogger. No training batch runs (limit_train_batches=0), so the
    model still holds exactly the initialized weights for the recomputation test."""
    root = tmp_path_factory.mktemp("tb")
    cb = SylvesterInit(samples_per_class=10, embedding_samples=SAMPLES, verbose=False, log_tsne=True)
    model = ImageClassifier(arch="mlp")
    dm = DigitsDataModule(seed=0)
    logger = TensorBoardLogger(root, name="digits")
    make_trainer(root, [cb], logger=logger, limit_train_batches=0).fit(model, datamodule=dm)
    ea = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return {"root": root, "log_dir": Path(logger.log_dir), "cb": cb, "model": model, "dm": dm, "ea": ea}


def test_event_file_holds_scalars_image_and_text(run):
    ea, cb = run["ea"], run["cb"]
    tags = ea.Tags()
    scalars = {t: ea.Scalars(t)[-1].value for t in tags["scalars"]}
    for name in ("pre_init_accuracy", "initial_accuracy", "init_time_s", "inspection_time_s"):
        assert scalars[f"sylvester/{name}"] == pytest.approx(cb.metrics[f"sylvester/{name}"], rel=1e-6)
    assert scalars["sylvester/initial_accuracy"] > 0.8 > scalars["sylvester/pre_init_accuracy"]
    assert -1 <= scalars["sylvester/silhouette_before_init"] <= 1
    assert -1 <= scalars["sylvester/silhouette_after_init"] <= 1
    layers = cb.report.layers
    assert [r.name for r in layers] == ["net.features.1", "net.features.3", "net.head"]
    for r in layers:
        for field in ("encoding_loss", "decoding_loss", "residual", "cond_a", "cond_b", "dropped", "rows", "seconds"):
            tag, value = f"sylvester/layer/{r.name}/{field}", float(getattr(r, field))
            if math.isfinite(value):
                assert scalars[tag] == pytest.approx(value, rel=1e-6, abs=1e-30), tag
            else:  # an infinite condition number (singular Gram matrix) is not plotted
                assert tag not in scalars, tag
    assert len([t for t in scalars if t.startswith("sylvester/layer/")]) >= 6 * len(layers)

    (image,) = ea.Images("sylvester/tsne")
    assert image.width > 1.5 * image.height > 450 and image.encoded_image_string[:4] == b"\x89PNG"

    (text,) = ea.Tensors("sylvester/layers/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert table.startswith("| layer | type | in | out |") and "encoding loss" in table and "cond A" in table
    assert "| `net.head` (head) | Linear | 64 | 10 | 1 | 100 | 1 | onehot |" in table
    assert all(f"`{r.name}`" in table for r in layers)


def test_hparams_session_has_the_models_and_the_callbacks_arguments(run):
    # TensorBoard's HParams plugin keeps the first session of a run: it must hold both sets.
    md = run["ea"].SummaryMetadata("_hparams_/session_start_info")
    hp = plugin_data_pb2.HParamsPluginData.FromString(md.plugin_data.content).session_start_info.hparams
    assert hp["arch"].string_value == "mlp" and hp["batch_size"].number_value == 64  # module, datamodule
    assert hp["sylvester/samples_per_class"].number_value == 10
    assert hp["sylvester/embedding_samples"].number_value == SAMPLES
    assert hp["sylvester/layers"].string_value == "all" and hp["sylvester/log_tsne"].number_value == 1
    saved = (run["log_dir"] / "hparams.yaml").read_text()
    assert "arch: mlp" in saved and "sylvester/lam: 10.0" in saved


def test_projector_files_for_both_tags(run):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    log_dir, model = run["log_dir"], run["model"]
    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    by_name = {e.tensor_name.split(":")[0]: e for e in config.embeddings}
    assert set(by_name) == {"sylvester/features_before_init", "sylvester/features_after_init"}
    val_labels = run["dm"].val_dataset.targets[:SAMPLES].tolist()
    width = model.net.head.in_features
    for emb in by_name.values():
        rows = (log_dir / emb.tensor_path).read_text().strip().splitlines()
        assert len(rows) == SAMPLES and all(len(r.split("\t")) == width for r in rows)
        labels = (log_dir / emb.metadata_path).read_text().split()
        assert [int(v) for v in labels] == val_labels
        sprite = (log_dir / emb.sprite.image_path).read_bytes()
        assert sprite[:4] == b"\x89PNG" and list(emb.sprite.single_image_dim) == [8, 8]
    tsv = (log_dir / by_name["sylvester/features_after_init"].tensor_path).read_text().strip().splitlines()
    after = torch.tensor([[float(v) for v in r.split("\t")] for r in tsv])
    x = run["dm"].val_dataset.inputs[:SAMPLES]
    model.eval()
    torch.testing.assert_close(after, model.net.features(x), rtol=1e-4, atol=1e-5)


def test_report_losses_match_a_direct_recomputation(run):
    cb, model, dm = run["cb"], run["model"], run["dm"]
    head = model.get_submodule(cb.report.head)
    inputs, labels, _ = balanced_subset(dm.train_dataset, cb.samples_per_class, cb.seed)
    captured = []
    handle = head.register_forward_pre_hook(lambda m, args: captured.append(args[0].double()))
    with torch.no_grad():
        model.eval()
        model(inputs)
    handle.remove()
    x = captured[0]
    s = torch.nn.functional.one_hot(labels, 10).double()
    w, b = head.weight.detach().double(), head.bias.detach().double()
    row = next(r for r in cb.report.layers if r.name == cb.report.head)
    assert row.rows == x.shape[0] == 100
    # float32 weights against float64 statistics: agreement to float32 precision
    assert encoding_loss(w, x, s, b) == pytest.approx(row.encoding_loss, rel=1e-4)
    xc, sc = x - x.mean(0), s - s.mean(0)
    decoding = (xc - sc @ w).square().sum() / xc.square().sum()
    assert float(decoding) == pytest.approx(row.decoding_loss, rel=1e-4)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, **params: str):
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=5) as resp:
        return json.loads(resp.read())


def _post(port: int, path: str, body: dict):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(120)
def test_real_tensorboard_server_serves_the_run(run):
    exe = shutil.which("tensorboard")
    cmd = [exe] if exe else [sys.executable, "-m", "tensorboard.main"]
    port = _free_port()
    logdir = run["root"] / "digits"
    proc = subprocess.Popen(
        [*cmd, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline, tags, last = time.monotonic() + 90, {}, None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
            try:
                tags = _get(port, "/data/plugin/scalars/tags")
                if "sylvester/init_time_s" in tags.get("version_0", {}):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as err:
                last = err
            time.sleep(0.5)
        else:
            pytest.fail(f"tensorboard served no scalars within the deadline (last error: {last}; tags: {tags})")
        cb = run["cb"]
        for name in ("initial_accuracy", "pre_init_accuracy", "init_time_s"):
            ((_, step, value),) = _get(port, "/data/plugin/scalars/scalars", run="version_0", tag=f"sylvester/{name}")
            assert step == 0 and value == pytest.approx(cb.metrics[f"sylvester/{name}"], rel=1e-6)
        assert f"sylvester/layer/{cb.report.head}/encoding_loss" in tags["version_0"]
        assert _get(port, "/data/plugin/projector/runs") == ["version_0"]
        info = _get(port, "/data/plugin/projector/info", run="version_0")
        assert {e["tensorName"].split(":")[0] for e in info["embeddings"]} == {
            "sylvester/features_before_init",
            "sylvester/features_after_init",
        }
        assert all(e["tensorShape"] == [SAMPLES, 64] for e in info["embeddings"])
        assert "sylvester/tsne" in _get(port, "/data/plugin/images/tags")["version_0"]
        experiment = _post(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"arch", "lr", "sylvester/lam", "sylvester/samples_per_class"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its data-server child, nothing else
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()


def _artefacts(root: Path) -> list[Path]:
    patterns = ("*tfevents*", "projector_config.pbtxt", "*.tsv", "sprite.png")
    return [p for pattern in patterns for p in root.rglob(pattern)]


def test_csv_logger_gets_the_scalars_and_no_tensorboard_artefacts(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=5, verbose=False)
    make_trainer(tmp_path, [cb], logger=CSVLogger(tmp_path, name="csv"), limit_train_batches=1).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
    )
    assert _artefacts(tmp_path) == []
    (metrics,) = tmp_path.glob("csv/version_0/metrics.csv")
    logged = {k for row in csv.DictReader(metrics.open()) for k, v in row.items() if v and k.startswith("sylvester/")}
    assert logged == {"sylvester/pre_init_accuracy", "sylvester/initial_accuracy", "sylvester/init_time_s"}
    hparams = (tmp_path / "csv" / "version_0" / "hparams.yaml").read_text()
    assert "arch: mlp" in hparams and "sylvester/samples_per_class: 5" in hparams
    assert "sylvester/inspection_time_s" not in cb.metrics


def test_no_logger_no_files_no_crash(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=5, verbose=False)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
    )
    assert cb.metrics["sylvester/initial_accuracy"] > 0.5
    assert _artefacts(tmp_path) == []


def test_inspection_can_be_switched_off(tmp_path, make_trainer):
    cb = SylvesterInit(samples_per_class=5, verbose=False, log_embeddings=False, log_tsne=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    make_trainer(tmp_path, [cb], logger=logger, limit_train_batches=0).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
    )
    assert not (Path(logger.log_dir) / "projector_config.pbtxt").exists()
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    assert ea.Tags()["images"] == [] and "sylvester/layers/text_summary" in ea.Tags()["tensors"]
    assert "sylvester/inspection_time_s" not in cb.metrics


_BAR = re.compile(r"SylvesterInit: +\d+%\|")


@pytest.mark.parametrize(
    ("progress_bar", "verbose", "shown"), [(False, True, False), (True, False, False), (True, True, True)]
)
def test_layer_progress_bar_follows_the_trainers_bar_and_verbose(
    tmp_path, capsys, monkeypatch, progress_bar, verbose, shown, make_trainer
):
    monkeypatch.setattr(_logging, "PROGRESS_DELAY_S", 0.0)  # show it even for a fast init
    cb = SylvesterInit(samples_per_class=3, verbose=verbose, evaluate=False)
    make_trainer(tmp_path, [cb], logger=False, limit_train_batches=0, enable_progress_bar=progress_bar).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule()
    )
    out = capsys.readouterr()
    assert bool(_BAR.search(out.out + out.err)) is shown, out.out[-1000:]
    if shown:
        assert "3/3" in out.out and "net.head" in out.out


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embedding_samples": 0}, "embedding_samples must be a positive int, got 0"),
        ({"embedding_samples": 2.5}, "embedding_samples must be a positive int, got 2.5"),
        ({"embedding_samples": True}, "embedding_samples must be a positive int, got True"),
        ({"log_embeddings": "yes"}, "log_embeddings must be a bool, got 'yes'"),
        ({"log_tsne": 1}, "log_tsne must be a bool, got 1"),
    ],
)
def test_bad_new_arguments_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SylvesterInit(**kwargs)


def test_hparams_cover_every_argument():
    import inspect

    names = {f"sylvester/{n}" for n in inspect.signature(SylvesterInit).parameters}
    assert set(SylvesterInit().hyperparameters()) == names
    assert not any(isinstance(v, float) and math.isnan(v) for v in SylvesterInit().hyperparameters().values())


def test_only_global_rank_zero_draws_or_shows_a_bar(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import TQDMProgressBar

    logger = TensorBoardLogger(tmp_path, name="tb")
    for zero in (True, False):
        trainer = SimpleNamespace(is_global_zero=zero, loggers=[logger], progress_bar_callback=TQDMProgressBar())
        assert len(_logging.tensorboard_writers(trainer)) == int(zero)
        with _logging.layer_progress(trainer, enabled=True) as on_layer:
            assert (on_layer is not None) is zero


def test_deferred_init_runs_at_train_start_and_its_hparams_lead_the_session(tmp_path, make_trainer, monkeypatch):
    """Strategies that restore a checkpoint after on_fit_start (ModelParallelStrategy) defer the init
    to on_train_start; the callback's arguments still reach the first HParams session."""
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    monkeypatch.setattr(SingleDeviceStrategy, "restore_checkpoint_after_setup", property(lambda self: True))
    seen = {}

    class Probe(Callback):
        def on_fit_start(self, trainer, pl_module):  # after SylvesterInit's on_fit_start
            seen["at_fit_start"] = cb.initialized

    cb = SylvesterInit(samples_per_class=5, verbose=False, evaluate=False, log_embeddings=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    make_trainer(tmp_path, [cb, Probe()], logger=logger, limit_train_batches=1).fit(
        ImageClassifier(arch="mlp"), datamodule=DigitsDataModule(seed=0)
    )
    assert seen["at_fit_start"] is False and cb.initialized and cb.report is not None
    sessions = []
    for path in sorted(Path(logger.log_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    sessions.append(data.session_start_info.hparams)
    assert sessions and sessions[0]["sylvester/samples_per_class"].number_value == 5
    assert sessions[0]["arch"].string_value == "mlp"
