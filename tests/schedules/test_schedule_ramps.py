"""Warm-up and cool-down around any schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from schedule_oracles import make_optimizer, momentum_of

from traincraft import schedules


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
