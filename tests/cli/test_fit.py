"""traincraft fit and resume (traincraft.cli.fit): the run folder they write, and Ctrl-C."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from traincraft.cli import main

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import IRIS, fit, write_recipe  # noqa: E402


def test_fit_writes_a_complete_run_folder(tmp_path, capsys):
    code, run_dir = fit(tmp_path, "train.max_epochs=2")
    assert code == 0
    assert {"recipe.yaml", "env.json", "data.json", "metrics.csv", "best.safetensors", "results.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["train"]["max_epochs"] == 2  # the override is in the resolved recipe
    assert resolved["train"]["precision"] == "32"  # defaults are filled in
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"loss", "accuracy"}
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 0
    err = capsys.readouterr().err
    assert "stopped: max_epochs after 2 epochs" in err and f"files:   {run_dir}" in err


def test_the_resolved_recipe_repeats_the_run(tmp_path):
    _, first = fit(tmp_path)
    again = tmp_path / "again"
    assert main(["fit", str(first / "recipe.yaml"), "--run-dir", str(again), "--no-progress"]) == 0
    assert (first / "metrics.csv").read_text().split("seconds")[0] == (again / "metrics.csv").read_text().split("seconds")[0]
    a = [r for r in csv.DictReader((first / "metrics.csv").open())]
    b = [r for r in csv.DictReader((again / "metrics.csv").open())]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in b
    ]


def test_ctrl_c_writes_what_is_done_and_exits_130(tmp_path):
    recipe = {**IRIS, "train": {"max_epochs": 100000}, "early_stopping": None}
    path = write_recipe(tmp_path, recipe)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "traincraft", "fit", str(path), "--run-dir", str(run_dir), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted: stopping after this step" in err
    assert f"interrupted: what was done so far is in {run_dir}" in err
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "metrics.csv").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stop_reason"] == "interrupted"


def test_a_run_with_a_relative_data_file_resumes_and_repeats_from_its_folder(tmp_path, monkeypatch):
    from sklearn.datasets import load_iris

    project = tmp_path / "project"
    project.mkdir()
    iris = load_iris(as_frame=True).frame
    iris.to_csv(project / "iris.csv", index=False)
    recipe = {**IRIS, "data": {**IRIS["data"], "dataset": "iris.csv", "target": "target",
                               "task": "classification"}}
    run_dir = tmp_path / "runs" / "a"
    monkeypatch.chdir(tmp_path)  # elsewhere than the recipe's folder
    assert main(["fit", str(write_recipe(project, recipe)), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert main(["resume", str(run_dir), "train.max_epochs=4", "--allow-changes", "--no-progress"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 4
    again = tmp_path / "again"
    assert main(["fit", str(run_dir / "recipe.yaml"), "--run-dir", str(again), "--no-progress"]) == 0
