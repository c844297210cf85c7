"""The CLI as a user runs it: the installed console script and ``python -m`` in subprocesses."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _run(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    exe = shutil.which("lightning-sylv")
    cmd = [exe] if exe else [sys.executable, "-m", "lightning_sylv"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd + args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_digits_config_trains_and_prints_initial_accuracies(tmp_path):
    proc = _run(["fit", "--config", str(ROOT / "configs/digits.yaml"), *FAST], tmp_path)
    out = proc.stdout + proc.stderr
    m = re.search(r"without init (\d+\.\d+)% -> with init (\d+\.\d+)%", out)
    assert m, out[-2000:]
    assert float(m.group(2)) > float(m.group(1))
    events = list((tmp_path / "lightning_logs" / "digits").glob("version_*/events.out.tfevents.*"))
    assert events, "the TensorBoard logger of the config wrote no event file"


def test_callback_added_by_flag_with_short_names(tmp_path):
    proc = _run(
        [
            "fit",
            "--model=ImageClassifier",
            "--model.arch=mlp",
            "--data=DigitsDataModule",
            "--trainer.callbacks+=SylvesterInit",
            "--trainer.callbacks.samples_per_class=7",
            "--trainer.callbacks.scale=own",  # a Literal alias (lightning_sylv.scale.Scale) parses
            "--trainer.logger=false",
            *FAST,
        ],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "from 70 samples" in out, out[-2000:]


def test_flag_on_top_of_the_config(tmp_path):
    proc = _run(
        [
            "fit",
            "--config",
            str(ROOT / "configs/digits.yaml"),
            "--trainer.callbacks+=SylvesterInit",
            "--trainer.callbacks.samples_per_class=3",
            "--trainer.logger=false",
            *FAST,
        ],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "from 200 samples" in out and "from 30 samples" in out, out[-2000:]


@pytest.mark.parametrize("callback", ["SylvesterInit", "LowRankInit", "FuseInit"])
def test_python_dash_m_help_lists_every_documented_argument(tmp_path, callback):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_sylv", "fit", "--trainer.callbacks.help", callback],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import inspect

    import lightning_sylv

    for name in inspect.signature(getattr(lightning_sylv, callback)).parameters:
        assert f"--trainer.callbacks.{name}" in proc.stdout or f"--{name}" in proc.stdout, name
    # Readable: no expansion of every nn.Module subclass (FuseInit's Python-only teacher printed 525
    # lines), no Sphinx roles, and the latent codes listed.
    lines = proc.stdout.splitlines()
    assert len(lines) < 200, len(lines)
    assert not re.search(r":(data|class|func|mod|meth|attr):`", proc.stdout)
    if callback == "SylvesterInit":
        assert '"pca", "signed_pca", "rotated_pca", "rotated_signed_pca", "onehot"' in " ".join(proc.stdout.split())


def test_bad_flag_value_is_rejected_with_the_argument_named(tmp_path):
    exe = shutil.which("lightning-sylv")
    cmd = [exe] if exe else [sys.executable, "-m", "lightning_sylv"]
    proc = subprocess.run(
        [
            *cmd,
            "fit",
            "--config",
            str(ROOT / "configs/digits.yaml"),
            "--trainer.callbacks+=SylvesterInit",
            "--trainer.callbacks.samples_per_class=0",
            *FAST,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "samples_per_class" in proc.stderr


def test_lowrank_config_converts_and_initializes_through_the_cli(tmp_path):
    proc = _run(
        [
            "fit",
            "--config",
            str(ROOT / "configs/digits_lowrank.yaml"),
            "--trainer.callbacks.init_args.samples_per_class=5",
            "--trainer.logger=false",
            *FAST,
        ],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    m = re.search(
        r"LowRankInit: 2 low-rank layer\(s\) initialized \(relu, W: current\) .* from 50 samples; "
        r"mean ReLU error (\d+\.\d+) \(spectral (\d+\.\d+)\); validation accuracy (\d+\.\d+)%",
        out,
    )
    assert m, out[-2000:]
    assert float(m.group(1)) < float(m.group(2))
