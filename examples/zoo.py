"""Zoo benchmark: Sylvester initialization of torchvision and timm models, as a new user would run it.

For each model (10-class head, CIFAR-10 at 32x32, nothing else changed) it prints the layers
initialized and skipped, the fraction of parameters written, init time ÷ one eval-mode forward pass of
the same subset (median of ``--repeats``, same process), peak memory of the init ÷ that of the forward
(resident-set high-water marks, reset before each), and the initial validation accuracy with the
model's own init and after :func:`lightning_sylv.sylvester_init_`.

Validation images are the last 5,000 of the CIFAR-10 training set; the subset is drawn,
class-balanced and seeded, from the first 45,000; the test set is never read.

Needs the ``zoo`` extra (torchvision, timm), best in its own environment, since torchvision pins the
torch it runs beside (on the project's 2-core CPU machine: torch 2.14.1, torchvision 0.29.1)::

    python -m venv zoo-venv && zoo-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    zoo-venv/bin/pip install -e ".[zoo]"
    zoo-venv/bin/python examples/zoo.py --data-dir /tmp/cifar --spc 20 --markdown zoo.md

``--data-dir`` holds (or is) a canonical ``cifar-10-batches-py`` folder, as
:class:`lightning_sylv.data.CIFAR10DataModule` downloads it.

Each model runs in its own subprocess (``--models`` picks some), so one model's memory and threads
do not colour the next one's figures.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = (
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_p4",
    "timm_vit_tiny",
    "timm_resnet18d",
    "vit_b_16",
    "resnet20",
    "regnet_y_400mf",
    "swin_t",
    "timm_mixer",
)
#: The models of the default run: the nine the defaults were chosen on (``vit_b_16`` is for
#: ``--image-size 224``: 196 tokens of 16 px; the last four are the training benchmark's ResNet-20
#: and its architectures held out of every choice of defaults, see ``zoo_train.py``).
DEFAULT_MODELS = MODELS[:9]
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def build(name: str, image_size: int = 32) -> Any:
    """The model ``name`` with a 10-class head and its own (random) initialization, for square
    images of ``image_size`` pixels (the ViTs' position embeddings depend on it)."""
    import timm
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import VisionTransformer

    if name == "vit_p4":
        return VisionTransformer(
            image_size=image_size, patch_size=4, num_layers=6, num_heads=8, hidden_dim=256, mlp_dim=512, num_classes=10
        )
    if name == "timm_vit_tiny":
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=4, num_classes=10
        )
    if name == "vit_b_16":
        return tvm.vit_b_16(weights=None, num_classes=10, image_size=image_size)
    if name == "resnet20":  # the paper's CIFAR ResNet (this package's), PyTorch's default init
        from lightning_sylv.models import resnet_cifar

        return resnet_cifar(20, num_classes=10)
    if name == "swin_t":  # 8 x 8 patches of 4 px at 32 px (windows of 7 padded, as torchvision does)
        return tvm.swin_t(weights=None, num_classes=10)
    if name == "timm_mixer":  # a small MLP-Mixer: 6 blocks of width 256 on 4-px patches
        from timm.models.mlp_mixer import MlpMixer

        return MlpMixer(num_classes=10, img_size=image_size, patch_size=4, num_blocks=6, embed_dim=256)
    if name == "timm_resnet18d":
        return timm.create_model("resnet18d", pretrained=False, num_classes=10)
    return getattr(tvm, name)(weights=None, num_classes=10)


def load_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 CIFAR-10 training images ``(N, 3, 32, 32)`` (normalized float32) and labels."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    xs, ys = [], []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(d[b"data"])
        ys += d[b"labels"]
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    x = (x - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return x, np.asarray(ys, dtype=np.int64)


def balanced(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_of(fn: Any) -> tuple[Any, float]:
    """``fn()`` and the growth of the resident set's high-water mark during it, in MiB."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    out = fn()
    return out, (_rss_kib("VmHWM") - base) / 1024


def accuracy(model: Any, x: Any, y: Any, batch: int = 500) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            hits += int((model(x[lo : lo + batch]).argmax(1) == y[lo : lo + batch]).sum())
    return 100.0 * hits / len(x)


def _setup(args: argparse.Namespace) -> tuple[Any, ...]:
    import torch

    torch.set_num_threads(args.threads)
    x, y = load_cifar(Path(args.data_dir))
    sub = balanced(y[:45000], args.spc, args.seed)
    val = np.random.default_rng(1000 + args.seed).choice(np.arange(45000, 50000), args.val, replace=False)
    xs, ys = torch.from_numpy(x[sub]), torch.from_numpy(y[sub])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])
    del x, y
    if args.image_size != 32:  # CIFAR-10 upsampled (bilinear): the resolution ImageNet models run at
        up = lambda t: torch.nn.functional.interpolate(t, size=args.image_size, mode="bilinear", align_corners=False)  # noqa: E731
        xs, xv = up(xs), up(xv)
    torch.manual_seed(args.seed)
    return build(args.model, args.image_size), xs, ys, xv, yv


def init_options(text: str) -> dict[str, Any]:
    """``sylvester_init_`` keyword arguments from JSON; ``dtype``/``gram_dtype`` given by name."""
    import torch

    options = json.loads(text)
    for key in ("dtype", "gram_dtype"):
        if isinstance(options.get(key), str):
            options[key] = getattr(torch, options[key])
    return options


def peak_memory(args: argparse.Namespace) -> dict[str, float]:
    """Peak resident-set growth of one forward pass of the subset (``--phase forward``) or of the
    initialization (``--phase init``), in a process that has done nothing else with the model."""
    import torch

    from lightning_sylv import sylvester_init_

    model, xs, ys, _, _ = _setup(args)
    model.eval()
    if args.phase == "forward":
        with torch.no_grad():
            _, mib = _peak_of(lambda: model(xs))
    else:
        _, mib = _peak_of(lambda: sylvester_init_(model, xs, ys, **init_options(args.options)))
    return {"mib": mib}


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one model (in this process): times, accuracies, the report."""
    import torch

    import lightning_sylv
    from lightning_sylv import sylvester_init_

    model, xs, ys, xv, yv = _setup(args)
    own = accuracy(model, xv, yv)

    def fwd() -> None:
        model.eval()
        with torch.no_grad():
            model(xs)

    fwd()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fwd()
        times.append(time.perf_counter() - t0)
    options = init_options(args.options)
    init_times, report = [], None
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(args.repeats):
        model.load_state_dict(snapshot)
        t0 = time.perf_counter()
        report = sylvester_init_(model, xs, ys, **options)
        init_times.append(time.perf_counter() - t0)
    sylv = accuracy(model, xv, yv)
    assert report is not None
    solvers: dict[str, int] = {}
    for r in report.layers:
        solvers[r.solver] = solvers.get(r.solver, 0) + 1
    skipped = {k: v for k, v in report.skipped.items() if not v.startswith("not selected")}
    return {
        "model": args.model,
        "layers": len(report.layers),
        "skipped": len(skipped),
        "skipped_names": skipped,
        "untouched": len(report.untouched),
        "param_fraction": report.initialized_fraction,
        "forward_s": statistics.median(times),
        "init_s": statistics.median(init_times),
        "time_ratio": statistics.median(init_times) / statistics.median(times),
        "own_acc": own,
        "sylvester_acc": sylv,
        "solvers": solvers,
        "options": json.loads(args.options),
        "version": lightning_sylv.__version__,
        "torch": torch.__version__,
        "threads": args.threads,
        "spc": args.spc,
        "image_size": args.image_size,
        "seed": args.seed,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | layers init / skipped | params init | init ÷ fwd | mem init ÷ fwd | own init acc | Sylvester acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | **{r['error']}** | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['layers']} / {r['skipped']} | {100 * r['param_fraction']:.1f}% "
            f"| {r['time_ratio']:.2f}× ({r['init_s']:.2f} s / {r['forward_s']:.2f} s) "
            f"| {r['memory_ratio']:.2f}× ({r['init_mib']:.0f} / {r['forward_mib']:.0f} MiB) "
            f"| {r['own_acc']:.1f}% | {r['sylvester_acc']:.1f}% |"
        )
    ok = [r for r in rows if "error" not in r]
    if ok:
        med = statistics.median(r["time_ratio"] for r in ok)
        lines.append("")
        lines.append(f"Median init ÷ forward over {len(ok)} models: {med:.2f}×.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    p.add_argument("--image-size", type=int, default=32, help="CIFAR-10 upsampled to this size (bilinear)")
    p.add_argument("--spc", type=int, default=20, help="samples per class in the subset")
    p.add_argument("--val", type=int, default=2000, help="validation images (held out of the train split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (medians are reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--options", default="{}", help='JSON of extra sylvester_init_ arguments, e.g. \'{"lam": 1.0}\'')
    p.add_argument("--model", help=argparse.SUPPRESS)  # internal: run one model in this process
    p.add_argument("--phase", default="all", choices=["all", "forward", "init"], help=argparse.SUPPRESS)
    p.add_argument("--jsonl", help="append each model's record to this file")
    p.add_argument("--markdown", help="write the table to this file")
    args = p.parse_args(argv)
    if args.model:
        print(json.dumps(run_one(args) if args.phase == "all" else peak_memory(args)))
        return
    rows = []
    for name in args.models:
        row: dict[str, Any] = {"model": name}
        for phase in ("all", "forward", "init"):
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--model", name, "--phase", phase]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                row["error"] = ((done.stderr.strip().splitlines() or ["?"])[-1])[:200]
                break
            out = json.loads(done.stdout.strip().splitlines()[-1])
            if phase == "all":
                row.update(out)
            else:
                row[f"{phase}_mib"] = out["mib"]
        if "error" not in row:
            row["memory_ratio"] = row["init_mib"] / max(row["forward_mib"], 1e-9)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    table = markdown(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
