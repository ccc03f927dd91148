"""Every example runs (with few epochs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from traincraft.cli import main

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_recipe_example_trains(name, tmp_path):
    run_dir = tmp_path / "run"
    code = main(["fit", str(EXAMPLES / name), "train.max_epochs=2", "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2 and results["test"]["loss"] == results["test"]["loss"]  # not NaN


def test_python_example_runs():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_api.py"), "--max-epochs", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test: {'loss':" in result.stdout and "'accuracy':" in result.stdout
