"""lightning_sylv.passes.selection: the one rule for the layers an initializer leaves alone."""

from torch import nn

from lightning_sylv.passes import frozen, skip_reason


def test_skip_reasons_in_order_of_precedence():
    layer = nn.Linear(2, 2)
    assert skip_reason("a", layer, ["a"], None) is None
    assert skip_reason("a", layer, ["b"], None) == "not executed by the forward pass"
    assert skip_reason("a", layer, ["a"], ["b"]) == "not selected"
    layer.bias.requires_grad_(False)
    assert frozen(layer)
    assert skip_reason("a", layer, ["a"], None) == "frozen (requires_grad=False)"
    assert skip_reason("a", layer, ["b"], None) == "not executed by the forward pass"  # executed first
