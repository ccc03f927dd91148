"""Workers that go away: a spawned worker killed mid-trial, a trial of another machine whose
heartbeat stopped, workers racing for the last trial, a trial lost again and again."""

import copy

import pytest

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, CALLS, MODULE, labels, recipe  # noqa: E402

from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.tuning.study import _ask, search, tune  # noqa: E402


def test_a_worker_killed_mid_trial_is_noticed_and_its_trial_run_again(tmp_path, monkeypatch):
    # The killed worker is a child of this process: unreaped, it would still answer as alive.
    monkeypatch.setenv("TRAINCRAFT_TEST_KILLED", str(tmp_path / "killed"))
    CALLS["main"] = 0
    base = copy.deepcopy(BASE)
    base["model"] = {"name": f"{MODULE}:DiesInWorker"}
    base["data"].update(dataset=f"{MODULE}:iris_after_the_kill", task="classification")
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, base=base, trials=3)

    result = search(
        raw,
        trials=None,
        workers=2,
        storage=None,
        study=None,
        study_dir=tmp_path / "study",
        progress=False,
        plots=False,
    )

    assert (tmp_path / "killed").exists()
    states = labels(result.study)
    assert states.count("complete") == 3 and states.count("abandoned") == 1, states
    assert len(states) == 4
    lost = next(t for t in result.study.trials if labels_of(t) == "abandoned")
    again = [t for t in result.study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert [labels_of(t) for t in again] == ["complete"]
    assert again[0].params == lost.params  # the same point, run again
    assert result.problems == ["worker 1 ended with exit code -9"]


def labels_of(trial):
    from traincraft.tuning.trial import _trial_label

    return _trial_label(trial)


def _stale_trial_of_another_machine(url):
    """A running trial whose worker is on another machine and whose heartbeat stopped an hour
    ago, as a lost machine leaves it."""
    import sqlalchemy

    from traincraft.tuning.storages import quiet_experimental

    with quiet_experimental():
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=60)
        study = optuna.create_study(study_name="iris-tune-test", storage=storage)
        dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
        trial = study.ask(dist)
    trial.set_user_attr("worker", "another-machine:4242:0123abcd")
    storage.record_heartbeat(trial._trial_id)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
    engine.dispose()
    return trial.params


def test_a_lost_machines_trial_is_failed_by_heartbeat_and_run_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    params = _stale_trial_of_another_machine(url)
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)

    study = tune(raw, storage=url, study_dir=tmp_path / "study", plots=False)

    assert labels(study) == ["abandoned", "complete", "complete"]
    assert study.trials[1].params == params
    assert study.trials[1].system_attrs["failed_trial"] == 0


def test_a_trial_that_comes_when_the_study_is_full_is_skipped(tmp_path):
    # Two machines share no lock: both may ask when one trial remains. The later one yields.
    from traincraft.tuning.storages import open_storage

    study = optuna.create_study(storage=open_storage(None, tmp_path))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    other = study.ask(dist)  # another machine's, running
    assert _ask(study, dist, "here:1:token", target=1) is None
    assert labels(study) == ["running", "skipped"]
    study.tell(other, 0.5)
    assert _ask(study, dist, "here:1:token", target=2) is not None


def test_a_trial_lost_again_and_again_counts_as_failed(tmp_path):
    from traincraft.tuning.lost import close_lost
    from traincraft.tuning.storages import MAX_RETRIES, open_storage
    from traincraft.tuning.trial import _counted

    study = optuna.create_study(storage=open_storage(None, tmp_path))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trial = study.ask(dist)
    from traincraft.tuning.lost import machine

    for _ in range(MAX_RETRIES + 1):
        trial.set_user_attr("worker", f"{machine()}:999999999:gone")
        close_lost(study, study.get_trials(deepcopy=False))
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting:
            break
        trial = study.ask(dist)
    assert labels(study) == ["abandoned"] * MAX_RETRIES + ["failed"]
    assert [_counted(t) for t in study.trials] == [False] * MAX_RETRIES + [True]
    assert len({t.params["x"] for t in study.trials}) == 1


def test_a_heartbeat_needs_a_database(tmp_path):
    raw = recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=1)
    with pytest.raises(TraincraftError, match=r"^heartbeat needs a database storage"):
        tune(raw, heartbeat=5, study_dir=tmp_path, plots=False)
    with pytest.raises(TraincraftError, match=r"^heartbeat must be a whole number of seconds"):
        tune(raw, heartbeat=0, storage=f"sqlite:///{tmp_path}/s.db", study_dir=tmp_path)
    assert not list(tmp_path.glob("trial-*"))
