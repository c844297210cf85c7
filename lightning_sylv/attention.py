"""``nn.MultiheadAttention`` as two initialization jobs: its input projections, then its output projection.

``nn.MultiheadAttention`` is not a stack of ``nn.Linear`` calls: the query/key/value projections live
in one packed ``in_proj_weight`` (``3E x E``; or ``q/k/v_proj_weight`` when the key and value
dimensions differ), and ``out_proj`` is an ``nn.Linear`` whose forward is never called (its weight is
used inside ``F.multi_head_attention_forward``, or inside the fused fast path in eval mode). Both jobs
hook the attention module itself, whose pre-hook sees ``query``, ``key``, ``value`` and the masks in
either path:

* :class:`InProjectionJob` fits each projection as a dense layer ``E_in -> E`` from the rows of its
  own input (tokens of ``query``, ``key``, ``value``), each as its own fit, also in self-attention
  where the three inputs are one tensor: a rotated code then gives them independent rotations of the
  same principal subspace (one shared fit made the logits ``q·k`` a Gram matrix of the tokens, so
  every token attended to itself first).
* :class:`OutProjectionJob` then computes the attention output with the new projections (the module's
  own attention function, with an identity output projection) and fits ``out_proj`` on it.

This module imports no Lightning.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sylv.layer import LayerJob
from lightning_sylv.layer_fit import summarize
from lightning_sylv.report import LayerReport
from lightning_sylv.sharding import write_

__all__ = ["InProjectionJob", "OutProjectionJob", "attention_jobs"]

_ARGS = inspect.signature(nn.MultiheadAttention.forward)


def _bind(mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = _ARGS.bind(mha, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _batch_major(mha: nn.MultiheadAttention, t: Tensor) -> Tensor:
    """``(N, L, E)`` tokens of an attention input (``(L, E)`` unbatched, ``(L, N, E)`` sequence-first)."""
    if t.ndim == 2:
        return t.unsqueeze(0)
    return t if mha.batch_first else t.transpose(0, 1)


class InProjectionJob:
    """The query/key/value projections of one ``nn.MultiheadAttention``.

    Args:
        module: The attention module.
        name: Its qualified name; the report names the job ``<name>.in_proj``.
        make_job: Builds a :class:`~lightning_sylv.layer.LayerJob` for a dense layer and a name
            (the caller's code, λ, patch draws and precision).
    """

    def __init__(
        self, module: nn.MultiheadAttention, name: str, make_job: Callable[[nn.Module, str], LayerJob]
    ) -> None:
        self.module = module
        self.name = f"{name}.in_proj"
        e = module.embed_dim
        weight = module.in_proj_weight if module._qkv_same_embed_dim else module.q_proj_weight
        bias = module.in_proj_bias is not None
        dims = {"q": e, "k": module.kdim, "v": module.vdim}
        self._proxies = {
            k: nn.Linear(d, e, bias=bias, device=weight.device, dtype=weight.dtype) for k, d in dims.items()
        }
        # Each projection is its own job, also in self-attention where all three read the same tokens:
        # a rotated code then gives q, k and v independent rotations of the same principal subspace, so
        # the logits q·k are not a Gram matrix of the tokens (one fit shared by q and k would make every
        # token attend to itself first), as with independently drawn random projections.
        self._jobs = {k: make_job(p, f"{self.name}.{k}") for k, p in self._proxies.items()}
        self._started = False

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        """Rows of the query, key and value tokens of one call."""
        call = _bind(self.module, args, kwargs)
        if not self._started:
            self._copy_own_weights()
            self._started = True
        for key in ("query", "key", "value"):
            self._jobs[key[0]].add(_batch_major(self.module, call[key]), labels)

    def _copy_own_weights(self) -> None:
        """Give the proxies the module's current q/k/v weights (the reference of ``scale="own"``).

        Called inside the module's pre-hook, where a sharded module holds its full weights.
        """
        m, e = self.module, self.module.embed_dim
        packed = m._qkv_same_embed_dim
        with torch.no_grad():
            for i, (key, proxy) in enumerate(self._proxies.items()):
                own = m.in_proj_weight[i * e : (i + 1) * e] if packed else getattr(m, f"{key}_proj_weight")
                proxy.weight.copy_(own)
                if proxy.bias is not None and m.in_proj_bias is not None:
                    proxy.bias.copy_(m.in_proj_bias[i * e : (i + 1) * e])

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> LayerReport:
        """Solve the projections and write them into the module's (packed) weights."""
        reports = [self._jobs[k].finish(reduce) for k in ("q", "k", "v")]
        m, e = self.module, self.module.embed_dim
        proxies = [self._proxies[key] for key in ("q", "k", "v")]
        # Whole tensors only (write_ slices a sharded parameter by its own layout, never by q/k/v).
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                write_(m.in_proj_weight, torch.cat([p.weight for p in proxies]))
            else:
                for key, proxy in zip(("q", "k", "v"), proxies):
                    write_(getattr(m, f"{key}_proj_weight"), proxy.weight)
            if m.in_proj_bias is not None:
                write_(m.in_proj_bias, torch.cat([p.bias for p in proxies]))
        first = reports[0]
        return LayerReport(
            name=self.name,
            kind=type(m).__name__,
            in_features=first.in_features,
            out_features=e,
            groups=len(reports),
            rows=first.rows,
            code=first.code,
            seconds=sum(r.seconds for r in reports),
            solver=first.solver,
            gain=first.gain,
            **summarize(reports),
        )


class OutProjectionJob:
    """The output projection of one ``nn.MultiheadAttention``, fitted on the attention output.

    Args:
        module: The attention module (its input projections already initialized when this job runs).
        job: The :class:`~lightning_sylv.layer.LayerJob` of ``module.out_proj``.
    """

    def __init__(self, module: nn.MultiheadAttention, job: LayerJob) -> None:
        self.module = module
        self.name = job.name
        self._job = job

    def add_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: Tensor | None) -> None:
        """The attention output of one call (before ``out_proj``), as rows of ``out_proj``."""
        m = self.module
        call = _bind(m, args, kwargs)
        q, k, v = (call[n] for n in ("query", "key", "value"))
        if m.batch_first and q.ndim == 3:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        e = m.embed_dim
        eye = torch.eye(e, dtype=m.out_proj.weight.dtype, device=m.out_proj.weight.device)
        context, _ = F.multi_head_attention_forward(
            q, k, v, e, m.num_heads, m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v, m.add_zero_attn,
            0.0, eye, None, training=False, key_padding_mask=call["key_padding_mask"], need_weights=False,
            attn_mask=call["attn_mask"], use_separate_proj_weight=not m._qkv_same_embed_dim,
            q_proj_weight=m.q_proj_weight, k_proj_weight=m.k_proj_weight, v_proj_weight=m.v_proj_weight,
            is_causal=call["is_causal"],
        )  # fmt: skip
        tokens = context.unsqueeze(0) if context.ndim == 2 else context.transpose(0, 1)
        self._job.add(tokens, labels)

    def finish(self, reduce: Callable[[Tensor], Tensor] | None = None) -> LayerReport:
        """Solve ``out_proj`` and write it."""
        return self._job.finish(reduce)


def attention_jobs(
    module: nn.MultiheadAttention, name: str, make_job: Callable[[nn.Module, str], LayerJob]
) -> list[InProjectionJob | OutProjectionJob]:
    """The two jobs of an attention module, in the order they must run."""
    return [
        InProjectionJob(module, name, make_job),
        OutProjectionJob(module, make_job(module.out_proj, f"{name}.out_proj")),
    ]
