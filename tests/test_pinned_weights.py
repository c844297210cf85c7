"""The written weights of the test models, pinned bit for bit.

A restructuring of the inside must not change a single bit of what the initializers write. Each case
below initializes a small model from a seeded batch (one thread, so the products sum in one order) and
compares a SHA-256 of every parameter and buffer against ``tests/pinned_weights.json``. A change
that is *meant* to change weights (a new default, a new algorithm) regenerates the file and says so
in its commit::

    python tests/test_pinned_weights.py --regenerate

The cases cover every path a layer can take: Gram, span and randomized modes, streaming, grouped and
depthwise convolutions, BatchNorm recalibration, ``nn.MultiheadAttention``, the head alone, float64
products, FuseInit and the low-rank initializer.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

PINS = Path(__file__).parent / "pinned_weights.json"


def _batch(n: int, shape: tuple[int, ...], classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return x, torch.arange(classes).repeat(n // classes + 1)[:n]


def _mlp(d: int = 12, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),  # depthwise
        nn.Conv2d(8, 12, 3, padding=1, groups=2), nn.BatchNorm2d(12), nn.ReLU(),  # grouped
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3),
    )  # fmt: skip


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def _sylvester(build: Callable[[], nn.Module], shape: tuple[int, ...], n: int = 30, **kw: object):
    def run() -> nn.Module:
        from lightning_sylv import sylvester_init_

        torch.manual_seed(0)
        model = build()
        x, y = _batch(n, shape)
        sylvester_init_(model, x, y, **kw)
        return model

    return run


def _fuse() -> nn.Module:
    from lightning_sylv.fuse import fuse_init_

    torch.manual_seed(0)
    teacher, student = _mlp(), nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = _batch(30, (12,))
    fuse_init_(student, teacher, x, {"0": "2"}, y, unmapped="sylvester")
    return student


def _low_rank() -> nn.Module:
    from lightning_sylv.lowrank import low_rank_init_, to_low_rank

    torch.manual_seed(0)
    model = _mlp(d=12, hidden=16)
    to_low_rank(model, {"0": 4, "2": 4})
    x, y = _batch(40, (12,))
    low_rank_init_(model, x, y, full_weight="sylvester")
    return model


CASES: dict[str, Callable[[], nn.Module]] = {
    "mlp_defaults": _sylvester(_mlp, (12,)),
    "mlp_float64_products_solve_scale": _sylvester(_mlp, (12,), gram_dtype=None, scale="solve"),
    "mlp_span_mode": _sylvester(lambda: _mlp(d=40, hidden=24), (40,), n=21),
    "mlp_randomized": _sylvester(lambda: _mlp(d=200, hidden=8), (200,), n=60, solver="randomized"),
    "mlp_streamed": _sylvester(_mlp, (12,), batch_size=7),
    "mlp_signed_pca": _sylvester(_mlp, (12,), latent="signed_pca"),
    "cnn_defaults": _sylvester(_cnn, (3, 6, 6)),
    "cnn_head_only": _sylvester(_cnn, (3, 6, 6), layers="head"),
    "attention": _sylvester(_Attention, (5, 6)),
    "fuse": _fuse,
    "low_rank": _low_rank,
}


def fingerprint(model: nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter's and buffer's bytes, by name."""

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]

    return {k: digest(v) for k, v in model.state_dict().items()}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_weights_are_pinned_bit_for_bit(case: str, one_thread: None) -> None:
    pins = json.loads(PINS.read_text())
    got = fingerprint(CASES[case]())
    changed = sorted(k for k in got if got[k] != pins[case].get(k))
    assert set(got) == set(pins[case]), (sorted(got), sorted(pins[case]))
    assert not changed, f"{case}: {len(changed)} tensors changed: {changed}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit(f"usage: python {sys.argv[0]} --regenerate")
    torch.set_num_threads(1)
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps({c: fingerprint(f()) for c, f in sorted(CASES.items())}, indent=1) + "\n")
    print(f"wrote {PINS}")
