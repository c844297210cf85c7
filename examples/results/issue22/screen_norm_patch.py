# The screening of issue 22, session F (kept as run): scale="norm" patched onto the engine of b9293e1 (the
# package as imported when the runs started, 17:44), before it was an option. VARIANT=norm; run like zoo_train.py.
# ruff: noqa: E401, E701, F841, I001
# Screening patch (issue 22, session F): variants of the scale of solved non-head layers.
# VARIANT=norm: after the solve (scale="own"), rescale each non-head layer to its own init's Frobenius norm.
import os, sys
sys.path.insert(0, "/work/main/examples")
import torch
import zoo_train
from lightning_sylv.layer import job as jobmod
V = os.environ.get("VARIANT", "base")
_orig = jobmod.LayerJob.finish
def finish(self, reduce=None):
    m = self.module
    w0 = m.weight.detach().clone()
    b0 = None if getattr(m, "bias", None) is None else m.bias.detach().clone()
    rep = _orig(self, reduce)
    if self.code.requires_labels:
        return rep
    with torch.no_grad():
        if V == "norm":
            n0, n1 = w0.norm(), m.weight.norm()
            if n0 > 0 and n1 > 0:
                c = n0 / n1
                m.weight.mul_(c)
                if m.bias is not None: m.bias.mul_(c)
        elif V.startswith("mix"):  # mixRHO: sqrt(1-rho) * solved + sqrt(rho) * own, at own's energy via norms
            rho = float(V[3:])
            n0, n1 = w0.norm(), m.weight.norm()
            if n0 > 0 and n1 > 0:
                m.weight.mul_((1 - rho) ** 0.5).add_(w0 * (rho ** 0.5) * n1 / n0)
    return rep
jobmod.LayerJob.finish = finish
_run = zoo_train.run_one
def run_one(*a, **k):
    r = _run(*a, **k)
    r["variant"] = V
    return r
zoo_train.run_one = run_one
_label = zoo_train.label
zoo_train.label = lambda r: _label(r) + ("" if r.get("variant", "base") == "base" else f" [{r['variant']}]")
zoo_train.main()
