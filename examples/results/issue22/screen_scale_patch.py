# The screening of issue 22 (kept as run): the scale rule patched into LayerJob at f3ccf93, before it
# became lightning_sylv/scale.py. SCALE_MODE=none|hidden|all; run like examples/zoo_train.py.
# ruff: noqa: E402, E501, E702, I001
"""Prototype: rescale each solved layer to the output energy its own init has on the same input."""
import os
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower() and "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, "/tmp/proto/tree")
sys.path.insert(0, "/work/main/examples")
import torch

from lightning_sylv import attention, layer_init

MODE = os.environ.get("SCALE_MODE", "none")  # none | hidden | all
LAST = {"name": None}

def _energy(w, b, job):
    # w: (g, o, d)
    if job._stats is not None:
        s = job._stats
        G, sx, n = s.gram_x.to(torch.float64), s.sum_x.to(torch.float64), float(s.n)
        G = G.reshape(w.shape[0], *G.shape[-2:]) if G.ndim == 3 else G.expand(w.shape[0], *G.shape[-2:])
        sx = sx.reshape(w.shape[0], -1) if sx.ndim == 2 else sx.expand(w.shape[0], -1)
        e = torch.einsum("god,gde,goe->", w, G, w)
        if b is not None:
            e = e + 2 * torch.einsum("go,god,gd->", b, w, sx) + n * (b * b).sum()
        return float(e)
    x = torch.cat(job._rows, dim=1).to(torch.float64)
    out = x @ w.mT
    if b is not None:
        out = out + b[:, None, :]
    return float((out * out).sum())

_orig_write = layer_init.LayerJob._write
def _write(self, weight, bias):
    m = self.module
    skip = MODE == "none" or (MODE == "hidden" and self.code.requires_labels)
    if not skip:
        g = self.groups
        w_own = m.weight.detach().reshape(g, self.out_per_group, -1).to(torch.float64)
        b_own = None if m.bias is None else m.bias.detach().reshape(g, -1).to(torch.float64)
        wn = weight.to(torch.float64).reshape(g, self.out_per_group, -1)
        bn = None if (bias is None or m.bias is None) else bias.to(torch.float64).reshape(g, -1)
        e_own, e_new = _energy(w_own, b_own, self), _energy(wn, bn, self)
        if e_own > 0 and e_new > 0:
            c = (e_own / e_new) ** 0.5
            weight = weight * c
            bias = None if bias is None else bias * c
            STATS.append((self.name, c))
    _orig_write(self, weight, bias)
layer_init.LayerJob._write = _write
STATS = []

_orig_in = attention.InProjectionJob.__init__
def _in_init(self, module, name, make_job):
    _orig_in(self, module, name, make_job)
    e = module.embed_dim
    with torch.no_grad():
        if module._qkv_same_embed_dim:
            for i, k in enumerate("qkv"):
                self._proxies[k].weight.copy_(module.in_proj_weight[i * e:(i + 1) * e])
                if module.in_proj_bias is not None:
                    self._proxies[k].bias.copy_(module.in_proj_bias[i * e:(i + 1) * e])
attention.InProjectionJob.__init__ = _in_init

import lightning_sylv

_orig_init = lightning_sylv.sylvester_init_
def patched(model, *a, **k):
    from lightning_sylv.engine import units
    LAST["name"] = list(units(model).values())[-1]  # approx head: last registered; checked below
    STATS.clear()
    r = _orig_init(model, *a, **k)
    LAST["name"] = r.head if hasattr(r, "head") else LAST["name"]
    print("scales", MODE, [(n, round(c, 3)) for n, c in STATS][:8], "... n=", len(STATS), file=sys.stderr)
    return r
lightning_sylv.sylvester_init_ = patched
import zoo_train
import lightning_sylv as _l; assert _l.__file__.startswith("/tmp/proto/tree"), _l.__file__
zoo_train.main()
