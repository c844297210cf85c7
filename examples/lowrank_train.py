"""CPU-sized training comparison: a low-rank ResNet-20 on CIFAR-10 under the three initializers.

The 18 block convolutions of a ResNet-20 (``net.layer*.*.conv*``) are converted to rank
``--rank`` x full rank by the :class:`~lightning_sylv.LowRankInit` callback (stem, 1x1 shortcuts and
head stay full-rank) and initialized by ``spectral``, ``data`` or ``relu`` from

* ``current``: the network's random init (PyTorch's default), as spectral init is usually used, or
* ``sylvester``: the Sylvester solution of each layer on the subset (the rest of the network is
  Sylvester-initialized in the same pass).

Every run uses the same seed (same random init, same data order and augmentation). A full-rank
ResNet-20 with PyTorch's default init is trained on the same budget for reference (``--baseline``).

    python examples/lowrank_train.py --cifar-dir /tmp/cifar --epochs 3 --per-class 500

Prepare CIFAR-10 once with ``python /work/shared/data/prepare_cifar10.py /tmp/cifar``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_sylv import LowRankInit
from lightning_sylv.data import CIFAR10DataModule
from lightning_sylv.evaluation import evaluate_accuracy
from lightning_sylv.models import ImageClassifier

HERE = Path(__file__).resolve().parent


class Recorder(Callback):
    """Validation accuracy and training loss at the end of every epoch (and the accuracy at fit start)."""

    def __init__(self, eval_at_start: bool) -> None:
        self.eval_at_start = eval_at_start
        self.val_acc: list[float] = []
        self.train_loss: list[float] = []
        self.start_acc: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if self.eval_at_start:
            self.start_acc = evaluate_accuracy(pl_module, trainer.datamodule.val_dataloader(), pl_module.device)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if not trainer.sanity_checking:
            self.val_acc.append(float(trainer.callback_metrics["val/acc"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.train_loss.append(float(trainer.callback_metrics["train/loss"]))


def run(args: argparse.Namespace, method: str | None, full_weight: str | None, seed: int) -> dict:
    seed_everything(seed, workers=True)
    dm = CIFAR10DataModule(
        data_dir=args.cifar_dir, train_per_class=args.per_class, val_size=args.val_size, batch_size=128,
        augment=True, seed=seed,
    )
    model = ImageClassifier(
        arch="resnet20", input_shape=[3, 32, 32], num_classes=10, lr=args.lr, momentum=0.9, weight_decay=5e-4,
        milestones=args.milestones or None, gamma=0.1,
    )
    callbacks: list[Callback] = []
    lowrank = None
    if method is not None:
        lowrank = LowRankInit(
            ranks=args.rank, method=method, layers=["net.layer*.conv*"], full_weight=full_weight,  # type: ignore[arg-type]
            samples_per_class=args.init_per_class, patches_per_image=16, seed=seed, relu_iters=args.relu_iters,
            verbose=False,
        )
        callbacks.append(lowrank)
    rec = Recorder(eval_at_start=method is None)
    callbacks.append(rec)
    trainer = Trainer(
        max_epochs=args.epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
        deterministic=False,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    start = rec.start_acc if lowrank is None else lowrank.metrics.get("lowrank/initial_accuracy")
    return {
        "method": method or "full-rank",
        "full_weight": full_weight or "-",
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "init_s": None if lowrank is None else lowrank.metrics["lowrank/init_time_s"],
        "init_relu_error": None if lowrank is None else lowrank.metrics.get("lowrank/relu_error"),
        "start_acc": start,
        "val_acc": rec.val_acc,
        "train_loss": rec.train_loss,
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", default="/tmp/cifar")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=500, help="training images per class (500: 5,000 images)")
    p.add_argument("--val-size", type=int, default=2000, help="held-out training images for validation")
    p.add_argument("--init-per-class", type=int, default=50, help="samples_per_class of the initialization subset")
    p.add_argument("--rank", type=float, default=0.25, help="rank as a fraction of each converted layer's full rank")
    p.add_argument("--relu-iters", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--milestones", nargs="*", type=int, default=[], help="epochs at which the lr is divided by 10")
    p.add_argument("--methods", nargs="+", default=["spectral", "data", "relu"])
    p.add_argument("--full-weights", nargs="+", default=["current", "sylvester"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--baseline", action="store_true", help="also train the full-rank ResNet-20 (default init)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="/tmp/lowrank_train.json")
    p.add_argument("--figure", default=str(HERE / "figures" / "lowrank_training.png"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else []
    done = {(r["method"], r["full_weight"], r["seed"]) for r in results}
    plan = [(m, fw, s) for s in args.seeds for fw in args.full_weights for m in args.methods]
    if args.baseline:
        plan = [(None, None, s) for s in args.seeds] + plan
    for method, fw, seed in plan:
        if (method or "full-rank", fw or "-", seed) in done:
            continue
        r = run(args, method, fw, seed)
        results.append(r)
        Path(args.json).write_text(json.dumps(results, indent=1))
        acc = " ".join(f"{100 * a:.2f}" for a in r["val_acc"])
        start = "n/a" if r["start_acc"] is None else f"{100 * r['start_acc']:.2f}"
        print(f"{r['method']:>9} W={r['full_weight']:<9} seed {seed}: start {start}% -> val acc/epoch {acc} "
              f"({r['wall_s']:.0f} s)", flush=True)
    print(markdown(results))
    plot(
        results,
        args.figure,
        f"ResNet-20, block convs at rank {args.rank:g} x full; {args.epochs} epochs on "
        f"{10 * args.per_class} CIFAR-10 images"
        + (f", lr/10 at epoch {args.milestones}" if args.milestones else ""),
    )


def markdown(results: list[dict]) -> str:
    lines = [
        "| W | init | seed | params | init s | mean ReLU err (subset) | val acc at start | val acc per epoch "
        "| final train loss | wall s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in results:
        start = "n/a" if r["start_acc"] is None else f"{100 * r['start_acc']:.2f}%"
        init_s = "-" if r["init_s"] is None else f"{r['init_s']:.1f}"
        err = "-" if r["init_relu_error"] is None else f"{r['init_relu_error']:.3f}"
        accs = " / ".join(f"{100 * a:.2f}" for a in r["val_acc"])
        lines.append(
            f"| {r['full_weight']} | {r['method']} | {r['seed']} | {r['params']:,} | {init_s} | {err} | {start} | "
            f"{accs} | {r['train_loss'][-1]:.3f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: str, title: str = "") -> None:
    """Validation accuracy per epoch, mean over seeds (line) and min-max over seeds (band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"spectral": "tab:gray", "data": "tab:blue", "relu": "tab:red", "full-rank": "black"}
    styles = {"current": "-", "sylvester": "--", "-": ":"}
    groups: dict[tuple[str, str], list[list[float]]] = {}
    for r in results:
        ys = [r["start_acc"] if r["start_acc"] is not None else float("nan"), *r["val_acc"]]
        groups.setdefault((r["method"], r["full_weight"]), []).append([100 * y for y in ys])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (method, fw), runs in groups.items():
        t = torch.tensor(runs)
        xs = list(range(t.shape[1]))
        label = "full-rank (default init)" if method == "full-rank" else f"{method} (W: {fw})"
        label += f", {t.shape[0]} seed(s)"
        ax.plot(xs, t.mean(0).tolist(), "o" + styles[fw], color=colors[method], label=label)
        if t.shape[0] > 1:
            ax.fill_between(xs, t.min(0).values.tolist(), t.max(0).values.tolist(), color=colors[method], alpha=0.08)
    ax.set_xlabel("epoch (0: right after initialization)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Low-rank ResNet-20, CIFAR-10 subset, CPU budget", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
