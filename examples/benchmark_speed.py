"""Speed of the Sylvester initialization on ResNet-20 / CIFAR-10, measured in one run.

Prints, as medians over ``--repeats`` runs:

* init time at each samples-per-class setting and its ratio to one plain forward pass (eval mode,
  no grad) of the same subset, timed in the same process right before: ``model(x)`` on the whole
  subset as one batch in its default layout, and the fastest of the batch sizes 100 / 250 / all in
  the default and channels-last layouts (on this CPU a 1,000-image batch runs ~2x slower per image
  than batches of 100: the activations leave the cache);
* the torch eigen solver against ``scipy.linalg.solve_sylvester`` on every distinct ResNet-20 layer
  shape, with both relative residuals, and the time of the solver's two ``torch.linalg.eigh`` calls
  alone (no eigen-method solve can beat it, so ``scipy / eigh`` bounds the speedup on that shape).

    python examples/benchmark_speed.py --data-dir /tmp/cifar --spc 10 100 300
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.linalg
import torch

from lightning_sylv import sylvester_init_
from lightning_sylv.data import CIFAR10DataModule
from lightning_sylv.models import build_network
from lightning_sylv.solver import relative_residual, solve_sylvester_psd
from lightning_sylv.subset import balanced_subset

RESNET20_SHAPES = [(16, 27), (16, 144), (32, 144), (32, 16), (32, 288), (64, 288), (64, 32), (64, 576), (10, 64)]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _forward_time(net: torch.nn.Module, x: torch.Tensor, batch: int, channels_last: bool) -> float:
    """Seconds of one eval-mode pass over ``x`` in batches of ``batch`` (no grad)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for lo in range(0, len(x), batch):
        net(x[lo : lo + batch])
    return time.perf_counter() - t0


def init_vs_forward(data_dir: str, spcs: list[int], repeats: int, ppi: int | None, latent: str, precision: str,
                    val_size: int = 5000) -> list[dict]:
    dm = CIFAR10DataModule(data_dir=data_dir, val_size=val_size, seed=0)
    dm.setup("fit")
    dtype, gram_dtype = {"float64": (torch.float64, None), "mixed": (torch.float64, torch.float32),
                         "float32": (torch.float32, None)}[precision]
    warm = build_network("resnet20", (3, 32, 32), 10)
    x, y, _ = balanced_subset(dm.init_dataset(), 2, 0)
    # warm-up, not timed
    sylvester_init_(warm, x, y, patches_per_image=ppi, latent=latent, dtype=dtype, gram_dtype=gram_dtype)
    out = []
    for spc in spcs:
        fwd_t, best_t, init_t, load_t = [], [], [], []
        for r in range(repeats):
            torch.manual_seed(r)
            net = build_network("resnet20", (3, 32, 32), 10)
            t0 = time.perf_counter()
            x, y, _ = balanced_subset(dm.init_dataset(), spc, r)
            load = time.perf_counter() - t0
            net.eval()
            with torch.no_grad():
                t0 = time.perf_counter()
                net(x)
                fwd_t.append(time.perf_counter() - t0)
                best_t.append(min(_forward_time(net, x, b, cl) for b in (100, 250, len(x)) for cl in (False, True)))
            t0 = time.perf_counter()
            sylvester_init_(net, x, y, patches_per_image=ppi, latent=latent, seed=r, dtype=dtype, gram_dtype=gram_dtype)
            init_t.append(time.perf_counter() - t0 + load)
            load_t.append(load)
        row = {
            "spc": spc,
            "forward_s": statistics.median(fwd_t),
            "init_s": statistics.median(init_t),
            "subset_s": statistics.median(load_t),
            "ratio": statistics.median(i / f for i, f in zip(init_t, fwd_t)),
            "best_forward_s": statistics.median(best_t),
            "best_ratio": statistics.median(i / f for i, f in zip(init_t, best_t)),
        }
        out.append(row)
        print(
            f"spc={spc:<4} images={10 * spc:<5} forward={row['forward_s']:.3f}s "
            f"(fastest batching {row['best_forward_s']:.3f}s) init={row['init_s']:.3f}s "
            f"(subset {row['subset_s']:.3f}s) init/forward={row['ratio']:.2f} "
            f"init/fastest forward={row['best_ratio']:.2f}",
            flush=True,
        )
    return out


def solver_vs_scipy(repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for m, n in RESNET20_SHAPES:
        s = torch.randn(4000, m, generator=g, dtype=torch.float64)
        x = torch.relu(torch.randn(4000, n, generator=g, dtype=torch.float64))
        a, b, c = s.T @ s / 4000, 10 * x.T @ x / 4000, 11 * s.T @ x / 4000
        ours = _median_time(lambda a=a, b=b, c=c: solve_sylvester_psd(a, b, c), repeats)
        # The floor of the eigen method: its two symmetric eigendecompositions, nothing else.
        eigs = _median_time(lambda a=a, b=b: (torch.linalg.eigh(a), torch.linalg.eigh(b)), repeats)
        an, bn, cn = a.numpy(), b.numpy(), c.numpy()
        ref = _median_time(lambda an=an, bn=bn, cn=cn: scipy.linalg.solve_sylvester(an, bn, cn), repeats)
        w = solve_sylvester_psd(a, b, c).w
        w_ref = torch.from_numpy(scipy.linalg.solve_sylvester(an, bn, cn))
        row = {
            "shape": f"{m}x{n}",
            "torch_ms": 1e3 * ours,
            "scipy_ms": 1e3 * ref,
            "eigh_ms": 1e3 * eigs,
            "speedup": ref / ours,
            "res_torch": relative_residual(a, b, c, w),
            "res_scipy": relative_residual(a, b, c, w_ref),
        }
        out.append(row)
        print(
            f"W {row['shape']:<8} torch {row['torch_ms']:8.3f} ms  scipy {row['scipy_ms']:8.3f} ms  "
            f"speedup {row['speedup']:6.1f}x  (its two eigh alone {row['eigh_ms']:7.3f} ms, at most "
            f"{ref / eigs:5.1f}x)  residual torch {row['res_torch']:.1e} scipy {row['res_scipy']:.1e}",
            flush=True,
        )
    total_t = sum(r["torch_ms"] for r in out)
    total_s = sum(r["scipy_ms"] for r in out)
    print(f"all shapes: torch {total_t:.2f} ms, scipy {total_s:.2f} ms, speedup {total_s / total_t:.1f}x")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--spc", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--patches-per-image", type=int, default=16)
    p.add_argument("--latent", default="rotated_pca")
    p.add_argument("--precision", default="mixed", choices=["float64", "mixed", "float32"])
    p.add_argument("--skip-init", action="store_true", help="only the solver comparison")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out (not used for the subset)")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"settings: patches_per_image={args.patches_per_image} latent={args.latent} precision={args.precision} "
          f"repeats={args.repeats}")
    solver_vs_scipy(max(args.repeats, 5))
    if not args.skip_init:
        init_vs_forward(args.data_dir, args.spc, args.repeats, args.patches_per_image, args.latent, args.precision,
                        args.val_size)


if __name__ == "__main__":
    main()
