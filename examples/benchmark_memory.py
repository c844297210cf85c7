"""Peak memory and time of the initialization: one pass over the whole subset vs streaming.

Each setting runs in a fresh subprocess that loads only the saved subset (so loading CIFAR-10 does
not set the high-water mark); peak memory is the growth of the process's resident-set high-water mark
(``VmHWM``, reset right before the call) during ``sylvester_init_`` over the resident size right
before it. On a GPU (``--device cuda``) ``torch.cuda.max_memory_allocated`` is reported too.

    python examples/benchmark_memory.py --data-dir /tmp/cifar --spc 10 100 1000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _reset_peak() -> bool:
    """Reset the process's resident-set high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb() -> int:
    """The resident-set high-water mark (``VmHWM``; ``ru_maxrss`` where ``/proc`` lacks it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(subset_file: str, spc: int, batch_size: int | None, ppi: int, device: str) -> dict:
    import torch

    from lightning_sylv import sylvester_init_
    from lightning_sylv.models import build_network

    x, y = torch.load(subset_file)
    net = build_network("resnet20", (3, 32, 32), 10).to(device)
    x, y = x.to(device), y.to(device)
    # One-time costs (thread pools, kernel workspaces) on a 2-image warm-up, outside the measurement.
    sylvester_init_(build_network("resnet20", (3, 32, 32), 10).to(device), x[:2], y[:2], patches_per_image=ppi)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    _reset_peak()  # otherwise an earlier peak (imports, loading) would count as the init's
    base = _rss_kb()
    t0 = time.perf_counter()
    report = sylvester_init_(net, x, y, patches_per_image=ppi, batch_size=batch_size)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = _peak_kb()
    out = {"spc": spc, "batch_size": batch_size, "passes": report.passes, "seconds": seconds,
           "peak_rss_growth_mb": (peak - base) / 1024}
    if device == "cuda":
        out["peak_gpu_mb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--spc", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--patches-per-image", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spc, bs, path = json.loads(args.child)
        print(json.dumps(_child(path, spc, bs, args.patches_per_image, args.device)))
        return
    import tempfile

    import torch

    from lightning_sylv.data import CIFAR10DataModule
    from lightning_sylv.subset import balanced_subset

    dm = CIFAR10DataModule(data_dir=args.data_dir, val_size=5000, seed=0)
    dm.setup("fit")
    tmp = Path(tempfile.mkdtemp())
    files = {}
    for spc in args.spc:
        x, y, _ = balanced_subset(dm.init_dataset(), spc, 0)
        files[spc] = str(tmp / f"subset_{spc}.pt")
        torch.save((x, y), files[spc])
    print(f"ResNet-20, CIFAR-10 subset, patches_per_image={args.patches_per_image}, device={args.device}")
    print(f"{'samples/class':>13} {'mode':<16} {'passes':>6} {'time s':>8} {'peak RSS growth MB':>19} "
          f"{'peak GPU MB':>12}")
    for spc in args.spc:
        for bs in (None, args.batch_size) if args.batch_size < 10 * spc else (None,):
            cmd = [sys.executable, __file__, "--data-dir", args.data_dir,
                   "--patches-per-image", str(args.patches_per_image),
                   "--device", args.device, "--child", json.dumps([spc, bs, files[spc]])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            mode = "one pass" if bs is None or bs >= 10 * spc else f"stream bs={bs}"
            gpu = f"{res['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in res else "-"
            print(f"{spc:>13} {mode:<16} {res['passes']:>6} {res['seconds']:>8.2f} "
                  f"{res['peak_rss_growth_mb']:>19.0f} {gpu:>12}", flush=True)


if __name__ == "__main__":
    main()
