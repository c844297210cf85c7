"""Choose the initializer's settings on the validation split (never the test set).

Initial validation accuracy of ResNet-20 right after Sylvester initialization, for a grid of latent
codes, patches per image and λ, at the given samples per class, over several subset seeds.

    python examples/select_on_val.py --data-dir /tmp/cifar --spc 10 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from lightning_sylv import sylvester_init_
from lightning_sylv.data import CIFAR10DataModule
from lightning_sylv.evaluation import evaluate_accuracy
from lightning_sylv.models import build_network
from lightning_sylv.subset import balanced_subset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--spc", type=int, nargs="+", default=[10, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--latents", nargs="+", default=["pca", "signed_pca"])
    p.add_argument("--ppi", type=int, nargs="+", default=[4, 16])
    p.add_argument("--lams", type=float, nargs="+", default=[10.0])
    p.add_argument("--precisions", nargs="+", default=["float64"], choices=["float64", "mixed"],
                   help="'mixed': float32 Gram products summed and solved in float64")
    p.add_argument("--solvers", nargs="+", default=["exact"], choices=["exact", "randomized"],
                   help="'randomized': the fast mode (randomized principal subspace) of sylvester_init_")
    args = p.parse_args()
    dm = CIFAR10DataModule(data_dir=args.data_dir, val_size=5000, seed=0)
    dm.setup("fit")
    val = [(torch.stack([dm.val_dataset[i][0] for i in range(j, min(j + 1000, len(dm.val_dataset)))]),
            dm.val_dataset.targets[j : j + 1000]) for j in range(0, len(dm.val_dataset), 1000)]
    print("| samples/class | latent | patches/image | λ | precision | solver "
          "| initial val. acc. % (mean ± std) | per seed | init s (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    grid = itertools.product(args.spc, args.latents, args.ppi, args.lams, args.precisions, args.solvers)
    for spc, latent, ppi, lam, prec, solver in grid:
        accs, secs = [], []
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = build_network("resnet20", (3, 32, 32), 10)
            x, y, _ = balanced_subset(dm.init_dataset(), spc, seed)
            rep = sylvester_init_(net, x, y, latent=latent, patches_per_image=ppi, lam=lam, seed=seed,
                                  gram_dtype=torch.float32 if prec == "mixed" else None, solver=solver)
            secs.append(rep.seconds)
            accs.append(100 * evaluate_accuracy(net, val, "cpu"))
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {spc} | {latent} | {ppi} | {lam:g} | {prec} | {solver} | {statistics.mean(accs):.2f} ± {sd:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} | {statistics.median(secs):.1f} |", flush=True)


if __name__ == "__main__":
    main()
