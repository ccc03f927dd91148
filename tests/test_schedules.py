"""Learning-rate schedules: torch's own schedulers are the oracle wherever torch has one."""

from __future__ import annotations

import importlib.util
import math
import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as tls

from traincraft import schedules
from traincraft.errors import TraincraftError, UnknownNameError
from traincraft.schedules import Duration, parse_duration
from traincraft.schedules.command import _table

BASE = (0.1, 0.05, 0.02)  # three parameter groups with different base LRs
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- one run, by torch and by us


def make_optimizer(kind: str = "sgd", base: Sequence[float] = BASE) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in base]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=base[0])
    if kind == "adagrad":
        return torch.optim.Adagrad(groups, lr=base[0])
    return torch.optim.SGD(groups, lr=base[0], momentum=0.9)


def momentum_of(opt: torch.optim.Optimizer) -> list[float]:
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def torch_run(
    factory: Callable[[torch.optim.Optimizer], Any],
    spe: int,
    epochs: int,
    interval: str,
    *,
    optimizer: str = "sgd",
    metrics: Sequence[float] | None = None,
) -> tuple[list[list[float]], list[list[float]]]:
    """Step torch's scheduler as a training loop does; the LRs (and momenta) in force before every
    step, and after the last one."""
    opt = make_optimizer(optimizer)
    scheduler = factory(opt)
    rows, moms = [], []
    for t in range(1, spe * epochs + 1):
        rows.append([float(g["lr"]) for g in opt.param_groups])
        moms.append(momentum_of(opt))
        opt.step()
        if interval == "step":
            scheduler.step()
        elif t % spe == 0:
            if metrics is None:
                scheduler.step()
            else:
                scheduler.step(metrics[t // spe - 1])
    rows.append([float(g["lr"]) for g in opt.param_groups])
    moms.append(momentum_of(opt))
    return rows, moms


def our_run(
    spec: Any,
    spe: int,
    epochs: int,
    *,
    optimizer: str = "sgd",
    metrics: Sequence[float] | None = None,
    monitor: str = "val_loss",
) -> tuple[list[list[float]], list[list[float]], schedules.Schedule]:
    """The same loop with a traincraft Schedule on a real optimizer."""
    opt = make_optimizer(optimizer)
    schedule = schedules.build(spec, opt, steps_per_epoch=spe, total_steps=spe * epochs)
    schedule.start()
    rows, moms = [], []
    for t in range(1, spe * epochs + 1):
        rows.append([float(g["lr"]) for g in opt.param_groups])
        assert rows[-1] == schedule.lrs()
        moms.append(momentum_of(opt))
        opt.step()
        schedule.step_end(t)
        if t % spe == 0:
            figures = {} if metrics is None else {monitor: metrics[t // spe - 1]}
            schedule.epoch_end(t // spe, figures)
    rows.append([float(g["lr"]) for g in opt.param_groups])
    moms.append(momentum_of(opt))
    return rows, moms, schedule


def assert_close(ours: list[list[float]], theirs: list[list[float]], rel: float = 1e-9) -> None:
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=rel, abs=0.0), f"step {t}: {a} != {b}"


# --------------------------------------------------------------------------- torch equivalence

SPE, EPOCHS = 7, 6  # 42 steps: several epochs, a step count that is not a round number

# (our spec, torch factory, how torch is stepped)
TORCH_CASES: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "step per step": (
        {"name": "step", "step_size": 5, "gamma": 0.5},
        lambda o: tls.StepLR(o, step_size=5, gamma=0.5),
        "step",
    ),
    "step in epochs": (
        {"name": "step", "step_size": "2ep", "gamma": 0.5},
        lambda o: tls.StepLR(o, step_size=2, gamma=0.5),
        "epoch",
    ),
    "multistep per step": (
        {"name": "multistep", "milestones": [4, 11, 30], "gamma": 0.3},
        lambda o: tls.MultiStepLR(o, milestones=[4, 11, 30], gamma=0.3),
        "step",
    ),
    "multistep in epochs": (
        {"name": "multistep", "milestones": ["1ep", "4ep"]},
        lambda o: tls.MultiStepLR(o, milestones=[1, 4]),
        "epoch",
    ),
    "exponential per step": (
        {"name": "exponential", "gamma": 0.95},
        lambda o: tls.ExponentialLR(o, gamma=0.95),
        "step",
    ),
    "exponential per epoch": (
        {"name": "exponential", "gamma": 0.7, "interval": "epoch"},
        lambda o: tls.ExponentialLR(o, gamma=0.7),
        "epoch",
    ),
    "cosine whole run": (
        {"name": "cosine", "eta_min": 1e-3},
        lambda o: tls.CosineAnnealingLR(o, T_max=SPE * EPOCHS, eta_min=1e-3),
        "step",
    ),
    "cosine shorter than the run": (
        {"name": "cosine", "T_max": 17},
        lambda o: tls.CosineAnnealingLR(o, T_max=17),
        "step",
    ),
    "cosine in epochs, past T_max": (
        {"name": "cosine", "T_max": "4ep", "eta_min": 0.001},
        lambda o: tls.CosineAnnealingLR(o, T_max=4, eta_min=0.001),
        "epoch",
    ),
    "cosine restarts T_mult 2": (
        {"name": "cosine_restarts", "T_0": 5, "T_mult": 2, "eta_min": 0.001},
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.001),
        "step",
    ),
    "cosine restarts in epochs": (
        {"name": "cosine_restarts", "T_0": "2ep"},
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=2),
        "epoch",
    ),
    "polynomial": (
        {"name": "polynomial", "power": 2.0},
        lambda o: tls.PolynomialLR(o, total_iters=SPE * EPOCHS, power=2.0),
        "step",
    ),
    "polynomial shorter than the run": (
        {"name": "polynomial", "total": "50%", "power": 0.5},
        lambda o: tls.PolynomialLR(o, total_iters=21, power=0.5),
        "step",
    ),
    "linear": (
        {"name": "linear", "start_factor": 0.5, "end_factor": 0.1},
        lambda o: tls.LinearLR(o, start_factor=0.5, end_factor=0.1, total_iters=SPE * EPOCHS),
        "step",
    ),
    "linear in epochs": (
        {"name": "linear", "start_factor": 0.25, "end_factor": 1.0, "total": "3ep"},
        lambda o: tls.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=3),
        "epoch",
    ),
    "lambda per step": (
        {"name": "lambda", "lr_lambda": lambda t: 1.0 / (1.0 + 0.1 * t)},
        lambda o: tls.LambdaLR(o, lr_lambda=lambda t: 1.0 / (1.0 + 0.1 * t)),
        "step",
    ),
    "lambda per epoch, one per group": (
        {
            "name": "lambda",
            "interval": "epoch",
            "lr_lambda": [lambda e: 0.9**e, lambda e: 1.0 + e, "math:sqrt"],
        },
        lambda o: tls.LambdaLR(o, lr_lambda=[lambda e: 0.9**e, lambda e: 1.0 + e, math.sqrt]),
        "epoch",
    ),
    "onecycle, max_lr per group": (
        {"name": "onecycle", "max_lr": [1.0, 0.5, 0.2]},
        lambda o: tls.OneCycleLR(o, max_lr=[1.0, 0.5, 0.2], total_steps=SPE * EPOCHS),
        "step",
    ),
    "onecycle linear three-phase": (
        {
            "name": "onecycle",
            "max_lr": 0.3,
            "anneal_strategy": "linear",
            "three_phase": True,
            "pct_start": 0.25,
            "div_factor": 10.0,
            "final_div_factor": 100.0,
            "base_momentum": 0.8,
            "max_momentum": 0.9,
        },
        lambda o: tls.OneCycleLR(
            o,
            max_lr=0.3,
            total_steps=SPE * EPOCHS,
            anneal_strategy="linear",
            three_phase=True,
            pct_start=0.25,
            div_factor=10.0,
            final_div_factor=100.0,
            base_momentum=0.8,
            max_momentum=0.9,
        ),
        "step",
    ),
    "cyclic triangular": (
        {
            "name": "cyclic",
            "base_lr": 0.01,
            "max_lr": [0.1, 0.2, 0.3],
            "step_size_up": 4,
            "step_size_down": 6,
        },
        lambda o: tls.CyclicLR(
            o, base_lr=0.01, max_lr=[0.1, 0.2, 0.3], step_size_up=4, step_size_down=6
        ),
        "step",
    ),
    "cyclic triangular2": (
        {
            "name": "cyclic",
            "base_lr": [0.01, 0.02, 0.03],
            "max_lr": 0.5,
            "step_size_up": 5,
            "mode": "triangular2",
        },
        lambda o: tls.CyclicLR(
            o, base_lr=[0.01, 0.02, 0.03], max_lr=0.5, step_size_up=5, mode="triangular2"
        ),
        "step",
    ),
    "cyclic exp_range": (
        {
            "name": "cyclic",
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size_up": 3,
            "mode": "exp_range",
            "gamma": 0.97,
            "base_momentum": 0.7,
            "max_momentum": 0.95,
        },
        lambda o: tls.CyclicLR(
            o,
            base_lr=0.01,
            max_lr=0.1,
            step_size_up=3,
            mode="exp_range",
            gamma=0.97,
            base_momentum=0.7,
            max_momentum=0.95,
        ),
        "step",
    ),
    "warm-up then cosine (SequentialLR)": (
        {"name": "cosine", "warmup": {"duration": 6, "start_factor": 0.1}, "eta_min": 1e-4},
        lambda o: tls.SequentialLR(
            o,
            [
                tls.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=6),
                tls.CosineAnnealingLR(o, T_max=SPE * EPOCHS - 6, eta_min=1e-4),
            ],
            milestones=[6],
        ),
        "step",
    ),
    "constant": ("constant", lambda o: tls.ConstantLR(o, factor=1.0), "step"),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch_scheduler(case: str) -> None:
    spec, factory, interval = TORCH_CASES[case]
    theirs, their_moms = torch_run(factory, SPE, EPOCHS, interval)
    ours, our_moms, schedule = our_run(spec, SPE, EPOCHS)
    assert_close(ours, theirs)
    if schedule.momenta() is not None:  # onecycle and cyclic cycle the momentum too
        assert_close(our_moms, their_moms)
    else:
        assert all(m == [0.9, 0.9, 0.9] for m in our_moms)  # left alone
    # preview drives the same schedule without an optimizer of ours
    assert_close(schedules.preview(spec, SPE, EPOCHS, base_lrs=BASE), theirs)


@pytest.mark.parametrize("three_phase", [False, True])
def test_onecycle_cycles_adam_beta1_like_torch(three_phase: bool) -> None:
    spec = {"name": "onecycle", "max_lr": [0.01, 0.02, 0.005], "three_phase": three_phase}
    theirs, their_moms = torch_run(
        lambda o: tls.OneCycleLR(
            o, max_lr=[0.01, 0.02, 0.005], total_steps=SPE * EPOCHS, three_phase=three_phase
        ),
        SPE,
        EPOCHS,
        "step",
        optimizer="adamw",
    )
    ours, our_moms, schedule = our_run(spec, SPE, EPOCHS, optimizer="adamw")
    assert_close(ours, theirs)
    assert_close(our_moms, their_moms)
    assert schedule.momenta() == pytest.approx(their_moms[-1], rel=1e-9)
    # beta2 is never touched
    opt = make_optimizer("adamw")
    s = schedules.build(spec, opt, steps_per_epoch=SPE, total_steps=SPE * EPOCHS)
    s.start()
    s.step_end(10)
    assert all(g["betas"][1] == 0.999 for g in opt.param_groups)


def test_plateau_matches_reduce_lr_on_plateau() -> None:
    metrics = [1.0, 0.8, 0.79995, 0.81, 0.85, 0.7, 0.7, 0.71, 0.72, 0.73, 0.74, 0.6]
    spec = {
        "name": "plateau",
        "patience": 1,
        "factor": 0.5,
        "cooldown": 1,
        "min_lr": [0.01, 0.01, 0.015],
        "threshold": 1e-3,
    }
    theirs, _ = torch_run(
        lambda o: tls.ReduceLROnPlateau(
            o, patience=1, factor=0.5, cooldown=1, min_lr=[0.01, 0.01, 0.015], threshold=1e-3
        ),
        3,
        len(metrics),
        "epoch",
        metrics=metrics,
    )
    ours, _, _ = our_run(spec, 3, len(metrics), metrics=metrics)
    assert_close(ours, theirs)
    assert ours[-1] != ours[0]  # the sequence really cut the LR, down to the floors
    assert ours[-1][2] == 0.015
    assert_close(schedules.preview(spec, 3, len(metrics), base_lrs=BASE, metrics=metrics), theirs)


def test_plateau_abs_threshold_max_mode_matches_torch() -> None:
    metrics = [0.5, 0.6, 0.605, 0.61, 0.62, 0.62, 0.7, 0.69, 0.69, 0.69]
    spec = {
        "name": "plateau",
        "monitor": "val_accuracy",
        "patience": 2,
        "factor": 0.2,
        "threshold": 0.01,
        "threshold_mode": "abs",
    }
    theirs, _ = torch_run(
        lambda o: tls.ReduceLROnPlateau(
            o, mode="max", patience=2, factor=0.2, threshold=0.01, threshold_mode="abs"
        ),
        2,
        len(metrics),
        "epoch",
        metrics=metrics,
    )
    ours, _, schedule = our_run(spec, 2, len(metrics), metrics=metrics, monitor="val_accuracy")
    assert schedule.monitor == "val_accuracy"
    assert_close(ours, theirs)
    assert ours[-1] != ours[0]


CLOSED_FORMS = {
    "step": (
        {"name": "step", "step_size": 3, "gamma": 0.7},
        lambda o: tls.StepLR(o, step_size=3, gamma=0.7),
    ),
    "multistep": (
        {"name": "multistep", "milestones": [2, 9, 20], "gamma": 0.4},
        lambda o: tls.MultiStepLR(o, milestones=[2, 9, 20], gamma=0.4),
    ),
    "exponential": (
        {"name": "exponential", "gamma": 0.9},
        lambda o: tls.ExponentialLR(o, gamma=0.9),
    ),
    "cosine": (
        {"name": "cosine", "T_max": 30, "eta_min": 0.005},
        lambda o: tls.CosineAnnealingLR(o, T_max=30, eta_min=0.005),
    ),
    "polynomial": (
        {"name": "polynomial", "total": 25, "power": 3.0},
        lambda o: tls.PolynomialLR(o, total_iters=25, power=3.0),
    ),
    "linear": (
        {"name": "linear", "total": 20, "start_factor": 0.2, "end_factor": 0.9},
        lambda o: tls.LinearLR(o, total_iters=20, start_factor=0.2, end_factor=0.9),
    ),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_matches_torch_closed_form(name: str) -> None:
    spec, factory = CLOSED_FORMS[name]
    scheduler = factory(make_optimizer())
    ours = schedules.preview(spec, 10, 4, base_lrs=BASE)
    for t, row in enumerate(ours):
        scheduler.last_epoch = t
        assert row == pytest.approx(scheduler._get_closed_form_lr(), rel=1e-12, abs=0.0), t


# --------------------------------------------------------------------------- durations


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


def test_bad_duration_inside_a_spec_says_where() -> None:
    with pytest.raises(
        TraincraftError, match=r"schedule 'step' step_size: '3 epochs' is not a duration"
    ):
        schedules.build(
            {"name": "step", "step_size": "3 epochs"},
            make_optimizer(),
            steps_per_epoch=10,
            total_steps=100,
        )


def test_durations_in_steps_epochs_and_shares_agree() -> None:
    # 10 steps per epoch, 200 steps: 40 steps == "4ep" == "20%"
    runs = [
        schedules.preview(
            {"name": "step", "step_size": size, "gamma": 0.5}, 10, 20, schedule_interval="step"
        )
        for size in (40, "4ep", "20%")
    ]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][39] == [1.0] and runs[0][40] == [0.5] and runs[0][200] == [0.5**5]


def test_share_rounds_half_up_to_whole_steps() -> None:
    # 2.5% of 100 steps is 2.5 -> 3 steps of warm-up (not Python's round-half-even 2)
    s = schedules.build(
        {"name": "constant", "warmup": "2.5%"},
        make_optimizer(),
        steps_per_epoch=10,
        total_steps=100,
    )
    assert s._plan.warmup.steps == 3
    assert parse_duration("2.5%").value == 2.5


def test_epoch_durations_change_only_at_epoch_boundaries() -> None:
    rows = schedules.preview({"name": "cosine", "T_max": "5ep"}, 4, 5)
    for epoch in range(5):
        assert len({row[0] for row in rows[epoch * 4 : (epoch + 1) * 4]}) == 1
    assert rows[-1] == [0.0]
    # the same schedule in steps changes at every step
    rows = schedules.preview({"name": "cosine", "T_max": 20}, 4, 5)
    assert len({row[0] for row in rows}) == 21


def test_interval_is_inferred_from_the_units() -> None:
    opt = make_optimizer()
    kw = {"steps_per_epoch": 10, "total_steps": 100}
    assert (
        schedules.build({"name": "step", "step_size": "2ep"}, opt, **kw)._plan.run.interval
        == "epoch"
    )
    assert (
        schedules.build({"name": "step", "step_size": 20}, opt, **kw)._plan.run.interval == "step"
    )
    mixed = {"name": "multistep", "milestones": ["2ep", "50%"]}
    assert schedules.build(mixed, opt, **kw)._plan.run.interval == "step"
    assert (
        schedules.build({"name": "exponential", "gamma": 0.9}, opt, **kw)._plan.run.interval
        == "step"
    )
    forced = schedules.build(
        {"name": "exponential", "gamma": 0.9}, opt, schedule_interval="epoch", **kw
    )
    assert forced._plan.run.interval == "epoch"


def test_epoch_unit_needs_steps_per_epoch() -> None:
    with pytest.raises(TraincraftError, match="steps per epoch is unknown"):
        schedules.build(
            {"name": "step", "step_size": "2ep"},
            make_optimizer(),
            steps_per_epoch=0,
            total_steps=100,
        )


def test_share_needs_the_run_length() -> None:
    with pytest.raises(TraincraftError, match="needs the run's length"):
        schedules.build(
            {"name": "constant", "warmup": "5%"},
            make_optimizer(),
            steps_per_epoch=10,
            total_steps=0,
        )
    with pytest.raises(TraincraftError, match="T_max defaults to the whole run"):
        schedules.build("cosine", make_optimizer(), steps_per_epoch=10, total_steps=0)
    # a schedule that needs no length works without one
    s = schedules.build(
        {"name": "step", "step_size": 3}, make_optimizer(), steps_per_epoch=0, total_steps=0
    )
    s.start()
    s.step_end(3)
    assert s.lrs() == pytest.approx([0.01, 0.005, 0.002])


# --------------------------------------------------------------------------- warm-up and cool-down


def test_quickstart_cosine_with_warmup_ends_at_eta_min_exactly() -> None:
    spe, epochs, eta_min = 23, 40, 1e-6
    total = spe * epochs
    rows = schedules.preview(
        {"name": "cosine", "warmup": "5%", "eta_min": eta_min}, spe, epochs, base_lrs=(3e-3,)
    )
    w = round(0.05 * total)  # 46 steps
    assert len(rows) == total + 1
    assert rows[-1] == [eta_min]  # exactly, after the last step
    assert rows[w] == [3e-3]  # the cosine starts at the base LR when the warm-up ends
    assert rows[0] == [pytest.approx(3e-3 * 0.01)]
    # the cosine spans the run minus the warm-up: T_max = total - w
    for t in (w, w + 100, total - 1):
        expected = eta_min + (3e-3 - eta_min) * (1 + math.cos(math.pi * (t - w) / (total - w))) / 2
        assert rows[t][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kind", "factor_at"),
    [
        ("linear", lambda t: 0.01 + 0.99 * t / 8),
        ("exponential", lambda t: 0.01 ** (1 - t / 8)),
        ("constant", lambda t: 0.01),
    ],
)
def test_warmup_kinds(kind: str, factor_at: Callable[[int], float]) -> None:
    spec = {
        "name": "step",
        "step_size": 100,
        "warmup": {"duration": 8, "kind": kind, "start_factor": 0.01},
    }
    rows = schedules.preview(spec, 10, 20, base_lrs=(0.5, 0.1))
    for t in range(8):
        assert rows[t] == pytest.approx([0.5 * factor_at(t), 0.1 * factor_at(t)], rel=1e-12)
    assert rows[8] == [0.5, 0.1]
    # the inner clock starts at the end of the warm-up: step_size 100 decays at step 108
    assert rows[107] == [0.5, 0.1]
    assert rows[108] == pytest.approx([0.05, 0.01])


def test_warmup_short_form_is_linear_from_one_percent() -> None:
    a = schedules.preview({"name": "constant", "warmup": "1ep"}, 10, 3)
    b = schedules.preview(
        {"name": "constant", "warmup": {"duration": 10, "kind": "linear", "start_factor": 0.01}},
        10,
        3,
    )
    assert a == b
    assert a[0] == [pytest.approx(0.01)] and a[5] == [pytest.approx(0.01 + 0.99 * 0.5)]


def test_warmup_wraps_onecycle_and_cyclic() -> None:
    spec = {"name": "cyclic", "max_lr": 0.4, "base_lr": 0.1, "step_size_up": 5, "warmup": 10}
    rows = schedules.preview(spec, 10, 4)
    assert rows[0] == [pytest.approx(0.001)]  # 1% of the cycle's first value, base_lr
    assert rows[10] == [0.1] and rows[15] == [pytest.approx(0.4)]
    spec = {"name": "onecycle", "max_lr": 1.0, "warmup": 10}
    rows = schedules.preview(spec, 10, 4)
    plain = schedules.preview({"name": "onecycle", "max_lr": 1.0}, 10, 3)
    assert rows[10:] == plain  # onecycle over the 30 steps after the warm-up
    assert rows[9][0] == pytest.approx((0.01 + 0.99 * 0.9) * plain[0][0])


def test_warmup_holds_momentum_at_the_schedules_first_value() -> None:
    opt = make_optimizer()
    s = schedules.build({"name": "onecycle", "warmup": 5}, opt, steps_per_epoch=10, total_steps=50)
    s.start()
    assert s.momenta() == [0.95, 0.95, 0.95]
    s.step_end(4)
    assert s.momenta() == [0.95, 0.95, 0.95] and momentum_of(opt) == [0.95] * 3


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_cooldown_goes_to_its_end_factor(kind: str) -> None:
    spec = {
        "name": "cosine",
        "eta_min": 0.1,
        "warmup": 10,
        "cooldown": {"duration": "20%", "kind": kind, "end_factor": 0.01},
    }
    rows = schedules.preview(spec, 10, 10, base_lrs=(1.0, 0.5))
    # cosine spans 100 - 10 - 20 = 70 steps and reaches eta_min (absolute) where cool-down starts
    assert rows[80] == [0.1, 0.1]
    assert rows[100] == pytest.approx([0.01, 0.005])
    shape = (lambda q: q) if kind == "linear" else (lambda q: (1 - math.cos(math.pi * q)) / 2)
    assert rows[90] == pytest.approx(
        [0.1 + (0.01 - 0.1) * shape(0.5), 0.1 + (0.005 - 0.1) * shape(0.5)], rel=1e-12
    )


def test_cooldown_short_form_is_linear_to_zero() -> None:
    rows = schedules.preview({"name": "constant", "cooldown": 10}, 10, 5)
    assert rows[40] == [1.0] and rows[45] == [0.5] and rows[50] == [0.0]


def test_plateau_counts_no_bad_epochs_during_warmup() -> None:
    spec = {"name": "plateau", "patience": 0, "factor": 0.5, "warmup": "3ep"}
    worse = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # gets worse every epoch
    rows = schedules.preview(spec, 5, 6, metrics=worse)
    # epochs 1-3 are warm-up: no cut although patience is 0
    assert rows[15] == [1.0]
    assert rows[20] == [0.5]  # epoch 4: first bad epoch after warm-up -> cut
    assert rows[25] == [0.25]
    assert rows[30] == [0.125]


def test_plateau_restore_best_flag_and_cut_signal() -> None:
    opt = make_optimizer()
    s = schedules.build(
        {"name": "plateau", "patience": 1, "restore_best_on_reduce": True},
        opt,
        steps_per_epoch=4,
        total_steps=40,
    )
    assert s.restore_best_on_reduce is True
    s.start()
    cuts = [
        s.epoch_end(e, {"val_loss": v, "train_loss": 0.0})
        for e, v in enumerate([1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.8], start=1)
    ]
    assert cuts == [False, False, True, False, False, True, False]
    assert s.lrs() == pytest.approx([0.001, 0.0005, 0.0002])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    other = schedules.build("cosine", make_optimizer(), steps_per_epoch=4, total_steps=40)
    assert other.restore_best_on_reduce is False
    assert other.epoch_end(1, {}) is False


def test_plateau_cooldown_wrapper_needs_the_dict_form() -> None:
    opt = make_optimizer()
    kw = {"steps_per_epoch": 10, "total_steps": 100}
    s = schedules.build({"name": "plateau", "cooldown": {"duration": "10%"}}, opt, **kw)
    assert s._plan.cooldown.steps == 10 and s._plan.args[0]["cooldown"] == 0
    s = schedules.build({"name": "plateau", "cooldown": 2}, opt, **kw)
    assert s._plan.cooldown is None and s._plan.args[0]["cooldown"] == 2
    with pytest.raises(TraincraftError, match=r"write cooldown: \{duration: '10%'\}"):
        schedules.build({"name": "plateau", "cooldown": "10%"}, opt, **kw)


# --------------------------------------------------------------------------- groups and base LRs


def test_base_lr_is_initial_lr_after_lr_mult() -> None:
    opt = make_optimizer()
    for group, initial in zip(opt.param_groups, (0.3, 0.03, 0.003)):
        group["initial_lr"] = initial  # what traincraft.optim sets: base lr × lr_mult
        group["lr"] = 123.0  # a stale value must not be read
    s = schedules.build(
        {"name": "step", "step_size": 2, "gamma": 0.5}, opt, steps_per_epoch=2, total_steps=10
    )
    s.start()
    assert s.lrs() == [0.3, 0.03, 0.003]
    s.step_end(2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.15, 0.015, 0.0015])


def test_absolute_values_are_the_same_for_every_group_like_torch() -> None:
    rows = schedules.preview({"name": "cosine", "eta_min": 0.01}, 5, 2, base_lrs=BASE)
    assert rows[-1] == [0.01, 0.01, 0.01]
    rows = schedules.preview({"name": "cosine", "eta_min": [0.01, 0.005, 0.0]}, 5, 2, base_lrs=BASE)
    assert rows[-1] == [0.01, 0.005, 0.0]
    # onecycle without max_lr peaks at each group's own base LR (lr_mult keeps working)
    rows = schedules.preview({"name": "onecycle", "pct_start": 0.5}, 5, 2, base_lrs=BASE)
    assert max(r[0] for r in rows) == pytest.approx(0.1) and max(
        r[2] for r in rows
    ) == pytest.approx(0.02)


def test_per_group_list_of_the_wrong_length() -> None:
    with pytest.raises(
        TraincraftError, match="max_lr has 2 values but the optimizer has 3 parameter groups"
    ):
        schedules.build(
            {"name": "onecycle", "max_lr": [0.1, 0.2]},
            make_optimizer(),
            steps_per_epoch=5,
            total_steps=50,
        )


def test_tensor_lr_is_filled_in_place() -> None:
    opt = make_optimizer()
    tensor = torch.tensor(0.1)
    opt.param_groups[0]["lr"] = tensor
    s = schedules.build(
        {"name": "exponential", "gamma": 0.5}, opt, steps_per_epoch=5, total_steps=50
    )
    s.start()
    s.step_end(2)
    assert opt.param_groups[0]["lr"] is tensor
    assert float(tensor) == pytest.approx(0.025)


def test_momenta_none_unless_cycled() -> None:
    assert (
        schedules.build("cosine", make_optimizer(), steps_per_epoch=5, total_steps=50).momenta()
        is None
    )
    s = schedules.build(
        {"name": "onecycle", "cycle_momentum": False},
        make_optimizer(),
        steps_per_epoch=5,
        total_steps=50,
    )
    assert s.momenta() is None


# ---------------------------------------------------------------------- schedules without torch


def test_inverse_sqrt_uses_the_warmup_as_timescale() -> None:
    rows = schedules.preview({"name": "inverse_sqrt", "warmup": 10}, 10, 10)
    assert rows[10] == [1.0]
    for t in (20, 50, 100):
        assert rows[t][0] == pytest.approx(math.sqrt(10 / t), rel=1e-12)  # fairseq's form
    rows = schedules.preview({"name": "inverse_sqrt", "timescale": 4}, 10, 2)
    assert rows[12][0] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("linear", lambda q: q),
        ("cosine", lambda q: (1 - math.cos(math.pi * q)) / 2),
        ("sqrt", math.sqrt),
    ],
)
def test_warmup_stable_decay(kind: str, shape: Callable[[float], float]) -> None:
    spec = {
        "name": "warmup_stable_decay",
        "warmup": 10,
        "decay": "30%",
        "decay_kind": kind,
        "end_factor": 0.1,
    }
    rows = schedules.preview(spec, 10, 10)
    assert rows[0] == [pytest.approx(0.01)]
    assert all(r == [1.0] for r in rows[10:71])  # stable until the last 30 steps
    for t in (71, 75, 90, 100):
        q = (t - 70) / 30
        assert rows[t][0] == pytest.approx(1 - 0.9 * shape(q), rel=1e-12)
    assert rows[100] == [pytest.approx(0.1)]


def test_warmup_stable_decay_warms_up_by_default() -> None:
    rows = schedules.preview("warmup_stable_decay", 10, 10)
    assert rows[0] == [pytest.approx(0.01)] and rows[5] == [1.0] and rows[-1] == [0.0]


def test_cosine_restarts_exact_at_restart_boundaries() -> None:
    # T_0=3, T_mult=2: restarts at 3, 9, 21, 45 (counting, never log)
    rows = schedules.preview({"name": "cosine_restarts", "T_0": 3, "T_mult": 2}, 10, 5)
    for t in (0, 3, 9, 21, 45):
        assert rows[t] == [1.0]
    assert rows[20][0] == pytest.approx((1 + math.cos(math.pi * 11 / 12)) / 2)


# --------------------------------------------------------------------------- state


def assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (int, float, str, bool), type(value)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "cosine", "warmup": "5%", "eta_min": 1e-5, "cooldown": "10%"},
        {"name": "onecycle", "max_lr": [0.3, 0.2, 0.1]},
        {"name": "cyclic", "max_lr": 0.5, "step_size_up": 4, "mode": "triangular2"},
        {"name": "plateau", "patience": 0, "factor": 0.5, "cooldown": 1, "warmup": 3},
        {"name": "step", "step_size": "1ep", "gamma": 0.8},
    ],
)
def test_resume_continues_the_exact_sequence(spec: dict[str, Any]) -> None:
    spe, total = 10, 80
    metrics = [1.0, 0.9, 0.95, 0.97, 0.85, 0.9, 0.91, 0.92]

    def drive(s: Any, opt: torch.optim.Optimizer, steps: range) -> list[list[float]]:
        out = []
        for t in steps:
            opt.step()
            s.step_end(t)
            if t % spe == 0:
                s.epoch_end(t // spe, {"val_loss": metrics[t // spe - 1]})
            out.append([g["lr"] for g in opt.param_groups] + momentum_of(opt))
        return out

    opt = make_optimizer()
    straight = schedules.build(spec, opt, steps_per_epoch=spe, total_steps=total)
    straight.start()
    expected = drive(straight, opt, range(1, total + 1))

    opt = make_optimizer()
    first = schedules.build(spec, opt, steps_per_epoch=spe, total_steps=total)
    first.start()
    drive(first, opt, range(1, 38))
    state = first.state_dict()
    assert_plain(state)

    opt2 = make_optimizer()
    resumed = schedules.build(spec, opt2, steps_per_epoch=spe, total_steps=total)
    resumed.start()
    resumed.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert drive(resumed, opt2, range(38, total + 1)) == expected[37:]


def test_resume_with_another_schedule_is_refused() -> None:
    state = schedules.build(
        "cosine", make_optimizer(), steps_per_epoch=5, total_steps=50
    ).state_dict()
    other = schedules.build("linear", make_optimizer(), steps_per_epoch=5, total_steps=50)
    with pytest.raises(TraincraftError, match="checkpoint's schedule is 'cosine'"):
        other.load_state_dict(state)


# -------------------------------------------------------------------- your own torch scheduler


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_callable_torch_scheduler_is_stepped_at_its_interval(interval: str) -> None:
    def make(opt: torch.optim.Optimizer) -> Any:
        return tls.StepLR(opt, step_size=3, gamma=0.5)

    theirs, _ = torch_run(make, 4, 5, interval)
    rows = schedules.preview(make, 4, 5, base_lrs=BASE, schedule_interval=interval)
    assert_close(rows, theirs)


def test_callable_defaults_to_epoch_and_reports_momenta() -> None:
    opt = make_optimizer()
    s = schedules.build(
        lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=20),
        opt,
        steps_per_epoch=4,
        total_steps=20,
        schedule_interval="step",
    )
    assert isinstance(s, schedules.TorchSchedule)
    s.start()
    for t in range(1, 6):
        opt.step()
        s.step_end(t)
    assert s.momenta() == momentum_of(opt)
    assert s.lrs() == [g["lr"] for g in opt.param_groups]
    state = s.state_dict()
    opt2 = make_optimizer()
    again = schedules.build(
        lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=20),
        opt2,
        steps_per_epoch=4,
        total_steps=20,
        schedule_interval="step",
    )
    again.load_state_dict(state)
    opt.step()
    opt2.step()
    s.step_end(6)
    again.step_end(6)
    assert again.lrs() == s.lrs()
    default = schedules.build(
        lambda o: tls.StepLR(o, 1), make_optimizer(), steps_per_epoch=4, total_steps=20
    )
    assert default.interval == "epoch"
    assert default.momenta() is None


def test_callable_must_return_a_scheduler() -> None:
    with pytest.raises(TraincraftError, match="returned int, not a torch LRScheduler"):
        schedules.build(lambda o: 3, make_optimizer(), steps_per_epoch=4, total_steps=20)
    with pytest.raises(TraincraftError, match="use schedule=\\{'name': 'plateau'"):
        schedules.build(
            lambda o: tls.ReduceLROnPlateau(o), make_optimizer(), steps_per_epoch=4, total_steps=20
        )


# --------------------------------------------------------------------------- errors


def build(spec: Any, **kw: Any) -> Any:
    kw = {"steps_per_epoch": 10, "total_steps": 100, **kw}
    return schedules.build(spec, make_optimizer(kw.pop("optimizer", "sgd")), **kw)


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


def test_unknown_argument_suggests_the_closest() -> None:
    with pytest.raises(
        TraincraftError,
        match=r"schedule 'cosine' has no argument 'eta_mn' \(did you mean 'eta_min'",
    ):
        build({"name": "cosine", "eta_mn": 0.1})
    with pytest.raises(TraincraftError, match="schedule 'cosine' warmup has no key 'lenght'"):
        build({"name": "cosine", "warmup": {"lenght": 5}})


def test_missing_required_argument() -> None:
    with pytest.raises(TraincraftError, match="schedule 'exponential' needs gamma"):
        build("exponential")
    with pytest.raises(TraincraftError, match="schedule 'cyclic' needs max_lr"):
        build("cyclic")


def test_milestones_out_of_order() -> None:
    with pytest.raises(
        TraincraftError, match=r"milestones must increase, but '2ep' \(20 steps\) comes after '30%'"
    ):
        build({"name": "multistep", "milestones": [10, "30%", "2ep"]})
    with pytest.raises(TraincraftError, match="milestones must increase"):
        build({"name": "multistep", "milestones": [10, 10]})


def test_warmup_longer_than_the_run() -> None:
    with pytest.raises(
        TraincraftError,
        match=r"warm-up \(120 steps\) is as long as the run or longer \(100 steps\)",
    ):
        build({"name": "cosine", "warmup": "12ep"})
    with pytest.raises(TraincraftError, match="leave none of the run's 100 steps"):
        build({"name": "cosine", "warmup": 60, "cooldown": "40%"})


def test_explicit_total_checks() -> None:
    with pytest.raises(
        TraincraftError,
        match=r"total is 120 but the run leaves 100 steps.*OneCycleLR needs them equal",
    ):
        build({"name": "onecycle", "total": 120})
    assert build({"name": "onecycle", "total": 90, "warmup": 10}).name == "onecycle"
    with pytest.raises(
        TraincraftError,
        match=r"total is 110 but the run leaves 100 steps to the schedule, so it would stop",
    ):
        build({"name": "polynomial", "total": 110})
    with pytest.raises(TraincraftError, match="total is 12 but the run leaves 10 epochs"):
        build({"name": "linear", "total": "12ep"})
    assert build({"name": "linear", "total": "50%"}).name == "linear"  # shorter: holds end_factor


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "cosine", "eta_min": "1e-6"},
            "eta_min must be a number, got '1e-6'.*write 1.0e-6",
        ),
        ({"name": "step", "step_size": 0}, "step_size must be > 0"),
        ({"name": "cosine_restarts", "T_0": 5, "T_mult": 1.5}, "T_mult must be an integer >= 1"),
        ({"name": "onecycle", "pct_start": 1.5}, "pct_start must be between 0 and 1"),
        (
            {"name": "onecycle", "anneal_strategy": "cosine"},
            "anneal_strategy must be one of 'cos', 'linear'",
        ),
        ({"name": "cyclic", "max_lr": 1, "mode": "triangle"}, "did you mean 'triangular'"),
        ({"name": "plateau", "factor": 1.0}, r"factor must be in \[0, 1\)"),
        ({"name": "plateau", "patience": -1}, "patience must be an integer number of epochs"),
        ({"name": "plateau", "monitor": "throughput"}, "cannot tell whether 'throughput'"),
        ({"name": "plateau", "threshold": -0.1}, "threshold must be a finite number >= 0"),
        (
            {"name": "cosine", "warmup": {"duration": 5, "kind": "cubic"}},
            "warmup kind must be one of",
        ),
        (
            {"name": "cosine", "warmup": {"duration": 5, "start_factor": 2}},
            r"start_factor must be in \(0, 1\]",
        ),
        ({"name": "cosine", "warmup": {"kind": "linear"}}, "warmup needs a duration"),
        ({"name": "cosine", "interval": "batch"}, "interval must be one of 'step', 'epoch'"),
        ({"name": "lambda", "lr_lambda": 3}, "lr_lambda must be a function"),
        ({"name": "lambda", "lr_lambda": "math:nothing"}, "module 'math' has no 'nothing'"),
        (
            {"name": "warmup_stable_decay", "decay": "90%", "warmup": "20%"},
            r"decay \(90 steps\) is longer than the schedule",
        ),
        ({"cosine": 1}, "needs a 'name' key"),
    ],
)
def test_mistakes_are_one_line(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(TraincraftError, match=message) as err:
        build(spec)
    assert "\n" not in str(err.value)


def test_cycle_momentum_needs_momentum_or_betas() -> None:
    with pytest.raises(
        TraincraftError, match="Adagrad has neither momentum nor betas; set cycle_momentum: false"
    ):
        build("onecycle", optimizer="adagrad")
    assert (
        build({"name": "onecycle", "cycle_momentum": False}, optimizer="adagrad").momenta() is None
    )


def test_plateau_monitor_never_reported_lists_the_reported_names() -> None:
    s = build({"name": "plateau", "monitor": "val_los", "mode": "min"})
    s.start()
    with pytest.raises(TraincraftError) as err:
        s.epoch_end(1, {"train_loss": 0.5, "val_loss": 0.4})
    message = str(err.value)
    assert message.startswith(
        "schedule 'plateau': monitor 'val_los' is not among the reported figures"
    )
    assert "did you mean 'val_loss'" in message and "reported: train_loss, val_loss" in message
    s = build("plateau")
    with pytest.raises(TraincraftError, match="give validation data, or monitor 'train_loss'"):
        s.epoch_end(1, {"train_loss": 0.5})


# ------------------------------------------------------------------ preview, key points, plot


def test_preview_rows_and_max_steps() -> None:
    rows = schedules.preview({"name": "linear"}, 4, 5, base_lrs=(1.0, 0.5), max_steps=10)
    assert len(rows) == 11 and all(len(r) == 2 for r in rows)
    assert rows[0] == [1.0, 0.5] and rows[10] == [0.0, 0.0]  # "whole run" is the 10 steps
    with pytest.raises(TraincraftError, match="steps_per_epoch and epochs > 0"):
        schedules.preview("cosine", 0, 5)


def test_preview_plateau_metrics_must_cover_the_epochs() -> None:
    with pytest.raises(TraincraftError, match="has 2 values but the preview spans 4 epochs"):
        schedules.preview("plateau", 5, 4, metrics=[1.0, 2.0])
    # without metrics plateau never cuts
    assert schedules.preview({"name": "plateau", "patience": 0}, 5, 4) == [[1.0]] * 21


def test_key_points() -> None:
    spec = {
        "name": "multistep",
        "milestones": ["3ep", "6ep"],
        "gamma": 0.5,
        "warmup": "1ep",
        "cooldown": "1ep",
    }
    points = schedules.key_points(spec, 10, 10, base_lr=0.2)
    assert points == [
        ("start", 0, pytest.approx(0.002)),
        ("end of warm-up", 10, 0.2),
        ("milestone", 40, 0.1),  # milestones count from the end of the warm-up
        ("milestone", 70, 0.05),
        ("start of cool-down", 90, 0.05),
        ("end", 100, 0.0),
    ]
    onecycle = schedules.key_points({"name": "onecycle", "max_lr": 1.0}, 10, 10)
    assert onecycle[1] == ("milestone", 29, 1.0)  # torch's peak: step pct_start·total - 1
    cuts = schedules.key_points(
        {"name": "plateau", "patience": 0, "factor": 0.5}, 5, 4, metrics=[1.0, 2.0, 0.5, 0.7]
    )
    assert cuts == [("start", 0, 1.0), ("milestone", 10, 0.5), ("end", 20, 0.25)]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = schedules.preview({"name": "cosine", "warmup": 5}, 10, 4, base_lrs=(1.0, 0.5))
    path = tmp_path / "out" / "lr.png"
    fig = schedules.plot(rows, steps_per_epoch=10, title="cosine", path=path, labels=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert list(ax.get_lines()[1].get_ydata()) == [r[1] for r in rows]
    assert ax.get_title() == "cosine"
    single = schedules.plot([r[0] for r in rows])
    assert len(single.axes[0].get_lines()) == 1
    assert not list(tmp_path.glob("out/.*"))  # no temporary file left behind


# --------------------------------------------------------------------------- the command


def fake_recipe(schedule: Any = None, **train: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        schedule=schedule,
        data=types.SimpleNamespace(batch_size=32),
        train=types.SimpleNamespace(
            **{"max_epochs": 4, "max_steps": None, "accumulate": 1, **train}
        ),
        optimizer=types.SimpleNamespace(
            lr=0.01, param_groups=[{"params": "head.*", "lr_mult": 10}]
        ),
    )


def test_preview_main_prints_points_and_writes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import traincraft.recipe
    import traincraft.run

    recipe = fake_recipe({"name": "cosine", "warmup": "1ep"}, accumulate=3)
    monkeypatch.setattr(traincraft.recipe, "load_recipe", lambda source, overrides=(): recipe)
    # 1000 samples, batch 32 -> 32 batches; accumulate 3 -> 11 optimizer steps per epoch
    data = types.SimpleNamespace(train=(torch.zeros(1000, 2), torch.zeros(1000)))
    monkeypatch.setattr(traincraft.run, "prepare_data", lambda r: data)
    csv, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    code = schedules.preview_main(["r.yaml", "--plot", str(png), "--csv", str(csv)])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 epochs × 11 steps per epoch = 44 optimizer steps" in out
    assert re.search(r"end of warm-up\s+11\s+1\.00\s+0\.1\b", out)  # head group: 0.01 × 10
    assert re.search(r"end\s+44\s+4\.00\s+0\b", out)
    lines = csv.read_text().splitlines()
    assert lines[0] == "step,epoch,lr,lr/head.*,lr/default"
    assert len(lines) == 46
    assert lines[12].split(",")[:2] == ["11", "1.0"]
    assert lines[12].split(",")[2:] == ["0.1", "0.1", "0.01"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_preview_main_metric_file_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import traincraft.recipe

    recipe = fake_recipe({"name": "plateau", "patience": 0})
    monkeypatch.setattr(traincraft.recipe, "load_recipe", lambda source, overrides=(): recipe)
    metric = tmp_path / "loss.txt"
    metric.write_text("1.0\n0.9\n\n0.95\n0.8\n")
    assert (
        schedules.preview_main(["r.yaml", "--steps-per-epoch", "5", "--metric", str(metric)]) == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"milestone\s+15\s+3\.00\s+0\.01\b", out)  # cut after the bad third epoch

    metric.write_text("1.0\nlow\n")
    assert (
        schedules.preview_main(["r.yaml", "--steps-per-epoch", "5", "--metric", str(metric)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --metric") and "line 2: 'low' is not a number" in err
    assert (
        schedules.preview_main(
            [
                "r.yaml",
                "--steps-per-epoch",
                "5",
                "--epochs",
                "9",
                "--metric",
                str(tmp_path / "none.txt"),
            ]
        )
        == 2
    )
    assert "cannot read it" in capsys.readouterr().err
    with pytest.raises(TraincraftError):
        schedules.preview_main(
            ["r.yaml", "--steps-per-epoch", "5", "--metric", str(tmp_path / "none.txt"), "--debug"]
        )


def test_preview_main_on_a_real_recipe_without_a_schedule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from traincraft.recipe import load_recipe
    from traincraft.run import prepare_data

    code = schedules.preview_main(["quickstart", "schedule=null", "train.accumulate=2", "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0
    n_train = len(prepare_data(load_recipe("quickstart")).train[1])
    spe = math.ceil(math.ceil(n_train / 64) / 2)
    assert f"3 epochs × {spe} steps per epoch = {3 * spe} optimizer steps" in out
    assert re.search(rf"end\s+{3 * spe}\s+3\.00\s+0\.003\b", out)


# --------------------------------------------------------------------------- docs


def test_docs_show_every_schedule() -> None:
    path = ROOT / "docs" / "make_schedule_plots.py"
    spec = importlib.util.spec_from_file_location("make_schedule_plots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shown = {example["spec"]["name"] for example in module.EXAMPLES.values()}
    assert set(schedules.names()) <= shown
    page = (ROOT / "docs" / "schedules.md").read_text()
    for name in module.EXAMPLES:
        assert f"img/schedules/{name}.png" in page
        assert module.snippet(name) in page  # the snippet beside the plot is what drew it
        assert (ROOT / "docs" / "img" / "schedules" / f"{name}.png").is_file()


def test_preview_table_elides_long_milestone_lists() -> None:
    points = schedules.key_points({"name": "cyclic", "max_lr": 2.0, "step_size_up": 2}, 10, 10)
    assert len(points) == 51  # start, 49 turning points, end
    lines = _table(points, 10).splitlines()
    assert len(lines) == 1 + 24 + 1
    assert lines[13] == "... 27 more"
    assert lines[1].split() == ["start", "0", "0.00", "1"]
    assert lines[-1].split() == ["end", "100", "10.00", "1"]


def test_a_schedule_function_returning_a_tensor_gives_plain_numbers():
    # seeds/001's warm-up + cosine LambdaLR returns 0-d tensors
    rows = schedules.preview({"name": "lambda", "lr_lambda": lambda e: torch.tensor(0.5) ** e}, 1, 4)
    assert [row[0] for row in rows] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert all(type(row[0]) is float for row in rows)
    with pytest.raises(TraincraftError, match=r"lr_lambda\(0\) returned 'fast'; it must return a number"):
        schedules.preview({"name": "lambda", "lr_lambda": lambda e: "fast"}, 1, 2)


def test_a_torch_scheduler_with_tensor_lrs_is_recorded_step_by_step():
    import traincraft as tc

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    X, y = torch.randn(16, 2), torch.randn(16, 1)

    def make(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: torch.tensor(0.5) ** step)

    trainer = tc.Trainer(model, loss="mse", lr=1.0, optimizer="sgd", batch_size=8, max_epochs=3,
                         schedule=make, schedule_interval="step", progress=False, seed=0)
    history = trainer.fit((X, y))
    assert [row["lr"] for row in history.epochs] == [0.5, 0.125, 0.03125]  # the last step of each epoch


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_multiplicative_matches_torch_multiplicative_lr(interval):
    factor = lambda k: 0.9 if k % 2 else 0.95  # noqa: E731
    spec = {"name": "multiplicative", "lr_lambda": factor, "interval": interval}
    rows = schedules.preview(spec, 3, 4, base_lrs=(0.1,))
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    oracle = torch.optim.lr_scheduler.MultiplicativeLR(probe, factor)
    expected = []
    for step in range(len(rows)):
        expected.append(probe.param_groups[0]["lr"])
        if interval == "step" or (step + 1) % 3 == 0:
            probe.step()
            oracle.step()
    assert [row[0] for row in rows] == pytest.approx(expected, rel=1e-12)
    assert schedules.names().count("multiplicative") == 1
