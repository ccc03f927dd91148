"""The Schedule on an optimizer: base LRs, tensor LRs, momenta, exact resume."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from schedule_oracles import make_optimizer, momentum_of

from traincraft import schedules
from traincraft.errors import TraincraftError


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
