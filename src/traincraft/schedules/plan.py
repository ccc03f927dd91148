"""Learning-rate schedules: closed forms of the optimizer step; warm-up, cool-down, plateau.

Every schedule is a small pure function ``fn(t, initial_lr, **args) -> lr`` of the schedule's
clock ``t`` (optimizer steps, or whole epochs when its durations are given in epochs) and a
parameter group's base learning rate. The functions and their defaults sit in one table,
:data:`SCHEDULES`; :func:`build` resolves a spec against a run's length and returns a
:class:`Schedule`, which writes the values into the optimizer's parameter groups.

The numbers are torch's own: each function is the closed form of its
``torch.optim.lr_scheduler`` counterpart (``_get_closed_form_lr`` where torch has one), so a run
matches torch's scheduler stepped the same way.

Example:
    >>> from traincraft import schedules
    >>> schedule = schedules.build({"name": "cosine", "warmup": "5%", "eta_min": 1e-6}, optimizer,
    ...                            steps_per_epoch=100, total_steps=3000)
    >>> schedule.start()                   # the LR of the first step
    >>> optimizer.step(); schedule.step_end(1)
    >>> rows = schedules.preview("cosine", steps_per_epoch=10, epochs=3)   # no training
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import inspect
import math
import numbers
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from traincraft.callbacks.monitor import Monitor
from traincraft.durations import (
    Duration,
    Run,
    duration_steps,
    parse_duration,
    round_half_up,
)
from traincraft.errors import TraincraftError, did_you_mean, expect_choice, expect_number
from traincraft.registry import Registry, import_object, split_spec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SCHEDULES",
    "Duration",
    "Schedule",
    "TorchSchedule",
    "build",
    "duration_steps",
    "key_points",
    "names",
    "parse_duration",
    "plot",
    "preview",
    "preview_main",
]

ScheduleSpec = str | Mapping[str, Any] | Callable[..., Any] | None


# --------------------------------------------------------------------------- the schedules
#
# Each function takes the schedule's clock ``t`` (an int: optimizer steps, or epochs for a
# schedule counted in epochs), the group's base LR, and its arguments, every one explicit: the
# defaults live in the table below. Formulas and the order of operations are torch's closed forms.


def constant(t: int, initial_lr: float) -> float:
    """The base LR at every step."""
    return initial_lr


def step(t: int, initial_lr: float, *, step_size: float, gamma: float) -> float:
    """``StepLR``: multiplied by ``gamma`` once every ``step_size``."""
    return initial_lr * gamma ** (t // step_size)


def multistep(t: int, initial_lr: float, *, milestones: Sequence[float], gamma: float) -> float:
    """``MultiStepLR``: multiplied by ``gamma`` at each milestone reached (``t >= milestone``)."""
    return initial_lr * gamma ** bisect.bisect_right(milestones, t)


def exponential(t: int, initial_lr: float, *, gamma: float) -> float:
    """``ExponentialLR``: multiplied by ``gamma`` at every tick of the clock."""
    return initial_lr * gamma**t


def cosine(t: int, initial_lr: float, *, T_max: float, eta_min: float) -> float:
    """``CosineAnnealingLR``: half a cosine from the base LR down to ``eta_min`` at ``T_max``.

    Past ``T_max`` the cosine rises again, as torch's does; the default ``T_max`` is the whole run.
    """
    return eta_min + (initial_lr - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


def cosine_restarts(t: int, initial_lr: float, *, T_0: float, T_mult: int, eta_min: float) -> float:
    """``CosineAnnealingWarmRestarts``: cosine periods of ``T_0``, ``T_0·T_mult``, ...; each
    restarts at the base LR."""
    t_cur, t_i = _restart_position(t, T_0, T_mult)
    return eta_min + (initial_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def _restart_position(t: float, t_0: float, t_mult: int) -> tuple[float, float]:
    """(time since the last restart, length of the current period), by counting periods.

    Counting is exact where torch's closed form uses ``log``, which can put a step that lies
    exactly on a restart into the wrong period.
    """
    if t_mult == 1:
        return t % t_0, t_0
    t_cur, t_i = t, t_0
    while t_cur >= t_i:  # period lengths grow geometrically: a few dozen turns at most
        t_cur -= t_i
        t_i *= t_mult
    return t_cur, t_i


def onecycle(
    t: int,
    initial_lr: float,
    *,
    total: float,
    max_lr: float | None,
    pct_start: float,
    anneal_strategy: str,
    div_factor: float,
    final_div_factor: float,
    three_phase: bool,
    cycle_momentum: bool,
    base_momentum: float,
    max_momentum: float,
) -> float:
    """``OneCycleLR``: up from ``max_lr/div_factor`` to ``max_lr`` over ``pct_start`` of the run,
    then down to ``max_lr/div_factor/final_div_factor`` (three phases: back to the start value
    first). ``max_lr=None`` peaks at the group's base LR. The momentum arguments are read by
    :func:`onecycle_momentum`."""
    peak = initial_lr if max_lr is None else max_lr
    start = peak / div_factor
    levels = {"initial_lr": start, "max_lr": peak, "min_lr": start / final_div_factor}
    phase, pct = _onecycle_phase(t, total, pct_start, three_phase)
    lr_from, lr_to = _ONECYCLE_LR[three_phase][phase]
    return _anneal(anneal_strategy, levels[lr_from], levels[lr_to], pct)


def onecycle_momentum(t: int, initial_lr: float, **args: Any) -> float:
    """The momentum (or Adam's beta1) of ``OneCycleLR``: the mirror image of its LR."""
    phase, pct = _onecycle_phase(t, args["total"], args["pct_start"], args["three_phase"])
    levels = {"max": args["max_momentum"], "base": args["base_momentum"]}
    m_from, m_to = _ONECYCLE_MOMENTUM[args["three_phase"]][phase]
    return _anneal(args["anneal_strategy"], levels[m_from], levels[m_to], pct)


# (start, end) of each phase, as torch's OneCycleLR lists them.
_ONECYCLE_LR = {
    False: [("initial_lr", "max_lr"), ("max_lr", "min_lr")],
    True: [("initial_lr", "max_lr"), ("max_lr", "initial_lr"), ("initial_lr", "min_lr")],
}
_ONECYCLE_MOMENTUM = {
    False: [("max", "base"), ("base", "max")],
    True: [("max", "base"), ("base", "max"), ("max", "max")],
}


def _onecycle_ends(total: float, pct_start: float, three_phase: bool) -> list[float]:
    """The last step of each phase, exactly as torch computes them."""
    if three_phase:
        return [float(pct_start * total) - 1, float(2 * pct_start * total) - 2, total - 1]
    return [float(pct_start * total) - 1, total - 1]


def _onecycle_phase(
    t: float, total: float, pct_start: float, three_phase: bool
) -> tuple[int, float]:
    ends = _onecycle_ends(total, pct_start, three_phase)
    start = 0.0
    for i, end in enumerate(ends):
        # The last phase also takes the step after the run's last one (t == total).
        if t <= end or i == len(ends) - 1:
            return i, (t - start) / (end - start)
        start = end
    raise AssertionError("unreachable")


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    if strategy == "cos":
        # cosine from start (pct 0) to end (pct 1)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    # straight line from start to end
    return (end - start) * pct + start


def cyclic(
    t: int,
    initial_lr: float,
    *,
    max_lr: float,
    base_lr: float | None,
    step_size_up: float,
    step_size_down: float | None,
    mode: str,
    gamma: float,
    cycle_momentum: bool,
    base_momentum: float,
    max_momentum: float,
) -> float:
    """``CyclicLR``: triangles between ``base_lr`` and ``max_lr`` (``base_lr=None``: the group's
    base LR), scaled per cycle (``triangular2``) or per step (``exp_range``)."""
    low = initial_lr if base_lr is None else base_lr
    scale, amplitude = _cyclic_position(t, step_size_up, step_size_down, mode, gamma)
    return low + (max_lr - low) * scale * amplitude


def cyclic_momentum(t: int, initial_lr: float, **args: Any) -> float:
    """The momentum (or Adam's beta1) of ``CyclicLR``: high when the LR is low."""
    scale, amplitude = _cyclic_position(
        t, args["step_size_up"], args["step_size_down"], args["mode"], args["gamma"]
    )
    return args["max_momentum"] - (args["max_momentum"] - args["base_momentum"]) * scale * amplitude


def _cyclic_position(
    t: float, up: float, down: float | None, mode: str, gamma: float
) -> tuple[float, float]:
    """(position on the triangle in [0, 1], the amplitude's scale) as torch's CyclicLR has them."""
    up = float(up)
    total_size = up + (float(down) if down is not None else up)
    step_ratio = up / total_size
    cycle = math.floor(1 + t / total_size)
    x = 1.0 + t / total_size - cycle
    # rising edge, then falling edge
    scale = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
    if mode == "triangular":
        amplitude = 1.0
    elif mode == "triangular2":
        amplitude = 1 / (2.0 ** (cycle - 1))  # halves every cycle
    else:
        amplitude = gamma**t  # exp_range: decays every step
    return scale, amplitude


def polynomial(t: int, initial_lr: float, *, total: float, power: float) -> float:
    """``PolynomialLR``: ``(1 - t/total) ** power`` of the base LR, then 0."""
    return initial_lr * (1.0 - min(total, t) / total) ** power


def linear(
    t: int, initial_lr: float, *, total: float, start_factor: float, end_factor: float
) -> float:
    """``LinearLR``: the factor goes in a straight line from ``start_factor`` to ``end_factor``
    over ``total``, then stays."""
    return initial_lr * (start_factor + (end_factor - start_factor) * min(total, t) / total)


def inverse_sqrt(t: int, initial_lr: float, *, timescale: float) -> float:
    """``1 / sqrt(1 + t/timescale)`` of the base LR (the Transformer's decay after warm-up)."""
    return initial_lr / math.sqrt(1.0 + t / timescale)


def warmup_stable_decay(
    t: int, initial_lr: float, *, total: float, decay: float, decay_kind: str, end_factor: float
) -> float:
    """The base LR until the last ``decay`` of the run, then down to ``end_factor`` of it."""
    decay_start = total - decay
    if t < decay_start:
        return initial_lr  # stable phase
    # decay phase: q goes 0 -> 1
    q = min(1.0, (t - decay_start) / decay)
    return initial_lr * (1.0 - (1.0 - end_factor) * _shape(decay_kind, q))


def _shape(kind: str, q: float) -> float:
    """How far a decay has gone (0 -> 1) at fraction ``q`` of its length."""
    if kind == "cosine":
        return (1 - math.cos(math.pi * q)) / 2
    if kind == "sqrt":
        return math.sqrt(q)  # "1 - sqrt" decay: fast at first
    return q  # linear


def lambda_(t: int, initial_lr: float, *, lr_lambda: Callable[[int], float]) -> float:
    """``LambdaLR``: the base LR times ``lr_lambda(t)`` (a number, or a 0-d tensor taken as its
    value: a tensor kept as the LR would be filled in place later, and change every record of it)."""
    factor = lr_lambda(t)
    try:
        return initial_lr * float(factor)
    except (TypeError, ValueError, RuntimeError):
        raise TraincraftError(f"schedule lambda: lr_lambda({t}) returned {factor!r}; it must return a number") from None


def multiplicative(t: int, initial_lr: float, *, lr_lambda: Callable[[int], float]) -> float:
    """``MultiplicativeLR``: the base LR times ``lr_lambda(k)`` for every k = 1..t (torch's
    ``lr = lr_prev * lr_lambda(epoch)``). The product is carried from one step to the next,
    and recomputed from 0 when ``t`` jumps (a preview, a resume)."""
    try:
        last_t, product = _PRODUCTS.get(lr_lambda, (0, 1.0))
    except TypeError:  # not weakly referable (a builtin): no carrying over
        last_t, product = 0, 1.0
    if t < last_t:
        last_t, product = 0, 1.0
    for k in range(last_t + 1, t + 1):
        factor = lr_lambda(k)
        try:
            product *= float(factor)
        except (TypeError, ValueError, RuntimeError):
            raise TraincraftError(
                f"schedule multiplicative: lr_lambda({k}) returned {factor!r}; it must return a number"
            ) from None
    with contextlib.suppress(TypeError):
        _PRODUCTS[lr_lambda] = (t, product)
    return initial_lr * product


_PRODUCTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # lr_lambda -> (t, Π factors to t)


def plateau(
    t: int,
    initial_lr: float,
    *,
    monitor: str,
    mode: str | None,
    factor: float,
    patience: int,
    threshold: float,
    threshold_mode: str,
    cooldown: int,
    min_lr: float,
    eps: float,
    restore_best_on_reduce: bool,
) -> float:
    """``ReduceLROnPlateau`` before any cut: the base LR. The cuts depend on the monitored figure,
    so they are the state of the :class:`Schedule` (see :meth:`Schedule.epoch_end`)."""
    return initial_lr


SCHEDULES = Registry("schedule")
SCHEDULES.add("constant", constant, aliases=["none"], doc="the base LR")
SCHEDULES.add("step", step, aliases=["steplr"], doc="torch StepLR", gamma=0.1)
SCHEDULES.add(
    "multistep",
    multistep,
    aliases=["multisteplr", "multi_step"],
    doc="torch MultiStepLR",
    gamma=0.1,
)
SCHEDULES.add("exponential", exponential, aliases=["exponentiallr"], doc="torch ExponentialLR")
SCHEDULES.add(
    "cosine",
    cosine,
    aliases=["cosineannealinglr", "cosine_annealing"],
    doc="torch CosineAnnealingLR",
    T_max=None,
    eta_min=0.0,
)
SCHEDULES.add(
    "cosine_restarts",
    cosine_restarts,
    aliases=["cosineannealingwarmrestarts", "sgdr"],
    doc="torch CosineAnnealingWarmRestarts",
    T_mult=1,
    eta_min=0.0,
)
SCHEDULES.add(
    "onecycle",
    onecycle,
    aliases=["onecyclelr", "one_cycle"],
    doc="torch OneCycleLR",
    total=None,
    max_lr=None,
    pct_start=0.3,
    anneal_strategy="cos",
    div_factor=25.0,
    final_div_factor=1e4,
    three_phase=False,
    cycle_momentum=True,
    base_momentum=0.85,
    max_momentum=0.95,
)
SCHEDULES.add(
    "cyclic",
    cyclic,
    aliases=["cycliclr"],
    doc="torch CyclicLR",
    base_lr=None,
    step_size_up=2000,
    step_size_down=None,
    mode="triangular",
    gamma=1.0,
    cycle_momentum=True,
    base_momentum=0.8,
    max_momentum=0.9,
)
SCHEDULES.add(
    "polynomial",
    polynomial,
    aliases=["polynomiallr", "poly"],
    doc="torch PolynomialLR",
    total=None,
    power=1.0,
)
SCHEDULES.add(
    "linear",
    linear,
    aliases=["linearlr"],
    doc="torch LinearLR",
    total=None,
    start_factor=1.0,
    end_factor=0.0,
)
SCHEDULES.add("inverse_sqrt", inverse_sqrt, aliases=["rsqrt"], doc="1/sqrt decay", timescale=None)
SCHEDULES.add(
    "warmup_stable_decay",
    warmup_stable_decay,
    aliases=["wsd"],
    doc="warm-up, stable, decay",
    warmup="5%",
    total=None,
    decay="20%",
    decay_kind="linear",
    end_factor=0.0,
)
SCHEDULES.add("lambda", lambda_, aliases=["lambdalr"], doc="torch LambdaLR")
SCHEDULES.add("multiplicative", multiplicative, aliases=["multiplicativelr"], doc="torch MultiplicativeLR")
SCHEDULES.add(
    "plateau",
    plateau,
    aliases=["reducelronplateau", "reduce_on_plateau"],
    doc="torch ReduceLROnPlateau",
    monitor="val_loss",
    mode=None,
    factor=0.1,
    patience=10,
    threshold=1e-4,
    threshold_mode="rel",
    cooldown=0,
    min_lr=0.0,
    eps=1e-8,
    restore_best_on_reduce=False,
)

# Momentum companions of the schedules that cycle it.
_MOMENTUM: dict[str, Callable[..., float]] = {
    "onecycle": onecycle_momentum,
    "cyclic": cyclic_momentum,
}

# Arguments that are durations (steps, "3ep" or "10%"), per schedule.
_DURATIONS: dict[str, tuple[str, ...]] = {
    "step": ("step_size",),
    "multistep": ("milestones",),
    "cosine": ("T_max",),
    "cosine_restarts": ("T_0",),
    "onecycle": ("total",),
    "cyclic": ("step_size_up", "step_size_down"),
    "polynomial": ("total",),
    "linear": ("total",),
    "inverse_sqrt": ("timescale",),
    "warmup_stable_decay": ("total", "decay"),
}

# Absolute values that torch accepts as one number for every group or one per group.
# Per-group arguments that are learning rates: scaled with the base LR of a group added mid-run.
_LR_VALUED = frozenset({"max_lr", "base_lr", "eta_min", "min_lr"})
_PER_GROUP = frozenset(
    {"max_lr", "base_lr", "eta_min", "min_lr", "base_momentum", "max_momentum", "lr_lambda"}
)

# Keys every schedule takes besides its own arguments.
_WRAPPER_KEYS = ("warmup", "cooldown", "interval")


def names() -> list[str]:
    """The schedule names, sorted (aliases such as ``"steplr"`` also work)."""
    return SCHEDULES.names()


# --------------------------------------------------------------------------- warm-up, cool-down


@dataclass(frozen=True)
class _Ramp:
    """A warm-up (``factor``: start factor) or cool-down (``factor``: end factor) in steps."""

    steps: int
    kind: str
    factor: float


_WARMUP_KINDS = ("linear", "exponential", "constant")
_COOLDOWN_KINDS = ("linear", "cosine")


def _warm_factor(ramp: _Ramp, t: int) -> float:
    if ramp.kind == "linear":
        # straight line from start_factor (t = 0) to 1 (t = steps), as torch's LinearLR
        return ramp.factor + (1.0 - ramp.factor) * t / ramp.steps
    if ramp.kind == "exponential":
        # geometric: the same ratio every step, from start_factor to 1
        return ramp.factor ** (1.0 - t / ramp.steps)
    return ramp.factor  # constant: start_factor until the warm-up ends


def _cool_value(ramp: _Ramp, dt: int, start: float, end: float) -> float:
    q = min(1.0, dt / ramp.steps)
    return start + (end - start) * _shape(ramp.kind, q)


def _ramp(raw: Any, what: str, run: Run) -> _Ramp | None:
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
    kinds = _WARMUP_KINDS if what == "warmup" else _COOLDOWN_KINDS
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
    return _Ramp(steps, kind, factor) if steps > 0 else None


# --------------------------------------------------------------------------- building


@dataclass
class _Plan:
    """A spec resolved against a run: everything the Schedule needs, nothing to look up later."""

    name: str
    fn: Callable[..., float]
    momentum_fn: Callable[..., float] | None
    args: list[dict[str, Any]]  # one dict per parameter group
    run: Run
    warmup: _Ramp | None
    cooldown: _Ramp | None
    span: float  # the schedule's own length on its clock (the run minus warm-up and cool-down)


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
        return _build_torch(spec, optimizer, schedule_interval or "epoch")
    name, kwargs = split_spec("constant" if spec is None else spec, "schedule")
    name = SCHEDULES.canonical(name)
    plan = _plan(name, kwargs, optimizer, int(steps_per_epoch), int(total_steps), schedule_interval)
    return Schedule(plan, optimizer)


def _plan(
    name: str,
    kwargs: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    total_steps: int,
    default_interval: str | None,
) -> _Plan:
    label = f"schedule {name!r}"
    entry = SCHEDULES.entry(name)
    raw = {**entry.defaults, **kwargs}
    warmup_raw, cooldown_raw = raw.pop("warmup", None), _pop_cooldown(name, raw, label)
    interval = raw.pop("interval", None) or default_interval or _inferred_interval(name, kwargs)
    interval = expect_choice(f"{label} interval", interval, ("step", "epoch"))
    parameters = _keyword_arguments(entry.factory)
    _check_keys(label, raw, parameters)
    missing = [key for key in parameters if key not in raw]
    if missing:
        raise TraincraftError(f"{label} needs {', '.join(missing)}")

    run = Run(steps_per_epoch, max(int(total_steps), 0), interval, label)
    warmup, cooldown = _ramp(warmup_raw, "warmup", run), _ramp(cooldown_raw, "cooldown", run)
    schedule_steps = _schedule_steps(run, warmup, cooldown)
    span = run.steps_to_clock(schedule_steps) if schedule_steps else 0
    args = _resolve_arguments(name, raw, run, span, warmup)
    groups = _per_group(label, args, optimizer)
    if name in _MOMENTUM and args.get("cycle_momentum"):
        _check_momentum(label, optimizer)
    return _Plan(
        name=name,
        fn=entry.factory,
        momentum_fn=_MOMENTUM.get(name) if args.get("cycle_momentum") else None,
        args=groups,
        run=run,
        warmup=warmup,
        cooldown=cooldown,
        span=span,
    )


def _pop_cooldown(name: str, raw: dict[str, Any], label: str) -> Any:
    """The wrapper's cool-down. For plateau, ``cooldown`` is torch's own argument (epochs to wait
    after a cut); its end-of-run cool-down must then be written as a dict."""
    if name != "plateau":
        return raw.pop("cooldown", None)
    value = raw.get("cooldown")
    if isinstance(value, Mapping):
        raw["cooldown"] = SCHEDULES.entry("plateau").defaults["cooldown"]
        return value
    if isinstance(value, str):
        raise TraincraftError(
            f"{label}: cooldown is ReduceLROnPlateau's epochs to wait after a cut (an integer); "
            f"for a cool-down at the end of the run write cooldown: {{duration: {value!r}}}"
        )
    return None


def _inferred_interval(name: str, given: Mapping[str, Any]) -> str:
    """Epochs when every duration the user gave is in epochs ("3ep"), else optimizer steps."""
    units = set()
    for key in _DURATIONS.get(name, ()):
        value = given.get(key)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            try:
                units.add(parse_duration(item, key).unit)
            except TraincraftError:
                units.add("invalid")  # reported with its schedule's name when resolved
    return "epoch" if units == {"epoch"} else "step"


def _keyword_arguments(fn: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def _check_keys(label: str, raw: Mapping[str, Any], parameters: list[str]) -> None:
    for key in raw:
        if key not in parameters:
            choices = [*parameters, *_WRAPPER_KEYS]
            hint = did_you_mean(str(key), choices) or f"; its arguments are: {', '.join(choices)}"
            raise TraincraftError(f"{label} has no argument {key!r}{hint}")


def _schedule_steps(run: Run, warmup: _Ramp | None, cooldown: _Ramp | None) -> int:
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
    name: str, raw: dict[str, Any], run: Run, span: float, warmup: _Ramp | None
) -> dict[str, Any]:
    """Durations on the schedule's clock, run-length defaults filled in, values checked."""
    label = run.label
    args = dict(raw)
    for key in _DURATIONS.get(name, ()):
        value = args.get(key)
        if value is None:
            continue
        if key == "milestones":
            args[key] = _milestones(value, run)
        else:
            args[key] = run.clock(parse_duration(value, f"{label} {key}"), key)
    for key in ("T_max", "total"):
        if key in args and args[key] is None:
            args[key] = _whole_run(span, run, key)
    if name == "inverse_sqrt" and args["timescale"] is None:
        # the warm-up's length (the usual Transformer setting), else a tenth of the run
        args["timescale"] = (
            run.steps_to_clock(warmup.steps)
            if warmup
            else run.clock(Duration(10.0, "share"), "timescale")
        )
    unit = "steps" if run.interval == "step" else "epochs"
    _CHECKS.get(name, _no_check)(label, args, span if run.total > 0 else None, unit)
    return args


def _whole_run(span: float, run: Run, key: str) -> float:
    if not span:
        raise TraincraftError(
            f"{run.label}: {key} defaults to the whole run, whose length is unknown (data without "
            f"a length); give {key} in optimizer steps or set max_steps"
        )
    return span


def _milestones(value: Any, run: Run) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value:
        raise TraincraftError(
            f"{run.label}: milestones must be a list of durations, e.g. ['30ep', '60ep'], "
            f"got {value!r}"
        )
    resolved = [
        run.clock(parse_duration(v, f"{run.label} milestones"), "milestones") for v in value
    ]
    for before, after, raw_before, raw_after in zip(resolved, resolved[1:], value, value[1:]):
        if after <= before:
            raise TraincraftError(
                f"{run.label}: milestones must increase, but {raw_after!r} ({after} "
                f"{run.interval}s) comes after {raw_before!r} ({before}); sort them"
            )
    return resolved


def _per_group(
    label: str, args: dict[str, Any], optimizer: torch.optim.Optimizer
) -> list[dict[str, Any]]:
    """One argument dict per parameter group: lists of per-group values split, as torch does."""
    n = len(optimizer.param_groups)
    groups: list[dict[str, Any]] = [dict(args) for _ in range(n)]
    for key in _PER_GROUP & set(args):
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
        _check_group_values(label, group)
    return groups


def _check_group_values(label: str, args: dict[str, Any]) -> None:
    for key in ("max_lr", "base_lr", "eta_min", "min_lr", "base_momentum", "max_momentum"):
        if args.get(key) is not None:
            args[key] = expect_number(args[key], f"{label} {key}")
    if "lr_lambda" in args:
        args["lr_lambda"] = _function(args["lr_lambda"], f"{label} lr_lambda")


def _check_momentum(label: str, optimizer: torch.optim.Optimizer) -> None:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise TraincraftError(
            f"{label} cycles the momentum but {type(optimizer).__name__} has neither momentum nor "
            "betas; set cycle_momentum: false"
        )


# --------------------------------------------------------------------------- argument checks


def _no_check(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    return None


def _check_step(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _positive(args["step_size"], f"{label} step_size")
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def _check_multistep(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def _check_exponential(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    args["gamma"] = _positive(args["gamma"], f"{label} gamma")


def _check_cosine(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _positive(args["T_max"], f"{label} T_max")


def _check_restarts(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _positive(args["T_0"], f"{label} T_0")
    t_mult = args["T_mult"]
    if isinstance(t_mult, bool) or not isinstance(t_mult, int) or t_mult < 1:
        raise TraincraftError(
            f"{label} T_mult must be an integer >= 1 (as torch's), got {t_mult!r}"
        )


def _check_total(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    total = _positive(args["total"], f"{label} total")
    if span is not None and total > span:
        raise TraincraftError(
            f"{label}: total is {total} but the run leaves {span} {unit} to the schedule, "
            "so it would stop before its end; drop total to use the whole run"
        )


def _check_onecycle(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    total = _positive(args["total"], f"{label} total")
    if span is not None and total != span:
        raise TraincraftError(
            f"{label}: total is {total} but the run leaves {span} {unit} to the schedule "
            "(torch's OneCycleLR needs them equal); drop total to use the whole run"
        )
    pct = expect_number(args["pct_start"], f"{label} pct_start")
    if not 0.0 <= pct <= 1.0:
        raise TraincraftError(f"{label} pct_start must be between 0 and 1, got {pct}")
    args["pct_start"] = float(pct)
    args["anneal_strategy"] = expect_choice(
        f"{label} anneal_strategy", args["anneal_strategy"], ("cos", "linear")
    )
    _positive(args["div_factor"], f"{label} div_factor")
    _positive(args["final_div_factor"], f"{label} final_div_factor")
    args["three_phase"] = bool(args["three_phase"])


def _check_cyclic(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _positive(args["step_size_up"], f"{label} step_size_up")
    if args["step_size_down"] is not None:
        _positive(args["step_size_down"], f"{label} step_size_down")
    args["mode"] = expect_choice(
        f"{label} mode", args["mode"], ("triangular", "triangular2", "exp_range")
    )
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def _check_polynomial(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _check_total(label, args, span, unit)
    args["power"] = expect_number(args["power"], f"{label} power")


def _check_linear(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _check_total(label, args, span, unit)
    for key in ("start_factor", "end_factor"):
        args[key] = expect_number(args[key], f"{label} {key}")
        if args[key] < 0:
            raise TraincraftError(f"{label} {key} must be >= 0, got {args[key]}")


def _check_inverse_sqrt(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _positive(args["timescale"], f"{label} timescale")


def _check_wsd(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    _check_total(label, args, span, unit)
    decay = _positive(args["decay"], f"{label} decay")
    if decay > args["total"]:
        raise TraincraftError(
            f"{label}: the decay ({decay} {unit}) is longer than the schedule "
            f"({args['total']}); shorten it"
        )
    args["decay_kind"] = expect_choice(
        f"{label} decay_kind", args["decay_kind"], ("linear", "cosine", "sqrt")
    )
    args["end_factor"] = expect_number(args["end_factor"], f"{label} end_factor")


def _check_plateau(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    factor = expect_number(args["factor"], f"{label} factor")
    if not 0.0 <= factor < 1.0:
        raise TraincraftError(
            f"{label} factor must be in [0, 1) (new lr = lr × factor), got {factor}"
        )
    for key in ("patience", "cooldown"):
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TraincraftError(
                f"{label} {key} must be an integer number of epochs >= 0, got {value!r}"
            )
    threshold = expect_number(args["threshold"], f"{label} threshold")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise TraincraftError(f"{label} threshold must be a finite number >= 0, got {threshold}")
    args["threshold_mode"] = expect_choice(
        f"{label} threshold_mode", args["threshold_mode"], ("rel", "abs")
    )
    args["eps"] = expect_number(args["eps"], f"{label} eps")


_CHECKS: dict[str, Callable[[str, dict[str, Any], float | None, str], None]] = {
    "step": _check_step,
    "multistep": _check_multistep,
    "exponential": _check_exponential,
    "cosine": _check_cosine,
    "cosine_restarts": _check_restarts,
    "onecycle": _check_onecycle,
    "cyclic": _check_cyclic,
    "polynomial": _check_polynomial,
    "linear": _check_linear,
    "inverse_sqrt": _check_inverse_sqrt,
    "warmup_stable_decay": _check_wsd,
    "plateau": _check_plateau,
}


def _positive(value: Any, what: str) -> float:
    number = expect_number(value, what)
    if not number > 0:
        raise TraincraftError(f"{what} must be > 0, got {value!r}")
    return value


def _function(value: Any, what: str) -> Callable[[int], float]:
    if isinstance(value, str):
        value = import_object(value, what)
    if not callable(value):
        raise TraincraftError(
            f"{what} must be a function of the step (or epoch) or 'package.module:function', "
            f"got {value!r}"
        )
    return value


# --------------------------------------------------------------------------- the Schedule


class _PlateauState:
    """ReduceLROnPlateau's counters, with the improvement test of :class:`Monitor`."""

    def __init__(self, args: list[dict[str, Any]], base_lrs: list[float]):
        first = args[0]
        self.monitor = Monitor(
            first["monitor"],
            first["mode"],
            min_delta=first["threshold"],
            min_delta_mode=first["threshold_mode"],
        )
        self.factor, self.patience = float(first["factor"]), int(first["patience"])
        self.cooldown, self.eps = int(first["cooldown"]), float(first["eps"])
        self.min_lrs = [float(a["min_lr"]) for a in args]
        self.base_lrs = list(base_lrs)
        self.reset()

    def reset(self) -> None:
        self.monitor.reset()
        self.lrs = list(self.base_lrs)
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def update(self, value: float, in_warmup: bool) -> bool:
        """torch's ReduceLROnPlateau.step, in its order; True when an LR was cut."""
        if self.monitor.update(value):
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if in_warmup:
            self.num_bad_epochs = 0  # a warm-up epoch is never a bad epoch
            return False
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs <= self.patience:
            return False
        self.cooldown_counter = self.cooldown
        self.num_bad_epochs = 0
        return self._cut()

    def _cut(self) -> bool:
        cut = False
        for i, old in enumerate(self.lrs):
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:  # torch ignores cuts smaller than eps
                self.lrs[i] = new
                cut = True
        return cut

    def add_group(self, ratio: float, base_lr: float, min_lr: float) -> None:
        self.base_lrs.append(base_lr)
        self.lrs.append(self.lrs[0] * ratio)  # the cuts so far apply to the new group too
        self.min_lrs.append(float(min_lr))

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict(),
            "lrs": list(self.lrs),
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.lrs = [float(v) for v in state["lrs"]]
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])


class Schedule:
    """Applies a resolved schedule to an optimizer's parameter groups. Build it with :func:`build`.

    Each group's LR at step ``t`` is the schedule's function of its base LR (``initial_lr``) and
    ``t``; a warm-up before it and a cool-down after it, when given. Only plateau keeps state
    beyond the step count.

    Attributes:
        name: the schedule's registered name.
        restore_best_on_reduce: plateau only: the trainer reloads the best weights when
            :meth:`epoch_end` returns True.
        monitor: the figure plateau watches (None for other schedules).

    Example:
        >>> s = build({"name": "step", "step_size": "2ep", "gamma": 0.5}, opt,
        ...           steps_per_epoch=10, total_steps=100)
        >>> s.start()
        >>> for t in range(1, 101):
        ...     opt.step()
        ...     s.step_end(t)
    """

    def __init__(self, plan: _Plan, optimizer: torch.optim.Optimizer):
        self.name = plan.name
        self._plan = plan
        self._optimizer = optimizer
        self._base = [_base_lr(group) for group in optimizer.param_groups]
        self._use_beta1 = "betas" in optimizer.defaults
        self._plateau = _PlateauState(plan.args, self._base) if plan.name == "plateau" else None
        self.monitor: str | None = self._plateau.monitor.monitor if self._plateau else None
        self.restore_best_on_reduce = bool(plan.args[0].get("restore_best_on_reduce", False))
        self._step = 0
        self._lrs = self._lrs_at(0)
        self._momenta = self._momenta_at(0)
        self._constant = plan.name == "constant" and plan.warmup is None and plan.cooldown is None

    # ------------------------------------------------------------------ what the trainer calls

    def start(self) -> None:
        """Set every group's LR (and momentum when cycled) for the first step of a run."""
        self._step = 0
        if self._plateau is not None:
            self._plateau.reset()
        self._apply(0)

    def step_end(self, step: int) -> None:
        """After optimizer step number ``step`` (steps taken so far): set the next step's LRs."""
        self._step = step
        if self._constant:
            return  # nothing changes per step: keep the hot loop free of it
        self._apply(step)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """After validation. Plateau reads its figure from ``metrics`` and may cut the LRs.

        Returns:
            True when plateau has just cut an LR (the trainer then reloads the best weights if
            :attr:`restore_best_on_reduce`); always False for other schedules.

        Raises:
            TraincraftError: plateau's monitored figure is not in ``metrics`` (the message lists
                the reported names).
        """
        if self._plateau is None:
            return False
        try:
            value = self._plateau.monitor.value_from(metrics)
        except TraincraftError as err:
            raise TraincraftError(f"schedule 'plateau': {err}") from None
        warmup = self._plan.warmup
        cut = self._plateau.update(
            value, in_warmup=warmup is not None and self._step <= warmup.steps
        )
        if cut:
            self._apply(self._step)
        return cut

    def lrs(self) -> list[float]:
        """The current LR of each parameter group."""
        return list(self._lrs)

    def momenta(self) -> list[float] | None:
        """The current momentum (or beta1) of each group when the schedule cycles it, else None."""
        return None if self._momenta is None else list(self._momenta)

    def scale(self, factor: float) -> None:
        """Multiply every group's base LR by ``factor`` from now on (a rollback after a
        non-finite step); the schedule's shape is unchanged."""
        self._base = [b * factor for b in self._base]
        if self._plateau is not None:
            self._plateau.lrs = [lr * factor for lr in self._plateau.lrs]
        self._apply(self._step)

    def add_group(self, group: dict[str, Any]) -> None:
        """Take in a parameter group added to the optimizer during the run (an unfreeze): it
        follows the schedule from now on, on the same clock, relative to its own base LR.

        LR-valued arguments (``max_lr``, ``eta_min``, ...) and plateau's cuts so far are those of
        the first group scaled by the ratio of the base LRs, so the new group keeps its ratio to
        the others at every step.
        """
        base = _base_lr(group)
        ratio = base / self._base[0] if self._base[0] else 1.0
        args = dict(self._plan.args[0])
        for key in _LR_VALUED & set(args):
            if args[key] is not None:
                args[key] = args[key] * ratio
        self._plan.args.append(args)
        self._base.append(base)
        if self._plateau is not None:
            self._plateau.add_group(ratio, base, args["min_lr"])
        self._apply(self._step)

    def state_dict(self) -> dict[str, Any]:
        """Plain types: the step count, the base LRs and plateau's counters."""
        return {
            "name": self.name,
            "step": self._step,
            "base": list(self._base),
            "plateau": self._plateau.state_dict() if self._plateau else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a saved run: the next LRs are those of the saved step."""
        if state.get("name") != self.name:
            raise TraincraftError(
                f"the checkpoint's schedule is {state.get('name')!r} but this run's is "
                f"{self.name!r}; resume with the same schedule"
            )
        self._step = int(state["step"])
        if "base" in state:
            self._base = [float(b) for b in state["base"]]
        if self._plateau is not None and state.get("plateau") is not None:
            self._plateau.load_state_dict(state["plateau"])
        self._apply(self._step)

    # ------------------------------------------------------------------ values

    def _apply(self, t: int) -> None:
        self._lrs = self._lrs_at(t)
        self._momenta = self._momenta_at(t)
        for i, group in enumerate(self._optimizer.param_groups):
            _set(group, "lr", self._lrs[i])
            if self._momenta is not None:
                if self._use_beta1:
                    group["betas"] = (self._momenta[i], *group["betas"][1:])
                else:
                    group["momentum"] = self._momenta[i]

    def _lrs_at(self, t: int) -> list[float]:
        return [self._value(t, g, self._inner_lr) for g in range(len(self._base))]

    def _momenta_at(self, t: int) -> list[float] | None:
        if self._plan.momentum_fn is None:
            return None
        return [self._value(t, g, self._inner_momentum, ramp=False) for g in range(len(self._base))]

    def _value(
        self, t: int, g: int, inner: Callable[[int, int], float], ramp: bool = True
    ) -> float:
        plan = self._plan
        w = plan.warmup.steps if plan.warmup else 0
        if t < w:
            # warm-up: a rising factor of the schedule's first value
            start = inner(0, g)
            return _warm_factor(plan.warmup, t) * start if ramp else start
        if plan.cooldown is not None:
            cool_start = plan.run.total - plan.cooldown.steps
            if t > cool_start:
                # cool-down: from the schedule's value where it starts to end_factor × base LR
                start = inner(cool_start - w, g)
                if not ramp:
                    return start
                return _cool_value(
                    plan.cooldown, t - cool_start, start, plan.cooldown.factor * self._base[g]
                )
        return inner(t - w, g)  # the schedule itself, on its own clock

    def _clock(self, tau: int) -> int:
        if self._plan.run.interval == "step":
            return tau
        return tau // self._plan.run.steps_per_epoch

    def _inner_lr(self, tau: int, g: int) -> float:
        if self._plateau is not None:
            return self._plateau.lrs[g]
        return self._plan.fn(self._clock(tau), self._base[g], **self._plan.args[g])

    def _inner_momentum(self, tau: int, g: int) -> float:
        assert self._plan.momentum_fn is not None
        return self._plan.momentum_fn(self._clock(tau), self._base[g], **self._plan.args[g])

    # ------------------------------------------------------------------ for previews

    def _milestones(self) -> list[int]:
        """Optimizer steps where the schedule turns (decays, restarts, peaks), for previews."""
        plan = self._plan
        finder = _MILESTONES.get(plan.name)
        if finder is None or not plan.span:
            return []
        w = plan.warmup.steps if plan.warmup else 0
        per = 1 if plan.run.interval == "step" else plan.run.steps_per_epoch
        return [w + round_half_up(m * per) for m in finder(plan.args[0], plan.span) if 0 < m < plan.span]

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, lrs={self._lrs})"


def _base_lr(group: dict[str, Any]) -> float:
    # torch's schedulers fill initial_lr in the same way; traincraft's optimizers already have it.
    value = group.setdefault("initial_lr", group["lr"])
    if isinstance(value, torch.Tensor):
        value = value.clone()
        group["initial_lr"] = value
    return float(value)  # once, when the schedule is built


def _set(group: dict[str, Any], key: str, value: float) -> None:
    # A tensor LR (capturable optimizers) is filled in place, as torch's schedulers do.
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value


def _step_milestones(args: dict[str, Any], span: float) -> list[float]:
    size = args["step_size"]
    return [k * size for k in range(1, int(span // size) + 1)]


def _restart_milestones(args: dict[str, Any], span: float) -> list[float]:
    out, t, period = [], 0.0, args["T_0"]
    while t + period < span:
        t += period
        out.append(t)
        period *= args["T_mult"]
    return out


def _onecycle_milestones(args: dict[str, Any], span: float) -> list[float]:
    ends = _onecycle_ends(args["total"], args["pct_start"], args["three_phase"])
    return [max(0.0, end) for end in ends[:-1]]


def _cyclic_milestones(args: dict[str, Any], span: float) -> list[float]:
    up = args["step_size_up"]
    down = args["step_size_down"] if args["step_size_down"] is not None else up
    out, t = [], 0.0
    while t < span:
        out += [t + up, t + up + down]
        t += up + down
    return out


_MILESTONES: dict[str, Callable[[dict[str, Any], float], list[float]]] = {
    "step": _step_milestones,
    "multistep": lambda args, span: list(args["milestones"]),
    "cosine": lambda args, span: [args["T_max"]],
    "cosine_restarts": _restart_milestones,
    "onecycle": _onecycle_milestones,
    "cyclic": _cyclic_milestones,
    "polynomial": lambda args, span: [args["total"]],
    "linear": lambda args, span: [args["total"]],
    "warmup_stable_decay": lambda args, span: [args["total"] - args["decay"]],
}


# ------------------------------------------------------------------- your own torch scheduler


class TorchSchedule:
    """A torch ``LRScheduler`` of your own, stepped after every optimizer step or every epoch.

    Example:
        >>> def make(opt):
        ...     return torch.optim.lr_scheduler.StepLR(opt, step_size=3)
        >>> s = build(make, opt, steps_per_epoch=10, total_steps=100, schedule_interval="epoch")
    """

    restore_best_on_reduce = False
    monitor: str | None = None

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler, interval: str):
        self.name = type(scheduler).__name__
        self.scheduler = scheduler
        self.interval = interval

    def start(self) -> None:
        """Nothing to do: torch's scheduler set the first step's LRs when it was built."""

    def step_end(self, step: int) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        if self.interval == "epoch":
            self.scheduler.step()
        return False

    def lrs(self) -> list[float]:
        return [float(lr) for lr in self.scheduler.get_last_lr()]

    def momenta(self) -> list[float] | None:
        if not getattr(self.scheduler, "cycle_momentum", False):
            return None
        groups = self.scheduler.optimizer.param_groups
        return [float(g["betas"][0]) if "betas" in g else float(g["momentum"]) for g in groups]

    def scale(self, factor: float) -> None:
        """Multiply the scheduler's base LRs and the current LRs by ``factor``."""
        self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]
        for group in self.scheduler.optimizer.param_groups:
            group["lr"] *= factor

    def add_group(self, group: dict[str, Any]) -> None:
        raise TraincraftError(
            f"unfreezing adds parameter groups during the run, which the torch scheduler "
            f"{self.name} cannot take; use a traincraft schedule by name (e.g. "
            "{'name': 'cosine', 'warmup': '5%'})"
        )

    def state_dict(self) -> dict[str, Any]:
        """torch's own state dict (whatever the scheduler keeps in it)."""
        return {"name": self.name, "torch": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state["torch"]))


def _build_torch(
    factory: Callable[..., Any], optimizer: torch.optim.Optimizer, interval: str
) -> TorchSchedule:
    label = getattr(factory, "__name__", type(factory).__name__)
    scheduler = factory(optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TraincraftError(
            f"schedule callable {label!r} returned ReduceLROnPlateau, which needs the monitored "
            "figure: use schedule={'name': 'plateau', 'monitor': 'val_loss', ...} (same arguments)"
        )
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TraincraftError(
            f"schedule callable {label!r} returned {type(scheduler).__name__}, not a torch "
            "LRScheduler; it is called with the optimizer"
        )
    return TorchSchedule(scheduler, interval)


# --------------------------------------------------------------------------- preview and plot


def preview(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    *,
    base_lrs: Sequence[float] = (1.0,),
    metrics: Sequence[float] | None = None,
    max_steps: int | None = None,
    schedule_interval: str | None = None,
) -> list[list[float]]:
    """The LRs a run would use, without training.

    Args:
        spec: as for :func:`build`.
        steps_per_epoch: optimizer steps per epoch.
        epochs: epochs in the run.
        base_lrs: one base LR per parameter group.
        metrics: plateau only: the monitored figure of each epoch (without it plateau never cuts).
        max_steps: ends the run early, as the trainer's ``max_steps``.
        schedule_interval: as for :func:`build`.

    Returns:
        ``rows[s][g]``: the LR of group ``g`` for optimizer step ``s + 1``; ``total_steps + 1``
        rows, the last one the LR after the run's last step (no step uses it; the history's ``lr``
        of an epoch is the LR its last step used: ``rows[epoch * steps_per_epoch - 1]``).

    Example:
        >>> preview({"name": "step", "step_size": 2, "gamma": 0.5}, steps_per_epoch=3, epochs=1)
        [[1.0], [1.0], [0.5], [0.5]]
    """
    rows, _, _ = _drive(
        spec, steps_per_epoch, epochs, base_lrs, metrics, max_steps, schedule_interval
    )
    return rows


def key_points(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    *,
    base_lr: float = 1.0,
    metrics: Sequence[float] | None = None,
    max_steps: int | None = None,
) -> list[tuple[str, int, float]]:
    """The turning points of a run, for a preview table: ``(what, step, lr)``.

    ``what`` is ``"start"``, ``"end of warm-up"``, ``"milestone"`` (a decay, restart, peak or a
    plateau cut), ``"start of cool-down"`` or ``"end"``; ``lr`` is group 0's LR from that step on
    (at ``"end"``: after the last step).

    Example:
        >>> key_points({"name": "multistep", "milestones": ["2ep"]}, 10, 4)
        [('start', 0, 1.0), ('milestone', 20, 0.1), ('end', 40, 0.1)]
    """
    rows, schedule, cuts = _drive(
        spec, steps_per_epoch, epochs, (base_lr,), metrics, max_steps, None
    )
    total = len(rows) - 1
    points: list[tuple[str, int]] = [("start", 0)]
    if isinstance(schedule, Schedule):
        plan = schedule._plan
        if plan.warmup:
            points.append(("end of warm-up", plan.warmup.steps))
        points += [("milestone", s) for s in schedule._milestones()]
        points += [("milestone", s) for s in cuts]
        if plan.cooldown:
            points.append(("start of cool-down", total - plan.cooldown.steps))
    points = sorted({(s, what) for what, s in points if 0 <= s < total}, key=lambda p: p[0])
    out = [(what, s, rows[s][0]) for s, what in points]
    return [*out, ("end", total, rows[total][0])]


def _drive(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    base_lrs: Sequence[float],
    metrics: Sequence[float] | None,
    max_steps: int | None,
    schedule_interval: str | None,
) -> tuple[list[list[float]], Schedule | TorchSchedule, list[int]]:
    """Run a schedule on a stand-in optimizer as the trainer would: its LRs, and the steps after
    which plateau cut them."""
    steps_per_epoch, epochs = int(steps_per_epoch), int(epochs)
    if steps_per_epoch <= 0 or epochs <= 0:
        raise TraincraftError(
            f"a preview needs steps_per_epoch and epochs > 0, got {steps_per_epoch} and {epochs}"
        )
    total = steps_per_epoch * epochs
    if max_steps is not None:
        total = min(total, int(max_steps))
    values = _metric_values(metrics, math.ceil(total / steps_per_epoch))
    optimizer = _stand_in_optimizer(base_lrs)
    schedule = build(
        spec,
        optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule_interval=schedule_interval,
    )
    cuts: list[int] = []
    rows: list[list[float]] = []
    schedule.start()
    for t in range(1, total + 1):
        rows.append(schedule.lrs())
        optimizer.step()  # no gradients, no update: it keeps torch's step-order check quiet
        schedule.step_end(t)
        if t % steps_per_epoch == 0 or t == total:
            epoch = math.ceil(t / steps_per_epoch)
            if schedule.monitor is None:
                schedule.epoch_end(epoch, {})
            elif values is not None and schedule.epoch_end(
                epoch, {schedule.monitor: values[epoch - 1]}
            ):
                cuts.append(t)
    rows.append(schedule.lrs())
    return rows, schedule, cuts


def _metric_values(metrics: Sequence[float] | None, epochs: int) -> list[float] | None:
    if metrics is None:
        return None
    values = [float(v) for v in metrics]
    if len(values) < epochs:
        raise TraincraftError(
            f"the metric sequence has {len(values)} values but the preview spans {epochs} epochs; "
            "give one value per epoch"
        )
    return values


def _stand_in_optimizer(base_lrs: Sequence[float]) -> torch.optim.Optimizer:
    # SGD with momentum, so that schedules that cycle momentum can be previewed.
    if isinstance(base_lrs, numbers.Real):
        base_lrs = [float(base_lrs)]
    groups = [
        {
            "params": [torch.zeros(1, requires_grad=True)],
            "lr": float(lr),
            "initial_lr": float(lr),
            "name": f"group{i}",
        }
        for i, lr in enumerate(base_lrs)
    ]
    if not groups:
        raise TraincraftError("base_lrs needs at least one learning rate")
    return torch.optim.SGD(groups, lr=float(base_lrs[0]), momentum=0.9)


def plot(
    lrs: Sequence[Sequence[float]] | Sequence[float],
    *,
    steps_per_epoch: int | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """A figure of learning rate against optimizer step (epochs on the top axis).

    Args:
        lrs: :func:`preview`'s rows (one LR per group per step), or one LR per step.
        steps_per_epoch: adds an epoch axis on top.
        title: the figure's title.
        path: where to save it (the format follows the suffix; written atomically).
        labels: one legend label per group (default ``group 0``, ``group 1``, ...).

    Returns:
        The matplotlib ``Figure`` (Agg canvas: no window, no global pyplot state).

    Example:
        >>> fig = plot(preview("cosine", 10, 5), steps_per_epoch=10, path="lr.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [[float(v)] if isinstance(v, numbers.Real) else [float(x) for x in v] for v in lrs]
    columns = list(zip(*rows)) if rows else []
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, column in enumerate(columns):
        label = labels[i] if labels is not None and i < len(labels) else f"group {i}"
        ax.plot(range(len(column)), column, label=label, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    if steps_per_epoch:
        spe = float(steps_per_epoch)
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
    if title:
        ax.set_title(title)
    if len(columns) > 1:
        ax.legend()
    if path is not None:
        from traincraft.files import atomic_write

        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=100))
    return fig


# --------------------------------------------------------------------------- the command


def preview_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft schedule RECIPE [key=value ...] [--steps-per-epoch N] [--epochs N]
    [--plot lr.png] [--csv lr.csv] [--metric FILE]``: a recipe's LRs, without training.

    Prints the LR at the start, the end of the warm-up, each milestone and the end; writes the
    plot and the CSV (``step,epoch,lr,lr/<group>...``) when asked. Returns the exit code
    (2 with one line on stderr for a mistake; ``--debug`` shows the traceback instead).
    """
    args = _preview_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    from traincraft.cli import run_reporting_errors

    return run_reporting_errors(lambda: _preview_command(args), debug=args.debug)


def _preview_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traincraft schedule",
        description="show a recipe's learning-rate schedule without training",
        epilog="example:\n  traincraft schedule recipe.yaml --plot lr.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE", help="a recipe file or template name")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="overrides read as YAML"
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, help="default: counted from the recipe's data"
    )
    parser.add_argument("--epochs", type=int, help="default: the recipe's train.max_epochs")
    parser.add_argument("--plot", metavar="PNG", help="write the plot here")
    parser.add_argument("--csv", metavar="CSV", help="write step,epoch,lr,lr/<group> here")
    parser.add_argument(
        "--metric", metavar="FILE", help="plateau: one monitored value per line, per epoch"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def _preview_command(args: argparse.Namespace) -> int:
    from traincraft.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=list(args.overrides))
    spec = _recipe_schedule(recipe)
    spe = (
        args.steps_per_epoch
        if args.steps_per_epoch is not None
        else _recipe_steps_per_epoch(recipe)
    )
    epochs = args.epochs if args.epochs is not None else int(recipe.train.max_epochs)
    max_steps = getattr(recipe.train, "max_steps", None)
    names_, base_lrs = _recipe_groups(recipe)
    metrics = _read_metric_file(args.metric) if args.metric else None
    rows = preview(spec, spe, epochs, base_lrs=base_lrs, metrics=metrics, max_steps=max_steps)
    points = key_points(
        spec, spe, epochs, base_lr=base_lrs[0], metrics=metrics, max_steps=max_steps
    )
    print(_describe(spec, spe, epochs, len(rows) - 1))
    print(_table(points, spe))
    if args.plot:
        plot(rows, steps_per_epoch=spe, title=_title(spec), path=args.plot, labels=names_)
        print(f"plot: {args.plot}")
    if args.csv:
        _write_csv(args.csv, rows, spe, names_)
        print(f"csv: {args.csv}")
    return 0


def _recipe_schedule(recipe: Any) -> ScheduleSpec:
    spec = getattr(recipe, "schedule", None)
    if spec is not None and hasattr(spec, "model_dump"):  # a pydantic section
        extra = getattr(spec, "model_extra", None) or {}
        spec = {**{k: v for k, v in spec.model_dump().items() if v is not None}, **extra}
    return spec


def _recipe_steps_per_epoch(recipe: Any) -> int:
    from traincraft.run import prepare_data

    data = prepare_data(recipe)
    n_train = len(data.train[1])
    batches = math.ceil(n_train / int(recipe.data.batch_size))
    from traincraft import durations

    return durations.steps_per_epoch(batches, int(recipe.train.accumulate))


def _recipe_groups(recipe: Any) -> tuple[list[str], list[float]]:
    """Group names and base LRs as the optimizer will have them: rules first, then the rest."""
    lr = float(recipe.optimizer.lr)
    names_, lrs = [], []
    for i, rule in enumerate(getattr(recipe.optimizer, "param_groups", None) or []):
        patterns = rule.get("params", f"rule{i}")
        names_.append(
            str(rule.get("name", patterns if isinstance(patterns, str) else ",".join(patterns)))
        )
        lrs.append(float(rule["lr"]) if "lr" in rule else lr * float(rule.get("lr_mult", 1.0)))
    return [*names_, "default"], [*lrs, lr]


def _read_metric_file(path: str) -> list[float]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TraincraftError(f"--metric {path}: cannot read it ({err.strerror})") from None
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise TraincraftError(
                f"--metric {path}, line {number}: {line.strip()!r} is not a number; "
                "write one value per line, one line per epoch"
            ) from None
    return values


def _title(spec: ScheduleSpec) -> str:
    if spec is None:
        return "constant"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return str(spec.get("name", "schedule"))
    return getattr(spec, "__name__", "schedule")


def _describe(spec: ScheduleSpec, spe: int, epochs: int, total: int) -> str:
    return (
        f"schedule {_title(spec)}: {epochs} epochs × {spe} steps per epoch = {total} "
        "optimizer steps"
    )


_TABLE_ROWS = 24  # a cyclic schedule of short cycles has thousands of turning points


def _table(points: list[tuple[str, int, float]], spe: int) -> str:
    shown: list[tuple[str, int, float] | None] = list(points)
    if len(points) > _TABLE_ROWS:
        half = _TABLE_ROWS // 2
        shown = [*points[:half], None, *points[-half:]]
    lines = [f"{'point':<20}{'step':>8}{'epoch':>9}  lr"]
    for row in shown:
        if row is None:
            lines.append(f"... {len(points) - _TABLE_ROWS} more")
            continue
        what, s, lr = row
        lines.append(f"{what:<20}{s:>8}{s / spe:>9.2f}  {lr:.4g}")
    return "\n".join(lines)


def _write_csv(path: str, rows: list[list[float]], spe: int, group_names: list[str]) -> None:
    from traincraft.files import atomic_write_text

    header = ["step", "epoch", "lr", *(f"lr/{n}" for n in group_names)]
    lines = [",".join(header)]
    for s, row in enumerate(rows):
        lines.append(",".join([str(s), repr(s / spe), repr(row[0]), *(repr(v) for v in row)]))
    atomic_write_text(path, "\n".join(lines) + "\n")
