"""A real shared database: ``traincraft tune`` workers in separate processes (each with its own
study folder, as on separate machines) share one study on PostgreSQL by URL. A worker that
stops answering mid-trial (a machine lost: its process frozen, its heartbeat gone) loses its
trial to the others, which run it again: the study ends with exactly ``--trials`` complete
trials, every point of the grid once.

The server is a throwaway cluster started here (Debian's ``postgresql`` package); the test
skips, saying why, where it cannot be started.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from postgres_server import PostgresUnavailable, throwaway_cluster  # noqa: E402
from tune_helpers import BASE, MODULE, labels, recipe  # noqa: E402

TESTS = Path(__file__).resolve().parent
TIMEOUT = 180  # a hang fails the test instead of blocking CI
GRID = {"optimizer.lr": {"choice": [0.01, 0.02, 0.05]}, "train.max_epochs": {"choice": [2, 3]}}


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg", reason="no PostgreSQL driver (pip install 'traincraft[postgres]')")
    try:
        with throwaway_cluster() as url:
            yield url
    except PostgresUnavailable as err:
        pytest.skip(f"PostgreSQL cannot be started here: {err}")


def worker(tmp_path, url, name, **env):
    base = dict(BASE, model={"name": f"{MODULE}:Marked"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(GRID, base=base, trials=6, sampler="grid")))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), environment.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "traincraft", "tune", str(path), "--storage", url, "--study", "grid",
         "--study-dir", str(tmp_path / name), "--heartbeat", "1", "--no-progress"],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_workers_sharing_a_database_finish_the_study_when_one_is_lost(tmp_path, postgres_url):
    marks = tmp_path / "marks"
    marks.mkdir()
    lost = worker(tmp_path, postgres_url, "machine-a", TRAINCRAFT_TEST_MARKS=str(marks),
                  TRAINCRAFT_TEST_SLOW="1")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (marks / str(lost.pid)).exists():  # its first trial is under way
            assert lost.poll() is None, lost.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first worker never started a trial"
            time.sleep(0.02)
        lost.send_signal(signal.SIGSTOP)  # alive to the system, silent to the study
        other = worker(tmp_path, postgres_url, "machine-b", TRAINCRAFT_TEST_MARKS=str(marks))
        _, err = other.communicate(timeout=TIMEOUT)
    finally:
        lost.kill()
        lost.send_signal(signal.SIGCONT)
        lost.communicate(timeout=60)

    assert other.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="grid", storage=postgres_url)
    states = labels(study)
    assert states.count("complete") == 6 and states.count("abandoned") == 1, states
    points = [tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(set(points)) == 6  # the whole grid, each point once
    abandoned = next(t for t in study.trials if t.state.name == "FAIL")
    assert abandoned.user_attrs["worker"].split(":")[1] == str(lost.pid)
    again = [t for t in study.trials if t.system_attrs.get("failed_trial") == abandoned.number]
    assert [t.params for t in again] == [abandoned.params]
    assert "study 'grid': 7 trials (6 complete, 1 abandoned)" in err
