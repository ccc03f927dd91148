"""The recipe's ``tune:`` section: its settings (:class:`TuneSection`), the searched keys
(:class:`Dimension`) and the time limit.

The recipe schema holds a :class:`TuneSection`, so ``traincraft.recipe`` imports this module: it
imports nothing of the recipe in return (checking the space against the recipe is
:mod:`traincraft.tuning.space`).

Example:
    >>> section = TuneSection(space={"optimizer.lr": {"loguniform": [1e-4, 1e-2]}})
    >>> section.dimensions()["optimizer.lr"].kind, section.direction_name()
    ('loguniform', 'minimize')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from traincraft.callbacks.monitor import infer_mode
from traincraft.errors import TraincraftError, did_you_mean
from traincraft.recipe_yaml import whole_floats_as_ints
from traincraft.registry import split_spec
from traincraft.tuning.samplers import PRUNERS, SAMPLERS

__all__ = ["KINDS", "Dimension", "TuneSection", "TuneSectionError", "parse_time_limit"]


KINDS = ("loguniform", "uniform", "int", "choice")


class TuneSectionError(TraincraftError, ValueError):
    """A tune section that cannot be used as it is (its direction cannot be inferred).

    This module may not import :class:`~traincraft.recipe.RecipeError` (the recipe imports this
    module); :func:`traincraft.tune` reports this error as a ``RecipeError``.
    """


@dataclass(frozen=True)
class Dimension:
    """One searched recipe key: a range or a list of choices.

    ``labels`` are what Optuna stores for a choice. Optuna accepts only plain scalars as
    categorical values, so when a choice is a list or a mapping (``hidden_sizes: [[32], [64,
    64]]``) every choice is stored as its JSON text and turned back into the value for the trial.

    Example:
        >>> d = Dimension.parse("model.hidden_sizes", {"choice": [[32], [64, 64]]})
        >>> d.labels, d.value("[64, 64]")
        (('[32]', '[64, 64]'), [64, 64])
    """

    key: str
    kind: str
    low: float = 0.0  # ranges only; whole numbers for int
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()
    labels: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, key: str, spec: Any) -> Dimension:
        """``{loguniform: [a, b]}``, ``{uniform: [a, b], step: s}``, ``{int: [a, b], step: s}``
        or ``{choice: [...]}``; a ValueError names the key and the fix."""
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"{key}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}, got {spec!r}"
            )
        kinds = [k for k in spec if k in KINDS]
        unknown = [k for k in spec if k not in (*KINDS, "step")]
        if unknown:
            hint = (
                did_you_mean(str(unknown[0]), (*KINDS, "step"))
                or f"; use one of {', '.join(KINDS)}"
            )
            raise ValueError(f"{key}: unknown key {unknown[0]!r}{hint}")
        if len(kinds) != 1:
            raise ValueError(f"{key}: give exactly one of {', '.join(KINDS)}, got {list(spec)}")
        kind = kinds[0]
        step = spec.get("step")
        if kind == "choice":
            return cls._choice(key, spec[kind], step)
        low, high = _bounds(key, kind, spec[kind])
        if step is not None:
            low, high, step = _stepped(key, kind, low, high, step)
        return cls(key, kind, low, high, step)

    @classmethod
    def _choice(cls, key: str, choices: Any, step: Any) -> Dimension:
        if step is not None:
            raise ValueError(f"{key}: 'step' applies to uniform and int ranges, not to a choice")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{key}: choice needs a non-empty list of values, got {choices!r}")
        scalar = all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)
        labels = tuple(choices) if scalar else tuple(json.dumps(c, sort_keys=True) for c in choices)
        if len(set(map(json.dumps, labels))) != len(labels):
            raise ValueError(f"{key}: choice lists the same value twice: {choices!r}")
        return cls(key, "choice", choices=tuple(choices), labels=labels)

    def distribution(self) -> Any:
        """The Optuna distribution of this dimension."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.labels)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step or 1))
        log = self.kind == "loguniform"
        return FloatDistribution(float(self.low), float(self.high), log=log, step=self.step)

    def value(self, param: Any) -> Any:
        """The recipe value for what Optuna sampled (a label for a choice)."""
        if self.kind == "choice":
            return _copy(self.choices[self.labels.index(param)])
        return int(param) if self.kind == "int" else float(param)

    def probes(self) -> list[Any]:
        """Values checked before the search starts: every choice, or both ends of the range."""
        if self.kind == "choice":
            return [_copy(c) for c in self.choices]
        return [self.low, self.high]

    def grid(self) -> list[Any]:
        """The values the grid sampler walks through (labels for a choice)."""
        if self.kind == "choice":
            return list(self.labels)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "uniform" and self.step is not None:
            count = round((self.high - self.low) / self.step)
            return [self.low + i * self.step for i in range(count + 1)]
        raise TraincraftError(
            f"tune.space {self.key!r}: the grid sampler needs a finite set of values; give "
            f"{{choice: [...]}}, {{int: [a, b]}} or {{uniform: [a, b], step: s}}"
        )


def _bounds(key: str, kind: str, value: Any) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(_is_number(v) for v in value):
        raise ValueError(f"{key}: {kind} needs [low, high], got {value!r}")
    low, high = value[0], value[1]
    if kind == "int" and not all(isinstance(v, int) or float(v).is_integer() for v in (low, high)):
        raise ValueError(f"{key}: int needs whole numbers [low, high], got {value!r}")
    low, high = (int(low), int(high)) if kind == "int" else (float(low), float(high))
    if not low < high:
        raise ValueError(f"{key}: {kind} needs low < high, got {value!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{key}: loguniform needs 0 < low < high, got {value!r}")
    return low, high


def _stepped(
    key: str, kind: str, low: float | int, high: float | int, step: Any
) -> tuple[float | int, float | int, float | int]:
    if kind == "loguniform":
        raise ValueError(f"{key}: 'step' does not apply to loguniform; use uniform or choice")
    if not _is_number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
        raise ValueError(
            f"{key}: step must be a positive {'whole ' if kind == 'int' else ''}number, "
            f"got {step!r}"
        )
    count = (high - low) / step
    if abs(count - round(count)) > 1e-9:
        raise ValueError(f"{key}: [{low}, {high}] is not a whole number of steps of {step}")
    return low, high, int(step) if kind == "int" else float(step)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _copy(value: Any) -> Any:
    # Choices are shared by every trial: hand each one its own lists and dicts.
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|min|sec|d|h|m|s)?", re.IGNORECASE)
_UNIT_SECONDS = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "min": 60.0,
    "s": 1.0,
    "sec": 1.0,
    "ms": 1e-3,
}


def parse_time_limit(value: str | float | int) -> float:
    """Seconds in ``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"500ms"`` or ``"1h30m"``:
    the study's ``tune.timeout``, wall-clock time (``schedules.parse_duration`` reads training
    durations, in optimizer steps).

    Example:
        >>> parse_time_limit("1h30m"), parse_time_limit(45)
        (5400.0, 45.0)
    """
    if _is_number(value):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        parts = list(_DURATION.finditer(text))
        if not text or not parts or "".join(p.group(0) for p in parts) != text:
            raise ValueError(
                f"timeout {value!r}: expected seconds or a duration such as 90s, 30m, 2h"
            )
        seconds = sum(float(p.group(1)) * _UNIT_SECONDS[(p.group(2) or "s").lower()] for p in parts)
    if not seconds > 0:
        raise ValueError(f"timeout must be > 0, got {value!r}")
    return seconds


# What tune.timeout accepts, for the JSON schema: seconds, or a duration such as "30m" or "1h30m".
_TIMEOUT_INPUT = (
    Annotated[float, Field(gt=0)]
    | Annotated[str, Field(pattern=r"^\s*(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:[mM][iI][nN]|[mM][sS]|[sS][eE][cC]|[dDhHmMsS])?\s*)+$")]
    | None
)


class TuneSection(BaseModel):
    """The recipe's ``tune:`` section.

    Attributes:
        metric: the figure to optimise, any reported one (``val_loss``, ``val_accuracy``, ...).
        direction: ``minimize`` or ``maximize`` (``min``/``max`` accepted); None infers it
            from the metric's name, as early stopping does.
        trials: trials the study should hold in the end (complete, pruned or failed).
        timeout: stop starting new trials after this long: seconds, or ``"90s"``, ``"30m"``,
            ``"2h"``.
        sampler: ``tpe``, ``random``, ``grid``, ``cmaes``, or ``{name: ..., **kwargs}``.
        pruner: ``median``, ``hyperband``, ``none``, or ``{name: ..., **kwargs}``.
        space: ``{dotted.recipe.key: {loguniform: [a, b]} | {uniform: [a, b]} | {int: [a, b]} |
            {choice: [...]}}``; uniform and int ranges may have a ``step``.
        seed: the sampler's seed; None uses the recipe's seed.

    Example:
        >>> TuneSection(metric="val_loss", trials=20,
        ...             space={"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}).direction_name()
        'minimize'
    """

    model_config = ConfigDict(extra="forbid", strict=True)  # numbers are numbers, as in the schema

    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None
    trials: int = Field(20, gt=0)
    timeout: float | None = Field(None, gt=0, description="seconds, or '90s', '30m', '2h'")
    sampler: str | dict[str, Any] = "tpe"
    pruner: str | dict[str, Any] = "median"
    space: dict[str, dict[str, Any]] = Field(min_length=1)
    seed: int | None = None

    @field_validator("direction", mode="before",
                     json_schema_input_type=Literal["minimize", "maximize", "min", "max"] | None)
    @classmethod
    def _direction_alias(cls, value: Any) -> Any:
        aliases = {"min": "minimize", "max": "maximize"}
        return aliases.get(str(value).strip().lower(), value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, values: Any) -> Any:
        return whole_floats_as_ints(cls, values)

    @field_validator("timeout", mode="before", json_schema_input_type=_TIMEOUT_INPUT)
    @classmethod
    def _timeout_seconds(cls, value: Any) -> Any:
        return None if value is None else parse_time_limit(value)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: Any) -> Any:
        SAMPLERS.canonical(split_spec(value, "sampler")[0])
        return value

    @field_validator("pruner")
    @classmethod
    def _known_pruner(cls, value: Any) -> Any:
        PRUNERS.canonical(split_spec(value, "pruner")[0])
        return value

    @field_validator("space", mode="before")
    @classmethod
    def _valid_space(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key, spec in value.items():
                Dimension.parse(str(key), spec)
        return value

    def dimensions(self) -> dict[str, Dimension]:
        """The space, parsed, in the order given."""
        return {key: Dimension.parse(key, spec) for key, spec in self.space.items()}

    def direction_name(self) -> str:
        """``"minimize"`` or ``"maximize"``: given, or inferred from the metric's name.

        Raises:
            TuneSectionError: no direction given, and the metric's name says none.
        """
        if self.direction is not None:
            return self.direction
        try:
            return "minimize" if infer_mode(self.metric) == "min" else "maximize"
        except TraincraftError as err:
            raise TuneSectionError(
                f"tune.metric: {err} (set tune.direction: minimize or maximize)"
            ) from None

    def mode(self) -> str:
        return "min" if self.direction_name() == "minimize" else "max"
