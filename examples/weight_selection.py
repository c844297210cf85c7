"""FuseInit against weight selection (issue 18) on scikit-learn's digits.

Weight selection (Xu et al., "Initializing Models with Larger Ones", ICLR 2024) initializes a
smaller student from a larger pretrained teacher without any data: every student layer takes the
weights of one teacher layer (*layer selection*; the paper takes the first N layers of a deeper
teacher), cut down to the student's shape (*element selection*: along every dimension a subset of
the teacher's indices). This file implements it from that description:

* ``uniform`` element selection (the paper's default): ``S`` of ``T`` indices evenly spaced,
  ``floor(i * T / S)``; ``centre``: the ``S`` consecutive indices in the middle; ``first``: the
  first ``S``. Kernel (spatial) dimensions always take the centre slice. The same rule is applied to
  a layer's outputs and to the next layer's inputs, so the kept neurons line up across layers.
  A ``Linear`` fed by a flattened ``C x H x W`` map selects whole channels (``in_view``).
* A dimension where the student is larger than the teacher cannot be selected: ``select_weights_``
  raises, and the pair is reported as not applicable.

Pairs (``--pairs``), each with its own trained teacher per seed (Adam, 30 epochs, as in
``fuse_digits.py``):

* ``mlp-depth``: the FuseInit MLP pair of the results page, teacher 64-128-128-128-64-10, student
  64-128-64-10. Selection: first-N (student hidden layers <- the teacher's first two) and the head
  <- the teacher's head. FuseInit: ``fuse_digits.py``'s mapping.
* ``cnn-depth``: the FuseInit CNN pair (teacher conv3x3(16)-conv3x3(32)-pool-conv3x3(64)-fc-head,
  student conv5x5(32)-pool-fc-head). Selection does not apply: the student's first conv has a 5x5
  kernel and 32 filters against the teacher's 3x3 and 16. Only FuseInit and the random arms run.
* ``mlp-width``: teacher 64-256-128-10, student 64-128-64-10 (half the width, same depth).
* ``cnn-width``: teacher conv5x5(64)-pool-fc(256)-head, student conv5x5(32)-pool-fc(128)-head.

For the width pairs FuseInit needs a target of the student layer's width: each student layer is
fitted (least squares, ``fuse_init_``) to the teacher layer's pre-activation output on the *same
selected units* as weight selection keeps (the units are tapped by an identity probe inside the
teacher), the head to the teacher's logits. So the two arms keep the same neurons; weight selection
copies their weights, FuseInit refits them from the data given the student's own inputs.

Arms: ``default`` (PyTorch's init), ``he`` (He normal), ``select_uniform`` and ``select_centre``
(weight selection with either element rule), ``fuse`` (FuseInit; the width pairs' targets are the
units ``--element`` selects, uniform by default), ``sylvester`` (for reference). Test accuracy right
after initialization (epoch 0) and after the given epochs of the same training loop, appended to
``results/weight_selection.csv``; ``--summary`` writes ``results/weight_selection.md``.

    python examples/weight_selection.py                     # 3 seeds, every pair (a few minutes, 1 thread)
    python examples/weight_selection.py --summary-only      # rebuild the markdown from the CSV
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent


def _examples_on_path() -> None:
    """fuse_common / fuse_digits live next to this file (the examples folder is not a package)."""
    if str(HERE) not in sys.path:
        sys.path.append(str(HERE))
CSV = HERE / "results" / "weight_selection.csv"
MD = HERE / "results" / "weight_selection.md"
ARMS = ("default", "he", "select_uniform", "select_centre", "fuse", "sylvester")
FIELDS = ["date", "pair", "arm", "seed", "epoch", "test_acc", "init_time_s", "samples", "note"]


# --------------------------------------------------------------------------------------------------
# Weight selection


def element_indices(teacher: int, student: int, how: str = "uniform") -> Tensor:
    """``student`` of ``teacher`` indices along one dimension."""
    if student > teacher:
        raise ValueError(f"cannot select {student} of {teacher} elements (the student is larger)")
    if how == "uniform":
        return torch.tensor([(i * teacher) // student for i in range(student)], dtype=torch.long)
    if how == "centre":
        start = (teacher - student) // 2
        return torch.arange(start, start + student)
    if how == "first":
        return torch.arange(student)
    raise ValueError(f"unknown element selection {how!r} (uniform, centre, first)")


def select_tensor(t: Tensor, shape: tuple[int, ...], how: list[str]) -> Tensor:
    """Cut ``t`` down to ``shape``, dimension ``d`` by the rule ``how[d]``."""
    if t.dim() != len(shape):
        raise ValueError(f"teacher tensor has {t.dim()} dims, student {len(shape)}")
    out = t
    for d, (n_t, n_s) in enumerate(zip(t.shape, shape)):
        if n_t != n_s:
            out = out.index_select(d, element_indices(n_t, n_s, how[d]))
    return out


@torch.no_grad()
def select_weights_(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Mapping[str, str],
    how: str = "uniform",
    in_views: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Weight selection: every student layer in ``pairs`` gets its teacher layer's weight (and bias),
    cut down to its shape; channel/feature dimensions by ``how``, kernel dimensions by their centre.

    ``in_views[name] = (teacher_channels, student_channels)`` marks a ``Linear`` fed by a flattened
    ``C x H x W`` map: its input is selected by whole channels, as the conv before it.
    Raises ``ValueError`` where the student is larger than the teacher along some dimension.
    """
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    for s_name, t_name in pairs.items():
        s, t = s_mods[s_name], t_mods[t_name]
        w_t = t.weight
        view = (in_views or {}).get(s_name)
        if view is not None:  # Linear on a flattened (C, H, W) map: select channels, keep H x W
            c_t, c_s = view
            w_t = w_t.reshape(w_t.shape[0], c_t, -1)
            target = (s.weight.shape[0], c_s, w_t.shape[2])
            if s.weight.shape[1] != c_s * w_t.shape[2]:
                raise ValueError(f"{s_name}: in_view {view} does not match in_features {s.weight.shape[1]}")
            w = select_tensor(w_t, target, [how, how, "centre"]).reshape(s.weight.shape)
        else:
            rules = [how, how] + ["centre"] * (w_t.dim() - 2)
            w = select_tensor(w_t, tuple(s.weight.shape), rules)
        s.weight.copy_(w)
        if s.bias is not None:
            if t.bias is None:
                s.bias.zero_()
            else:
                s.bias.copy_(select_tensor(t.bias, tuple(s.bias.shape), [how]))


# --------------------------------------------------------------------------------------------------
# Networks and pairs


class Probe(nn.Module):
    """Wraps a teacher layer; its child ``probe`` (an identity) sees the output on selected units only.

    FuseInit reads the output of ``<layer>.probe`` as the target of a narrower student layer.
    The wrapped layer's full output goes on unchanged.
    """

    def __init__(self, layer: nn.Module, index: Tensor) -> None:
        super().__init__()
        self.layer, self.probe = layer, nn.Identity()
        self.register_buffer("index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(x)
        self.probe(y.index_select(1, self.index))
        return y


def _mlp(widths: list[int]) -> nn.Sequential:
    from lightning_sylv.models import MLP

    return MLP(64, 10, hidden=widths)


def cnn(width: int, fc: int, kernel: int = 5) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, width, kernel, padding=kernel // 2), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
        flat=nn.Flatten(), fc=nn.Linear(width * 4 * 4, fc), relu2=nn.ReLU(), head=nn.Linear(fc, 10),
    ))


def _probed(teacher: nn.Module, taps: Mapping[str, int], how: str) -> nn.Module:
    """A copy of ``teacher`` whose layers ``taps[name] -> student width`` are wrapped in a ``Probe``."""
    import copy

    t = copy.deepcopy(teacher)
    for name, width in taps.items():
        parent_name, _, child = name.rpartition(".")
        parent = t.get_submodule(parent_name) if parent_name else t
        layer = getattr(parent, child)
        setattr(parent, child, Probe(layer, element_indices(layer.weight.shape[0], width, how)))
    return t


class Pair:
    def __init__(self, name: str, teacher: Callable[[], nn.Module], student: Callable[[], nn.Module],
                 fuse_mapping: Mapping[str, str], select_pairs: Mapping[str, str] | None,
                 taps: Mapping[str, int] | None = None, in_views: Mapping[str, tuple[int, int]] | None = None,
                 conv: bool = False, note: str = "") -> None:
        self.name, self.teacher, self.student = name, teacher, student
        self.fuse_mapping, self.select_pairs, self.taps, self.in_views = fuse_mapping, select_pairs, taps, in_views
        self.conv, self.note = conv, note


def _cnn_depth_teacher() -> nn.Sequential:
    _examples_on_path()
    from fuse_digits import cnn_teacher

    return cnn_teacher()


def _cnn_depth_student() -> nn.Sequential:
    _examples_on_path()
    from fuse_digits import cnn_student

    return cnn_student()


PAIRS = {
    "mlp-depth": Pair(
        "mlp-depth", lambda: _mlp([128, 128, 128, 64]), lambda: _mlp([128, 64]),
        fuse_mapping={"features.1": "features.3", "features.3": "features.7", "head": "head"},
        select_pairs={"features.1": "features.1", "features.3": "features.3", "head": "head"},
        note="teacher 64-128-128-128-64-10, student 64-128-64-10; selection: first two hidden layers + head"),
    "cnn-depth": Pair(
        "cnn-depth", _cnn_depth_teacher, _cnn_depth_student,
        fuse_mapping={"conv1": "conv2", "fc": "fc", "head": "head"}, select_pairs=None, conv=True,
        note="teacher conv3x3(16)-conv3x3(32)-pool-conv3x3(64)-fc(128)-head, student conv5x5(32)-pool-fc(128)-head; "
             "selection n/a (student conv1 is 5x5 with 32 filters, the teacher's 3x3 with 16)"),
    "mlp-width": Pair(
        "mlp-width", lambda: _mlp([256, 128]), lambda: _mlp([128, 64]),
        fuse_mapping={"features.1": "features.1.probe", "features.3": "features.3.probe", "head": "head"},
        select_pairs={"features.1": "features.1", "features.3": "features.3", "head": "head"},
        taps={"features.1": 128, "features.3": 64},
        note="teacher 64-256-128-10, student 64-128-64-10"),
    "cnn-width": Pair(
        "cnn-width", lambda: cnn(64, 256), lambda: cnn(32, 128),
        fuse_mapping={"conv1": "conv1.probe", "fc": "fc.probe", "head": "head"},
        select_pairs={"conv1": "conv1", "fc": "fc", "head": "head"},
        taps={"conv1": 32, "fc": 128}, in_views={"fc": (64, 32)}, conv=True,
        note="teacher conv5x5(64)-pool-fc(256)-head, student conv5x5(32)-pool-fc(128)-head"),
}


# --------------------------------------------------------------------------------------------------
# The experiment


def initialize(arm: str, pair: Pair, student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, seed: int,
               how: str) -> float | None:
    """Initialize ``student`` in place; the wall time in seconds, or ``None`` if the arm does not apply."""
    from lightning_sylv import sylvester_init_
    from lightning_sylv.fuse import fuse_init_
    from lightning_sylv.models import random_init_

    t0 = time.perf_counter()
    if arm == "he":
        random_init_(student, "he_normal", torch.Generator().manual_seed(seed))
    elif arm.startswith("select_"):
        if pair.select_pairs is None:
            return None
        select_weights_(student, teacher, pair.select_pairs, arm.removeprefix("select_"), pair.in_views)
    elif arm == "fuse":
        t = _probed(teacher, pair.taps, how) if pair.taps else teacher
        fuse_init_(student, t.eval(), x, pair.fuse_mapping, y, patches_per_image=None, seed=seed)
    elif arm == "sylvester":
        sylvester_init_(student, x, y, lam=10.0, patches_per_image=None, seed=seed)
    elif arm != "default":
        raise ValueError(arm)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    _examples_on_path()
    from fuse_common import accuracy, subset, train

    from lightning_sylv.data import DigitsDataModule

    dm = DigitsDataModule(seed=0)  # the split of fuse_digits.py; seeds vary inits, subsets and shuffles
    dm.setup()
    x_tr, y_tr = dm.train_dataset.inputs, dm.train_dataset.targets
    x_te, y_te = dm.test_dataset.inputs, dm.test_dataset.targets
    date = dt.date.today().isoformat()
    rows: list[dict[str, object]] = []
    for name in args.pairs:
        pair = PAIRS[name]
        for seed in args.seeds:
            torch.manual_seed(1000 + seed)
            teacher = pair.teacher()
            train(teacher, x_tr, y_tr, args.teacher_epochs, seed=1000 + seed, lr=args.lr)
            teacher.eval()
            seed_rows = [dict(date=date, pair=name, arm="teacher", seed=seed, epoch=args.teacher_epochs,
                              test_acc=round(accuracy(teacher, x_te, y_te), 4), init_time_s="", samples="",
                              note=f"{sum(p.numel() for p in teacher.parameters())} params")]
            idx = subset(y_tr, args.per_class, seed)
            for arm in ARMS:
                torch.manual_seed(seed)  # the same default-init student for every arm
                student = pair.student()
                how = args.element
                secs = initialize(arm, pair, student, teacher, x_tr[idx], y_tr[idx], seed, how)
                if secs is None:
                    seed_rows.append(dict(date=date, pair=name, arm=arm, seed=seed, epoch=0, test_acc="",
                                          init_time_s="", samples=len(idx), note="n/a: " + pair.note.split("; ")[-1]))
                    continue

                def rec(epoch: int, s: nn.Module = student, a: str = arm, t: float = secs,
                        seed_rows: list[dict[str, object]] = seed_rows, name: str = name, seed: int = seed,
                        idx: Tensor = idx, how: str = how, pair: Pair = pair) -> None:
                    seed_rows.append(dict(date=date, pair=name, arm=a, seed=seed, epoch=epoch,
                                          test_acc=round(accuracy(s, x_te, y_te), 4), init_time_s=round(t, 4),
                                          samples=len(idx) if a in ("fuse", "sylvester") else "",
                                          note=f"fused units: {how}" if a == "fuse" and pair.taps else ""))

                rec(0)
                wanted = set(args.epochs)
                train(student, x_tr, y_tr, max(args.epochs), seed, lr=args.lr, batch_size=64,
                      on_epoch=lambda e, r=rec, w=wanted: r(e) if e in w else None)
                accs = "  ".join(f"ep{r['epoch']}={100 * float(r['test_acc']):.1f}"
                                 for r in seed_rows if r["arm"] == arm)
                print(f"  {name} seed {seed} {arm:>9}: {accs}", flush=True)
            _append(args.csv, seed_rows)
            rows += seed_rows
    return rows


def _append(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(rows: list[dict[str, str]]) -> str:
    """Markdown tables, test accuracy (%) mean ± std over seeds per pair, arm and epoch."""
    lines = []
    for name in dict.fromkeys(r["pair"] for r in rows):
        sub = [r for r in rows if r["pair"] == name]
        epochs = sorted({int(r["epoch"]) for r in sub if r["arm"] != "teacher"})
        seeds = sorted({r["seed"] for r in sub}, key=int)
        lines += [f"### {name}", "", PAIRS[name].note + f". Seeds {', '.join(seeds)}.", "",
                  "| arm | " + " | ".join(f"epoch {e}" for e in epochs) + " | init time (s) |",
                  "| --- |" + " --- |" * (len(epochs) + 1)]
        teacher = [100 * float(r["test_acc"]) for r in sub if r["arm"] == "teacher"]
        lines.append(f"| teacher (trained) | {_ms(teacher)} |" + " |" * len(epochs))
        for arm in ARMS:
            ar = [r for r in sub if r["arm"] == arm]
            if not ar:
                continue
            if all(r["test_acc"] == "" for r in ar):
                lines.append(f"| {arm} | n/a |" + " |" * len(epochs))
                continue
            cells = [_ms([100 * float(r["test_acc"]) for r in ar if int(r["epoch"]) == e and r["test_acc"] != ""])
                     for e in epochs]
            t = [float(r["init_time_s"]) for r in ar if int(r["epoch"]) == 0 and r["init_time_s"] not in ("", "nan")]
            t_cell = "-" if not t else f"{statistics.mean(t):.3f}"
            label = "**" + arm + "**" if arm.startswith("select") or arm == "fuse" else arm
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {t_cell} |")
        lines.append("")
        fuse0 = {r["seed"]: float(r["test_acc"]) for r in sub if r["arm"] == "fuse" and r["epoch"] == "0"}
        for sel in ("select_uniform", "select_centre"):
            sel0 = {r["seed"]: float(r["test_acc"])
                    for r in sub if r["arm"] == sel and r["epoch"] == "0" and r["test_acc"]}
            both = sorted(set(fuse0) & set(sel0), key=int)
            if both:
                d = [100 * (fuse0[k] - sel0[k]) for k in both]
                lines += [f"FuseInit minus `{sel}`, initial accuracy, paired by seed: {_ms(d)} points "
                          f"(FuseInit higher on {sum(x > 0 for x in d)} of {len(d)} seeds).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10], help="report after these student epochs")
    p.add_argument("--per-class", type=int, default=100, help="FuseInit/Sylvester subset, images per class")
    p.add_argument("--element", default="uniform", choices=["uniform", "centre", "first"],
                   help="which teacher units the width pairs' FuseInit targets (the select_* arms run both rules)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--csv", type=Path, default=CSV)
    p.add_argument("--md", type=Path, default=MD)
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not args.summary_only:
        run(args)
    rows = list(csv.DictReader(args.csv.open()))
    text = summarize(rows)
    args.md.write_text("## FuseInit against weight selection (digits)\n\nBuilt from `" + args.csv.name +
                       "` by `python examples/weight_selection.py --summary-only`. Test accuracy (%), mean ± std over "
                       "seeds; epoch 0 is right after initialization.\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
