"""SylvesterInit under FSDP2 (ModelParallelStrategy + fully_shard) against DDP: init time and memory per rank.

Each run is a 2-process CPU fit (gloo) of the same MLP (``--depth`` hidden ``Linear(width, width)``
layers with BatchNorm, a 10-class head) that only initializes (``max_steps=0``), launched as a user
would. Per rank it records ``sylvester/init_time_s`` and the process's peak resident memory, with the
resident memory right before the model was created (Python, torch and Lightning), so the difference is
what the model, its parameters and the initialization added. One JSON line per finished run is
appended to ``--out`` (re-running skips what is there). Weights are checked equal across strategies.

Usage::

    python examples/benchmark_sharded.py --width 2048 --depth 6 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    from lightning.pytorch import LightningModule, Trainer, seed_everything
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_sylv import SylvesterInit

    class MLP(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for i in range(args.depth):
                layers += [nn.Linear(args.width if i else args.inputs, args.width, bias=False)]
                layers += [nn.BatchNorm1d(args.width), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(args.width, 10)

        def configure_model(self) -> None:
            if isinstance(self.trainer.strategy, ModelParallelStrategy):
                from torch.distributed.fsdp import fully_shard

                mesh = self.device_mesh["data_parallel"]
                for m in [*self.body, self.head]:
                    if isinstance(m, nn.Linear):
                        fully_shard(m, mesh=mesh)
                fully_shard(self, mesh=mesh)

        def forward(self, x):
            return self.head(self.body(x))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            y = torch.arange(10).repeat(args.per_class * 2)
            x = torch.randn(10, args.inputs, generator=g)[y] + torch.randn(len(y), args.inputs, generator=g)
            return DataLoader(TensorDataset(x, y), batch_size=64)

    seed_everything(0)
    fsdp2 = args.strategy == "fsdp2"
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if fsdp2 else "ddp"
    init = SylvesterInit(samples_per_class=args.per_class, verbose=False, evaluate=False, embedding_samples=1)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[init],
    )  # fmt: skip
    base = _rss_mb()
    with trainer.init_module(empty_init=args.strategy == "fsdp2"):
        model = MLP()
    trainer.fit(model)
    x = model.train_dataloader().dataset.tensors[0][: 10 * args.per_class]
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(3):  # one eval forward of a subset-sized batch (FSDP2: with its all-gathers)
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    state = model.state_dict()
    weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items() if "weight" in k}
    local = sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters()
    )
    record = {
        "strategy": args.strategy,
        "rank": trainer.global_rank,
        "width": args.width,
        "depth": args.depth,
        "per_class": args.per_class,
        "init_time_s": float(init.metrics["sylvester/init_time_s"]),
        "rss_before_model_mb": base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "param_mb_held": local / 2**20,
        "forward_s": statistics.median(times),
        "weight_checksum": float(sum(w.double().abs().sum() for w in weights.values())),
        "layer_checksums": {k: float(w.double().abs().sum()) for k, w in weights.items()},
        "solvers": sorted({r.solver for r in init.report.layers}),
    }
    with open(args.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("examples/results/sharded.jsonl"))
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy is not None:
        worker(args)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    key = {"width": args.width, "depth": args.depth, "per_class": args.per_class}
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    for repeat in range(args.repeats):
        for strategy in ("ddp", "fsdp2"):
            runs = [r for r in done if r["strategy"] == strategy and all(r.get(k) == v for k, v in key.items())]
            if len({r["run"] for r in runs}) > repeat:
                continue
            tmp = args.out.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--strategy", strategy, "--record", str(tmp.resolve())]
            cmd += ["--width", str(args.width), "--depth", str(args.depth), "--inputs", str(args.inputs)]
            cmd += ["--per-class", str(args.per_class)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            with open(args.out, "a") as f:
                for line in tmp.read_text().splitlines():
                    f.write(json.dumps({**json.loads(line), "run": repeat}) + "\n")
            tmp.unlink()
            done = [json.loads(line) for line in args.out.read_text().splitlines()]
    rows = [r for r in done if all(r.get(k) == v for k, v in key.items())]
    print(f"MLP width {args.width}, depth {args.depth}, {args.per_class} per class x 10 classes, 2 CPU processes")
    head = f"{'strategy':>8} {'init s (median)':>16} {'forward s':>10} {'init/forward':>13}"
    print(f"{head} {'peak RSS - before model, MB (max rank)':>40} {'params held MB':>15}")
    for strategy in ("ddp", "fsdp2"):
        rs = [r for r in rows if r["strategy"] == strategy]
        if not rs:
            continue
        t = statistics.median(r["init_time_s"] for r in rs)
        mem = statistics.median(max(r["peak_rss_mb"] - r["rss_before_model_mb"] for r in rs if r["run"] == k)
                                for k in {r["run"] for r in rs})  # fmt: skip
        held = max(r["param_mb_held"] for r in rs)
        fwd = statistics.median(r["forward_s"] for r in rs)
        print(f"{strategy:>8} {t:>16.3f} {fwd:>10.3f} {t / fwd:>13.1f} {mem:>40.0f} {held:>15.1f}")
    sums = {r["strategy"]: r["layer_checksums"] for r in rows if r["rank"] == 0}
    if len(sums) == 2:
        print("weights, sum |w| per layer, relative difference fsdp2 vs ddp:")
        for k, v in sums["ddp"].items():
            print(f"  {k:>12} {abs(sums['fsdp2'][k] - v) / max(abs(v), 1e-300):.2e}")


if __name__ == "__main__":
    main()
