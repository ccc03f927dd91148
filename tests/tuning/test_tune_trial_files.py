"""What a trial leaves in its folder: the study's best trial keeps its weights (so that
``traincraft evaluate STUDY/trial-N`` works), no trial draws a report or evaluates again at its
end unless the search asks for it."""

import copy
import json

import pytest

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, FORWARDS, MODULE, recipe  # noqa: E402

from traincraft.cli import main as cli_main  # noqa: E402
from traincraft.tuning.study import tune  # noqa: E402

SPACE = {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}


def with_test_split():
    base = copy.deepcopy(BASE)
    base["data"]["split"] = {"val": 0.3, "test": 0.2}
    return base


def test_only_the_best_trial_keeps_its_weights_and_evaluate_reproduces_its_value(tmp_path, capsys):
    study = tune(recipe(SPACE, base=with_test_split(), trials=4), study_dir=tmp_path, plots=False)

    best = study.best_trial
    kept = sorted(p.parent.name for p in tmp_path.glob("trial-*/best.safetensors"))
    assert kept == [f"trial-{best.number}"]
    assert sorted(p.parent.name for p in tmp_path.glob("trial-*/best.json")) == kept
    saved = json.loads((tmp_path / f"trial-{best.number}" / "best.json").read_text())
    assert saved["epoch"] == best.user_attrs["best_epoch"] and saved["value"] == best.value

    capsys.readouterr()
    assert cli_main(["evaluate", str(tmp_path / f"trial-{best.number}"), "--split", "val"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["loss"] == pytest.approx(best.value, rel=1e-6)


def test_trials_draw_no_report_and_evaluate_nothing_again_at_their_end(tmp_path):
    base = with_test_split()
    base["model"] = {"name": f"{MODULE}:CountsEvaluation"}
    FORWARDS["eval"] = 0
    tune(recipe(SPACE, base=base, trials=1), study_dir=tmp_path, plots=False)
    # 45 validation samples in batches of 16, once per epoch, and nothing else.
    assert FORWARDS["eval"] == 3 * 3
    folder = tmp_path / "trial-0"
    assert not (folder / "report.html").exists() and not (folder / "predictions.npz").exists()
    results = json.loads((folder / "results.json").read_text())
    assert "test" not in results and "confusion_matrix" not in results


def test_report_true_gives_each_trial_its_report_and_tables(tmp_path):
    tune(recipe(SPACE, base=with_test_split(), trials=1), study_dir=tmp_path, plots=False, report=True)
    folder = tmp_path / "trial-0"
    assert (folder / "report.html").is_file()
    results = json.loads((folder / "results.json").read_text())
    assert set(results["confusion_matrix"]) == {"val", "test"} and "test" in results
