"""What an initialization did: per-layer records and their text rendering.

This module imports no Lightning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["InitReport", "LayerReport", "format_table"]


@dataclass
class LayerReport:
    """What happened to one layer.

    Attributes:
        name: Qualified module name in the model.
        kind: Module class name.
        in_features: Input dimension of the dense problem (``C_in/groups * k_h * k_w`` for convs).
        out_features: Output units (per group for grouped convolutions).
        groups: Number of independent problems solved (convolution groups).
        rows: Rows used (samples, or samples x patches), summed over processes.
        code: Name of the latent code.
        encoding_loss: ``‖X Wᵀ − S‖² / ‖S‖²`` (mean over groups).
        decoding_loss: ``‖X − S W‖² / ‖X‖²`` (mean over groups).
        residual: Largest relative residual of the Sylvester solve over groups.
        cond_a: Largest condition number of ``A = SᵀS``.
        cond_b: Largest condition number of ``B = λ XᵀX``.
        dropped: Eigenvalue pairs the solver treated as singular (summed over groups).
        seconds: Wall time spent on this layer (rows, statistics, code, solve, write).
    """

    name: str
    kind: str
    in_features: int
    out_features: int
    groups: int
    rows: int
    code: str
    encoding_loss: float
    decoding_loss: float
    residual: float
    cond_a: float
    cond_b: float
    dropped: int
    seconds: float


@dataclass
class InitReport:
    """Result of :func:`lightning_sylv.engine.sylvester_init_`.

    Attributes:
        layers: One :class:`LayerReport` per initialized layer, in execution order.
        skipped: Layers left untouched, mapped to the reason.
        head: Name of the layer treated as the classifier head.
        passes: Forward passes over the subset (1 in single-batch mode; more when streaming).
        seconds: Wall time of the whole call.
    """

    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    passes: int = 0
    seconds: float = 0.0

    def as_rows(self) -> list[dict[str, Any]]:
        """The per-layer records as plain dicts (for tables, CSV, JSON)."""
        return [asdict(r) for r in self.layers]


def format_table(report: InitReport) -> str:
    """A compact fixed-width table of the per-layer records and the skipped layers."""
    lines = [
        f"  {'layer':<28} {'type':<7} {'in':>6} {'out':>5} {'rows':>7} {'code':<7} "
        f"{'enc.loss':>9} {'dec.loss':>9} {'residual':>9} {'time s':>7}"
    ]
    for r in report.layers:
        lines.append(
            f"  {r.name[:28]:<28} {r.kind[:7]:<7} {r.in_features:>6} {r.out_features:>5} {r.rows:>7} "
            f"{r.code[:7]:<7} {r.encoding_loss:>9.4f} {r.decoding_loss:>9.4f} {r.residual:>9.1e} {r.seconds:>7.3f}"
        )
    for name, why in report.skipped.items():
        lines.append(f"  skipped {name}: {why}")
    return "\n".join(lines)
