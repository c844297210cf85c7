"""lightning_sylv.attention: ``nn.MultiheadAttention`` as two jobs (packed q/k/v projections, then out_proj)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.codes import PCACode
from lightning_sylv.layer_fit import fit_layer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


class _AttentionBlock(nn.Module):
    def __init__(self, e: int = 16, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, e)
        self.attn = nn.MultiheadAttention(e, 4, batch_first=batch_first)
        self.batch_first = batch_first
        self.head = nn.Linear(e, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h, need_weights=False)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return self.head((h + a).mean(1) if self.batch_first else (h.transpose(0, 1) + a).mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_projections_are_initialized(batch_first):
    torch.manual_seed(0)
    model = _AttentionBlock(batch_first=batch_first)
    before_in = model.attn.in_proj_weight.detach().clone()
    before_out = model.attn.out_proj.weight.detach().clone()
    x = torch.randn(30, 12, 8, generator=_gen(9))
    report = sylvester_init_(model, x, _labels(30, 10), latent="pca", scale="solve")  # the solve, as solved
    names = [r.name for r in report.layers]
    assert names == ["embed", "attn.in_proj", "attn.out_proj", "head"]
    assert not report.skipped  # out_proj is not "not executed"
    assert not torch.equal(model.attn.in_proj_weight, before_in)
    assert not torch.equal(model.attn.out_proj.weight, before_out)
    # Self-attention with a deterministic code: the query, key and value fits of the same tokens agree.
    w = model.attn.in_proj_weight
    torch.testing.assert_close(w[:16], w[16:32])
    # out_proj was fitted on the attention output of the new projections: it is the PCA of that output.
    with torch.no_grad():
        h = model.embed(x)
        ctx, _ = F.multi_head_attention_forward(
            h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), 16, 4, w, model.attn.in_proj_bias,
            None, None, False, 0.0, torch.eye(16), None, training=False, need_weights=False,
        )  # fmt: skip
    # Every token is a row (12 tokens <= 16 positions per sample); the row order does not change the fit.
    rows = ctx.transpose(0, 1).reshape(-1, 16).double()
    ref = fit_layer(rows, PCACode().fit(rows, 16), 10.0, fit_bias=True)
    torch.testing.assert_close(model.attn.out_proj.weight.double(), ref.weight, atol=1e-4, rtol=1e-4)


def test_self_attention_gets_independent_rotations_of_one_fit():
    # The default rotated code: q, k and v are the same solve in independently rotated output bases
    # (W_k = Q W_q with Q orthogonal, so W_kᵀ W_k = W_qᵀ W_q), hence logits q·k that are not a Gram
    # matrix of the tokens, as with the model's own independent random projections.
    torch.manual_seed(0)
    model = _AttentionBlock(batch_first=True)
    x = torch.randn(30, 12, 8, generator=_gen(9))
    sylvester_init_(model, x, _labels(30, 10), scale="solve")
    wq, wk, wv = model.attn.in_proj_weight.detach().double().split(16)
    assert not torch.allclose(wq, wk, atol=1e-3) and not torch.allclose(wk, wv, atol=1e-3)
    torch.testing.assert_close(wk.T @ wk, wq.T @ wq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wv.T @ wv, wq.T @ wq, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        h = model.embed(x)
        q, k = h @ wq.float().T, h @ wk.float().T
        logits = q @ k.transpose(1, 2)
        # Not dominated by the diagonal, as q = k would make it (each token's own logit is the largest).
        self_first = (logits.argmax(-1) == torch.arange(12)).float().mean()
        assert self_first < 0.5, float(self_first)
