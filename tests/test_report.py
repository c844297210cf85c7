"""lightning_sylv.report: per-layer records, the fixed-width and Markdown tables, TensorBoard scalars."""

from __future__ import annotations

import torch
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.report import fixed_width, format_markdown, format_table


def _report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    model[3].bias.requires_grad_(False)  # frozen: skipped, with the reason
    return sylvester_init_(model, torch.randn(12, 3, 6, 6), torch.arange(3).repeat(4))


def test_fixed_width_aligns_cuts_text_and_appends_notes():
    table = fixed_width([("name", "<", 4), ("n", ">", 3)], [["abcdef", "7"], ["x", "123"]], ["note"])
    assert table.splitlines() == ["  name   n", "  abcd   7", "  x    123", "  note"]


def test_the_tables_list_every_written_layer_and_every_skipped_one_with_its_reason():
    report = _report()
    assert [r.name for r in report.layers] == ["0"] and "3" in report.skipped
    text = format_table(report, samples=12)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "type", "in"] and lines[1].split()[:3] == ["0", "Conv2d", "27"]
    assert lines[1].split()[6] == "16"  # rows per sample: all 16 positions of a 4x4 output
    assert lines[-1] == "  skipped 3: frozen (requires_grad=False)"
    md = format_markdown(report, 12)
    assert "| `0` |" in md and "* `3`: frozen (requires_grad=False)" in md


def test_the_report_presents_itself_to_the_loggers():
    report = _report()
    assert report.metrics() == {}
    markdown, scalars = report.tensorboard("sylvester", 12)
    assert markdown == format_markdown(report, 12)
    assert scalars["sylvester/layer/0/rows"] == 12 * 16
    assert all(k.startswith("sylvester/layer/0/") for k in scalars)
