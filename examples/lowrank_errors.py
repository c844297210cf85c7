"""Layer-wise ReLU error of low-rank initializers across ranks, on real activations.

For every target layer ``z = W x + b`` of a full-rank network, rows ``x`` are the layer's inputs in
that network (CIFAR-10 patches for convolutions, 16 random positions per image). Factors are fitted
on rows of training images and evaluated on rows of *held-out* images:

    relu error = ‖relu(W X + b) − relu(U V X + b')‖ / ‖relu(W X + b)‖      (mean over layers)

for ``spectral`` (truncated SVD of W), ``data`` (reduced-rank regression of W X) and ``relu``
(ReLU-aware refinement), at ranks given as fractions of each layer's full rank ``min(out, in)``.
For the ResNet the same is also measured *through the BatchNorm* that follows each convolution
(``relu(BN(W X))``, the nonlinearity the network actually applies; BN statistics of the network on
the fit images), with the ReLU-aware method fitted through it.

Networks: an MLP (64-128-64-10) on scikit-learn digits (trained, and at its random init) and a
ResNet-20 on CIFAR-10 (Sylvester-initialized, random init, and briefly trained).

    python examples/lowrank_errors.py --cifar-dir /tmp/cifar

Prepare CIFAR-10 once with ``python /work/shared/data/prepare_cifar10.py /tmp/cifar``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sylv.data import CIFAR10DataModule, DigitsDataModule
from lightning_sylv.engine import sylvester_init_
from lightning_sylv.lowrank import Factors, factorize, relu_error, resolve_rank
from lightning_sylv.models import MLP, resnet20
from lightning_sylv.rows import layer_rows

HERE = Path(__file__).resolve().parent
METHODS = ("spectral", "data", "relu")
MLP_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4)
RESNET_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4)


def capture_rows(
    net: nn.Module, names: list[str], images: Tensor, patches: int | None, seed: int, batch: int = 250
) -> dict[str, Tensor]:
    """Input rows of each named layer (float64), gathered with forward pre-hooks in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    mods = dict(net.named_modules())
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:

        def hook(m: nn.Module, args: tuple, n: str = n) -> None:
            out[n].append(layer_rows(m, args[0], patches, gen).x.reshape(-1, m.weight[0].numel()).double())

        hooks.append(mods[n].register_forward_pre_hook(hook))
    net.eval()
    try:
        with torch.no_grad():
            for lo in range(0, images.shape[0], batch):
                net(images[lo : lo + batch])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in out.items()}


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    return scale, (bn.bias.detach().double() - scale * bn.running_mean.double())


def recalibrate_bn(net: nn.Module, images: Tensor, batch: int = 250) -> None:
    """BatchNorm running statistics = the network's statistics on ``images`` (cumulative average)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for lo in range(0, images.shape[0], batch):
            net(images[lo : lo + batch])
    for m in bns:
        m.momentum = 0.1
    net.eval()


def sweep(
    net: nn.Module,
    names: list[str],
    fit_rows: dict[str, Tensor],
    eval_rows: dict[str, Tensor],
    fractions: tuple[float, ...],
    relu_iters: int,
    followers: dict[str, nn.BatchNorm2d] | None = None,
) -> dict:
    """``{metric: {method: [mean over layers per fraction]}}`` plus per-layer details."""
    mods = dict(net.named_modules())
    metrics = ["relu", "linear"] + (["relu_bn"] if followers else [])
    res: dict = {m: {k: [] for k in METHODS} for m in metrics}
    res["per_layer"] = {}
    res["seconds"] = {k: 0.0 for k in METHODS}
    for frac in fractions:
        acc: dict = {m: {k: [] for k in METHODS} for m in metrics}
        for name in names:
            layer = mods[name]
            w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
            b = None if layer.bias is None else layer.bias.detach().double()
            r = resolve_rank(frac, min(w.shape))
            xf, xe = fit_rows[name], eval_rows[name]
            aff = bn_affine(followers[name]) if followers else None
            for method in METHODS:
                t0 = time.perf_counter()
                f = factorize(w, r, method, xf, b)
                res["seconds"][method] += time.perf_counter() - t0
                acc["relu"][method].append(relu_error(w, xe, f, b))
                z = xe @ w.T + (0 if b is None else b)
                acc["linear"][method].append(float((f.pre_activation(xe) - z).norm() / z.norm()))
                if aff is not None:
                    fb: Factors = f if method != "relu" else factorize(w, r, "relu", xf, b, affine=aff)
                    acc["relu_bn"][method].append(relu_error(w, xe, fb, b, aff))
            res["per_layer"].setdefault(name, {})[f"{frac:.4f}"] = {
                m: {k: acc[m][k][-1] for k in METHODS} for m in metrics
            } | {"rank": r, "in": w.shape[1], "out": w.shape[0]}
        for m in metrics:
            for k in METHODS:
                res[m][k].append(sum(acc[m][k]) / len(acc[m][k]))
    return res


def digits_mlp(train_epochs: int, seed: int) -> tuple[nn.Module, nn.Module, Tensor, Tensor, float]:
    dm = DigitsDataModule(seed=seed)
    dm.setup()
    xtr, ytr = dm.train_dataset.inputs, dm.train_dataset.targets  # type: ignore[union-attr]
    xva, yva = dm.val_dataset.inputs, dm.val_dataset.targets  # type: ignore[union-attr]
    torch.manual_seed(seed)
    random_net = MLP(64, 10, (128, 64))
    trained = MLP(64, 10, (128, 64))
    trained.load_state_dict(random_net.state_dict())
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(train_epochs):
        perm = torch.randperm(xtr.shape[0], generator=gen)
        for lo in range(0, xtr.shape[0], 64):
            idx = perm[lo : lo + 64]
            loss = F.cross_entropy(trained(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    trained.eval()
    with torch.no_grad():
        acc = float((trained(xva).argmax(1) == yva).float().mean())
    return random_net, trained, xtr, xva, acc


def load_cifar(cifar_dir: str, per_class: int, seed: int) -> tuple[CIFAR10DataModule, Tensor, Tensor, Tensor, Tensor]:
    dm = CIFAR10DataModule(data_dir=cifar_dir, train_per_class=per_class, val_size=2000, augment=False, seed=seed)
    dm.setup()
    ds, vs = dm.train_dataset, dm.val_dataset

    def stack(d, idx):  # type: ignore[no-untyped-def]
        return torch.stack([d[int(i)][0] for i in idx]), d.targets[idx]

    xtr, ytr = stack(ds, range(len(ds)))  # type: ignore[arg-type]
    xva, yva = stack(vs, range(len(vs)))  # type: ignore[arg-type]
    return dm, xtr, ytr, xva, yva


def train_resnet(cifar_dir: str, epochs: int, per_class: int, seed: int, cache: Path) -> tuple[nn.Module, float]:
    """Full-rank ResNet-20 trained for a few epochs (SGD, augmentation); cached under ``cache``."""
    torch.manual_seed(seed)
    net = resnet20()
    key = cache / f"resnet20_e{epochs}_pc{per_class}_s{seed}.pt"
    dm = CIFAR10DataModule(data_dir=cifar_dir, train_per_class=per_class, val_size=2000, augment=True, seed=seed,
                           batch_size=128)
    dm.setup()
    if key.is_file():
        blob = torch.load(key, weights_only=False)
        net.load_state_dict(blob["state"])
        return net, blob["val_acc"]
    steps = epochs * math.ceil(len(dm.train_dataset) / 128)  # type: ignore[arg-type]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for x, y in dm.train_dataloader():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  resnet20 epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            correct += int((net(x).argmax(1) == y).sum())
            total += y.numel()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "val_acc": correct / total}, key)
    return net, correct / total


def table(title: str, fractions: tuple[float, ...], res: dict, metric: str, ranks_note: str) -> str:
    lines = [
        f"**{title}** — {ranks_note}",
        "",
        "| rank / full | spectral | data | relu | spectral − relu | relu vs spectral | relu vs data |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, frac in enumerate(fractions):
        s, d, r = (res[metric][k][i] for k in METHODS)
        lines.append(
            f"| {frac:.4g} | {s:.4f} | {d:.4f} | {r:.4f} | {s - r:.4f} | "
            f"{100 * (r - s) / s:+.1f}% | {100 * (r - d) / d:+.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", default="/tmp/cifar", help="folder containing cifar-10-batches-py")
    p.add_argument("--fit-per-class", type=int, default=50, help="CIFAR training images per class for the fit rows")
    p.add_argument("--patches", type=int, default=16, help="patch positions per image")
    p.add_argument("--relu-iters", type=int, default=5)
    p.add_argument("--mlp-epochs", type=int, default=30)
    p.add_argument("--resnet-epochs", type=int, default=3, help="epochs of the briefly trained ResNet-20 (0: skip it)")
    p.add_argument("--resnet-per-class", type=int, default=1000, help="training images per class for that training")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--cache", default="/tmp/lowrank_cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default=str(HERE / "figures" / "lowrank_errors.png"))
    p.add_argument("--json", default="/tmp/lowrank_errors.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict = {"args": vars(args)}
    tables: list[str] = []

    # --- MLP on digits -------------------------------------------------------------------------
    random_mlp, trained_mlp, xtr, xva, acc = digits_mlp(args.mlp_epochs, args.seed)
    names = ["features.1", "features.3"]
    mlps = (
        ("MLP (digits), random init", random_mlp),
        (f"MLP (digits), trained {args.mlp_epochs} epochs, val acc {100 * acc:.1f}%", trained_mlp),
    )
    for label, net in mlps:
        fit = capture_rows(net, names, xtr, None, args.seed)
        ev = capture_rows(net, names, xva, None, args.seed + 1)
        res = sweep(net, names, fit, ev, MLP_FRACTIONS, args.relu_iters)
        results[label] = res
        note = (
            f"layers 64→128 and 128→64 (full rank 64), fit on {xtr.shape[0]} training images, "
            f"errors on {xva.shape[0]} validation images"
        )
        tables.append(table(label, MLP_FRACTIONS, res, "relu", note))
        print(tables[-1], "\n", flush=True)

    # --- ResNet-20 on CIFAR-10 -------------------------------------------------------------------
    if not args.skip_resnet:
        _, cx, cy, cxv, _ = load_cifar(args.cifar_dir, args.fit_per_class, args.seed)
        eval_x = cxv[:500]
        nets: list[tuple[str, nn.Module]] = []
        torch.manual_seed(args.seed)
        rnd = resnet20()
        recalibrate_bn(rnd, cx)
        nets.append(("ResNet-20 (CIFAR-10), random init", rnd))
        torch.manual_seed(args.seed)
        syl = resnet20()
        sylvester_init_(syl, cx, cy, patches_per_image=args.patches, seed=args.seed)
        nets.append(("ResNet-20 (CIFAR-10), Sylvester init", syl))
        if args.resnet_epochs > 0:
            trained, vacc = train_resnet(args.cifar_dir, args.resnet_epochs, args.resnet_per_class, args.seed,
                                         Path(args.cache))
            recalibrate_bn(trained, cx)
            nets.append((
                f"ResNet-20 (CIFAR-10), trained {args.resnet_epochs} epochs on {10 * args.resnet_per_class} images, "
                f"val acc {100 * vacc:.1f}%",
                trained,
            ))
        for label, net in nets:
            names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and ".conv" in n]
            mods = dict(net.named_modules())
            followers = {n: mods[n.replace("conv", "bn")] for n in names}
            fit = capture_rows(net, names, cx, args.patches, args.seed)
            ev = capture_rows(net, names, eval_x, args.patches, args.seed + 1)
            res = sweep(net, names, fit, ev, RESNET_FRACTIONS, args.relu_iters, followers)
            stages = {}
            i_quarter = RESNET_FRACTIONS.index(1 / 4)
            for stage in ("layer1", "layer2", "layer3"):
                rows = [v[f"{1 / 4:.4f}"] for n, v in res["per_layer"].items() if n.startswith(stage)]
                stages[stage] = {k: sum(r["relu"][k] for r in rows) / len(rows) for k in METHODS}
            res["stages_quarter_rank"] = stages
            results[label] = res
            note = (
                f"the 18 block convolutions, fit on {cx.shape[0]} training images x {args.patches} patches, errors on "
                f"{eval_x.shape[0]} held-out images x {args.patches} patches"
            )
            tables.append(table(label + ": relu(W x)", RESNET_FRACTIONS, res, "relu", note))
            tables.append(table(label + ": relu(BN(W x))", RESNET_FRACTIONS, res, "relu_bn",
                                "through the following BatchNorm; relu fitted through it"))
            print(tables[-2], "\n\n", tables[-1], "\n", flush=True)
            print("  rank 1/4 by stage (input dim 144/288/576):", json.dumps(stages), i_quarter, flush=True)
    results["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(results, indent=1))
    plot(results, args.figure)
    print(f"done in {results['seconds']:.0f} s; figure {args.figure}; raw numbers {args.json}")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, v) for k, v in results.items() if isinstance(v, dict) and "relu" in v and "per_layer" in v]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.6), squeeze=False, sharex="col")
    colors = {"spectral": "tab:gray", "data": "tab:blue", "relu": "tab:red"}
    for col, (label, res) in enumerate(panels):
        ax, gap = axes[0][col], axes[1][col]
        fracs = MLP_FRACTIONS if label.startswith("MLP") else RESNET_FRACTIONS
        for k in METHODS:
            ax.plot(fracs, res["relu"][k], "o-", color=colors[k], label=f"{k}, relu(Wx)")
            if "relu_bn" in res:
                ax.plot(fracs, res["relu_bn"][k], "s--", color=colors[k], alpha=0.6, label=f"{k}, relu(BN(Wx))")
            if k != "spectral":
                gap.plot(fracs, [s - v for s, v in zip(res["relu"]["spectral"], res["relu"][k])], "o-",
                         color=colors[k], label=f"spectral − {k}")
                if "relu_bn" in res:
                    gap.plot(fracs, [s - v for s, v in zip(res["relu_bn"]["spectral"], res["relu_bn"][k])], "s--",
                             color=colors[k], alpha=0.6, label=f"spectral − {k}, through BN")
        for a in (ax, gap):
            a.set_xscale("log", base=2)
            a.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        gap.axhline(0, color="black", lw=0.8)
        gap.set_xlabel("rank / full rank")
        ax.set_title(label.split(",")[0] + "\n" + ",".join(label.split(",")[1:]).strip()[:60], fontsize=8)
    axes[0][0].set_ylabel("held-out relative ReLU error")
    axes[1][0].set_ylabel("gap over spectral (absolute)")
    axes[0][-1].legend(fontsize=6)
    axes[1][-1].legend(fontsize=6)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
