"""Building a schedule: a spec resolved against a run, then handed to a :class:`Schedule`.

:func:`build` looks the spec's name up in :data:`~traincraft.schedules.table.SCHEDULES` and reads
everything else from the schedule's row: its defaults, which arguments are durations (put on the
schedule's clock here), the defaults taken from the run, its check, which arguments take a value
per parameter group, and whether it cycles the momentum. The warm-up and cool-down around it
come from :mod:`~traincraft.schedules.ramps`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from traincraft.durations import Run, parse_duration
from traincraft.errors import TraincraftError, did_you_mean, expect_choice, expect_number
from traincraft.registry import split_spec
from traincraft.schedules.arguments import function
from traincraft.schedules.ramps import Ramp, parse_ramp
from traincraft.schedules.schedule import Schedule
from traincraft.schedules.table import SCHEDULES, WRAPPER_KEYS, ScheduleInfo
from traincraft.schedules.torch_schedule import TorchSchedule, build_torch

ScheduleSpec = str | Mapping[str, Any] | Callable[..., Any] | None


@dataclass
class Plan:
    """A spec resolved against a run: everything the Schedule needs, nothing to look up later."""

    info: ScheduleInfo  # the schedule's row
    momentum_fn: Callable[..., float] | None  # the row's, when its momentum is cycled
    args: list[dict[str, Any]]  # one dict per parameter group
    run: Run
    warmup: Ramp | None
    cooldown: Ramp | None
    span: float  # the schedule's own length on its clock (the run minus warm-up and cool-down)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fn(self) -> Callable[..., float]:
        return self.info.fn


def build(
    spec: ScheduleSpec,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    total_steps: int,
    schedule_interval: str | None = None,
) -> Schedule | TorchSchedule:
    """A schedule for ``optimizer`` over a run of ``total_steps`` optimizer steps.

    Args:
        spec: a name (``"cosine"``), a dict (``{"name": "cosine", "warmup": "5%", "eta_min":
            1e-6}``), None (constant), or a callable ``optimizer -> torch LRScheduler`` for a
            scheduler of your own.
        optimizer: its groups' ``initial_lr`` (else ``lr``) are the base LRs.
        steps_per_epoch: optimizer steps in one epoch (what ``"3ep"`` means); 0 if unknown.
        total_steps: optimizer steps in the run (what ``"10%"`` and the defaults of ``T_max``
            and ``total`` mean); 0 if unknown.
        schedule_interval: ``"step"`` or ``"epoch"``: when a callable's torch scheduler steps
            (default ``"epoch"``), and the clock of a named schedule whose spec has no
            ``interval`` (default: epochs when every duration is given in epochs, else steps).

    Returns:
        A :class:`Schedule` (a :class:`TorchSchedule` for a callable).

    Raises:
        TraincraftError: one line for an unknown name or argument, a bad duration, milestones
            out of order, a warm-up longer than the run, a ``total`` that does not fit the run.

    Example:
        >>> s = build("cosine", optimizer, steps_per_epoch=50, total_steps=500)
        >>> s.start(); s.lrs()
        [0.001]
    """
    if schedule_interval is not None:
        schedule_interval = expect_choice("schedule_interval", schedule_interval, ("step", "epoch"))
    if spec is not None and callable(spec) and not isinstance(spec, (str, Mapping)):
        return build_torch(spec, optimizer, schedule_interval or "epoch")
    name, kwargs = split_spec("constant" if spec is None else spec, "schedule")
    info = SCHEDULES.lookup(name)
    plan = _plan(info, kwargs, optimizer, int(steps_per_epoch), int(total_steps), schedule_interval)
    return Schedule(plan, optimizer)


def _plan(
    info: ScheduleInfo,
    kwargs: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    default_interval: str | None,
) -> Plan:
    label = f"schedule {info.name!r}"
    raw = {**info.defaults, **kwargs}
    warmup_raw, cooldown_raw = raw.pop("warmup", None), _pop_cooldown(info, raw, label)
    interval = raw.pop("interval", None) or default_interval or _inferred_interval(info, kwargs)
    interval = expect_choice(f"{label} interval", interval, ("step", "epoch"))
    parameters = keyword_arguments(info.fn)
    _check_keys(label, raw, parameters)
    missing = [key for key in parameters if key not in raw]
    if missing:
        raise TraincraftError(f"{label} needs {', '.join(missing)}")

    run = Run(steps_per_epoch, max(int(total_steps), 0), interval, label)
    warmup = parse_ramp(warmup_raw, "warmup", run)
    cooldown = parse_ramp(cooldown_raw, "cooldown", run)
    schedule_steps = _schedule_steps(run, warmup, cooldown)
    span = run.steps_to_clock(schedule_steps) if schedule_steps else 0
    args = _resolve_arguments(info, raw, run, span, warmup)
    groups = _per_group(label, args, info, optimizer)
    cycles = info.momentum_fn is not None and bool(args.get("cycle_momentum"))
    if cycles:
        _check_momentum(label, optimizer)
    return Plan(
        info=info,
        momentum_fn=info.momentum_fn if cycles else None,
        args=groups,
        run=run,
        warmup=warmup,
        cooldown=cooldown,
        span=span,
    )


def _pop_cooldown(info: ScheduleInfo, raw: dict[str, Any], label: str) -> Any:
    """The wrapper's cool-down. For a schedule with a ``cooldown`` of its own (plateau: epochs to
    wait after a cut), the end-of-run cool-down must be written as a dict."""
    if not info.own_cooldown:
        return raw.pop("cooldown", None)
    value = raw.get("cooldown")
    if isinstance(value, Mapping):
        raw["cooldown"] = info.defaults["cooldown"]
        return value
    if isinstance(value, str):
        raise TraincraftError(
            f"{label}: cooldown is {info.own_cooldown}; "
            f"for a cool-down at the end of the run write cooldown: {{duration: {value!r}}}"
        )
    return None


def _inferred_interval(info: ScheduleInfo, given: Mapping[str, Any]) -> str:
    """Epochs when every duration the user gave is in epochs ("3ep"), else optimizer steps."""
    units = set()
    for key in (*info.durations, *info.duration_lists):
        value = given.get(key)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            try:
                units.add(parse_duration(item, key).unit)
            except TraincraftError:
                units.add("invalid")  # reported with its schedule's name when resolved
    return "epoch" if units == {"epoch"} else "step"


def keyword_arguments(fn: Callable[..., Any]) -> list[str]:
    """A schedule function's arguments: its keyword-only parameters."""
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def _check_keys(label: str, raw: Mapping[str, Any], parameters: list[str]) -> None:
    for key in raw:
        if key not in parameters:
            choices = [*parameters, *WRAPPER_KEYS]
            hint = did_you_mean(str(key), choices) or f"; its arguments are: {', '.join(choices)}"
            raise TraincraftError(f"{label} has no argument {key!r}{hint}")


def _schedule_steps(run: Run, warmup: Ramp | None, cooldown: Ramp | None) -> int:
    """Optimizer steps left to the schedule itself; checks that warm-up and cool-down fit."""
    w = warmup.steps if warmup else 0
    c = cooldown.steps if cooldown else 0
    if run.total <= 0:
        if cooldown:
            raise TraincraftError(
                f"{run.label}: a cool-down needs the run's length, which is unknown; set max_steps"
            )
        return 0
    if w >= run.total:
        raise TraincraftError(
            f"{run.label}: the warm-up ({w} steps) is as long as the run or longer ({run.total} "
            "steps); shorten the warm-up"
        )
    if w + c >= run.total:
        raise TraincraftError(
            f"{run.label}: warm-up ({w} steps) and cool-down ({c} steps) leave none of the run's "
            f"{run.total} steps to the schedule; shorten them"
        )
    return run.total - w - c


def _resolve_arguments(
    info: ScheduleInfo, raw: dict[str, Any], run: Run, span: float, warmup: Ramp | None
) -> dict[str, Any]:
    """Durations on the schedule's clock, run-length defaults filled in, values checked."""
    label = run.label
    args = dict(raw)
    for key in info.durations:
        if args.get(key) is not None:
            args[key] = run.clock(parse_duration(args[key], f"{label} {key}"), key)
    for key in info.duration_lists:
        if args.get(key) is not None:
            args[key] = _duration_list(args[key], key, run)
    for key, default in info.run_defaults.items():
        if args.get(key) is None:
            args[key] = default(run, span, warmup.steps if warmup else 0, key)
    if info.check is not None:
        unit = "steps" if run.interval == "step" else "epochs"
        info.check(label, args, span if run.total > 0 else None, unit)
    return args


def _duration_list(value: Any, key: str, run: Run) -> list[float]:
    """An increasing list of durations (milestones) on the schedule's clock."""
    if not isinstance(value, (list, tuple)) or not value:
        raise TraincraftError(
            f"{run.label}: {key} must be a list of durations, e.g. ['30ep', '60ep'], "
            f"got {value!r}"
        )
    resolved = [run.clock(parse_duration(v, f"{run.label} {key}"), key) for v in value]
    for before, after, raw_before, raw_after in zip(resolved, resolved[1:], value, value[1:]):
        if after <= before:
            raise TraincraftError(
                f"{run.label}: {key} must increase, but {raw_after!r} ({after} "
                f"{run.interval}s) comes after {raw_before!r} ({before}); sort them"
            )
    return resolved


def _per_group(
    label: str, args: dict[str, Any], info: ScheduleInfo, optimizer: torch.optim.Optimizer
) -> list[dict[str, Any]]:
    """One argument dict per parameter group: lists of per-group values split, as torch does."""
    n = len(optimizer.param_groups)
    groups: list[dict[str, Any]] = [dict(args) for _ in range(n)]
    for key in info.per_group:
        value = args[key]
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise TraincraftError(
                    f"{label}: {key} has {len(value)} values but the optimizer has {n} parameter "
                    "groups; give one value per group or a single value for all"
                )
            for group, item in zip(groups, value):
                group[key] = item
    for group in groups:
        _check_group_values(label, group, info.per_group)
    return groups


# Per-group arguments that are functions of the step; the others are numbers (or None).
_FUNCTION_VALUED = ("lr_lambda",)


def _check_group_values(label: str, args: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in _FUNCTION_VALUED:
            args[key] = function(args[key], f"{label} {key}")
        elif args[key] is not None:
            args[key] = expect_number(args[key], f"{label} {key}")


def _check_momentum(label: str, optimizer: torch.optim.Optimizer) -> None:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise TraincraftError(
            f"{label} cycles the momentum but {type(optimizer).__name__} has neither momentum nor "
            "betas; set cycle_momentum: false"
        )
