"""What a study leaves in its folder: best.yaml trains the best trial again."""

import copy
import json

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, recipe  # noqa: E402

from traincraft.cli import main as cli_main  # noqa: E402
from traincraft.tuning.study import tune  # noqa: E402


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
    again = json.loads((run_dir / "best.json").read_text())["value"]
    assert again == pytest.approx(study.best_value, abs=1e-9, rel=0)
