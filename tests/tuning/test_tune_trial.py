"""One trial: its value, pruning, a failing trial, a metric never reported, memory."""

import copy
import csv
import gc
import warnings

import pytest
import torch

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, MODULE, journal, metric_column, recipe  # noqa: E402

from traincraft.tuning.study import tune  # noqa: E402
from traincraft.tuning.trial import MetricNotReported  # noqa: E402


def test_direction_is_inferred_from_the_metric_and_the_value_is_the_best_epoch(tmp_path):
    raw = recipe(
        {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2, metric="val_accuracy"
    )
    study = tune(raw, study_dir=tmp_path, plots=False)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in study.trials:
        assert trial.value == max(metric_column(tmp_path / f"trial-{trial.number}", "val_accuracy"))


def test_the_median_pruner_stops_trials_with_an_awful_learning_rate(tmp_path):
    awful, good = 1.0e-6, 0.05
    base = copy.deepcopy(BASE)
    base["train"]["max_epochs"] = 4
    raw = recipe(
        {"optimizer.lr": {"choice": [awful, good]}},
        base=base,
        trials=8,
        seed=4,
        pruner={"name": "median", "n_startup_trials": 1},
    )
    study = tune(raw, study_dir=tmp_path, plots=False)

    seen_good = False
    pruned = 0
    for trial in study.trials:
        lr = trial.params["optimizer.lr"]
        if lr == good:
            assert trial.state.name == "COMPLETE" and trial.user_attrs["epochs"] == 4
            seen_good = True
        elif seen_good:  # worse than the median of the finished ones at epoch 1
            assert trial.state.name == "PRUNED" and trial.user_attrs["epochs"] == 1
            assert trial.value == trial.intermediate_values[1]
            pruned += 1
    assert pruned >= 2  # the seeded draws put awful trials after a good one


def test_memory_does_not_grow_across_trials(tmp_path):
    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():  # isinstance() touches deprecated torch objects
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)
    tune(raw, study_dir=tmp_path, plots=False)  # the first trials warm up caches
    before = live_tensors()
    study = tune(raw, trials=7, study_dir=tmp_path, plots=False)
    assert len(study.trials) == 7
    assert live_tensors() == before


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    base = copy.deepcopy(BASE)
    base["model"] = {"name": f"{MODULE}:Fragile"}
    raw = recipe({"model.fail": {"choice": [True, False]}}, base=base, trials=2, sampler="grid")
    study = tune(raw, study_dir=tmp_path, plots=False)

    by_fail = {t.params["model.fail"]: t for t in study.trials}
    assert by_fail[True].state.name == "FAIL"
    assert "RuntimeError: boom" in by_fail[True].user_attrs["error"]
    assert by_fail[False].state.name == "COMPLETE"
    rows = {row["number"]: row for row in csv.DictReader((tmp_path / "trials.csv").open())}
    failed = rows[str(by_fail[True].number)]
    assert failed["state"] == "failed" and "boom" in failed["error"] and failed["value"] == ""
    # A failed trial is done: running again has nothing left to do.
    assert len(tune(raw, study_dir=tmp_path, plots=False).trials) == 2


def test_a_metric_that_is_never_reported_stops_the_search(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=3, metric="val_f1")
    with pytest.raises(MetricNotReported, match="'val_f1' is not among the reported figures"):
        tune(raw, study_dir=tmp_path, plots=False)
    study = optuna.load_study(
        study_name="iris-tune-test", storage=journal(tmp_path / "study.journal")
    )
    assert len(study.trials) == 1 and study.trials[0].state.name == "FAIL"
