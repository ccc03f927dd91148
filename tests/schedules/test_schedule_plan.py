"""Building a schedule: durations on its clock, arguments resolved and checked, one line per mistake."""

from __future__ import annotations

from typing import Any

import pytest
from schedule_oracles import BASE, build, make_optimizer

from traincraft import schedules
from traincraft.errors import TraincraftError
from traincraft.schedules import parse_duration


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
            "eta_min must be a number, got '1e-6'.*a number in quotes is text: write 1e-6 without quotes",
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
