"""Durations: 500 steps, '3ep', '10%'; steps per epoch."""

from __future__ import annotations

import math
from typing import Any

import pytest

from traincraft import durations, schedules
from traincraft.durations import Duration, duration_steps, parse_duration, steps_per_epoch
from traincraft.errors import TraincraftError


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


def test_the_schedules_read_the_same_durations() -> None:
    # one implementation, re-exported, not a copy
    assert schedules.parse_duration is durations.parse_duration
    assert schedules.duration_steps is durations.duration_steps
    assert schedules.Duration is durations.Duration


@pytest.mark.parametrize(
    ("value", "spe", "total", "steps"),
    [
        (500, 11, 1000, 500),
        ("500", 11, 1000, 500),
        ("3ep", 11, 1000, 33),
        ("10%", 11, 250, 25),
        ("100%", 11, 250, 250),
        ("0ep", 11, 250, 0),
        # halves round up, not to even as Python's round() does
        ("2.5%", 10, 100, 3),  # 2.5 steps -> 3 (round() says 2)
        ("0.5%", 10, 100, 1),  # 0.5 -> 1 (round() says 0)
        ("1.5%", 10, 100, 2),  # 1.5 -> 2
        ("0.5ep", 5, 100, 3),  # 2.5 -> 3
        ("0.25ep", 2, 100, 1),  # 0.5 -> 1
        ("12.5%", 10, 20, 3),  # 2.5 -> 3
        ("2.4%", 10, 100, 2),  # below the half: down
        ("2.6%", 10, 100, 3),
    ],
)
def test_duration_steps_exact(value: Any, spe: int, total: int, steps: int) -> None:
    assert duration_steps(value, "at", steps_per_epoch=spe, total_steps=total) == steps


def test_bad_duration_message_is_exact() -> None:
    with pytest.raises(TraincraftError) as err:
        duration_steps("3 epochs", "swa.start", steps_per_epoch=10, total_steps=100)
    assert str(err.value) == (
        "swa.start: '3 epochs' is not a duration; write optimizer steps (500), epochs ('3ep') "
        "or a share of the run ('10%')"
    )


def test_epochs_and_shares_need_what_they_are_measured_against() -> None:
    with pytest.raises(TraincraftError, match="is given in epochs but the number of steps per "
                       "epoch is unknown"):
        duration_steps("2ep", "unfreeze[0].at", steps_per_epoch=0, total_steps=100)
    with pytest.raises(TraincraftError, match="needs the run's length, which is unknown"):
        duration_steps("10%", "swa.start", steps_per_epoch=10, total_steps=0)
    # steps need neither
    assert duration_steps(7, "swa.anneal", steps_per_epoch=0, total_steps=0) == 7


@pytest.mark.parametrize(
    ("num_batches", "accumulate", "steps"),
    [(32, 1, 32), (32, 3, 11), (33, 3, 11), (34, 3, 12), (1, 4, 1), (0, 2, 0), (10**18 + 1, 2, 5 * 10**17 + 1)],
)
def test_steps_per_epoch_is_the_ceiling(num_batches: int, accumulate: int, steps: int) -> None:
    # an epoch's last, short accumulation window still ends in an optimizer step
    assert steps_per_epoch(num_batches, accumulate) == steps
    if num_batches < 2**53:
        assert steps == math.ceil(num_batches / accumulate)
