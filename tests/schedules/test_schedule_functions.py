"""The closed forms: torch's own schedulers are the oracle wherever torch has one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from schedule_oracles import BASE, assert_close, make_optimizer, our_run, torch_run
from torch.optim import lr_scheduler as tls

from traincraft import schedules
from traincraft.errors import TraincraftError

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


def test_a_schedule_function_returning_a_tensor_gives_plain_numbers():
    # seeds/001's warm-up + cosine LambdaLR returns 0-d tensors
    rows = schedules.preview({"name": "lambda", "lr_lambda": lambda e: torch.tensor(0.5) ** e}, 1, 4)
    assert [row[0] for row in rows] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert all(type(row[0]) is float for row in rows)
    with pytest.raises(TraincraftError, match=r"lr_lambda\(0\) returned 'fast'; it must return a number"):
        schedules.preview({"name": "lambda", "lr_lambda": lambda e: "fast"}, 1, 2)


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
