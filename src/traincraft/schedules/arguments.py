"""What each schedule's arguments must be: its check, and the defaults that depend on the run.

A check is ``check(label, args, span, unit)``: it raises one line naming the schedule and the
argument (``label`` is ``"schedule 'cosine'"``) and may normalise values in ``args`` (numbers as
floats, choices lower-cased). ``args`` holds the arguments on the schedule's clock, before they are
split per parameter group; ``span`` is the schedule's own length on that clock (None when the
run's length is unknown) and ``unit`` its name (``"steps"`` or ``"epochs"``).

A run default is ``default(run, span, warmup_steps, key)``: the value of an argument left at None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from traincraft.durations import Duration, Run
from traincraft.errors import TraincraftError, expect_choice, expect_number
from traincraft.registry import import_object

Check = Callable[[str, dict[str, Any], float | None, str], None]
RunDefault = Callable[[Run, float, int, str], float]


# --------------------------------------------------------------------------- defaults from the run


def whole_run(run: Run, span: float, warmup_steps: int, key: str) -> float:
    """The schedule's whole length: the run minus its warm-up and cool-down."""
    if not span:
        raise TraincraftError(
            f"{run.label}: {key} defaults to the whole run, whose length is unknown (data without "
            f"a length); give {key} in optimizer steps or set max_steps"
        )
    return span


def warmup_or_tenth(run: Run, span: float, warmup_steps: int, key: str) -> float:
    """The warm-up's length (the usual Transformer setting), else a tenth of the run."""
    if warmup_steps:
        return run.steps_to_clock(warmup_steps)
    return run.clock(Duration(10.0, "share"), key)


# --------------------------------------------------------------------------- checks


def check_step(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["step_size"], f"{label} step_size")
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def check_multistep(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def check_exponential(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    args["gamma"] = positive(args["gamma"], f"{label} gamma")


def check_cosine(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["T_max"], f"{label} T_max")


def check_cosine_restarts(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["T_0"], f"{label} T_0")
    t_mult = args["T_mult"]
    if isinstance(t_mult, bool) or not isinstance(t_mult, int) or t_mult < 1:
        raise TraincraftError(
            f"{label} T_mult must be an integer >= 1 (as torch's), got {t_mult!r}"
        )


def check_total(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    total = positive(args["total"], f"{label} total")
    if span is not None and total > span:
        raise TraincraftError(
            f"{label}: total is {total} but the run leaves {span} {unit} to the schedule, "
            "so it would stop before its end; drop total to use the whole run"
        )


def check_onecycle(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    total = positive(args["total"], f"{label} total")
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
    positive(args["div_factor"], f"{label} div_factor")
    positive(args["final_div_factor"], f"{label} final_div_factor")
    args["three_phase"] = bool(args["three_phase"])


def check_cyclic(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["step_size_up"], f"{label} step_size_up")
    if args["step_size_down"] is not None:
        positive(args["step_size_down"], f"{label} step_size_down")
    args["mode"] = expect_choice(
        f"{label} mode", args["mode"], ("triangular", "triangular2", "exp_range")
    )
    args["gamma"] = expect_number(args["gamma"], f"{label} gamma")


def check_polynomial(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    check_total(label, args, span, unit)
    args["power"] = expect_number(args["power"], f"{label} power")


def check_linear(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    check_total(label, args, span, unit)
    for key in ("start_factor", "end_factor"):
        args[key] = expect_number(args[key], f"{label} {key}")
        if args[key] < 0:
            raise TraincraftError(f"{label} {key} must be >= 0, got {args[key]}")


def check_inverse_sqrt(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["timescale"], f"{label} timescale")


def check_warmup_stable_decay(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    check_total(label, args, span, unit)
    decay = positive(args["decay"], f"{label} decay")
    if decay > args["total"]:
        raise TraincraftError(
            f"{label}: the decay ({decay} {unit}) is longer than the schedule "
            f"({args['total']}); shorten it"
        )
    args["decay_kind"] = expect_choice(
        f"{label} decay_kind", args["decay_kind"], ("linear", "cosine", "sqrt")
    )
    args["end_factor"] = expect_number(args["end_factor"], f"{label} end_factor")


def check_plateau(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
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


def positive(value: Any, what: str) -> float:
    number = expect_number(value, what)
    if not number > 0:
        raise TraincraftError(f"{what} must be > 0, got {value!r}")
    return value


def function(value: Any, what: str) -> Callable[[int], float]:
    if isinstance(value, str):
        value = import_object(value, what)
    if not callable(value):
        raise TraincraftError(
            f"{what} must be a function of the step (or epoch) or 'package.module:function', "
            f"got {value!r}"
        )
    return value
