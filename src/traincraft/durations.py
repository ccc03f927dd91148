"""Durations and steps per epoch, in one place.

A duration is written ``500`` (optimizer steps), ``"3ep"`` (epochs) or ``"10%"`` (a share of the
run). Schedules, warm-ups, unfreezing and SWA all read them here, and all turn them into optimizer
steps the same way: epochs times :func:`steps_per_epoch`, shares of the run's steps, rounded half
up to a whole step.

Example:
    >>> from traincraft.durations import duration_steps, parse_duration, steps_per_epoch
    >>> parse_duration("3ep")
    Duration(value=3.0, unit='epoch')
    >>> spe = steps_per_epoch(32, accumulate=3)       # 32 batches, 3 per optimizer step
    >>> spe, duration_steps("2ep", "warmup", steps_per_epoch=spe, total_steps=10 * spe)
    (11, 22)
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from traincraft.errors import TraincraftError

__all__ = ["Duration", "Run", "duration_steps", "parse_duration", "round_half_up", "steps_per_epoch"]


def steps_per_epoch(num_batches: int, accumulate: int) -> int:
    """Optimizer steps in one epoch: ``ceil(num_batches / accumulate)``.

    An epoch's last accumulation window may be short; it still ends in an optimizer step. Under
    several processes each process counts its own batches (its shard of the data), so this is
    the steps of one process, which all processes take together.

    Example:
        >>> steps_per_epoch(32, 3)
        11
    """
    return -(-int(num_batches) // int(accumulate))  # integer ceiling: exact for any size


def steps_for_samples(samples: int, *, batch_size: int, accumulate: int) -> int:
    """Optimizer steps in one epoch over ``samples`` in-memory samples (one process): what a
    recipe's run will take, known before its trainer is built.

    Example:
        >>> steps_for_samples(1000, batch_size=32, accumulate=2)
        16
    """
    return steps_per_epoch(-(-int(samples) // int(batch_size)), accumulate)


@dataclass(frozen=True)
class Duration:
    """A length as the user wrote it: ``value`` optimizer steps, epochs or percent of the run."""

    value: float
    unit: str  # "step", "epoch" or "share"


_DURATION_TEXT = re.compile(r"^(\d+(?:\.\d+)?)(ep|%)$")
_DURATION_FORMS = "optimizer steps (500), epochs ('3ep') or a share of the run ('10%')"


def parse_duration(value: Any, where: str = "duration") -> Duration:
    """Read ``500`` (optimizer steps), ``"3ep"`` (epochs) or ``"10%"`` (a share of the run).

    Raises:
        TraincraftError: for anything else, naming the accepted forms.

    Example:
        >>> parse_duration("3ep")
        Duration(value=3.0, unit='epoch')
        >>> parse_duration("10%"), parse_duration(500)
        (Duration(value=10.0, unit='share'), Duration(value=500.0, unit='step'))
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value >= 0 and float(value).is_integer():
            return Duration(float(value), "step")
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return Duration(float(text), "step")
        match = _DURATION_TEXT.match(text)
        if match:
            unit = "epoch" if match.group(2) == "ep" else "share"
            return Duration(float(match.group(1)), unit)
    raise TraincraftError(f"{where}: {value!r} is not a duration; write {_DURATION_FORMS}")


def duration_steps(value: Any, where: str, *, steps_per_epoch: int, total_steps: int) -> int:
    """A duration (``500``, ``"3ep"``, ``"10%"``) in optimizer steps of a run.

    Example:
        >>> duration_steps("2ep", "unfreeze[0].at", steps_per_epoch=50, total_steps=500)
        100
    """
    run = Run(steps_per_epoch=steps_per_epoch, total=total_steps, interval="step", label=where)
    return run.steps(parse_duration(value, where), where)


def round_half_up(x: float) -> int:
    """``x`` to a whole step. Half up, not Python's half-to-even, so 2.5 steps is 3 whatever the
    neighbours."""
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Run:
    """What durations are measured against: the run's steps, its epochs, the schedule's clock."""

    steps_per_epoch: int
    total: int  # optimizer steps in the run; 0 when unknown
    interval: str  # "step" or "epoch": the schedule's clock
    label: str

    def steps(self, d: Duration, where: str) -> int:
        """The duration in optimizer steps (rounded to a whole step)."""
        if d.unit == "step":
            return int(d.value)
        if d.unit == "epoch":
            return round_half_up(d.value * self._per_epoch(where))
        return round_half_up(d.value / 100 * self._total(where))

    def clock(self, d: Duration, where: str) -> float:
        """The duration on the schedule's clock: steps, or epochs (maybe fractional)."""
        if self.interval == "step":
            return self.steps(d, where)
        if d.unit == "epoch":
            return _tidy(d.value)
        if d.unit == "step":
            return _tidy(d.value / self._per_epoch(where))
        return _tidy(d.value / 100 * self._total(where) / self._per_epoch(where))

    def steps_to_clock(self, steps: int) -> float:
        if self.interval == "step":
            return steps
        return _tidy(steps / self._per_epoch("a schedule counted in epochs"))

    def _per_epoch(self, where: str) -> int:
        if self.steps_per_epoch <= 0:
            raise TraincraftError(
                f"{self.label}: {where} is given in epochs but the number of steps per epoch is "
                "unknown (data without a length); give it in optimizer steps"
            )
        return self.steps_per_epoch

    def _total(self, where: str) -> int:
        if self.total <= 0:
            raise TraincraftError(
                f"{self.label}: {where} needs the run's length, which is unknown (data without a "
                "length); give it in optimizer steps or set max_steps"
            )
        return self.total


def _tidy(x: float) -> float:
    """Whole numbers as ints, so an epoch clock compares and prints like torch's."""
    return int(x) if float(x).is_integer() else float(x)
