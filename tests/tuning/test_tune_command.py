"""traincraft tune: the outputs and summary, a mistake in one line, Ctrl-C."""

import copy
import csv

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, INTERRUPT, MODULE, journal, labels, recipe  # noqa: E402

from traincraft.cli import main  # noqa: E402
from traincraft.errors import TraincraftError  # noqa: E402


def tune_main(argv):
    """``traincraft tune ...`` as the command line runs it (under its error policy)."""
    return main(["tune", *argv])


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
        study_name="iris-tune-test", storage=journal(tmp_path / "study" / "study.journal")
    )
    assert labels(study) == ["interrupted"]
    assert tune_main([str(path), "--study-dir", str(tmp_path / "study"), "--no-progress"]) == 0
    study = optuna.load_study(
        study_name="iris-tune-test", storage=journal(tmp_path / "study" / "study.journal")
    )
    assert labels(study) == ["interrupted", "complete", "complete"]


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
