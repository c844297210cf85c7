"""Shared pieces of the FuseInit experiments (``fuse_digits.py``, ``fuse_cifar10.py``).

Plain PyTorch (no Trainer) so that every arm runs the same short loop: a teacher is trained, then one
shallower student per arm is initialized (PyTorch default, He normal, Sylvester, FuseInit from the
teacher) and trained for a few epochs; test accuracy is recorded right after initialization and
after given epochs, appended to a CSV and summarized as mean ± std over seeds.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sylv import sylvester_init_
from lightning_sylv.fuse import fuse_init_
from lightning_sylv.models import random_init_
from lightning_sylv.subset import class_balanced_indices

ARMS = ("default", "he", "sylvester", "fuse")
FIELDS = ["date", "script", "dataset", "arch", "arm", "seed", "epoch", "test_acc", "init_time_s", "samples", "note"]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was = model.training
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    model.train(was)
    return correct / len(y)


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Adam with cross entropy for ``epochs`` epochs, shuffled with a seeded generator.

    ``on_epoch(e)`` is called after epoch ``e`` (1-based).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


def initialize(
    arm: str,
    student: nn.Module,
    teacher: nn.Module,
    x_sub: Tensor,
    y_sub: Tensor,
    mapping: Mapping[str, str],
    patches_per_image: int | None,
    seed: int,
) -> float:
    """Initialize ``student`` in place for one arm; return the wall time in seconds."""
    start = time.perf_counter()
    if arm == "he":
        random_init_(student, "he_normal", torch.Generator().manual_seed(seed))
    elif arm == "sylvester":
        sylvester_init_(student, x_sub, y_sub, lam=10.0, patches_per_image=patches_per_image, seed=seed)
    elif arm == "fuse":
        fuse_init_(student, teacher, x_sub, mapping, y_sub, patches_per_image=patches_per_image, seed=seed)
    elif arm != "default":
        raise ValueError(f"unknown arm {arm!r}")
    return time.perf_counter() - start


def subset(y: Tensor, per_class: int, seed: int) -> Tensor:
    """Class-balanced, seeded indices (the same draw the callbacks make)."""
    return class_balanced_indices(y, per_class, seed)


def run_students(
    *,
    script: str,
    dataset: str,
    arch: str,
    seed: int,
    teacher: nn.Module,
    make_student: Callable[[], nn.Module],
    mapping: Mapping[str, str],
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    per_class: int,
    epochs: Sequence[int],
    patches_per_image: int | None,
    lr: float,
    batch_size: int,
    teacher_epochs: int,
) -> list[dict[str, object]]:
    """Every arm for one seed; returns CSV rows (the teacher's row has arm ``teacher``)."""
    x_tr, y_tr, x_te, y_te = data
    date = dt.date.today().isoformat()
    rows: list[dict[str, object]] = []

    def row(arm: str, epoch: int, acc: float, secs: float = math.nan, note: str = "") -> None:
        rows.append(dict(date=date, script=script, dataset=dataset, arch=arch, arm=arm, seed=seed, epoch=epoch,
                         test_acc=round(acc, 4), init_time_s=round(secs, 4), samples=per_class * 10, note=note))

    n_params = sum(p.numel() for p in teacher.parameters())
    row("teacher", teacher_epochs, accuracy(teacher, x_te, y_te), note=f"{n_params} params")
    idx = subset(y_tr, per_class, seed)
    for arm in ARMS:
        torch.manual_seed(seed)  # the same default-init student for every arm
        student = make_student()
        secs = initialize(arm, student, teacher, x_tr[idx], y_tr[idx], mapping, patches_per_image, seed)
        row(arm, 0, accuracy(student, x_te, y_te), secs)
        wanted = set(epochs)
        train(student, x_tr, y_tr, max(epochs), seed, lr=lr, batch_size=batch_size,
              on_epoch=lambda e, s=student, a=arm, t=secs, w=wanted: (
                  row(a, e, accuracy(s, x_te, y_te), t) if e in w else None))
        accs = "  ".join(f"ep{r['epoch']}={100 * r['test_acc']:.1f}" for r in rows if r["arm"] == arm)
        print(f"  seed {seed} {arch:>4} {arm:>9}: " + accs, flush=True)
    return rows


def append_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Append ``rows`` to ``path`` (header written when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict[str, object]]) -> str:
    """A markdown table: test accuracy (%) mean ± std over seeds, per arch, arm and epoch."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((str(r["arch"]), str(r["arm"]), int(r["epoch"])), []).append(100 * float(r["test_acc"]))
        if r["epoch"] == 0 and not math.isnan(float(r["init_time_s"])):
            times.setdefault((str(r["arch"]), str(r["arm"])), []).append(float(r["init_time_s"]))
    archs = list(dict.fromkeys(k[0] for k in groups))
    lines = []
    for arch in archs:
        epochs = sorted({k[2] for k in groups if k[0] == arch and k[1] != "teacher"})
        lines.append(f"\n{arch}: test accuracy (%), mean ± std over seeds")
        lines.append("| arm | " + " | ".join(f"epoch {e}" for e in epochs) + " | init time (s) |")
        lines.append("|---|" + "---|" * (len(epochs) + 1))
        teacher = groups.get((arch, "teacher", next(k[2] for k in groups if k[0] == arch and k[1] == "teacher")), [])
        lines.append(f"| teacher (trained) | {_ms(teacher)} |" + " |" * len(epochs))
        for arm in ARMS:
            cells = [_ms(groups.get((arch, arm, e), [])) for e in epochs]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_ms(times.get((arch, arm), []), 3)} |")
    return "\n".join(lines)


def _ms(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
