"""The tune section: its keys, durations, directions, the search space's dimensions."""

import pytest

optuna = pytest.importorskip("optuna")

from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.recipe import RecipeError  # noqa: E402
from traincraft.tuning.section import (  # noqa: E402
    Dimension,
    TuneSection,
    TuneSectionError,
    parse_time_limit,
)
from traincraft.tuning.space import read_section  # noqa: E402


def test_the_section_reads_durations_directions_and_names():
    section = TuneSection.model_validate(
        {
            "metric": "val_accuracy",
            "timeout": "1h30m",
            "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        }
    )
    assert (
        section.timeout == 5400.0
        and section.direction_name() == "maximize"
        and section.trials == 20
    )
    assert (
        TuneSection(
            metric="score", direction="min", space={"a.b": {"uniform": [0, 1]}}
        ).direction_name()
        == "minimize"
    )
    assert [parse_time_limit(v) for v in ("90s", "30m", "2h", "1d", 45, "2.5m", "1m30s")] == [
        90,
        1800,
        7200,
        86400,
        45,
        150,
        90,
    ]
    assert parse_time_limit("250ms") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="duration"):
        parse_time_limit("soon")


@pytest.mark.parametrize(
    ("tune_section", "expected"),
    [
        (
            {"space": {"optimizer.lr": {"loguniform": [0, 1]}}},
            "tune.space: optimizer.lr: loguniform needs 0 < low < high",
        ),
        (
            {"space": {"optimizer.lr": {"logunifrom": [1e-4, 1]}}},
            "unknown key 'logunifrom' (did you mean 'loguniform'",
        ),
        ({"space": {"train.max_epochs": {"int": [1.5, 3]}}}, "int needs whole numbers"),
        (
            {"space": {"model.dropout": {"uniform": [0, 0.5], "step": 0.2}}},
            "not a whole number of steps",
        ),
        ({"space": {"model.dropout": {"choice": []}}}, "choice needs a non-empty list"),
        ({"space": {}}, "recipe error at tune.space"),
        (
            {"space": {"a": {"uniform": [0, 1]}}, "sampler": "tpee"},
            "unknown sampler 'tpee' (did you mean 'tpe'",
        ),
        (
            {"space": {"a": {"uniform": [0, 1]}}, "trails": 3},
            "tune.trails: unknown key (did you mean 'trials'",
        ),
        ({"space": {"a": {"uniform": [0, 1]}}, "timeout": "soon"}, "tune.timeout"),
    ],
)
def test_mistakes_in_the_section_are_one_line(tune_section, expected):
    with pytest.raises(RecipeError) as caught:
        read_section({"tune": tune_section})
    assert expected in str(caught.value)


def test_dimensions_map_to_optuna_distributions_and_back():
    lr = Dimension.parse("optimizer.lr", {"loguniform": [1e-4, 1e-2]})
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    sizes = Dimension.parse("model.hidden_sizes", {"choice": [[32], [64, 64]]})
    assert sizes.labels == ("[32]", "[64, 64]") and sizes.value("[64, 64]") == [64, 64]
    assert sizes.value("[64, 64]") is not sizes.value("[64, 64]")  # each trial gets its own list
    width = Dimension.parse("model.hidden", {"int": [8, 32], "step": 8})
    assert width.distribution() == optuna.distributions.IntDistribution(8, 32, step=8)
    assert width.grid() == [8, 16, 24, 32]
    assert Dimension.parse("d", {"uniform": [0, 0.5], "step": 0.25}).grid() == [0.0, 0.25, 0.5]
    with pytest.raises(TraincraftError, match="grid sampler needs a finite set"):
        lr.grid()


def test_parse_time_limit_reads_seconds_and_durations():
    assert [parse_time_limit(v) for v in (45, 2.5, "90", "90s", "30m", "1h30m", "1h 30m")] == [
        45.0,
        2.5,
        90.0,
        90.0,
        1800.0,
        5400.0,
        5400.0,
    ]
    with pytest.raises(ValueError) as caught:
        parse_time_limit("soon")
    assert str(caught.value) == (
        "timeout 'soon': expected seconds or a duration such as 90s, 30m, 2h"
    )
    with pytest.raises(ValueError, match=r"^timeout '90x': expected seconds or a duration"):
        parse_time_limit("90x")
    with pytest.raises(ValueError, match=r"^timeout must be > 0, got 0$"):
        parse_time_limit(0)


def test_a_metric_that_says_no_direction_asks_for_one():
    section = TuneSection(metric="score", space={"a.b": {"uniform": [0, 1]}})
    with pytest.raises(TuneSectionError, match=r"^tune.metric: .*'score'") as caught:
        section.direction_name()
    assert str(caught.value).endswith("(set tune.direction: minimize or maximize)")
