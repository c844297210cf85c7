"""Reproduce the paper's CIFAR-10 experiments (Tables 1-2, Figures 1-3) with ResNet-20.

Every finished run is appended as one row to ``examples/results/runs.csv`` (committed), so the tables
fill over several working periods; a run whose key is already in the CSV is skipped (resumable).
``report`` builds ``examples/results/cifar10.md`` and the PNG figures from the CSV alone.

One command per table (``--data-dir`` holds ``cifar-10-batches-py``; make it with
``python ../shared/data/prepare_cifar10.py DIR``)::

    python examples/reproduce.py table2   --data-dir DIR                  # init time / initial accuracy
    python examples/reproduce.py table1   --data-dir DIR --shots 10 50     # few-shot final accuracy
    python examples/reproduce.py finetune --data-dir DIR --shots 10        # head-only fine-tuning
    python examples/reproduce.py fig2     --data-dir DIR                   # effect of lambda
    python examples/reproduce.py fig3     --data-dir DIR                   # latent codes
    python examples/reproduce.py table1   --data-dir DIR --shots 10 --initializers lsuv   # LSUV baseline
    python examples/reproduce.py report                                    # tables + figures

``lsuv`` (issue 18) is LSUV through the PyPI package ``lsuv`` (the ``examples`` extra), on the same
class-balanced subset the Sylvester runs use (``--samples-per-class``, capped by the shots); see
``examples/baselines.py``. It runs only when named in ``--initializers``.

Training uses one thread per process unless ``OMP_NUM_THREADS`` says otherwise.

Selection of lambda, patches and codes uses the validation split (5,000 training images held out);
the test set is only ever measured, never tuned on.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_sylv import SylvesterInit, sylvester_init_
from lightning_sylv.data import CIFAR10DataModule
from lightning_sylv.evaluation import evaluate_accuracy
from lightning_sylv.models import ImageClassifier, build_network
from lightning_sylv.models.init import random_init_
from lightning_sylv.subset import balanced_subset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CSV = RESULTS / "runs.csv"
FIELDS = [
    "experiment", "setup", "initializer", "shots", "seed", "epochs", "samples_per_class", "lam",
    "latent", "patches_per_image", "initial_acc", "final_acc", "init_time_s", "forward_time_s",
    "wall_s", "curve", "machine", "date",
]
RANDOM_INITS = ("he_uniform", "he_normal", "xavier_uniform", "xavier_normal")
BASELINES = ("lsuv",)  # data-driven baselines (examples/baselines.py); run only when named in --initializers
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
MACHINE = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in ("experiment", "setup", "initializer", "shots", "seed", "epochs",
                                        "samples_per_class", "lam", "latent", "patches_per_image"))


def _done(path: Path, row: dict[str, Any]) -> bool:
    return _key(row) in {_key(r) for r in _rows(path)}


def _append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})


def _setup(setup: str, args: argparse.Namespace) -> str:
    """The setup label, naming the initializer's precision when it is not the float64 default."""
    setup = setup if args.precision == "float64" else f"{setup} ({args.precision})"
    return f"{setup} [{args.label}]" if args.label else setup


def _fmt(value: Any) -> str:
    return "-" if value in ("", None) else f"{float(value):.4f}"


def _progress(row: dict[str, Any]) -> None:
    print(
        f"[{row['experiment']}] {row['initializer']:<15} shots={row['shots']:<4} seed={row['seed']} "
        f"epochs={row['epochs']:<3} spc={row['samples_per_class']:<4} initial={_fmt(row['initial_acc'])} "
        f"final={_fmt(row['final_acc'])} wall={float(row['wall_s']):.1f}s",
        flush=True,
    )


def _test_batches(dm: CIFAR10DataModule, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = dm.test_dataset
    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    return [(x[i : i + 1000], ds.targets[i : min(i + 1000, n)]) for i in range(0, n, 1000)]


class _Curve(Callback):
    """Initial test accuracy right after initialization, and (time, accuracy) points during training."""

    def __init__(self, batches: list, every: int) -> None:
        self.batches, self.every = batches, every
        self.initial: float | None = None
        self.points: list[tuple[float, float]] = []
        self.start = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:  # after SylvesterInit (list order)
        self.initial = evaluate_accuracy(pl_module, self.batches, pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self.every and (trainer.current_epoch + 1) % self.every == 0:
            elapsed = time.perf_counter() - self.start
            acc = evaluate_accuracy(pl_module, self.batches, pl_module.device) or 0
            self.points.append((round(elapsed, 2), round(acc, 4)))
            self.start += time.perf_counter() - self.start - elapsed  # exclude evaluation time


def train_run(args: argparse.Namespace, *, experiment: str, initializer: str, shots: int | None, seed: int,
              epochs: int, lam: float = 10.0, latent: str = "pca", classes: list[int] | None = None,
              pretrained: dict[str, torch.Tensor] | None = None, curve_every: int = 0,
              setup: str = "cifar10") -> dict[str, Any]:
    """One training run; returns (and appends) its CSV row. ``initializer``: a random scheme, 'sylvester'
    (or 'sylvester_head'), or 'lsuv' (on the He-uniform-constructed model, from the same subset)."""
    setup = _setup(setup, args) if "sylvester" in initializer else setup
    subset_spc = "sylvester" in initializer or initializer in BASELINES
    row = dict(experiment=experiment, setup=setup, initializer=initializer, shots=shots or "all", seed=seed,
               epochs=epochs, samples_per_class=args.samples_per_class if subset_spc else "",
               lam=lam if "sylvester" in initializer else "", latent=latent if "sylvester" in initializer else "",
               patches_per_image=args.patches_per_image if "sylvester" in initializer else "")
    if _done(args.csv, row):
        print(f"[{experiment}] skip (in CSV): {initializer} shots={shots} seed={seed}", flush=True)
        return row
    seed_everything(seed, verbose=False)
    dm = CIFAR10DataModule(data_dir=args.data_dir, batch_size=128, train_per_class=shots, seed=seed, classes=classes,
                           val_size=args.val_size)
    dm.setup("fit")
    scheme = initializer if initializer in RANDOM_INITS else "he_uniform"
    # The paper's schedule (x0.1 at epochs 100 and 150 of 200), scaled to the epoch budget.
    milestones = [epochs // 2, (3 * epochs) // 4] if epochs >= 4 else None
    model = ImageClassifier(arch="resnet20", input_shape=[3, 32, 32], num_classes=dm.num_classes, init=scheme,
                            lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=milestones)
    if pretrained is not None:
        model.net.load_state_dict({k: v for k, v in pretrained.items() if not k.startswith("head.")}, strict=False)
    curve = _Curve(_test_batches(dm, args.test_limit), curve_every)
    callbacks: list[Callback] = []
    if "sylvester" in initializer:
        callbacks.append(SylvesterInit(samples_per_class=args.samples_per_class, lam=lam, latent=latent,
                                       layers="head" if initializer == "sylvester_head" else "all",
                                       patches_per_image=args.patches_per_image, seed=seed, evaluate=False,
                                       verbose=False, precision=args.precision))
    elif initializer == "lsuv":
        from baselines import LSUVBaseline  # examples/baselines.py; needs the `lsuv` package

        callbacks.append(LSUVBaseline(samples_per_class=args.samples_per_class, seed=seed))
    callbacks.append(curve)
    trainer = Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    final = evaluate_accuracy(model, _test_batches(dm, args.test_limit), model.device)
    init_time = callbacks[0].metrics.get("sylvester/init_time_s", "") if "sylvester" in initializer else ""
    if initializer == "lsuv":
        init_time = callbacks[0].metrics["lsuv/init_time_s"]
    row.update(initial_acc=f"{curve.initial:.4f}", final_acc=f"{final:.4f}", init_time_s=init_time,
               wall_s=f"{wall:.1f}", curve=";".join(f"{t}:{a}" for t, a in curve.points),
               machine=MACHINE, date=dt.date.today().isoformat())
    _append(args.csv, row)
    _progress(row)
    return row


def table2(args: argparse.Namespace) -> None:
    """Init time (and its ratio to one forward pass of the same subset) and initial test accuracy."""
    dm = CIFAR10DataModule(data_dir=args.data_dir, val_size=args.val_size, seed=0)
    dm.setup("fit")
    batches = _test_batches(dm, args.test_limit)
    warm = build_network("resnet20", (3, 32, 32), 10)  # one-time costs (allocator, kernels) off the clock
    x, y, _ = balanced_subset(dm.init_dataset(), 2, 0)
    sylvester_init_(warm, x, y, patches_per_image=args.patches_per_image, latent=args.latent)
    for seed in args.seeds:
        for spc in args.spc:
            for initializer in ("he_uniform", "sylvester"):
                row = dict(experiment="table2", setup=_setup("cifar10", args), initializer=initializer, shots="all",
                           seed=seed, epochs=0, samples_per_class=spc,
                           lam=args.lam if initializer == "sylvester" else "",
                           latent=args.latent if initializer == "sylvester" else "",
                           patches_per_image=args.patches_per_image if initializer == "sylvester" else "")
                if _done(args.csv, row):
                    continue
                torch.manual_seed(seed)
                net = build_network("resnet20", (3, 32, 32), 10)
                t0 = time.perf_counter()
                random_init_(net, "he_uniform")
                init_time = time.perf_counter() - t0
                fwd = ""
                if initializer == "sylvester":
                    t0 = time.perf_counter()
                    x, y, _ = balanced_subset(dm.init_dataset(), spc, seed)
                    sylvester_init_(net, x, y, lam=args.lam, latent=args.latent,
                                    patches_per_image=args.patches_per_image, seed=seed,
                                    gram_dtype=torch.float32 if args.precision == "mixed" else None)
                    init_time = time.perf_counter() - t0
                    net.eval()
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        net(x)
                        fwd = f"{time.perf_counter() - t0:.4f}"
                acc = evaluate_accuracy(net, batches, "cpu")
                row.update(initial_acc=f"{acc:.4f}", final_acc="", init_time_s=f"{init_time:.4f}", forward_time_s=fwd,
                           wall_s=f"{init_time:.2f}", machine=MACHINE, date=dt.date.today().isoformat())
                _append(args.csv, row)
                _progress(row)


def _chosen(args: argparse.Namespace, initializers: tuple[str, ...], baselines: bool = True) -> tuple[str, ...]:
    """``initializers`` in their order, restricted to ``--initializers`` when given; the baselines
    (``lsuv``) run only when named."""
    if args.initializers is None:
        return initializers
    initializers = (*initializers, *BASELINES) if baselines else initializers
    unknown = sorted(set(args.initializers) - set(initializers))
    if unknown:
        raise SystemExit(f"--initializers: {unknown} not among {list(initializers)}")
    return tuple(i for i in initializers if i in args.initializers)


def table1(args: argparse.Namespace) -> None:
    for shots in args.shots:
        for seed in args.seeds:
            for initializer in _chosen(args, ("sylvester", *RANDOM_INITS)):
                train_run(args, experiment="table1", initializer=initializer, shots=shots, seed=seed,
                          epochs=args.epochs, lam=args.lam, latent=args.latent)


def finetune(args: argparse.Namespace) -> None:
    """Pretrain on classes 0-4, fine-tune on few shots of 5-9 with a Sylvester or a random head."""
    ckpt = RESULTS / f"pretrain_0-4_e{args.pretrain_epochs}.pt"  # not committed (see .gitignore)
    if not ckpt.exists():
        seed_everything(0, verbose=False)
        dm = CIFAR10DataModule(data_dir=args.data_dir, batch_size=128, classes=[0, 1, 2, 3, 4])
        pretrain_milestones = ([args.pretrain_epochs // 2, (3 * args.pretrain_epochs) // 4]
                               if args.pretrain_epochs >= 4 else None)
        model = ImageClassifier(arch="resnet20", input_shape=[3, 32, 32], num_classes=5, init="he_uniform", lr=0.1,
                                milestones=pretrain_milestones)
        Trainer(max_epochs=args.pretrain_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0).fit(model, datamodule=dm)
        torch.save(model.net.state_dict(), ckpt)
    body = torch.load(ckpt)
    for shots in args.shots:
        for seed in args.seeds:
            for initializer in _chosen(args, ("sylvester_head", *RANDOM_INITS), baselines=False):
                train_run(args, experiment="finetune", setup=f"c0-4->c5-9 (pretrain {args.pretrain_epochs} ep)",
                          initializer=initializer, shots=shots, seed=seed, epochs=args.epochs, classes=[5, 6, 7, 8, 9],
                          pretrained=body, lam=args.lam, latent=args.latent)


def fig2(args: argparse.Namespace) -> None:
    for lam in args.lams:
        for seed in args.seeds:
            train_run(args, experiment="fig2", initializer="sylvester", shots=args.shots[0], seed=seed,
                      epochs=args.epochs, lam=lam, latent=args.latent)


def fig3(args: argparse.Namespace) -> None:
    for latent in args.latents:
        for seed in args.seeds:
            train_run(args, experiment="fig3", initializer="sylvester", shots=args.shots[0], seed=seed,
                      epochs=args.epochs, latent=latent, lam=args.lam)


def fig1(args: argparse.Namespace) -> None:
    for initializer in _chosen(args, ("sylvester", *RANDOM_INITS)):
        for seed in args.seeds:
            train_run(args, experiment="fig1", initializer=initializer, shots=args.shots[0], seed=seed,
                      epochs=args.epochs, curve_every=max(1, args.epochs // 10), lam=args.lam, latent=args.latent)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["table1", "table2", "finetune", "fig1", "fig2", "fig3", "report"])
    p.add_argument("--data-dir", default="/tmp/cifar")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, nargs="+", default=[10, 50, 100, 500])
    p.add_argument("--spc", type=int, nargs="+", default=[10, 100, 300], help="samples per class (table2)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--label", default="", help="appended to the setup column, to keep runs of another code "
                   "version apart (e.g. after an engine change)")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--patches-per-image", type=int, default=16)
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument("--latent", default="pca")
    p.add_argument("--precision", default="float64", choices=["float64", "mixed"],
                   help="SylvesterInit precision ('mixed': float32 Gram products, float64 solves)")
    p.add_argument("--lams", type=float, nargs="+", default=[0.1, 1.0, 10.0, 100.0])
    p.add_argument("--latents", nargs="+", default=["pca", "signed_pca", "lda", "ica", "kmeans"])
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--initializers", nargs="+", default=None,
                   help="run only these initializers (table1, finetune, fig1), e.g. to split a table over processes; "
                   "'lsuv' (table1, fig1) runs only when named here")
    p.add_argument("--csv", type=Path, default=CSV, help="where runs are appended (default: the committed CSV)")
    args = p.parse_args(argv)
    if args.what != "report" and args.csv == CSV and (args.test_limit is not None or args.val_size != 5000):
        # The CSV's key has no column for these: such a run would later be taken for a full one.
        p.error("--test-limit and a non-default --val-size are for trial runs: give them their own --csv")

    if args.what == "report":
        from report_results import build_report  # examples/report_results.py

        build_report(args.csv, args.csv.parent)
        return
    experiments = {"table1": table1, "table2": table2, "finetune": finetune, "fig1": fig1, "fig2": fig2, "fig3": fig3}
    experiments[args.what](args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
