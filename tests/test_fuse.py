"""FuseInit: teacher targets on the Sylvester engine, the exact compositions, the callback and the CLI."""

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sylv import FuseInit
from lightning_sylv.data import DigitsDataModule
from lightning_sylv.engine import SylvesterInitError
from lightning_sylv.fuse import TeacherCode, compose_conv, compose_linear, fuse_init_, teacher_activations
from lightning_sylv.models import ImageClassifier
from lightning_sylv.rows import LayerRows

ROOT = Path(__file__).resolve().parents[1]
TEACHER_HIDDEN = [128, 128, 128, 64]
STUDENT_HIDDEN = [128, 64]
MAPPING = {"net.features.1": "net.features.3", "net.features.3": "net.features.7", "net.head": "net.head"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems on a shared CPU: one thread avoids OpenMP contention (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- exact recovery
# teacher_lam=inf: plain least squares, which recovers a linear teacher pair exactly.


def test_dense_dense_linear_teacher_is_recovered_exactly():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 5))
    student = nn.Sequential(nn.Linear(8, 5))
    x = torch.randn(200, 8, generator=_gen())
    report = fuse_init_(student, teacher, x, {"0": "1"}, teacher_lam=math.inf)
    w, b = compose_linear(teacher[0], teacher[1])
    torch.testing.assert_close(w, teacher[1].weight.double() @ teacher[0].weight.double())
    torch.testing.assert_close(student[0].weight.double(), w, atol=1e-5, rtol=0)
    torch.testing.assert_close(student[0].bias.double(), b, atol=1e-5, rtol=0)
    assert report.layers[0].code == "teacher" and report.layers[0].encoding_loss < 1e-10
    x_new = torch.randn(50, 8, generator=_gen(1))
    torch.testing.assert_close(student(x_new), teacher(x_new), atol=1e-5, rtol=0)


@pytest.mark.parametrize("patches", [None, 8])
def test_conv_conv_linear_teacher_is_recovered_exactly(patches):
    # Valid (padding 0) convs: the pair and the fused 5x5 conv agree at every output position. With
    # sampled patches this also checks that teacher rows are taken at the student's positions.
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 3, 3))
    student = nn.Sequential(nn.Conv2d(2, 3, 5))
    x = torch.randn(40, 2, 10, 10, generator=_gen())
    fuse_init_(student, teacher, x, {"0": "1"}, patches_per_image=patches, teacher_lam=math.inf)
    kernel, bias = compose_conv(teacher[0], teacher[1])
    assert kernel.shape == (3, 2, 5, 5)
    torch.testing.assert_close(student[0].weight.double(), kernel, atol=1e-5, rtol=0)
    torch.testing.assert_close(student[0].bias.double(), bias, atol=1e-5, rtol=0)


def test_compose_conv_is_the_pair_including_padded_interior():
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
    x = torch.randn(2, 3, 9, 9, generator=_gen(), dtype=torch.float64)
    kernel, bias = compose_conv(c1, c2)
    pair = c2.double()(c1.double()(x))
    fused = F.conv2d(x, kernel, bias, padding=2)
    assert fused.shape == pair.shape  # padding p1 + p2 keeps the grid
    torch.testing.assert_close(fused[..., 1:-1, 1:-1], pair[..., 1:-1, 1:-1])  # equal away from the border
    c1d, c2d = nn.Conv1d(2, 3, 3), nn.Conv1d(3, 2, 2)
    k1d, b1d = compose_conv(c1d, c2d)
    x1 = torch.randn(2, 2, 12, dtype=torch.float64)
    torch.testing.assert_close(F.conv1d(x1, k1d, b1d), c2d.double()(c1d.double()(x1)))
    with pytest.raises(ValueError, match="stride 1"):
        compose_conv(nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="c1 outputs 2 channels, c2 takes 3"):
        compose_conv(nn.Conv2d(1, 2, 3), nn.Conv2d(3, 2, 3))


def test_conv_dense_linear_teacher_is_recovered_exactly():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 6))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    x = torch.randn(200, 1, 8, 8, generator=_gen())
    fuse_init_(student, teacher, x, {"1": "2"}, teacher_lam=math.inf)
    x_new = torch.randn(30, 1, 8, 8, generator=_gen(1))
    torch.testing.assert_close(student(x_new), teacher(x_new), atol=1e-4, rtol=0)


def test_fit_error_decreases_with_more_samples_for_a_nonlinear_teacher():
    def held_out_mse(n: int, seed: int) -> float:
        torch.manual_seed(seed)
        teacher = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
        student = nn.Sequential(nn.Linear(10, 4))
        fuse_init_(student, teacher, torch.randn(n, 10, generator=_gen(seed)), {"0": "2"}, teacher_lam=math.inf)
        x_test = torch.randn(2000, 10, generator=_gen(100 + seed))
        with torch.no_grad():
            return float((student(x_test) - teacher(x_test)).square().mean())

    errors = [sum(held_out_mse(n, s) for s in range(3)) / 3 for n in (12, 40, 1000)]
    assert errors[0] > errors[1] > errors[2], errors


# --------------------------------------------------------------------------- targets and errors


def test_teacher_code_aligns_rows_and_checks_shapes():
    act = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    code = TeacherCode(act, "t.conv")
    pos = torch.tensor([[0, 7], [19, 3]])
    rows = LayerRows(x=torch.zeros(4, 1, 9), per_sample=2, positions=pos, out_shape=(4, 5))
    s = code.fit(torch.zeros(4, 9, dtype=torch.float64), 3, rows=rows)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s[1], act[0, :, 1, 2].double())  # position 7 = row 1, column 2
    torch.testing.assert_close(s[2], act[1, :, 3, 4].double())
    bad = LayerRows(x=torch.zeros(4, 1, 9), per_sample=2, positions=pos, out_shape=(5, 5))
    with pytest.raises(ValueError, match=r"'t.conv' has shape \(2, 3, 4, 5\).*outputs \(2, 3, 5, 5\)"):
        code.fit(torch.zeros(4, 9), 3, rows=bad)
    dense = LayerRows(x=torch.zeros(2, 7), per_sample=1, positions=torch.zeros(2, 1, dtype=torch.long))
    torch.testing.assert_close(code.fit(torch.zeros(2, 7), 60, rows=dense), act.reshape(2, 60))
    with pytest.raises(ValueError, match=r"60 values per sample.*has 10 outputs"):
        code.fit(torch.zeros(2, 7), 10, rows=dense)
    with pytest.raises(ValueError, match="covers 2 samples"):
        code.fit(torch.zeros(3, 7), 60, rows=None)
    with pytest.raises(ValueError, match="floating-point tensor"):
        TeacherCode(torch.zeros(3, dtype=torch.long))


def test_mismatched_grid_fails_naming_both_layers_and_restores_the_student():
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3))  # 8x8 -> 4x4
    student = nn.Sequential(nn.Conv2d(1, 3, 3))  # 8x8 -> 6x6: not the fused k=5 conv
    before = student[0].weight.clone()
    x = torch.randn(10, 1, 8, 8, generator=_gen())
    with pytest.raises(
        SylvesterInitError, match=r"layer '0'.*teacher activation at '2' has shape \(10, 3, 4, 4\).*\(10, 3, 6, 6\)"
    ):
        fuse_init_(student, teacher, x, {"0": "2"})
    assert torch.equal(student[0].weight, before)
    dense_teacher = nn.Sequential(nn.Linear(5, 7))
    with pytest.raises(SylvesterInitError, match=r"\(7 values per sample\) but the student dense layer has 3 outputs"):
        fuse_init_(nn.Sequential(nn.Linear(5, 3)), dense_teacher, torch.randn(20, 5), {"0": "0"})


def test_unknown_names_and_bad_mappings_fail_clearly():
    teacher = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    student = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"student layers \['fc'\] in mapping are not .*its layers are \['0'\]"):
        fuse_init_(student, teacher, x, {"fc": "2"})
    with pytest.raises(ValueError, match=r"student layers \['1'\]"):  # a ReLU is not a fittable layer
        fuse_init_(student, teacher, x, {"1": "2"}, teacher_lam=math.inf)
    with pytest.raises(
        ValueError,
        match=r"teacher modules \['head'\] do not exist in the teacher; "
        r"its leaf modules are \['0', '1', '2'\]",
    ):
        fuse_init_(student, teacher, x, {"0": "head"})
    with pytest.raises(ValueError, match="non-empty mapping"):
        fuse_init_(student, teacher, x, {})
    with pytest.raises(ValueError, match="unmapped must be"):
        fuse_init_(student, teacher, x, {"0": "2"}, unmapped="pca")  # type: ignore[arg-type]

    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(ValueError, match=r"teacher modules \['unused'\] were not executed"):
        teacher_activations(Skips(), x, ["unused"])


def test_unmapped_layers_keep_or_get_sylvester_in_the_same_pass():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    y = torch.arange(3).repeat(30)
    x = torch.randn(3, 6, generator=_gen())[y] + 0.3 * torch.randn(90, 6, generator=_gen(1))

    def student() -> nn.Sequential:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    kept = student()
    head_before = kept[2].weight.clone()
    report = fuse_init_(kept, teacher, x, {"0": "2"}, y)
    assert [r.name for r in report.layers] == ["0"] and torch.equal(kept[2].weight, head_before)
    assert "not selected" in report.skipped["2"]
    filled = student()
    report = fuse_init_(filled, teacher, x, {"0": "2"}, y, unmapped="sylvester")
    assert [(r.name, r.code) for r in report.layers] == [("0", "teacher"), ("2", "onehot")]
    torch.testing.assert_close(filled[0].weight, kept[0].weight)  # same teacher fit (lam=inf) either way
    assert not torch.equal(filled[2].weight, head_before)


# --------------------------------------------------------------------------- Lightning


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A deeper digits MLP trained for 3 epochs (a plain loop: fast), saved as a Lightning checkpoint."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.manual_seed(0)
    teacher = ImageClassifier(arch="mlp", hidden=TEACHER_HIDDEN)
    dm = DigitsDataModule(seed=0)
    dm.setup()
    opt = torch.optim.Adam(teacher.parameters(), lr=0.003)
    for _ in range(3):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            F.cross_entropy(teacher(x), y).backward()
            opt.step()
    # The keys Trainer.save_checkpoint writes that load_from_checkpoint reads.
    torch.save(
        {
            "state_dict": teacher.state_dict(),
            "hyper_parameters": dict(teacher.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


def test_callback_fuses_through_a_trainer_and_logs(tmp_path, teacher_ckpt, make_trainer):
    cb = FuseInit(
        mapping=MAPPING, teacher_class="ImageClassifier", teacher_checkpoint=str(teacher_ckpt), samples_per_class=30
    )
    student = ImageClassifier(arch="mlp", hidden=STUDENT_HIDDEN)
    trainer = make_trainer(tmp_path, [cb], limit_train_batches=0)
    trainer.fit(student, datamodule=DigitsDataModule(seed=0))
    rows = list(csv.DictReader(next(tmp_path.glob("csv/version_*/metrics.csv")).open()))
    logged = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("fuse/")}
    assert set(logged) == {"fuse/initial_accuracy", "fuse/teacher_accuracy", "fuse/init_time_s"}
    assert logged["fuse/teacher_accuracy"] > 0.8
    # Least squares on 300 samples: the fused 2-hidden-layer student nearly matches its teacher.
    assert logged["fuse/initial_accuracy"] > logged["fuse/teacher_accuracy"] - 0.1
    assert [r.code for r in cb.report.layers] == ["teacher"] * 3 and cb.initialized

    # Resuming from a checkpoint keeps the checkpoint's weights.
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    saved = {k: v.clone() for k, v in student.state_dict().items()}
    again = FuseInit(mapping=MAPPING, teacher_class="ImageClassifier", teacher_checkpoint=str(teacher_ckpt))
    fresh = ImageClassifier(arch="mlp", hidden=STUDENT_HIDDEN)
    make_trainer(tmp_path, [again], max_epochs=1, limit_train_batches=0, logger=False).fit(
        fresh, datamodule=DigitsDataModule(seed=0), ckpt_path=tmp_path / "student.ckpt"
    )
    assert again.report is None and again.initialized
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())


def test_callback_with_a_teacher_instance_and_sylvester_fallback(tmp_path, teacher_ckpt, make_trainer):
    teacher = ImageClassifier.load_from_checkpoint(teacher_ckpt)
    cb = FuseInit(
        mapping={"net.features.1": "net.features.3"}, teacher=teacher, unmapped="sylvester", samples_per_class=20
    )
    make_trainer(tmp_path, [cb], limit_train_batches=0, logger=False).fit(
        ImageClassifier(arch="mlp", hidden=STUDENT_HIDDEN), datamodule=DigitsDataModule(seed=0)
    )
    assert [r.code for r in cb.report.layers] == ["teacher", "rotated_pca", "onehot"]
    assert cb.metrics["fuse/initial_accuracy"] > 0.7


def test_a_bfloat16_teacher_gets_inputs_in_its_dtype(tmp_path, teacher_ckpt, make_trainer):
    teacher = ImageClassifier.load_from_checkpoint(teacher_ckpt).to(torch.bfloat16)
    cb = FuseInit(mapping=MAPPING, teacher=teacher, samples_per_class=20)
    make_trainer(tmp_path, [cb], limit_train_batches=0, logger=False).fit(
        ImageClassifier(arch="mlp", hidden=STUDENT_HIDDEN), datamodule=DigitsDataModule(seed=0)
    )
    assert cb.metrics["fuse/teacher_accuracy"] > 0.8
    assert cb.metrics["fuse/initial_accuracy"] > 0.8
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())  # the teacher is left as it was


def test_callback_validates_arguments_eagerly(tmp_path, teacher_ckpt):
    ok = dict(mapping=MAPPING, teacher_class="ImageClassifier", teacher_checkpoint=str(teacher_ckpt))
    cases = [
        (dict(mapping={}), "mapping must be a non-empty dict"),
        (dict(mapping={"a": 3}), "mapping must be"),
        (dict(teacher_class="NoSuchModel"), "teacher_class 'NoSuchModel' cannot be imported"),
        (dict(teacher_class="torch.nn.Linear"), "teacher_class 'torch.nn.Linear' is not a LightningModule"),
        (dict(teacher_class=None), "teacher_class must name"),
        (dict(teacher_checkpoint=None), "teacher_checkpoint must be a checkpoint path"),
        (dict(teacher=nn.Linear(2, 2)), "give either teacher or teacher_class"),
        (dict(unmapped="pca"), r"unmapped must be one of \['keep', 'sylvester'\], got 'pca'"),
        (dict(lam=math.inf), "lam must be a finite number > 0, got inf"),
        (dict(samples_per_class=0), "samples_per_class must be a positive int, got 0"),
        (dict(patches_per_image=0), "patches_per_image must be"),
        (dict(precision="float16"), "precision must be one of"),
        (dict(evaluate="yes"), "evaluate must be a bool, got 'yes'"),
        (dict(verbose=1), "verbose must be a bool, got 1"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            FuseInit(**{**ok, **change})
    with pytest.raises(FileNotFoundError, match=r"teacher_checkpoint '.*missing.ckpt' is not a file"):
        FuseInit(**{**ok, "teacher_checkpoint": str(tmp_path / "missing.ckpt")})


def test_cli_flags_and_config(tmp_path, teacher_ckpt, monkeypatch):
    exe = shutil.which("lightning-sylv")
    cmd = [exe] if exe else [sys.executable, "-m", "lightning_sylv"]
    mapping = "{" + ", ".join(f'"{s}": "{t}"' for s, t in MAPPING.items()) + "}"
    args = [
        "fit",
        "--model=ImageClassifier",
        "--model.arch=mlp",
        f"--model.hidden={STUDENT_HIDDEN}",
        "--data=DigitsDataModule",
        "--trainer.callbacks+=FuseInit",
        "--trainer.callbacks.teacher_class=lightning_sylv.models.ImageClassifier",
        f"--trainer.callbacks.teacher_checkpoint={teacher_ckpt}",
        f"--trainer.callbacks.mapping={mapping}",
        "--trainer.callbacks.samples_per_class=10",
        "--trainer.logger=false",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + args, cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "FuseInit: 3 layer(s) fitted to the teacher (0 by Sylvester)" in out, out[-2000:]
    assert "from 100 samples" in out, out[-2000:]

    # The YAML config, with the checkpoint path given on the command line (in-process: no second start-up).
    from lightning_sylv.cli import cli

    monkeypatch.chdir(tmp_path)
    run = cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/digits_fuse.yaml"),
            f"--trainer.callbacks.teacher_checkpoint={teacher_ckpt}",
            "--trainer.callbacks.samples_per_class=10",
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
        ]
    )
    fuse = next(c for c in run.trainer.callbacks if isinstance(c, FuseInit))
    assert fuse.teacher_checkpoint == str(teacher_ckpt) and fuse.initialized and fuse.subset_size == 100


def _config_student() -> ImageClassifier:
    """The student of configs/digits_fuse.yaml, with the optimizer that config ships (SGD, lr 0.05)."""
    import yaml

    args = yaml.safe_load((ROOT / "configs/digits_fuse.yaml").read_text())["model"]["init_args"]
    return ImageClassifier(**args)


def _val_acc(trainer, model, dm) -> float:
    return trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]


def test_the_fused_student_trains_with_the_shipped_optimizer(tmp_path, teacher_ckpt, make_trainer):
    """Plain least squares (teacher_lam=inf) gave weights 80-900x the teacher's, and SGD at the config's
    learning rate diverged (issue 17.1). The default teacher_lam must train at least as well as a random
    student under the same optimizer and keep the weights at the teacher's scale."""
    import yaml

    config = yaml.safe_load((ROOT / "configs/digits_fuse.yaml").read_text())
    callback_args = config["trainer"]["callbacks"][0]["init_args"]
    teacher = ImageClassifier.load_from_checkpoint(teacher_ckpt)
    cb = FuseInit(
        mapping=callback_args["mapping"],
        teacher=teacher,
        samples_per_class=50,
        teacher_lam=callback_args.get("teacher_lam", 1000.0),
        verbose=False,
    )
    dm = DigitsDataModule(seed=0)
    opts = dict(logger=False, limit_train_batches=None, limit_val_batches=None, max_epochs=2)
    torch.manual_seed(0)
    fused = _config_student()
    make_trainer(tmp_path, [cb], **opts).fit(fused, datamodule=dm)
    torch.manual_seed(0)
    random_student = _config_student()
    trainer = make_trainer(tmp_path, [], **opts)
    trainer.fit(random_student, datamodule=dm)
    teacher_norm = max(float(m.weight.norm()) for m in teacher.modules() if isinstance(m, nn.Linear))
    student_norm = max(float(m.weight.norm()) for m in fused.modules() if isinstance(m, nn.Linear))
    assert student_norm < 3 * teacher_norm, (student_norm, teacher_norm)
    fused_acc, random_acc = _val_acc(trainer, fused, dm), _val_acc(trainer, random_student, dm)
    assert fused_acc >= random_acc - 0.01 and fused_acc >= cb.metrics["fuse/initial_accuracy"] - 0.02, (
        fused_acc,
        random_acc,
        cb.metrics,
    )
