"""What an initialization did: per-layer records and their text rendering.

This module imports no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SCALAR_FIELDS",
    "InitReport",
    "LayerReport",
    "fixed_width",
    "format_markdown",
    "format_table",
    "layer_scalars",
]


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
        encoding_loss: ``‖X Wᵀ − S‖² / ‖S‖²`` (mean over groups) of the solve, before ``gain``.
        decoding_loss: ``‖X − S W‖² / ‖X‖²`` (mean over groups).
        residual: Largest relative residual of the Sylvester solve over groups.
        cond_a: Largest condition number of ``A = SᵀS``.
        cond_b: Largest condition number of ``B = λ XᵀX``.
        dropped: Eigenvalue pairs the solver treated as singular (summed over groups).
        seconds: Wall time spent on this layer (rows, statistics, code, solve, write).
        solver: How it was solved: ``"gram/<eigh path>"`` from the ``d x d`` statistics,
            ``"span/<eigh path>"`` in the span of fewer rows than inputs, ``"rows/<eigh path>"`` from
            kept rows (codes that need them); the eigh path is one of
            :data:`lightning_sylv.solver.EIGH_PATHS` (``eigh``, ``scipy-evr``, ``ridge``).
        gain: Factor applied to the solved weights and bias (``scale="norm"``: the own weights'
            norm, ``"own"``: their output energy; see :mod:`lightning_sylv.scale`); ``1.0`` when the
            solve's scale was kept.
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
    solver: str = "gram/eigh"
    gain: float = 1.0


@dataclass
class InitReport:
    """Result of :func:`lightning_sylv.engine.sylvester_init_`.

    Attributes:
        layers: One :class:`LayerReport` per initialized layer, in execution order.
        skipped: Layers left untouched, mapped to the reason.
        head: Name of the layer treated as the classifier head.
        passes: Forward passes over the subset (1 in single-batch mode; more when streaming).
        seconds: Wall time of the whole call.
        untouched: Parameters that belong to no layer (layer-scale γ, class tokens, position
            embeddings), kept as they were, mapped to what holds them.
        initialized_parameters: Parameter entries written by the initialization.
        total_parameters: Parameter entries of the model.
    """

    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    passes: int = 0
    seconds: float = 0.0
    untouched: dict[str, str] = field(default_factory=dict)
    initialized_parameters: int = 0
    total_parameters: int = 0

    @property
    def initialized_fraction(self) -> float:
        """Fraction of the model's parameter entries that the initialization wrote."""
        return self.initialized_parameters / self.total_parameters if self.total_parameters else 0.0

    def as_rows(self) -> list[dict[str, Any]]:
        """The per-layer records as plain dicts (for tables, CSV, JSON)."""
        return [asdict(r) for r in self.layers]

    def metrics(self) -> dict[str, float]:
        """Scalars summarizing the report for the loggers (none beyond the callback's own)."""
        return {}

    def tensorboard(self, prefix: str, samples: int | None = None) -> tuple[str, dict[str, float]]:
        """``(Markdown table, per-layer scalars <prefix>/layer/<name>/<field>)`` for TensorBoard."""
        return format_markdown(self, samples), layer_scalars(self, prefix=f"{prefix}/layer")


def _rows_per_sample(r: LayerReport, samples: int | None) -> str:
    if not samples:
        return "-"
    return str(r.rows // samples) if r.rows % samples == 0 else f"{r.rows / samples:.1f}"


def _sci(value: float) -> str:
    return "-" if value != value else f"{value:.1e}"  # NaN (not defined, e.g. cond_a for lam=inf)


def fixed_width(
    columns: Sequence[tuple[str, str, int]], rows: Iterable[Sequence[str]], notes: Iterable[str] = ()
) -> str:
    """A fixed-width text table (the one of every report): a header, one line per row, then ``notes``.

    Args:
        columns: ``(title, align, width)`` per column: ``"<"`` for text (cut to the width), ``">"`` for numbers.
        rows: Each row's cells, already formatted as strings.
        notes: Lines after the table (skipped layers and why).

    Example:
        >>> print(fixed_width([("layer", "<", 6), ("rows", ">", 5)], [["conv1.weight", "200"]], ["skipped fc: frozen"]))
          layer   rows
          conv1.   200
          skipped fc: frozen
    """

    def line(cells: Sequence[str]) -> str:
        return "  " + " ".join(f"{c[:w] if a == '<' else c:{a}{w}}" for c, (_, a, w) in zip(cells, columns))

    return "\n".join([line([title for title, _, _ in columns]), *map(line, rows), *(f"  {n}" for n in notes)])


_TABLE = (
    ("layer", "<", 28), ("type", "<", 7), ("in", ">", 6), ("out", ">", 5), ("grp", ">", 4), ("rows", ">", 7),
    ("rows/smp", ">", 8), ("code", "<", 7), ("enc.loss", ">", 9), ("dec.loss", ">", 9), ("residual", ">", 9),
    ("cond A", ">", 8), ("cond B", ">", 8), ("drop", ">", 5), ("gain", ">", 7), ("time s", ">", 7),
)  # fmt: skip


def format_table(report: InitReport, samples: int | None = None) -> str:
    """A compact fixed-width table of the per-layer records and the skipped layers.

    Args:
        report: The report.
        samples: Size of the initialization subset (all processes). With it a ``rows/smp`` column
            shows the rows per sample: patches per image for convolutions, 1 for a plain ``Linear``.
    """
    rows = [
        [
            r.name,
            r.kind,
            str(r.in_features),
            str(r.out_features),
            str(r.groups),
            str(r.rows),
            _rows_per_sample(r, samples),
            r.code,
            f"{r.encoding_loss:.4f}",
            f"{r.decoding_loss:.4f}",
            f"{r.residual:.1e}",
            _sci(r.cond_a),
            _sci(r.cond_b),
            str(r.dropped),
            f"{r.gain:.3g}",
            f"{r.seconds:.3f}",
        ]
        for r in report.layers
    ]
    return fixed_width(_TABLE, rows, [f"skipped {name}: {why}" for name, why in report.skipped.items()])


def _md(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def format_markdown(report: InitReport, samples: int | None = None) -> str:
    """The per-layer records as a Markdown table (for TensorBoard's Text tab), then the skipped layers.

    Args:
        report: The report.
        samples: Size of the initialization subset (all processes), for the rows-per-sample column.
    """
    head = (
        "| layer | type | in | out | groups | rows | rows/sample | code | encoding loss | decoding loss "
        "| residual | cond A | cond B | dropped | gain | time s |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in report.layers:
        name = _md(r.name) + (" (head)" if r.name == report.head else "")
        lines.append(
            f"| {name} | {r.kind} | {r.in_features} | {r.out_features} | {r.groups} | {r.rows} "
            f"| {_rows_per_sample(r, samples)} | {r.code} | {r.encoding_loss:.4f} | {r.decoding_loss:.4f} "
            f"| {r.residual:.1e} | {_sci(r.cond_a)} | {_sci(r.cond_b)} | {r.dropped} | {r.gain:.3g} | {r.seconds:.3f} |"
        )
    summary = (
        f"{len(report.layers)} layer(s) initialized in {report.seconds:.3f} s, {report.passes} forward pass(es)"
        + (f", {samples} samples" if samples else "")
        + "."
    )
    lines += ["", summary]
    if report.skipped:
        lines += ["", "Skipped:", ""] + [f"* {_md(name or '<root>')}: {why}" for name, why in report.skipped.items()]
    return "\n".join(lines)


#: Per-layer fields reported as scalars by :func:`layer_scalars`.
SCALAR_FIELDS = ("encoding_loss", "decoding_loss", "residual", "cond_a", "cond_b", "dropped", "gain", "rows", "seconds")


def layer_scalars(report: InitReport, prefix: str = "sylvester/layer") -> dict[str, float]:
    """Per-layer numbers as flat scalar metrics ``{prefix}/{layer}/{field}``.

    Fields are :data:`SCALAR_FIELDS`; non-finite values (an undefined condition number) are left out.
    """
    out: dict[str, float] = {}
    for r in report.layers:
        for f in SCALAR_FIELDS:
            value = float(getattr(r, f))
            if math.isfinite(value):
                out[f"{prefix}/{r.name}/{f}"] = value
    return out
