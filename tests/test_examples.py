"""The CIFAR-10 reproduction harness, run for real on a tiny fake ``cifar-10-batches-py`` folder."""

import csv
import subprocess
import sys
from pathlib import Path

from test_data_cifar10 import _write_fake

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "examples" / "reproduce.py"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPRO), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_table2_table1_and_report_append_resume_and_write_results(tmp_path):
    _write_fake(tmp_path)  # 150 training / 30 test images of 10 classes
    out_csv = tmp_path / "results" / "runs.csv"
    common = ["--data-dir", str(tmp_path), "--csv", str(out_csv), "--val-size", "30", "--seeds", "0"]
    log = _run("table2", *common, "--spc", "2", "--patches-per-image", "4")
    assert "[table2] sylvester" in log and "[table2] he_uniform" in log
    log = _run("table1", *common, "--shots", "2", "--epochs", "1", "--samples-per-class", "2", "--patches-per-image", "4")
    rows = list(csv.DictReader(out_csv.open()))
    assert {(r["experiment"], r["initializer"]) for r in rows} == {
        ("table2", "sylvester"), ("table2", "he_uniform"),
        *{("table1", i) for i in ("sylvester", "he_uniform", "he_normal", "xavier_uniform", "xavier_normal")},
    }
    for r in rows:
        assert 0.0 <= float(r["initial_acc"]) <= 1.0 and r["date"] and r["machine"]
    t2 = next(r for r in rows if r["experiment"] == "table2" and r["initializer"] == "sylvester")
    assert float(t2["init_time_s"]) > 0 and float(t2["forward_time_s"]) > 0
    # Resumable: a second call finds every run in the CSV and appends nothing.
    assert "skip (in CSV)" in _run("table1", *common, "--shots", "2", "--epochs", "1", "--samples-per-class", "2",
                                   "--patches-per-image", "4")
    assert len(list(csv.DictReader(out_csv.open()))) == len(rows)

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
