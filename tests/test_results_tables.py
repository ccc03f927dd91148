"""results.json of a classification run holds the confusion matrix and the per-class table of its
validation and test splits, computed with the best weights; a regression run holds none."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from sklearn import metrics as skm

import traincraft as tc
from traincraft.checkpoint import load_weights
from traincraft.run import load_run

sys.path.insert(0, str(Path(__file__).parent))
from cli_recipes import IRIS, fit  # noqa: E402


def test_a_classification_run_writes_its_tables_for_val_and_test(tmp_path):
    recipe = {**IRIS, "metrics": ["accuracy", "mcc", {"name": "ovr_auc", "metric": "auroc"}]}
    code, run_dir = fit(tmp_path, "train.max_epochs=2", recipe=recipe)
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"loss", "accuracy", "mcc", "ovr_auc"}  # figures only
    rows = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_ovr_auc" in rows and not any("confusion" in r or "per_class" in r for r in rows)
    assert set(results["confusion_matrix"]) == set(results["per_class"]) == {"val", "test"}

    # The same tables from the run folder's data and best weights, by hand.
    recipe_, _ = load_run(run_dir)
    trainer = tc.Trainer.from_recipe(recipe_, progress=False)
    trainer.model.load_state_dict(load_weights(run_dir / "best.safetensors"))
    data = trainer.data
    for split, (x, y) in (("val", data.val), ("test", data.test)):
        with torch.no_grad():
            predicted = trainer.model(x).argmax(1)
        expected = skm.confusion_matrix(y, predicted, labels=[0, 1, 2]).tolist()
        assert results["confusion_matrix"][split] == expected
        table = results["per_class"][split]
        assert [row["class"] for row in table] == data.class_names
        assert [row["support"] for row in table] == [sum(r) for r in expected]
        f1 = skm.f1_score(y, predicted, labels=[0, 1, 2], average=None, zero_division=0)
        assert [row["f1"] for row in table] == [float(v) for v in f1]
    assert sum(map(sum, results["confusion_matrix"]["test"])) == len(data.test[1])
    assert results["test"]["accuracy"] == sum(results["confusion_matrix"]["test"][i][i] for i in range(3)) / len(data.test[1])


def test_a_regression_run_has_no_tables(tmp_path):
    recipe = {"name": "diabetes-test", "data": {"dataset": "diabetes", "split": {"val": 0.2, "test": 0.2}},
              "model": {"name": "mlp", "hidden_sizes": [8]}, "loss": "mse", "train": {"max_epochs": 1},
              "metrics": ["mape", "explained_variance"]}
    code, run_dir = fit(tmp_path, recipe=recipe)
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"loss", "mape", "explained_variance"}
    assert "confusion_matrix" not in results and "per_class" not in results
