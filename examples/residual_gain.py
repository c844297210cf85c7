"""Why a ViT trained worse after the Sylvester init, measured: weight scales, residual-branch gains and
attention logits of pre-norm transformer blocks, after the model's own init and after
``sylvester_init_`` with ``scale="solve"`` (the solve as it comes) and ``scale="own"`` (the default until
``3150e36``; ``examples/first_steps.py`` compares it with the own norm, the default's rule in the ViTs).

For every block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` it prints, averaged over the blocks:

* ``attn gain``, ``mlp gain``: ``‖branch(norm(x))‖ / ‖norm(x)‖`` on the validation images, i.e. how far
  a block moves the residual stream at initialization (small for the own init: the stream stays
  close to the identity, which pre-norm transformers and their optimizer settings rely on);
* ``logit std``: the standard deviation of the attention logits ``q·k / √d_head`` (large values
  saturate the softmax);
* ``weight std ÷ own``: the standard deviation of every ``Linear`` weight in the blocks, divided
  by that of the same layer after the own init (mean over the layers).

Needs the ``zoo`` extra (torchvision, timm), see ``examples/zoo.py``::

    zoo-venv/bin/python examples/residual_gain.py --data-dir /tmp/cifar
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


def _blocks(model: Any) -> list[tuple[Any, Any, Any, Any, str]]:
    """``(norm1, attn, norm2, mlp, kind)`` of each pre-norm block of a torchvision or timm ViT."""
    out = []
    for m in model.modules():
        if hasattr(m, "ln_1") and hasattr(m, "self_attention"):  # torchvision EncoderBlock
            out.append((m.ln_1, m.self_attention, m.ln_2, m.mlp, "mha"))
        elif hasattr(m, "norm1") and hasattr(m, "attn") and hasattr(m, "mlp"):  # timm Block
            out.append((m.norm1, m.attn, m.norm2, m.mlp, "timm"))
    return out


def _logits_std(attn: Any, h: Any, kind: str) -> float:
    """Standard deviation of the attention logits of one block on its normalized input ``h``."""
    import torch

    with torch.no_grad():
        if kind == "mha":
            e, heads = attn.embed_dim, attn.num_heads
            q = h @ attn.in_proj_weight[:e].T + attn.in_proj_bias[:e]
            k = h @ attn.in_proj_weight[e : 2 * e].T + attn.in_proj_bias[e : 2 * e]
        else:
            heads = attn.num_heads
            e = h.shape[-1]
            qkv = attn.qkv(h)
            q, k = qkv[..., :e], qkv[..., e : 2 * e]
        n, t, _ = q.shape
        q = q.reshape(n, t, heads, -1).transpose(1, 2)
        k = k.reshape(n, t, heads, -1).transpose(1, 2)
        return float((q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).std())


def measure(model: Any, own: Any, x: Any) -> dict[str, float]:
    import torch
    from torch import nn

    seen: dict[str, list[float]] = {"attn gain": [], "mlp gain": [], "logit std": []}
    hooks = []
    for norm1, attn, norm2, mlp, kind in _blocks(model):
        store: dict[str, Any] = {}
        hooks.append(norm1.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("h1", o)))
        hooks.append(norm2.register_forward_hook(lambda m, a, o, s=store: s.__setitem__("h2", o)))

        def on_attn(m: Any, a: Any, o: Any, s: dict[str, Any] = store, kind: str = kind) -> None:
            out = o[0] if isinstance(o, tuple) else o
            seen["attn gain"].append(float(out.norm() / s["h1"].norm()))
            seen["logit std"].append(_logits_std(m, s["h1"], kind))

        def on_mlp(m: Any, a: Any, o: Any, s: dict[str, Any] = store) -> None:
            seen["mlp gain"].append(float(o.norm() / s["h2"].norm()))

        hooks.append(attn.register_forward_hook(on_attn))
        hooks.append(mlp.register_forward_hook(on_mlp))
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    ratios = []
    own_layers = dict(own.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (".mlp." in f".{name}." or ".attn" in f".{name}" or "attention" in name):
            ratios.append(float(m.weight.detach().std() / own_layers[name].weight.detach().std()))
    for name, m in model.named_modules():  # the packed in-projection of nn.MultiheadAttention
        if isinstance(m, nn.MultiheadAttention):
            ratios.append(float(m.in_proj_weight.detach().std() / own_layers[name].in_proj_weight.detach().std()))
    out = {k: statistics.mean(v) for k, v in seen.items()}
    out["weight std ÷ own"] = statistics.mean(ratios)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--models", nargs="+", default=["vit_p4", "timm_vit_tiny"])
    p.add_argument("--spc", type=int, default=20, help="images per class of the init subset")
    p.add_argument("--val", type=int, default=200, help="validation images the gains are measured on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    sys.path.insert(0, str(HERE))
    from zoo import balanced, build, load_cifar

    from lightning_sylv import sylvester_init_

    torch.set_num_threads(1)
    x, y = load_cifar(Path(args.data_dir))
    sub = balanced(y[:45000], args.spc, args.seed)
    val = np.random.default_rng(1000).choice(np.arange(45000, 50000), args.val, replace=False)
    xs, ys, xv = torch.from_numpy(x[sub]), torch.from_numpy(y[sub]), torch.from_numpy(x[val])
    fields = ("attn gain", "mlp gain", "logit std", "weight std ÷ own")
    print("| model | init | " + " | ".join(fields) + " |")
    print("| --- | --- |" + " --- |" * len(fields))
    for name in args.models:
        torch.manual_seed(args.seed)
        own = build(name)
        for label, options in (("own", None), ("sylvester scale=solve", "solve"), ("sylvester scale=own", "own")):
            model = copy.deepcopy(own)
            if options is not None:
                sylvester_init_(model, xs, ys, seed=args.seed, scale=options)
            m = measure(model, own, xv)
            print(f"| {name} | {label} | " + " | ".join(f"{m[f]:.3f}" for f in fields) + " |", flush=True)


if __name__ == "__main__":
    main()
