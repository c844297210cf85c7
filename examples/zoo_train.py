"""Does the initialization help *my* model train? Own init vs LSUV vs Sylvester on zoo models.

Each run trains a torchvision/timm model (10-class head, CIFAR-10 at 32×32) from ``--shots`` images
per class of the training split for a short fixed schedule, after one of three initializations:

* ``own``: the model's constructor init, untouched;
* ``lsuv``: LSUV (``lsuv.lsuv_with_singlebatch``, the ``examples`` extra) on the init subset;
* ``sylvester``: :func:`lightning_sylv.sylvester_init_` with its defaults on the same subset.

The init subset is ``--init-spc`` images per class drawn from the training shots (the zoo
benchmark's 20 by default, so LSUV, which runs the model once per layer and correction, stays cheap).
Training: AdamW (lr ``--lr``, weight decay 0.05), cosine schedule over ``--epochs``, batch 128,
random crop (padding 4) and horizontal flip, BatchNorm in training mode. It prints and appends to
``--jsonl`` the initial and final accuracy on 2,000 validation images held out of the training set
(the test set is never read) and the wall time of init plus training, per run.

Needs the ``zoo`` and ``examples`` extras (torchvision, timm, lsuv), see ``examples/zoo.py``::

    zoo-venv/bin/python examples/zoo_train.py --data-dir /tmp/cifar --models resnet18 \\
        --seeds 0 1 2 --jsonl zoo_train.jsonl --markdown zoo_train.md
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


def run_one(args: argparse.Namespace, model_name: str, init: str, seed: int) -> dict[str, Any]:
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
        sylvester_init_(model, xs, ys, seed=seed)
    init_s = time.perf_counter() - t0
    initial = accuracy(model, xv, yv)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = -(-len(xt) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
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
    train_s = time.perf_counter() - t1
    final = accuracy(model, xv, yv)
    return {
        "model": model_name, "init": init, "seed": seed, "shots": args.shots, "init_spc": args.init_spc,
        "epochs": args.epochs, "lr": args.lr, "initial_acc": initial, "final_acc": final,
        "init_s": init_s, "train_s": train_s, "wall_s": init_s + train_s, "threads": args.threads,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per (model, init): initial and final validation accuracy, wall time."""

    def ms(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f} (n=1)"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"

    lines = [
        "| model | init | initial val. acc. % | final val. acc. % | wall s (init + training), median |",
        "| --- | --- | --- | --- | --- |",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        for init in INITS:
            rs = [r for r in rows if r["model"] == m and r["init"] == init]
            if not rs:
                continue
            med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "init_s", "train_s")}
            lines.append(
                f"| {m} | {init} | {ms([r['initial_acc'] for r in rs])} | {ms([r['final_acc'] for r in rs])} "
                f"| {med['wall_s']:.1f} ({med['init_s']:.2f} + {med['train_s']:.1f}) |"
            )
    return "\n".join(lines)


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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jsonl", help="append each run's record here (runs already in it are skipped)")
    p.add_argument("--markdown", help="write the table of every run in --jsonl to this file")
    args = p.parse_args(argv)
    if not 1 <= args.init_spc <= args.shots:
        p.error(f"--init-spc must be in [1, --shots], got {args.init_spc}")
    done: list[dict[str, Any]] = []
    if args.jsonl and Path(args.jsonl).exists():
        done = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
    key = ("model", "init", "seed", "shots", "init_spc", "epochs", "lr")
    for model_name in args.models:
        for seed in args.seeds:
            for init in args.inits:
                want = dict(zip(key, (model_name, init, seed, args.shots, args.init_spc, args.epochs, args.lr)))
                if any(all(r.get(k) == v for k, v in want.items()) for r in done):
                    continue
                row = run_one(args, model_name, init, seed)
                print(json.dumps(row), flush=True)
                done.append(row)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(done) + "\n")
    print(markdown([r for r in done if r["model"] in args.models]))


if __name__ == "__main__":
    main()
