"""Warm-up and cool-down: what every schedule may be wrapped in.

A warm-up rises to the schedule's first value over its first steps; a cool-down goes from the
schedule's value where it starts to ``end_factor`` of the base LR over the run's last steps. Both
are counted in optimizer steps whatever the schedule's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from traincraft.durations import Run, parse_duration
from traincraft.errors import TraincraftError, did_you_mean, expect_choice, expect_number
from traincraft.schedules.functions import decay_shape


@dataclass(frozen=True)
class Ramp:
    """A warm-up (``factor``: start factor) or cool-down (``factor``: end factor) in steps."""

    steps: int
    kind: str
    factor: float


WARMUP_KINDS = ("linear", "exponential", "constant")
COOLDOWN_KINDS = ("linear", "cosine")


def warm_factor(ramp: Ramp, t: int) -> float:
    if ramp.kind == "linear":
        # straight line from start_factor (t = 0) to 1 (t = steps), as torch's LinearLR
        return ramp.factor + (1.0 - ramp.factor) * t / ramp.steps
    if ramp.kind == "exponential":
        # geometric: the same ratio every step, from start_factor to 1
        return ramp.factor ** (1.0 - t / ramp.steps)
    return ramp.factor  # constant: start_factor until the warm-up ends


def cool_value(ramp: Ramp, dt: int, start: float, end: float) -> float:
    q = min(1.0, dt / ramp.steps)
    return start + (end - start) * decay_shape(ramp.kind, q)


def parse_ramp(raw: Any, what: str, run: Run) -> Ramp | None:
    """A warm-up or cool-down from its short form (a duration) or its dict form."""
    if raw is None or raw is False:
        return None
    where = f"{run.label} {what}"
    if isinstance(raw, Mapping):
        factor_key = "start_factor" if what == "warmup" else "end_factor"
        allowed = ("duration", "kind", factor_key)
        for key in raw:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed) or f"; its keys are: {', '.join(allowed)}"
                raise TraincraftError(f"{where} has no key {key!r}{hint}")
        if "duration" not in raw:
            raise TraincraftError(f"{where} needs a duration, e.g. {{duration: '5%'}}")
        duration, kind = raw["duration"], raw.get("kind", "linear")
        factor = raw.get(factor_key, 0.01 if what == "warmup" else 0.0)
    else:
        duration, kind, factor = raw, "linear", 0.01 if what == "warmup" else 0.0
    kinds = WARMUP_KINDS if what == "warmup" else COOLDOWN_KINDS
    kind = expect_choice(f"{where} kind", kind, kinds)
    factor = expect_number(factor, f"{where} {'start_factor' if what == 'warmup' else 'end_factor'}")
    if what == "warmup" and not (0.0 < factor <= 1.0 or (factor == 0.0 and kind != "exponential")):
        raise TraincraftError(
            f"{where} start_factor must be in (0, 1] (0 allowed unless kind is exponential), "
            f"got {factor}"
        )
    if factor < 0:
        raise TraincraftError(f"{where} end_factor must be >= 0, got {factor}")
    steps = run.steps(parse_duration(duration, f"{where} duration"), f"{what} duration")
    return Ramp(steps, kind, factor) if steps > 0 else None
