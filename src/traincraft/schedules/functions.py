"""The schedules: each a small pure function of the step, in torch's closed forms.

Each function takes the schedule's clock ``t`` (an int: optimizer steps, or epochs for a schedule
counted in epochs), the group's base LR, and its arguments, every one explicit: the defaults live
in the schedule's row of :data:`traincraft.schedules.table.SCHEDULES`. Formulas and the order of
operations are torch's closed forms (``_get_closed_form_lr`` where torch has one), so a run matches
torch's scheduler stepped the same way.

The momentum companions of the schedules that cycle it, and the turning points that previews
mark, are here too: they are the same formulas read another way.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from traincraft.errors import TraincraftError


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
    return initial_lr * (1.0 - (1.0 - end_factor) * decay_shape(decay_kind, q))


def decay_shape(kind: str, q: float) -> float:
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


# --------------------------------------------------------------------------- turning points
#
# ``fn(args, span) -> [t, ...]``: where a schedule turns (decays, restarts, peaks) on its own clock,
# for previews; ``span`` is the schedule's length on that clock.


def step_milestones(args: dict[str, Any], span: float) -> list[float]:
    size = args["step_size"]
    return [k * size for k in range(1, int(span // size) + 1)]


def multistep_milestones(args: dict[str, Any], span: float) -> list[float]:
    return list(args["milestones"])


def cosine_milestones(args: dict[str, Any], span: float) -> list[float]:
    return [args["T_max"]]


def cosine_restarts_milestones(args: dict[str, Any], span: float) -> list[float]:
    out, t, period = [], 0.0, args["T_0"]
    while t + period < span:
        t += period
        out.append(t)
        period *= args["T_mult"]
    return out


def onecycle_milestones(args: dict[str, Any], span: float) -> list[float]:
    ends = _onecycle_ends(args["total"], args["pct_start"], args["three_phase"])
    return [max(0.0, end) for end in ends[:-1]]


def cyclic_milestones(args: dict[str, Any], span: float) -> list[float]:
    up = args["step_size_up"]
    down = args["step_size_down"] if args["step_size_down"] is not None else up
    out, t = [], 0.0
    while t < span:
        out += [t + up, t + up + down]
        t += up + down
    return out


def total_milestones(args: dict[str, Any], span: float) -> list[float]:
    """Where a schedule of length ``total`` (polynomial, linear) reaches its end."""
    return [args["total"]]


def warmup_stable_decay_milestones(args: dict[str, Any], span: float) -> list[float]:
    return [args["total"] - args["decay"]]
