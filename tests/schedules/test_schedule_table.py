"""The table of schedules: lookup by name and alias."""

from __future__ import annotations

import pytest
from schedule_oracles import build

from traincraft.errors import UnknownNameError


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown schedule 'cosin' \(did you mean 'cosine'"):
        build("cosin")
    with pytest.raises(UnknownNameError, match="did you mean 'plateau'"):
        build({"name": "platau"})


def test_aliases_and_torch_class_names() -> None:
    assert build("CosineAnnealingLR").name == "cosine"
    assert build({"name": "OneCycleLR"}).name == "onecycle"
    assert build({"name": "ReduceLROnPlateau"}).name == "plateau"
    assert build({"name": "wsd"}).name == "warmup_stable_decay"
    assert build(None).name == "constant"
