"""The issue-18 baselines in ``examples/``: LSUV (optional ``lsuv`` package) and weight selection.

The LSUV tests skip when ``lsuv`` is not installed (CI does not install the ``examples`` extra);
weight selection and the report need nothing beyond the package's own requirements.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REPRO = EXAMPLES / "reproduce.py"


@pytest.fixture(scope="module")
def ex():
    """The example modules (the examples folder is not a package)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import baselines
        import report_results
        import reproduce
        import weight_selection
    finally:
        sys.path.remove(str(EXAMPLES))
    return dict(baselines=baselines, report=report_results, reproduce=reproduce, ws=weight_selection)


# ----------------------------------------------------------------------------------------------- LSUV


def _tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_lsuv_changes_the_weights_and_gives_unit_std_outputs(ex):
    pytest.importorskip("lsuv")
    torch.manual_seed(0)
    net = _tiny_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(64, 3, 8, 8) * 5 + 2
    net.train()
    ex["baselines"].lsuv_init_(net, x)
    assert net.training  # the package restores the mode
    for name in ("0.weight", "3.weight", "7.weight"):
        assert not torch.allclose(before[name], net.state_dict()[name]), name
    assert torch.count_nonzero(net[0].bias) == 0  # LSUV zeroes biases
    outs = {}
    hooks = [net[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in (0, 3, 7)]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for i, o in outs.items():
        assert abs(float(o.std()) - 1.0) < 0.1 + 1e-6, (i, float(o.std()))


def test_lsuv_callback_uses_the_balanced_subset_in_fit(ex):
    pytest.importorskip("lsuv")
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8, generator=g) * 3, torch.arange(60) % 4

    class DM(LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x, y), batch_size=16)

        def init_dataset(self):
            return TensorDataset(x, y)

    class M(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _tiny_cnn()

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: the weights are LSUV's after fit

    torch.manual_seed(0)
    model = M()
    w0 = model.net[0].weight.detach().clone()
    cb = ex["baselines"].LSUVBaseline(samples_per_class=3, seed=0)
    Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    ).fit(model, datamodule=DM())
    assert cb.subset_size == 12 and cb.metrics["lsuv/init_time_s"] > 0
    assert not torch.allclose(w0, model.net[0].weight)


def test_reproduce_table1_runs_lsuv_when_named(tmp_path):
    pytest.importorskip("lsuv")
    from fakes import write_fake_cifar10

    write_fake_cifar10(tmp_path)
    out_csv = tmp_path / "results" / "runs.csv"
    cmd = [
        sys.executable,
        str(REPRO),
        "table1",
        "--data-dir",
        str(tmp_path),
        "--csv",
        str(out_csv),
        "--val-size",
        "30",
        "--seeds",
        "0",
        "--test-limit",
        "20",
        "--shots",
        "2",
        "--epochs",
        "1",
        "--samples-per-class",
        "2",
        "--initializers",
        "lsuv",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["initializer"], r["samples_per_class"], r["latent"]) for r in rows] == [("lsuv", "2", "")]
    assert float(rows[0]["init_time_s"]) > 0
    assert rows[0]["machine"].startswith(tuple("xa"))  # "x86_64 ..."/"aarch64 ..."


def test_the_tests_write_the_columns_reproduce_writes(ex):
    from fakes import RUN_FIELDS

    assert list(RUN_FIELDS) == ex["reproduce"].FIELDS


def test_lsuv_runs_only_when_named_and_never_in_finetune(ex):
    rep = ex["reproduce"]
    args = type("A", (), {"initializers": None})()
    assert "lsuv" not in rep._chosen(args, ("sylvester", *rep.RANDOM_INITS))
    args.initializers = ["lsuv", "he_uniform"]
    assert rep._chosen(args, ("sylvester", *rep.RANDOM_INITS)) == ("he_uniform", "lsuv")
    with pytest.raises(SystemExit, match="lsuv"):
        rep._chosen(args, ("sylvester_head", *rep.RANDOM_INITS), baselines=False)


def test_report_adds_lsuv_rows_and_the_paired_comparison(ex, tmp_path):
    from fakes import RUN_FIELDS

    fields = list(RUN_FIELDS)
    base = dict(
        experiment="table1",
        setup="cifar10",
        shots="10",
        epochs="200",
        samples_per_class="100",
        lam="",
        latent="",
        patches_per_image="",
        forward_time_s="",
        wall_s="1",
        curve="",
        machine="m",
        date="d",
    )
    rows = [
        dict(
            base,
            initializer="sylvester",
            seed=s,
            lam="10.0",
            latent="pca",
            patches_per_image="16",
            initial_acc="0.2200",
            final_acc=f,
            init_time_s="1.0",
        )
        for s, f in (("0", "0.2800"), ("1", "0.2600"))
    ]
    rows += [
        dict(base, initializer="lsuv", seed=s, initial_acc="0.1000", final_acc=f, init_time_s="0.5")
        for s, f in (("0", "0.2700"), ("1", "0.2700"))
    ]
    out = tmp_path / "results" / "runs.csv"
    out.parent.mkdir(parents=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    md = ex["report"].build_report(out, out.parent).read_text()
    assert "| lsuv | 27.00 ± 0.00 (n=2) (10.0 ± 0.0) |" in md
    # Paired differences: +1 and -1 point final, +12 points initial; Sylvester ahead on 1 of 2 seeds.
    assert "| 10 shots, 200 ep | 0, 1 | 0.00 ± 1.41 (n=2) | 12.00 ± 0.00 (n=2) | 1 of 2 | 0.50 ± 0.00 (n=2) |" in md
    rows = [r for r in rows if r["initializer"] != "lsuv"]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    md = ex["report"].build_report(out, out.parent).read_text()
    assert "| lsuv |" not in md and "minus LSUV" not in md  # no LSUV runs: no row, no comparison


# ----------------------------------------------------------------------------------- weight selection


def test_element_indices(ex):
    ws = ex["ws"]
    assert ws.element_indices(8, 4).tolist() == [0, 2, 4, 6]
    assert ws.element_indices(10, 4).tolist() == [0, 2, 5, 7]
    assert ws.element_indices(8, 4, "centre").tolist() == [2, 3, 4, 5]
    assert ws.element_indices(8, 3, "first").tolist() == [0, 1, 2]
    assert ws.element_indices(5, 5).tolist() == list(range(5))
    with pytest.raises(ValueError, match="student is larger"):
        ws.element_indices(3, 5)


def test_select_weights_keeps_consistent_units_across_layers(ex):
    """Uniform selection of a linear teacher: the student computes exactly the teacher's selected units."""
    ws = ex["ws"]
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 3))
    student = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2), nn.Linear(2, 3))
    ws.select_weights_(student, teacher, {"0": "0", "1": "1", "2": "2"})
    assert torch.equal(student[0].weight, teacher[0].weight[[0, 2, 4, 6]])
    assert torch.equal(student[1].weight, teacher[1].weight[[0, 2]][:, [0, 2, 4, 6]])
    assert torch.equal(student[2].bias, teacher[2].bias)
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.allclose(student[:2](x), _sparse_teacher(teacher, x), atol=1e-6)


def _sparse_teacher(teacher, x):
    """The teacher's first two layers with only the uniformly selected units kept (8 -> 4, 4 -> 2)."""
    h = teacher[0](x)
    mask = torch.zeros(8)
    mask[[0, 2, 4, 6]] = 1
    return teacher[1](h * mask)[:, [0, 2]]


def test_select_weights_conv_and_flattened_linear(ex):
    ws = ex["ws"]
    torch.manual_seed(0)
    teacher, student = ws.cnn(8, 16, kernel=5), ws.cnn(4, 6, kernel=3)
    ws.select_weights_(student, teacher, {"conv1": "conv1", "fc": "fc", "head": "head"}, in_views={"fc": (8, 4)})
    assert torch.equal(student.conv1.weight, teacher.conv1.weight[[0, 2, 4, 6]][:, :, 1:4, 1:4])  # centre 3x3 of 5x5
    t_fc = teacher.fc.weight.reshape(16, 8, 16)[[0, 2, 5, 8, 10, 13]][:, [0, 2, 4, 6]].reshape(6, 64)
    assert torch.equal(student.fc.weight, t_fc)
    with pytest.raises(ValueError, match="student is larger"):
        ws.select_weights_(ws.cnn(16, 6), teacher, {"conv1": "conv1"})


def test_probe_taps_selected_units_without_changing_the_teacher(ex):
    ws = ex["ws"]
    torch.manual_seed(0)
    teacher = ws.cnn(8, 16)
    probed = ws._probed(teacher, {"conv1": 4, "fc": 6}, "uniform")
    seen = {}
    probed.fc.probe.register_forward_hook(lambda m, a, o: seen.__setitem__("fc", o))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(probed(x), teacher(x))
        full = teacher.fc(torch.flatten(teacher.pool(teacher.relu1(teacher.conv1(x))), 1))
    assert torch.equal(seen["fc"], full[:, [0, 2, 5, 8, 10, 13]])
    assert isinstance(teacher.fc, nn.Linear)  # the original is untouched


def test_weight_selection_script_smoke(ex, tmp_path):
    """One seed, tiny budgets, every pair: the CSV gets every arm, n/a where selection does not apply."""
    ws = ex["ws"]
    out_csv, out_md = tmp_path / "ws.csv", tmp_path / "ws.md"
    ws.main(
        [
            "--seeds",
            "0",
            "--teacher-epochs",
            "1",
            "--epochs",
            "1",
            "--per-class",
            "10",
            "--csv",
            str(out_csv),
            "--md",
            str(out_md),
        ]
    )
    rows = list(csv.DictReader(out_csv.open()))
    arms = {(r["pair"], r["arm"]) for r in rows}
    for pair in ws.PAIRS:
        assert {(pair, a) for a in ("teacher", *ws.ARMS)} <= arms
    na = [r for r in rows if r["pair"] == "cnn-depth" and r["arm"].startswith("select")]
    assert na and all(r["test_acc"] == "" and r["note"].startswith("n/a") for r in na)
    md = out_md.read_text()
    assert "### mlp-width" in md and "FuseInit minus `select_uniform`" in md and "| select_uniform | n/a |" in md
