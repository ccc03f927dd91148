"""One file holds "the best": best.json (with best.safetensors); results.json and summary.json
do not repeat it, and the report still reads older run folders that had it there."""

import json
import sys
from pathlib import Path

from traincraft.report import load_run_files

sys.path.insert(0, str(Path(__file__).parent))
from cli_recipes import IRIS, fit  # noqa: E402


def test_best_json_alone_names_the_best_epoch(tmp_path):
    code, run_dir = fit(tmp_path, recipe={**IRIS, "train": {"max_epochs": 4}})
    assert code == 0
    best = json.loads((run_dir / "best.json").read_text())
    rows = [json.loads(json.dumps(r)) for r in _metrics(run_dir)]
    lowest = min(rows, key=lambda r: float(r["val_loss"]))
    assert best["epoch"] == int(lowest["epoch"]) and best["monitor"] == "val_loss"
    assert best["value"] == float(lowest["val_loss"])
    results = json.loads((run_dir / "results.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "best" not in results and "best" not in summary
    assert set(results) >= {"stop_reason", "epochs", "steps", "test"}
    assert load_run_files(run_dir).best == best


def _metrics(run_dir):
    import csv

    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def test_an_older_run_folder_keeps_its_best_in_the_report(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.9,0.8\n2,0.5,0.6\n")
    old = {"epoch": 2, "monitor": "val_loss", "value": 0.6}
    (tmp_path / "summary.json").write_text(json.dumps({"stop_reason": "max_epochs", "best": old}))
    assert load_run_files(tmp_path).best == old
    (tmp_path / "summary.json").unlink()
    (tmp_path / "results.json").write_text(json.dumps({"best": old}))
    assert load_run_files(tmp_path).best == old


def test_an_swa_run_has_no_best_epoch_on_its_curves(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,0.9\n2,0.5\n")
    (tmp_path / "best.json").write_text(json.dumps({"epoch": 2, "step": 8, "swa": True, "epochs_averaged": 2}))
    assert load_run_files(tmp_path).best is None
