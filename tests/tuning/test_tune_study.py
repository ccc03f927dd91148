"""The study: a search that works, several workers, continuing, abandoned trials, the grid, the
timeout, ``tc.tune``."""

import copy
import os
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, CALLS, MODULE, journal, labels, metric_column, recipe  # noqa: E402

from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.recipe import RecipeError, load_recipe  # noqa: E402
from traincraft.trainer import Trainer  # noqa: E402
from traincraft.tuning.study import tune  # noqa: E402


def test_a_small_search_beats_a_deliberately_bad_learning_rate(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=4)
    plain = {k: v for k, v in raw.items() if k != "tune"}
    history = Trainer.from_recipe(load_recipe(plain), progress=False).fit()
    default = min(row["val_loss"] for row in history.epochs)

    study = tune(raw, study_dir=tmp_path, plots=False)

    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in study.trials)
    assert study.best_value < default - 0.2
    for trial in study.trials:  # the value is the best epoch's figure, read back from the run
        assert trial.value == min(metric_column(tmp_path / f"trial-{trial.number}"))
        assert trial.user_attrs["values"] == {"optimizer.lr": trial.params["optimizer.lr"]}


def test_two_workers_together_finish_exactly_the_requested_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINCRAFT_TEST_HANDSHAKE", str(tmp_path / "worker-started"))
    CALLS["main"] = 0
    base = copy.deepcopy(BASE)
    base["data"].update(dataset=f"{MODULE}:handshake_iris", task="classification")
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, base=base, trials=5)

    study = tune(raw, workers=2, study_dir=tmp_path / "study", plots=False)

    assert len(study.trials) == 5
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    pids = {t.user_attrs["worker"].split(":")[1] for t in study.trials}
    assert len(pids) == 2 and str(os.getpid()) in pids
    assert sorted(p.name for p in (tmp_path / "study").glob("trial-*")) == [
        f"trial-{i}" for i in range(5)
    ]


def test_running_again_continues_the_study_up_to_the_requested_trials(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)
    first = [t.params for t in tune(raw, study_dir=tmp_path, plots=False).trials]
    assert len(first) == 2
    second = tune(raw, trials=4, study_dir=tmp_path, plots=False)
    assert [t.number for t in second.trials] == [0, 1, 2, 3]
    assert [t.params for t in second.trials[:2]] == first
    # The continuation draws new points, not the first run's again.
    assert len({t.params["optimizer.lr"] for t in second.trials}) == 4
    third = tune(raw, trials=3, study_dir=tmp_path, plots=False)
    assert len(third.trials) == 4  # already there: nothing to run


def test_a_trial_left_running_by_a_dead_worker_is_closed_and_made_up(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)
    study = optuna.create_study(
        study_name="iris-tune-test", storage=journal(tmp_path / "study.journal")
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    import socket

    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}:0123abcd")
    study = tune(raw, study_dir=tmp_path, plots=False)
    assert labels(study) == ["abandoned", "complete", "complete"]


def test_a_study_of_another_metric_is_not_continued(tmp_path):
    tune(
        recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=1),
        study_dir=tmp_path,
        plots=False,
    )
    other = recipe(
        {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2, metric="val_accuracy"
    )
    with pytest.raises(
        TraincraftError, match="minimizes val_loss but this recipe asks to maximize val_accuracy"
    ):
        tune(other, study_dir=tmp_path, plots=False)


def test_the_grid_sampler_visits_every_point_once_and_stops(tmp_path):
    space = {"train.max_epochs": {"int": [1, 3]}, "model.hidden_sizes": {"choice": [[4], [8]]}}
    study = tune(recipe(space, trials=10, sampler="grid"), study_dir=tmp_path, plots=False)
    points = {(t.params["train.max_epochs"], t.params["model.hidden_sizes"]) for t in study.trials}
    assert len(study.trials) == 6 and len(points) == 6
    assert all(t.user_attrs["epochs"] == t.params["train.max_epochs"] for t in study.trials)


def test_the_timeout_stops_starting_trials(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=5, timeout="1ms")
    study = tune(raw, study_dir=tmp_path, plots=False)
    assert len(study.trials) == 1  # as with Optuna's timeout, checked after each trial


def test_a_recipe_without_a_tune_section_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="has no tune section"):
        tune(copy.deepcopy(BASE), study_dir=tmp_path)


def test_tc_tune_is_the_function(tmp_path):
    import traincraft as tc

    study = tc.tune(
        recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=1),
        study_dir=tmp_path,
        plots=False,
    )
    assert len(study.trials) == 1


def test_a_metric_that_says_no_direction_is_a_recipe_error(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=1, metric="score")
    with pytest.raises(RecipeError, match=r"^tune.metric: .*'score'") as caught:
        tune(raw, study_dir=tmp_path, plots=False)
    assert str(caught.value).endswith("(set tune.direction: minimize or maximize)")
    assert not list(tmp_path.glob("trial-*"))
