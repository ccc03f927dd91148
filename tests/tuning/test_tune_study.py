"""Hyperparameter search: tune section, space checks, pruning, workers, continuation, outputs."""

import copy
import csv
import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

optuna = pytest.importorskip("optuna")

from traincraft.cli import main as cli_main  # noqa: E402
from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.recipe import RecipeError, load_recipe  # noqa: E402
from traincraft.trainer import Trainer  # noqa: E402
from traincraft.tuning import (  # noqa: E402
    Dimension,
    MetricNotReported,
    TuneSection,
    build_pruner,
    build_sampler,
    parse_time_limit,
    read_section,
    tune,
    tune_main,
)

MODULE = Path(__file__).stem  # how recipes name this module's models and data sets

BASE = {
    "name": "iris-tune-test",
    "data": {"dataset": "iris", "split": {"val": 0.3, "test": 0.0}, "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optimizer": {"name": "adamw", "lr": 1.0e-6},  # deliberately bad: the loss hardly moves
    "train": {"max_epochs": 3, "device": "cpu"},
    "metrics": ["accuracy"],
}


def recipe(space, base=BASE, **tune_keys):
    raw = copy.deepcopy(base)
    raw["tune"] = {"sampler": "random", "pruner": "none", "seed": 0, "space": space, **tune_keys}
    return raw


def metric_column(run_dir, column="val_loss"):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


def labels(study):
    from traincraft.tuning.trial import _trial_label

    return [_trial_label(t) for t in study.trials]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds contention on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- models, data sets


class Fragile(nn.Module):
    """A linear model whose forward raises when built with ``fail=True``."""

    def __init__(self, input_shape, output_size, fail=False):
        super().__init__()
        self.fail = fail
        self.net = nn.Linear(input_shape[0], output_size)

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return self.net(x)


INTERRUPT = {"armed": False}


class Interrupting(Fragile):
    """Presses Ctrl-C (SIGINT to this process) on its first forward pass while armed."""

    def forward(self, x):
        if INTERRUPT["armed"]:
            INTERRUPT["armed"] = False
            os.kill(os.getpid(), signal.SIGINT)
        return self.net(x)


CALLS = {"main": 0}


def handshake_iris():
    """Iris, but the main process's trials wait until a spawned worker has loaded it too.

    The first call in the main process is the space check before the search starts; later ones
    are its trials. So both processes are certain to run trials, however fast one starts.
    """
    from sklearn.datasets import load_iris

    flag = Path(os.environ["TRAINCRAFT_TEST_HANDSHAKE"])
    if multiprocessing.parent_process() is None:
        CALLS["main"] += 1
        deadline = time.monotonic() + 120
        while CALLS["main"] > 1 and not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        flag.touch()
    return load_iris(return_X_y=True)


# ----------------------------------------------------------------------------- the search


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


def test_best_yaml_reproduces_the_best_trial_on_cpu(tmp_path):
    base = copy.deepcopy(BASE)
    base["early_stopping"] = {"patience": 2}
    raw = recipe(
        {
            "optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]},
            "model.hidden_sizes": {"choice": [[8], [16, 16]]},
        },
        base=base,
        trials=3,
    )
    study = tune(raw, study_dir=tmp_path / "study", plots=False)
    best_file = tmp_path / "study" / "best.yaml"
    written = yaml.safe_load(best_file.read_text())
    assert "tune" not in written
    assert written["optimizer"]["lr"] == study.best_params["optimizer.lr"]
    assert written["model"]["hidden_sizes"] == json.loads(study.best_params["model.hidden_sizes"])

    run_dir = tmp_path / "again"
    assert cli_main(["fit", str(best_file), "--run-dir", str(run_dir), "--no-progress"]) == 0
    again = json.loads((run_dir / "results.json").read_text())["best"]["value"]
    assert again == pytest.approx(study.best_value, abs=1e-9, rel=0)


# ------------------------------------------------------------------------- mistakes and failures


@pytest.mark.parametrize(
    ("key", "spec", "expected"),
    [
        ("optimizer.lrr", {"choice": [0.01]}, "no argument 'lrr' (did you mean 'lr'"),
        (
            "data.batchsize",
            {"choice": [8]},
            "data has no key 'batchsize' (did you mean 'batch_size'",
        ),
        ("model.hiden_sizes", {"choice": [[8]]}, "unknown argument 'hiden_sizes'"),
        (
            "trian.max_epochs",
            {"int": [1, 3]},
            "the recipe has no key 'trian' (did you mean 'train'",
        ),
        ("train.max_epochs.x", {"int": [1, 3]}, "train.max_epochs is 3, not a section"),
        ("tune.trials", {"int": [1, 3]}, "the tune section itself cannot be searched"),
        ("data.batch_size", {"choice": [16, 0]}, "tune.space 'data.batch_size' = 0"),
        ("model.activation", {"choice": ["relu", "gelux"]}, "unknown activation 'gelux'"),
    ],
)
def test_a_bad_space_key_or_value_fails_before_any_trial(tmp_path, key, spec, expected):
    with pytest.raises(TraincraftError, match="tune.space") as caught:
        tune(recipe({key: spec}), study_dir=tmp_path, plots=False)
    assert expected in str(caught.value)
    assert not (tmp_path / "study.journal").exists()
    assert not list(tmp_path.glob("trial-*"))


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
        study_name="iris-tune-test", storage=_journal(tmp_path / "study.journal")
    )
    assert len(study.trials) == 1 and study.trials[0].state.name == "FAIL"


def test_ctrl_c_stops_cleanly_and_running_again_makes_up_the_trial(tmp_path, capsys):
    base = copy.deepcopy(BASE)
    base["model"] = {"name": f"{MODULE}:Interrupting"}
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, base=base, trials=2)
        )
    )
    INTERRUPT["armed"] = True
    try:
        code = tune_main([str(path), "--study-dir", str(tmp_path / "study"), "--no-progress"])
    finally:
        INTERRUPT["armed"] = False
    assert code == 130
    assert (
        "interrupted: running the same command again continues the study" in capsys.readouterr().err
    )

    study = optuna.load_study(
        study_name="iris-tune-test", storage=_journal(tmp_path / "study" / "study.journal")
    )
    assert labels(study) == ["interrupted"]
    assert tune_main([str(path), "--study-dir", str(tmp_path / "study"), "--no-progress"]) == 0
    study = optuna.load_study(
        study_name="iris-tune-test", storage=_journal(tmp_path / "study" / "study.journal")
    )
    assert labels(study) == ["interrupted", "complete", "complete"]


def test_a_trial_left_running_by_a_dead_worker_is_closed_and_made_up(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)
    study = optuna.create_study(
        study_name="iris-tune-test", storage=_journal(tmp_path / "study.journal")
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


# ------------------------------------------------------------------------- samplers, timeout, CLI


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


def test_the_command_writes_the_outputs_and_a_summary(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    space = {
        "optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]},
        "model.hidden_sizes": {"choice": [[8], [16, 16]]},
    }
    path.write_text(yaml.safe_dump(recipe(space, trials=2), sort_keys=False))
    folder = tmp_path / "out"
    code = tune_main([str(path), "train.max_epochs=2", "--trials", "4", "--study-dir", str(folder)])
    assert code == 0
    err = capsys.readouterr().err
    assert "study 'iris-tune-test': 4 trials (4 complete)" in err
    assert f"files: {folder} (best.yaml: traincraft fit {folder / 'best.yaml'})" in err
    assert err.count("complete after 2 epochs") == 4  # the override reached every trial
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete"] * 4
    assert list(rows[0])[:8] == [
        "number",
        "state",
        "value",
        "best_epoch",
        "epochs",
        "seconds",
        "optimizer.lr",
        "model.hidden_sizes",
    ]
    for name in ("history.png", "importances.png", "parallel_coordinates.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_reports_a_mistake_in_one_line(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe({"optimizer.lrr": {"choice": [0.1]}})))
    assert tune_main([str(path), "--study-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tune.space") and "did you mean 'lr'" in err and "\n" not in err
    with pytest.raises(TraincraftError):
        tune_main([str(path), "--study-dir", str(tmp_path / "s"), "--debug"])


# ----------------------------------------------------------------------------- the section


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


def test_a_recipe_without_a_tune_section_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="has no tune section"):
        tune(copy.deepcopy(BASE), study_dir=tmp_path)


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


def test_samplers_and_pruners_by_name():
    dims = {"x": Dimension.parse("x", {"choice": [1, 2]})}
    assert isinstance(build_sampler("tpe", dims, seed=0), optuna.samplers.TPESampler)
    assert isinstance(build_sampler({"name": "random"}, dims), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler("grid", dims), optuna.samplers.GridSampler)
    assert isinstance(build_pruner("hyperband", max_epochs=9), optuna.pruners.HyperbandPruner)
    assert isinstance(
        build_pruner({"name": "median", "n_startup_trials": 2}), optuna.pruners.MedianPruner
    )
    assert isinstance(build_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(TraincraftError, match="pruner 'median'"):
        build_pruner({"name": "median", "n_startup": 2})
    try:
        import cmaes  # noqa: F401
    except ImportError:
        with pytest.raises(TraincraftError, match="pip install cmaes"):
            build_sampler("cmaes", dims)


def test_tc_tune_is_the_function(tmp_path):
    import traincraft as tc

    study = tc.tune(
        recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=1),
        study_dir=tmp_path,
        plots=False,
    )
    assert len(study.trials) == 1


def _journal(path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
