"""The table of schedules: one consistent row per schedule, lookup by name and alias, and a
schedule added with nothing but a function and a row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from schedule_oracles import BASE, assert_close, build, our_run, torch_run
from torch.optim import lr_scheduler as tls

from traincraft import schedules
from traincraft.errors import TraincraftError, UnknownNameError
from traincraft.schedules.arguments import positive
from traincraft.schedules.plan import keyword_arguments
from traincraft.schedules.table import SCHEDULES, WRAPPER_KEYS, ScheduleInfo


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


# --------------------------------------------------------------------------- one row per schedule

# The arguments a spec must give (those without a default), per schedule.
REQUIRED: dict[str, dict[str, Any]] = {
    "step": {"step_size": 3},
    "multistep": {"milestones": [4, 9]},
    "exponential": {"gamma": 0.9},
    "cosine_restarts": {"T_0": 5},
    "cyclic": {"max_lr": 1.0},
    "lambda": {"lr_lambda": lambda t: 1.0 / (1.0 + t)},
    "multiplicative": {"lr_lambda": lambda t: 0.95},
}

SPE, EPOCHS = 7, 6
TOTAL = SPE * EPOCHS

# torch's scheduler with the same values as the row's defaults (torch's own defaults differ for
# T_max, total_iters and LinearLR's factors: ours are the whole run and a decay to 0).
ORACLES: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "constant": lambda o: tls.ConstantLR(o, factor=1.0),
    "step": lambda o: tls.StepLR(o, step_size=3),
    "multistep": lambda o: tls.MultiStepLR(o, milestones=[4, 9]),
    "exponential": lambda o: tls.ExponentialLR(o, gamma=0.9),
    "cosine": lambda o: tls.CosineAnnealingLR(o, T_max=TOTAL),
    "cosine_restarts": lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5),
    "onecycle": lambda o: tls.OneCycleLR(o, max_lr=list(BASE), total_steps=TOTAL),
    "cyclic": lambda o: tls.CyclicLR(o, base_lr=list(BASE), max_lr=1.0),
    "polynomial": lambda o: tls.PolynomialLR(o, total_iters=TOTAL, power=1.0),
    "linear": lambda o: tls.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=TOTAL),
    "lambda": lambda o: tls.LambdaLR(o, lr_lambda=REQUIRED["lambda"]["lr_lambda"]),
    "multiplicative": lambda o: tls.MultiplicativeLR(
        o, lr_lambda=REQUIRED["multiplicative"]["lr_lambda"]
    ),
}

# Where a schedule does not start at the base LR with its defaults: its first LR over the base LR.
FIRST_FACTOR = {"onecycle": 1 / 25, "warmup_stable_decay": 0.01}  # div_factor; the 5% warm-up


def test_every_row_agrees_with_its_function() -> None:
    for row in SCHEDULES:
        where = f"schedule {row.name!r}"
        arguments = set(keyword_arguments(row.fn))
        assert set(row.defaults) - set(WRAPPER_KEYS) <= arguments, where
        required = arguments - set(row.defaults)
        assert required == set(REQUIRED.get(row.name, {})), where
        named = {*row.durations, *row.duration_lists, *row.per_group, *row.run_defaults}
        assert named <= arguments, where
        assert not set(row.durations) & set(row.duration_lists), where
        assert set(row.lr_valued) <= set(row.per_group), where
        for key in row.run_defaults:  # None in the defaults is what asks for the run's value
            assert key in row.defaults and row.defaults[key] is None, (where, key)
        if row.momentum_fn is not None:
            assert "cycle_momentum" in arguments, where
        if row.own_cooldown:
            assert "cooldown" in arguments and "cooldown" in row.defaults, where
        for alias in row.aliases:
            assert SCHEDULES.lookup(alias) is row, (where, alias)
        assert SCHEDULES.lookup(row.name.upper()) is row
    every = [name for row in SCHEDULES for name in (row.name, *row.aliases)]
    assert len(every) == len(set(every))  # no alias shadows another schedule
    assert schedules.names() == sorted(row.name for row in SCHEDULES)


def test_every_schedule_is_covered_here() -> None:
    # a new row needs an oracle (or a first factor) below
    without_torch = {"inverse_sqrt", "warmup_stable_decay", "plateau"}
    assert set(schedules.names()) == set(ORACLES) | without_torch


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_each_schedule_with_its_defaults_matches_torch(name: str) -> None:
    spec = {"name": name, **REQUIRED.get(name, {})}
    theirs, their_moms = torch_run(ORACLES[name], SPE, EPOCHS, "step")
    ours, our_moms, schedule = our_run(spec, SPE, EPOCHS)
    assert_close(ours, theirs)
    if SCHEDULES.lookup(name).momentum_fn is not None:
        assert_close(our_moms, their_moms)
    else:
        assert schedule.momenta() is None
    factor = FIRST_FACTOR.get(name, 1.0)
    assert ours[0] == pytest.approx([b * factor for b in BASE], rel=1e-12)


@pytest.mark.parametrize("name", ["inverse_sqrt", "warmup_stable_decay", "plateau"])
def test_each_schedule_without_torch_starts_where_its_row_says(name: str) -> None:
    rows = schedules.preview(name, SPE, EPOCHS, base_lrs=BASE)
    factor = FIRST_FACTOR.get(name, 1.0)
    assert rows[0] == pytest.approx([b * factor for b in BASE], rel=1e-12)
    assert max(r[0] for r in rows) == pytest.approx(BASE[0], rel=1e-12)  # never above the base


def test_plateau_with_its_defaults_matches_torch() -> None:
    metrics = [1.0 + 0.01 * e for e in range(14)]  # worse every epoch: one cut after 11 epochs
    theirs, _ = torch_run(lambda o: tls.ReduceLROnPlateau(o), 2, 14, "epoch", metrics=metrics)
    ours, _, _ = our_run("plateau", 2, 14, metrics=metrics)
    assert_close(ours, theirs)
    assert ours[-1] == pytest.approx([b * 0.1 for b in BASE])


# --------------------------------------------------------------------------- adding a schedule


def halving(t: int, initial_lr: float, *, every: float, floor: float) -> float:
    """Half the LR every ``every``, never below ``floor``."""
    return max(initial_lr * 0.5 ** (t // every), floor)


def check_halving(label: str, args: dict[str, Any], span: float | None, unit: str) -> None:
    positive(args["every"], f"{label} every")


def halving_milestones(args: dict[str, Any], span: float) -> list[float]:
    return [args["every"] * k for k in range(1, int(span // args["every"]) + 1)]


def test_adding_a_schedule_is_a_function_and_a_row() -> None:
    row = ScheduleInfo(
        "halving",
        halving,
        "halves every `every`",
        aliases=("halve",),
        defaults={"floor": 0.0},
        durations=("every",),
        check=check_halving,
        per_group=("floor",),
        lr_valued=("floor",),
        turning_points=halving_milestones,
    )
    before = schedules.names()
    SCHEDULES.add(row)
    try:
        assert "halving" in schedules.names()
        spec = {"name": "halve", "every": "1ep"}  # by its alias; in epochs: an epoch clock
        rows = schedules.preview(spec, 4, 3, base_lrs=(0.8, 0.4))
        theirs = []
        for epoch in range(3):
            theirs += [[0.8 * 0.5**epoch, 0.4 * 0.5**epoch]] * 4
        assert rows == [*theirs, [0.1, 0.05]]
        oracle, _ = torch_run(lambda o: tls.StepLR(o, step_size=1, gamma=0.5), 4, 3, "epoch")
        assert_close(schedules.preview(spec, 4, 3, base_lrs=BASE), oracle)
        assert schedules.key_points(spec, 4, 3) == [
            ("start", 0, 1.0), ("milestone", 4, 0.5), ("milestone", 8, 0.25), ("end", 12, 0.125)
        ]
        floors = schedules.preview({**spec, "floor": [0.3, 0.0]}, 4, 3, base_lrs=(0.8, 0.4))
        assert floors[-1] == [0.3, 0.05]
        # warm-up, checks and messages come with the row
        assert schedules.preview({**spec, "warmup": 2}, 4, 3)[0] == [pytest.approx(0.01)]
        with pytest.raises(TraincraftError, match="schedule 'halving' every must be > 0"):
            build({"name": "halving", "every": 0})
        with pytest.raises(TraincraftError, match="schedule 'halving' needs every"):
            build("halving")
        with pytest.raises(TraincraftError, match=r"has no argument 'evry' \(did you mean 'every'"):
            build({"name": "halving", "evry": 3})
        with pytest.raises(ValueError, match="already taken: halving, halve"):
            SCHEDULES.add(row)
    finally:
        assert SCHEDULES.remove("halving") is row
    assert schedules.names() == before
    assert "halve" not in SCHEDULES
    with pytest.raises(UnknownNameError):
        build("halving")
