"""lightning_sylv.settings: one frozen, validated options object per initializer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_sylv import sylvester_init_
from lightning_sylv.lowrank import LowRankSettings
from lightning_sylv.settings import FuseSettings, SylvesterSettings

BAD = [
    (SylvesterSettings, {"layers": "body"}, "layers must be"),
    (SylvesterSettings, {"latent": "svd"}, "latent must be"),
    (SylvesterSettings, {"lam": float("inf")}, "lam must be a finite number > 0"),
    (SylvesterSettings, {"seed": 1.5}, "seed must be"),
    (SylvesterSettings, {"lams": {"0": 0.0}}, "every value of lams must be > 0"),
    (SylvesterSettings, {"power_iterations": -1}, "power_iterations must be"),
    (FuseSettings, {"unmapped": "drop"}, "unmapped must be"),
    (FuseSettings, {"teacher_lam": -1.0}, "teacher_lam must be"),
    (FuseSettings, {"lam": 0}, "lam must be"),
    (LowRankSettings, {"method": "svd"}, "method must be"),
    (LowRankSettings, {"ridge": -1e-3}, "ridge must be"),
    (LowRankSettings, {"through_batchnorm": "yes"}, "through_batchnorm must be"),
    (LowRankSettings, {"head_latent": "nope"}, "head_latent must be"),
]


@pytest.mark.parametrize(("cls", "bad", "message"), BAD, ids=lambda v: getattr(v, "__name__", None) or str(v)[:24])
def test_a_bad_option_is_refused_at_construction_naming_it(cls, bad, message):
    with pytest.raises(ValueError, match=message):
        cls(**bad)
    with pytest.raises(ValueError, match=message):  # replace() validates like the constructor
        cls().replace(**bad)


@pytest.mark.parametrize("cls", [SylvesterSettings, FuseSettings, LowRankSettings])
def test_settings_are_frozen_keyword_only_and_normalized(cls):
    settings = cls(lam=5)
    assert settings.lam == 5.0 and isinstance(settings.lam, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lam = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls(10.0)  # type: ignore[misc]  # keyword-only


def test_layer_patterns_are_kept_as_a_tuple_and_decide_labels_and_recalibration():
    assert SylvesterSettings(layers=["a.*", "b"]).layers == ("a.*", "b")
    head = SylvesterSettings(layers="head")
    assert head.requires_labels and not head.recalibrates_norms
    assert not SylvesterSettings().requires_labels and SylvesterSettings().recalibrates_norms
    assert not LowRankSettings(recalibrate_bn=False).recalibrates_norms


def test_the_function_takes_the_settings_as_is_or_as_keywords():
    x, y = torch.randn(30, 6), torch.arange(3).repeat(10)

    def run(**kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        sylvester_init_(model, x, y, **kw)
        return [p.detach().clone() for p in model.parameters()]

    by_object = run(settings=SylvesterSettings(lam=3.0, latent="pca"))
    by_keywords = run(lam=3.0, latent="pca")
    mixed = run(settings=SylvesterSettings(latent="pca"), lam=3.0)  # keywords replace fields of settings
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(by_object, by_keywords, mixed))
    with pytest.raises(TypeError, match="unexpected keyword argument 'lamda'"):
        run(lamda=3.0)
