"""Does the initialization help *my* model train? Own init vs LSUV vs Sylvester, with curves.

Each run trains a torchvision/timm model (10-class head, CIFAR-10 at 32×32) from ``--shots`` images
per class of the training split for ``--epochs`` epochs, after one of three initializations:

* ``own``: the model's constructor init, untouched;
* ``lsuv``: LSUV (``lsuv.lsuv_with_singlebatch``, the ``examples`` extra) on the init subset;
* ``sylvester``: :func:`lightning_sylv.sylvester_init_` with its defaults on the same subset, plus
  the JSON of ``--init-options`` (for ablations; the record keeps them and they label its row).

The init subset is ``--init-spc`` images per class drawn from the training shots (the zoo
benchmark's 20 by default, so LSUV, which runs the model once per layer and correction, stays cheap).
Training: AdamW (lr ``--lr``, weight decay 0.05), cosine schedule over ``--epochs`` (after a linear
warmup of ``--warmup-epochs``, none by default), batch 128,
random crop (padding 4) and horizontal flip, BatchNorm in training mode. Accuracy is measured on
2,000 validation images held out of the training set (the test set is never read) after the init and
after every epoch; each run appends one JSON line to ``--jsonl`` (runs already there are skipped, so
an interrupted benchmark resumes), with the curve, the init and training times.

``--markdown`` writes the table (mean ± std over seeds of the initial and final accuracy, and the
first epoch at which the mean curve reaches the own init's mean final accuracy), ``--figure`` the
mean curves as a PNG (matplotlib). Both cover every run in ``--jsonl`` at the given shots/epochs.

Needs the ``zoo`` and ``examples`` extras (torchvision, timm, lsuv), see ``examples/zoo.py``::

    zoo-venv/bin/python examples/zoo_train.py --data-dir /tmp/cifar --models resnet18 vit_p4 \\
        --seeds 0 1 2 --jsonl train.jsonl --markdown train.md --figure train.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
INITS = ("own", "lsuv", "sylvester")


def _augment(x: Any, generator: Any) -> Any:
    """Random crop with 4 pixels of zero padding and a horizontal flip, per image."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(32))[:, None, :, None].expand(n, x.shape[1], 32, 40)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(32))[:, None, None, :].expand(n, x.shape[1], 32, 32)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def run_one(
    args: argparse.Namespace, model_name: str, init: str, seed: int, options: dict[str, Any]
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from baselines import lsuv_init_
    from zoo import accuracy, balanced, build, load_cifar

    from lightning_sylv import sylvester_init_

    torch.set_num_threads(args.threads)
    x, y = load_cifar(Path(args.data_dir))
    train_idx = balanced(y[:45000], args.shots, seed)
    val = np.random.default_rng(1000).choice(np.arange(45000, 50000), args.val, replace=False)
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    del x, y
    # The init subset: the first init_spc shots of every class (train_idx is grouped by class).
    per = args.shots
    sub = np.concatenate([np.arange(c * per, c * per + args.init_spc) for c in range(10)])
    xs, ys = xt[sub], yt[sub]

    torch.manual_seed(seed)
    model = build(model_name)
    t0 = time.perf_counter()
    if init == "lsuv":
        lsuv_init_(model, xs)
    elif init == "sylvester":
        sylvester_init_(model, xs, ys, seed=seed, **options)
    init_s = time.perf_counter() - t0
    initial = accuracy(model, xv, yv)
    curve: list[float] = []

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = -(-len(xt) // args.batch_size)
    warm = args.warmup_epochs * steps_per_epoch
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch - warm)
    sched: Any = cosine
    if warm:
        ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (warm + 1), total_iters=warm)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warm])
    g = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        for lo in range(0, len(xt), args.batch_size):
            idx = order[lo : lo + args.batch_size]
            loss = F.cross_entropy(model(_augment(xt[idx], g)), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        t_eval = time.perf_counter()
        curve.append(accuracy(model, xv, yv))
        t1 += time.perf_counter() - t_eval  # training time without the evaluations
    train_s = time.perf_counter() - t1
    return {
        "model": model_name, "init": init, "options": options if init == "sylvester" else {}, "seed": seed,
        "shots": args.shots, "init_spc": args.init_spc, "epochs": args.epochs, "lr": args.lr,
        **({"warmup_epochs": args.warmup_epochs} if args.warmup_epochs else {}),
        "initial_acc": initial, "final_acc": curve[-1], "curve": curve, "init_s": init_s, "train_s": train_s,
        "wall_s": init_s + train_s, "threads": args.threads, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def label(r: dict[str, Any]) -> str:
    """The row label of a run: its init, with any Sylvester options."""
    opts = r.get("options") or {}
    warm = f" (warmup {r['warmup_epochs']})" if r.get("warmup_epochs") else ""
    return r["init"] + "".join(f" {k}={v}" for k, v in sorted(opts.items())) + warm


def _groups(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        out.setdefault(r["model"], {}).setdefault(label(r), []).append(r)
    return out


def _mean_curve(rs: list[dict[str, Any]]) -> list[float] | None:
    curves = [r["curve"] for r in rs if r.get("curve")]
    if not curves or len({len(c) for c in curves}) != 1:
        return None
    return [statistics.mean(v) for v in zip(*curves)]


def reach_epoch(curve: list[float] | None, target: float) -> int | None:
    """The first epoch (1-based) at which ``curve`` reaches ``target``; ``None`` if it never does."""
    for epoch, acc in enumerate(curve or [], start=1):
        if acc >= target:
            return epoch
    return None


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (model, init): initial and final accuracy, the epoch at which the
    mean curve reaches the own init's mean final accuracy, the gap to own, wall time."""

    def ms(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f} (n=1)"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"

    lines = [
        "| model | init | initial val. acc. % | final val. acc. % | Δ final vs own | epoch reaching own's final "
        "| wall s (init + training), median |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, by_init in _groups(rows).items():
        own = by_init.get("own")
        own_final = statistics.mean(r["final_acc"] for r in own) if own else None
        for name in sorted(by_init, key=lambda k: (INITS.index(k.split()[0]), k)):
            rs = by_init[name]
            epochs = rs[0]["epochs"]
            final = statistics.mean(r["final_acc"] for r in rs)
            delta = "" if own_final is None or name == "own" else f"{final - own_final:+.2f}"
            curve = _mean_curve(rs)
            reach = reach_epoch(curve, own_final) if own_final is not None else None
            if own_final is None or name == "own" or curve is None:
                reached = "—"  # no reference, the reference itself, or runs recorded without a curve
            else:
                reached = f"{reach} of {epochs}" if reach else f"never ({epochs})"
            med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "init_s", "train_s")}
            lines.append(
                f"| {model} | {name} | {ms([r['initial_acc'] for r in rs])} | {ms([r['final_acc'] for r in rs])} "
                f"| {delta} | {reached} | {med['wall_s']:.1f} ({med['init_s']:.2f} + {med['train_s']:.1f}) |"
            )
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Mean validation curves (epoch 0: after the init) per model, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    cols = min(4, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    colors = {"own": "C0", "sylvester": "C1", "lsuv": "C2"}
    main_labels = set(colors)
    others = sorted({name for by_init in groups.values() for name in by_init} - main_labels)
    colors.update({name: f"C{3 + i % 7}" for i, name in enumerate(others)})  # one colour per label, every panel
    for ax, (model, by_init) in zip(axes.flat, groups.items()):
        for name, rs in sorted(by_init.items()):
            color, style = colors[name], "-" if name in main_labels else "--"
            curve = _mean_curve(rs)
            if curve is None:  # runs recorded without a curve: their mean final accuracy as a line
                final = statistics.mean(r["final_acc"] for r in rs)
                ax.axhline(final, color=color, linestyle=":", label=f"{name}: final only (n={len(rs)})")
                continue
            initial = statistics.mean(r["initial_acc"] for r in rs)
            n = sum(1 for r in rs if r.get("curve"))
            ax.plot(range(len(curve) + 1), [initial, *curve], style, color=color, marker=".", label=f"{name} (n={n})")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("val. acc. %", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small", "vit_p4", "convnext_tiny"])
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, default=100, help="training images per class")
    p.add_argument("--init-spc", type=int, default=20, help="images per class of the init subset")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear warmup of the lr before the cosine")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-options", default="{}", help='JSON of extra sylvester_init_ arguments, e.g. \'{"lam": 1}\'')
    p.add_argument("--jsonl", help="append each run's record here (runs already in it are skipped)")
    p.add_argument("--markdown", help="write the table of every run in --jsonl (these shots/epochs) to this file")
    p.add_argument("--figure", help="write the mean curves of every run in --jsonl (these shots/epochs) as a PNG")
    p.add_argument("--report", action="store_true", help="run nothing: only the table and figure of --jsonl")
    args = p.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        p.error(f"--warmup-epochs must be in [0, --epochs), got {args.warmup_epochs}")
    if not 1 <= args.init_spc <= args.shots:
        p.error(f"--init-spc must be in [1, --shots], got {args.init_spc}")
    done: list[dict[str, Any]] = []
    if args.jsonl and Path(args.jsonl).exists():
        done = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
    options = json.loads(args.init_options)
    key = ("model", "init", "options", "seed", "shots", "init_spc", "epochs", "lr", "warmup_epochs")
    for model_name in [] if args.report else args.models:
        for seed in args.seeds:
            for init in args.inits:
                opts = options if init == "sylvester" else {}
                values = (
                    model_name, init, opts, seed, args.shots, args.init_spc, args.epochs, args.lr, args.warmup_epochs
                )
                want = dict(zip(key, values))
                absent = {"options": {}, "warmup_epochs": 0}
                if any(all(r.get(k, absent.get(k)) == v for k, v in want.items()) for r in done):
                    continue
                row = run_one(args, model_name, init, seed, opts)
                print(json.dumps(row), flush=True)
                done.append(row)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
    setting = (args.shots, args.epochs, args.init_spc, args.warmup_epochs)
    budget = [r for r in done if (r["shots"], r["epochs"], r["init_spc"], r.get("warmup_epochs", 0)) == setting]
    if args.markdown:
        Path(args.markdown).write_text(markdown(budget) + "\n")
    if args.figure:
        title = f"CIFAR-10, {args.shots} images per class, {args.epochs} epochs (mean of seeds)"
        figure(budget, args.figure, title)
    print(markdown(budget if args.report else [r for r in budget if r["model"] in args.models]))


if __name__ == "__main__":
    main()
