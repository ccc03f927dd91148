"""Durations: 500 steps, '3ep', '10%'; steps per epoch."""

from __future__ import annotations

from typing import Any

import pytest

from traincraft.errors import TraincraftError
from traincraft.schedules import Duration, parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (500, Duration(500.0, "step")),
        ("500", Duration(500.0, "step")),
        (0, Duration(0.0, "step")),
        ("3ep", Duration(3.0, "epoch")),
        ("0.5ep", Duration(0.5, "epoch")),
        ("10%", Duration(10.0, "share")),
        (" 12.5% ", Duration(12.5, "share")),
        (8.0, Duration(8.0, "step")),
    ],
)
def test_parse_duration(value: Any, expected: Duration) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value", ["3 epochs", "3 ep", "ten", "-5", "5.5", "10 %", "%", True, None, -3, 2.5, [3]]
)
def test_bad_duration_names_the_accepted_forms(value: Any) -> None:
    with pytest.raises(TraincraftError) as err:
        parse_duration(value, "warmup")
    message = str(err.value)
    assert message.startswith(f"warmup: {value!r} is not a duration")
    assert "500" in message and "'3ep'" in message and "'10%'" in message
