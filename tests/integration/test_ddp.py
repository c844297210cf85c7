"""SylvesterInit under Lightning's own DDP (2 CPU processes, gloo), launched as a user would."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_init.py"


def _run(tmp_path: Path, devices: int, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(devices), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_ranks_identical_and_match_single_process(tmp_path):
    _run(tmp_path, 2, "ddp", "float64")  # float64 products: equal to one process up to rounding
    _run(tmp_path, 1, "auto", "float64")
    r0 = torch.load(tmp_path / "world2_rank0.pt")
    r1 = torch.load(tmp_path / "world2_rank1.pt")
    single = torch.load(tmp_path / "world1_rank0.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
        # Each rank saw half of the subset; the all-reduced statistics equal the full subset's.
        torch.testing.assert_close(r0[k], single[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ddp_layers_with_fewer_rows_than_inputs_gather_their_rows(tmp_path):
    """40 samples of 64 features over 3 processes (14/13/13 rows): the first layer pools its rows
    across processes (an uneven all-gather) and solves in their span, as a single process does."""
    _run(tmp_path, 3, "ddp", "wide", "float64")
    _run(tmp_path, 1, "auto", "wide", "float64")
    single = torch.load(tmp_path / "world1_rank0.pt")
    assert torch.load(tmp_path / "solvers_world1_rank0.pt")["net.0"].startswith("span")
    for rank in range(3):
        assert torch.load(tmp_path / f"solvers_world3_rank{rank}.pt")["net.0"].startswith("span"), rank
        weights = torch.load(tmp_path / f"world3_rank{rank}.pt")
        for k in single:
            torch.testing.assert_close(weights[k], single[k], rtol=1e-5, atol=1e-6, msg=f"{k} (rank {rank})")


@pytest.mark.slow
def test_ddp_with_batchnorm_ranks_identical(tmp_path):
    _run(tmp_path, 2, "ddp", "bn")
    r0 = torch.load(tmp_path / "world2_rank0.pt")
    r1 = torch.load(tmp_path / "world2_rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
        assert torch.isfinite(r0[k].float()).all()


@pytest.mark.slow
def test_ddp_head_only_leaves_the_body_bit_identical(tmp_path):
    # 3 processes: averaging three equal floats is not always exact, so untouched BatchNorm statistics
    # must not go through the average.
    _run(tmp_path, 3, "ddp", "bn", "head")
    before = torch.load(tmp_path / "before_world3_rank0.pt")
    for rank in range(3):
        after = torch.load(tmp_path / f"world3_rank{rank}.pt")
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed == {"net.3.weight", "net.3.bias"}, (rank, changed)
