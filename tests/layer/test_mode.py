"""lightning_sylv.layer.mode: the mode a layer is solved in (a pure function of its sizes and code)."""

import pytest

from lightning_sylv.layer.mode import choose_mode

BASE = dict(solver="exact", uses_stats=True, supervised=False, pooled=True, power_iterations=1)


@pytest.mark.parametrize(
    ("rows", "d", "k", "overrides", "mode"),
    [
        (3200, 576, 64, {}, "gram"),  # more rows than inputs
        (200, 4608, 512, {}, "span"),  # fewer rows than inputs: the span of the rows
        (200, 4608, 512, {"pooled": False}, "gram"),  # rows that cannot be gathered: summed
        (3200, 4608, 64, {"solver": "randomized"}, "randomized"),  # k + 11 far below d / 8
        (6000, 4608, 1024, {"solver": "randomized"}, "gram"),  # too many directions to pay
        (3200, 4608, 64, {"solver": "randomized", "supervised": True}, "span"),  # the head stays exact
        (100, 4608, 64, {"solver": "randomized"}, "span"),  # too few rows for the range finder
        (3200, 4608, 64, {"solver": "randomized", "uses_stats": False}, "span"),  # rows-only codes
    ],
)
def test_choose_mode(rows, d, k, overrides, mode):
    assert choose_mode(rows=rows, in_features=d, directions=k, **{**BASE, **overrides}) == mode
