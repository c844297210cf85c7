"""The CIFAR-10 reproduction harness, run for real on a tiny fake ``cifar-10-batches-py`` folder."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import RUN_FIELDS, write_fake_cifar10

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "examples" / "reproduce.py"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPRO), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _trial_args(data_dir, out_csv, seed: int) -> list[str]:
    """A trial run's arguments: the fake data, its own CSV, 30 validation images, 20 test images."""
    args = {"--data-dir": data_dir, "--csv": out_csv, "--val-size": 30, "--seeds": seed, "--test-limit": 20}
    return [str(v) for kv in args.items() for v in kv]


def test_table2_table1_and_report_append_resume_and_write_results(tmp_path):
    write_fake_cifar10(tmp_path)  # 150 training / 30 test images of 10 classes
    out_csv = tmp_path / "results" / "runs.csv"
    # --test-limit 20 of the 30 test images: a limit that is not a whole number of evaluation batches.
    common = _trial_args(tmp_path, out_csv, seed=0)
    log = _run("table2", *common, "--spc", "2", "--patches-per-image", "4")
    assert "[table2] sylvester" in log and "[table2] he_uniform" in log
    log = _run(
        "table1", *common, "--shots", "2", "--epochs", "1", "--samples-per-class", "2", "--patches-per-image", "4"
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert {(r["experiment"], r["initializer"]) for r in rows} == {
        ("table2", "sylvester"),
        ("table2", "he_uniform"),
        *{("table1", i) for i in ("sylvester", "he_uniform", "he_normal", "xavier_uniform", "xavier_normal")},
    }
    for r in rows:
        assert 0.0 <= float(r["initial_acc"]) <= 1.0 and r["date"] and r["machine"]
    t2 = next(r for r in rows if r["experiment"] == "table2" and r["initializer"] == "sylvester")
    assert float(t2["init_time_s"]) > 0 and float(t2["forward_time_s"]) > 0
    # Resumable: a second call finds every run in the CSV and appends nothing.
    assert "skip (in CSV)" in _run(
        "table1", *common, "--shots", "2", "--epochs", "1", "--samples-per-class", "2", "--patches-per-image", "4"
    )
    assert len(list(csv.DictReader(out_csv.open()))) == len(rows)
    # --initializers restricts a table to some initializers (one row: seed 1 of He uniform).
    seed1 = _trial_args(tmp_path, out_csv, seed=1)
    _run("table1", *seed1, "--shots", "2", "--epochs", "1", "--initializers", "he_uniform")
    added = list(csv.DictReader(out_csv.open()))[len(rows) :]
    assert [(r["initializer"], r["seed"]) for r in added] == [("he_uniform", "1")]
    rows = list(csv.DictReader(out_csv.open()))

    # Trial settings never go to the committed CSV (its key cannot tell them from a full run).
    proc = subprocess.run(
        [sys.executable, str(REPRO), "table1", "--test-limit", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "give them their own --csv" in proc.stderr

    _run("report", "--csv", str(out_csv))
    md = (tmp_path / "results" / "cifar10.md").read_text()
    assert "Table 2 analog" in md and "Table 1 analog" in md and "sylvester (pca)" in md
    results = (tmp_path / "RESULTS.md").read_text()
    assert results.count("cifar10 tables: begin") == 1 and "### Table 2 analog" in results
    # Re-running the report replaces the section instead of appending a second copy.
    (tmp_path / "RESULTS.md").write_text("# Results\n\nhand-written intro\n\n" + results.split("\n", 2)[2])
    _run("report", "--csv", str(out_csv))
    results = (tmp_path / "RESULTS.md").read_text()
    assert results.count("cifar10 tables: begin") == 1 and "hand-written intro" in results


def _build_report():
    """``examples/report_results.build_report`` (the examples folder is not a package)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from report_results import build_report
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return build_report


def _write_rows(path, rows, fields):
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_report_builds_the_figure_sections_from_csv_rows(tmp_path):
    """Figures 1-3 from hand-written rows: tables with mean ± std over seeds, PNGs, the settings line."""
    build_report = _build_report()
    fields = list(RUN_FIELDS)
    base = dict(
        setup="cifar10",
        shots="10",
        epochs="200",
        samples_per_class="100",
        patches_per_image="16",
        forward_time_s="",
        wall_s="1.0",
        machine="m",
        date="2026-11-24",
        curve="",
        init_time_s="1.5",
    )
    rows = [
        dict(
            base,
            experiment="fig2",
            initializer="sylvester",
            seed=s,
            lam=lam,
            latent="pca",
            initial_acc=f"{0.2 + 0.01 * s:.4f}",
            final_acc="0.3000",
        )
        for lam in ("0.1", "10.0")
        for s in (0, 1)
    ]
    rows += [
        dict(
            base,
            experiment="fig3",
            initializer="sylvester",
            seed="0",
            lam="10.0",
            latent=lat,
            initial_acc="0.2500",
            final_acc="0.2900",
        )
        for lat in ("pca", "kmeans")
    ]
    rows += [
        dict(
            base,
            experiment="fig1",
            initializer=init,
            seed="0",
            lam="",
            latent="",
            initial_acc="0.1000",
            final_acc="0.2800",
            curve="10.0:0.2;20.0:0.28",
            init_time_s="2.0" if init == "sylvester" else "",
        )
        for init in ("sylvester", "he_uniform")
    ]
    rows.append(
        dict(
            base,
            experiment="fig1",
            initializer="sylvester",
            seed="1",
            lam="",
            latent="",
            initial_acc="0.1200",
            final_acc="0.3000",
            curve="12.0:0.22;24.0:0.30",
            init_time_s="2.0",
        )
    )
    # Table 1: a shortened 500-shot column (20 epochs) must stay apart from a 200-epoch one of the same shots.
    rows += [
        dict(
            base,
            experiment="table1",
            initializer="he_uniform",
            shots=shots,
            seed=s,
            epochs=ep,
            lam="",
            latent="",
            initial_acc="0.1000",
            final_acc=acc,
            init_time_s="",
        )
        for shots, ep, s, acc in (
            ("50", "200", "0", "0.4000"),
            ("50", "200", "1", "0.4200"),
            ("500", "20", "0", "0.6000"),
            ("500", "200", "0", "0.7000"),
        )
    ]
    out_csv = _write_rows(tmp_path / "results" / "runs.csv", rows, fields)
    md = build_report(out_csv, out_csv.parent).read_text()
    assert "| 0.1 | 20.50 ± 0.71 (n=2) | 30.00 ± 0.00 (n=2) |" in md  # seeds 0 and 1: 20 % and 21 %
    assert "| kmeans | 25.00 (n=1) | 29.00 (n=1) |" in md
    assert "Shots per class: 10; epochs: 200" in md and "latent pca" in md and "λ 10.0" in md
    assert "| sylvester | 0 | 2.00 | 10.00 | 28.00 | 22 |" in md
    assert "| he_uniform | 0 | 0.00 | 10.00 | 28.00 | 20 |" in md
    assert "| sylvester | 1 | 2.00 | 12.00 | 30.00 | 26 |" in md
    assert (
        "| sylvester | mean of 2 | 2.00 ± 0.00 (n=2) | 11.00 ± 1.41 (n=2) | 29.00 ± 1.41 (n=2) | 24 ± 3 (n=2) |"
    ) in md
    assert "| he_uniform | mean of" not in md  # one seed: no mean row
    assert "| initializer | 50 shots, 200 ep | 500 shots, 200 ep | 500 shots, 20 ep |" in md
    assert (
        "| he_uniform | 41.00 ± 1.41 (n=2) (10.0 ± 0.0); paper 40.84 (9.96) "
        "| 70.00 (n=1) (10.0); paper 75.2 (9.96) "
        "| 60.00 (n=1) (10.0); paper 75.2 (9.96) |"
    ) in md
    for png in ("fig1_accuracy_vs_time.png", "fig2_lambda.png", "fig3_codes.png"):
        assert (tmp_path / "figures" / png).stat().st_size > 1000


def test_report_figure1_averages_seeds_only_within_one_setting(tmp_path):
    """Figure 1 rows of another shots setting get their own rows and curve, not a mean with the others."""
    build_report = _build_report()
    base = dict(
        experiment="fig1",
        setup="cifar10",
        initializer="he_uniform",
        epochs="200",
        samples_per_class="",
        lam="",
        latent="",
        patches_per_image="",
        forward_time_s="",
        wall_s="1.0",
        machine="m",
        date="2026-11-25",
        init_time_s="",
        initial_acc="0.1000",
    )
    rows = [
        dict(base, shots="10", seed="0", final_acc="0.2800", curve="10.0:0.2;20.0:0.28"),
        dict(base, shots="10", seed="1", final_acc="0.3000", curve="12.0:0.22;24.0:0.30"),
        dict(base, shots="50", seed="0", final_acc="0.4000", curve="30.0:0.3;60.0:0.40"),
    ]
    out_csv = _write_rows(tmp_path / "results" / "runs.csv", rows, list(rows[0]))
    md = build_report(out_csv, out_csv.parent).read_text()
    assert (
        "| he_uniform, 10 shots, 200 ep | mean of 2 | 0.00 ± 0.00 (n=2) | 10.00 ± 0.00 (n=2) | 29.00 ± 1.41 (n=2) |"
    ) in md
    assert "| he_uniform, 50 shots, 200 ep | 0 | 0.00 | 10.00 | 40.00 | 60 |" in md
    assert "he_uniform, 50 shots, 200 ep | mean of" not in md


def test_speed_benchmark_prints_ratios_and_solver_bounds(tmp_path):
    write_fake_cifar10(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "benchmark_speed.py"),
            "--data-dir",
            str(tmp_path),
            "--spc",
            "2",
            "--repeats",
            "1",
            "--patches-per-image",
            "4",
            "--val-size",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # no oversubscription next to other test workers
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    solver_lines = [line for line in proc.stdout.splitlines() if line.startswith("W ")]
    assert len(solver_lines) == 9  # every distinct ResNet-20 layer shape
    for line in solver_lines:
        assert "its two eigh alone" in line
        res_torch = float(line.split("residual torch ")[1].split()[0])
        assert res_torch <= 1e-6, line
    assert "all shapes:" in proc.stdout
    assert "spc=2 " in proc.stdout and "init/fastest forward=" in proc.stdout


def test_zoo_train_augmentation_and_table_need_no_torchvision():
    """examples/zoo_train.py's crop/flip keeps every image a shifted copy of itself, and its table
    aggregates seeds (the training itself needs torchvision and timm: the zoo extra)."""
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    import zoo_train

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    out = zoo_train._augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every non-zero value comes from the same image, each at most once
        kept = out[i][out[i] != 0]
        assert set(kept.tolist()) <= set(x[i].flatten().tolist()) and len(set(kept.tolist())) == kept.numel()
    rows = [
        {"model": "m", "init": init, "seed": s, "epochs": 3, "initial_acc": 10.0 + s, "final_acc": 40.0 + s + bonus,
         "curve": [30.0 + bonus, 35.0 + bonus, 40.0 + s + bonus], "init_s": 1.0, "train_s": 2.0, "wall_s": 3.0}
        for init, bonus in (("own", 0.0), ("sylvester", 2.0)) for s in range(3)
    ]  # fmt: skip
    rows.append({**rows[-1], "options": {"scale": "solve"}, "final_acc": 30.0, "curve": [20.0, 25.0, 30.0]})
    table = zoo_train.markdown(rows)
    # own's mean final is 41: Sylvester's mean curve (32, 37, 43) reaches it at epoch 3 of 3.
    assert "| m | own | 11.00 ± 1.00 (n=3) | 41.00 ± 1.00 (n=3) |  | — | 3.0 (1.00 + 2.0) |" in table
    assert "| m | sylvester | 11.00 ± 1.00 (n=3) | 43.00 ± 1.00 (n=3) | +2.00 | 3 of 3 |" in table
    assert "| m | sylvester scale=solve | 12.00 (n=1) | 30.00 (n=1) | -11.00 | never (3) |" in table
    assert "lsuv" not in table
    assert zoo_train.reach_epoch([1.0, 5.0, 9.0], 5.0) == 2 and zoo_train.reach_epoch([1.0], 5.0) is None


def test_layer_census_counts_k_over_d_per_group():
    """examples/layer_census.py: k = outputs per group, d = inputs per group; the decompositions' cost
    share of the layers with k/d <= 1/16 (no torchvision needed for the function)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from layer_census import census
    from torch import nn

    c = census(nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 5, groups=16), nn.Linear(400, 4)))
    assert c.layers == 3 and c.small_layers == 2  # the depthwise kernel (1 / 25) and the head (4 / 400)
    assert c.min_ratio == 4 / 400 and c.median_ratio == 1 / 25
    assert c.small_cost_share == pytest.approx((16 * 25**3 + 400**3) / (72**3 + 16 * 25**3 + 400**3))
    with pytest.raises(ValueError, match="no Linear/Conv"):
        census(nn.Sequential(nn.ReLU()))
