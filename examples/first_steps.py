"""What the first epoch of AdamW does to the initialized weights: ``scale="own"`` against ``"norm"``.

For every weight of a model (matrices and kernels), after its own init and after ``sylvester_init_``
with ``scale="own"`` (the solved directions at the own output energy) and ``scale="norm"`` (at the own
weights' Frobenius norm), it prints

* ``norm ÷ own``: the weight's Frobenius norm over the own init's;
* ``moved``: ``‖W_after − W_before‖ / ‖W_before‖`` after one epoch of the training benchmark's AdamW
  (``examples/zoo_train.py``: lr 1e-3, weight decay 0.05, batch 128, crop + flip; 100 images per
  class, so 8 steps), i.e. how far the first steps move each layer relative to what it holds;
* the validation accuracy after the init and after that epoch.

Adam moves every weight by about the learning rate per step whatever its size, so a layer whose
solved weights are smaller than its own init's is moved further, relative to its size.

Needs the ``zoo`` extra (torchvision, timm), see ``examples/zoo.py``::

    zoo-venv/bin/python examples/first_steps.py --data-dir /tmp/cifar --model vit_p4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _weights(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() >= 2}


def _one_epoch(model: Any, x: Any, y: Any, seed: int) -> None:
    import torch
    import torch.nn.functional as F
    from zoo_train import _augment

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(x), generator=g)
    for lo in range(0, len(x), 128):
        idx = order[lo : lo + 128]
        loss = F.cross_entropy(model(_augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="vit_p4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=100)
    p.add_argument("--init-spc", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, str(HERE))
    from zoo import accuracy, balanced, build, load_cifar

    from lightning_sylv import sylvester_init_

    torch.set_num_threads(args.threads)
    x, y = load_cifar(Path(args.data_dir))
    idx = balanced(y[:45000], args.shots, args.seed)
    val = np.random.default_rng(1000).choice(np.arange(45000, 50000), 2000, replace=False)
    xt, yt = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    sub = np.concatenate([np.arange(c * args.shots, c * args.shots + args.init_spc) for c in range(10)])

    torch.manual_seed(args.seed)
    own = build(args.model)
    models = {"own": own}
    for scale in ("own", "norm"):
        models[f"scale={scale}"] = copy.deepcopy(own)
        sylvester_init_(models[f"scale={scale}"], xt[sub], yt[sub], seed=args.seed, scale=scale)
    before = {k: _weights(m) for k, m in models.items()}
    initial = {k: accuracy(m, xv, yv) for k, m in models.items()}
    for m in models.values():
        _one_epoch(m, xt, yt, args.seed)
    after = {k: _weights(m) for k, m in models.items()}

    ref = before["own"]
    names = [n for n in ref if float(ref[n].norm()) > 0]
    print(f"{args.model}, seed {args.seed}: one epoch of AdamW ({-(-len(xt) // 128)} steps)\n")
    print(f"| weight | {' | '.join(f'norm ÷ own, {k}' for k in models if k != 'own')} | "
          f"{' | '.join(f'moved, {k}' for k in models)} |")  # fmt: skip
    print("| --- " * (2 * len(models)) + "|")
    for n in names:
        ratios = [float(before[k][n].norm() / ref[n].norm()) for k in models if k != "own"]
        moved = [float((after[k][n] - before[k][n]).norm() / before[k][n].norm()) for k in models]
        print(f"| {n} | {' | '.join(f'{r:.3f}' for r in ratios)} | {' | '.join(f'{m:.3f}' for m in moved)} |")
    print()
    for k in models:
        moved = [float((after[k][n] - before[k][n]).norm() / before[k][n].norm()) for n in names]
        final = accuracy(models[k], xv, yv)
        print(f"{k}: val. acc. {initial[k]:.2f} % after the init, {final:.2f} % after one epoch; "
              f"median moved {statistics.median(moved):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
