"""traincraft evaluate and predict (traincraft.cli.runs): a run folder's model at work, and a
folder of runs meaning its newest run."""

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from traincraft.cli import main

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import IRIS, NET_MODULE, fit, write_recipe  # noqa: E402


def test_evaluate_and_predict_use_the_saved_model(tmp_path, capsys):
    _, run_dir = fit(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "test"]) == 0
    figures = json.loads(capsys.readouterr().out)
    results = json.loads((run_dir / "results.json").read_text())
    assert figures["accuracy"] == results["test"]["accuracy"]
    assert figures["loss"] == pytest.approx(results["test"]["loss"], rel=1e-9)

    info = json.loads((run_dir / "data.json").read_text())
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(info["feature_names"])
        writer.writerow([5.1, 3.5, 1.4, 0.2])  # a textbook setosa
        writer.writerow([6.7, 3.0, 5.2, 2.3])  # a textbook virginica
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and list(rows[0]) == ["row", "prediction", *[f"prob_{c}" for c in info["class_names"]]]
    assert [r["row"] for r in rows] == ["0", "1"]
    assert sum(float(rows[0][f"prob_{c}"]) for c in info["class_names"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_names_a_missing_column(tmp_path, capsys):
    _, run_dir = fit(tmp_path)
    source = tmp_path / "in.csv"
    source.write_text("sepal length (cm),petal width\n1,2\n")
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {source}: column 'sepal width (cm)' is missing")


def test_load_model_rebuilds_the_trained_model(tmp_path):
    import traincraft as tc
    from traincraft.checkpoint import load_weights

    _, run_dir = fit(tmp_path)
    model = tc.load_model(run_dir)
    saved = load_weights(run_dir / "best.safetensors")
    assert not model.training
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_folder_of_runs_means_its_newest_run(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {**IRIS, "train": {"max_epochs": 1}})
    runs = tmp_path / "runs" / "iris-test"
    for name in ("20261206-010000", "20261206-020000", "20261206-020000-2"):
        assert main(["fit", str(recipe), "--run-dir", str(runs / name), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(runs)]) == 0
    assert f"using the newest, {runs / '20261206-020000-2'}" in capsys.readouterr().err
    assert main(["resume", str(runs), "train.max_epochs=2", "--no-progress"]) == 0
    assert json.loads((runs / "20261206-020000-2" / "results.json").read_text())["epochs"] == 2
    assert main(["resume"]) == 2
    assert "resume needs the run folder: traincraft resume runs/NAME/TIME" in capsys.readouterr().err


def test_a_module_next_to_the_recipe_imports_under_fit_evaluate_and_predict_from_another_folder(
    tmp_path, monkeypatch, capsys
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "side_nets_of_the_recipe.py").write_text(NET_MODULE)
    write_recipe(project, {**IRIS, "model": {"name": "side_nets_of_the_recipe:Net"}, "train": {"max_epochs": 1}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # what the run adds goes with the test
    assert main(["fit", str(project / "recipe.yaml"), "--run-dir", "run", "--no-progress"]) == 0
    assert main(["evaluate", "run"]) == 0
    capsys.readouterr()
    write_recipe(project, {**IRIS, "model": {"name": "no_such_module_here:Net"}}, name="missing.yaml")
    assert main(["fit", str(project / "missing.yaml"), "--run-dir", "run2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'no_such_module_here:Net': cannot import module 'no_such_module_here': no "
                          "no_such_module_here.py or no_such_module_here/ in ")
    assert str(elsewhere) in err and str(project) in err and err.rstrip().endswith("nor among the installed packages")


def test_evaluate_a_new_labelled_csv_as_the_run_read_its_data(tmp_path, capsys):
    from sklearn.datasets import load_iris

    from traincraft.recipe import load_recipe
    from traincraft.run import prepare_data

    _, run_dir = fit(tmp_path)
    info = json.loads((run_dir / "data.json").read_text())
    rows = prepare_data(load_recipe(IRIS)).indices["test"].tolist()  # the run's test split, as raw rows
    iris = load_iris()
    source = tmp_path / "labelled.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*info["feature_names"], "species"])
        for row in rows:
            writer.writerow([*iris.data[row], info["class_names"][iris.target[row]]])
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", str(source)]) == 0
    figures = json.loads(capsys.readouterr().out)
    results = json.loads((run_dir / "results.json").read_text())
    assert figures["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert figures["accuracy"] == results["test"]["accuracy"]
    source.write_text(source.read_text().replace(info["class_names"][0], "tulip"))
    assert main(["evaluate", str(run_dir), "--data", str(source)]) == 2
    assert "labels tulip are not classes of the run" in capsys.readouterr().err


def test_predict_and_evaluate_arrays_as_the_run_read_its_data(tmp_path, capsys):
    import numpy as np
    from sklearn.datasets import load_iris

    _, run_dir = fit(tmp_path)
    iris = load_iris()
    rows = [3, 77, 140]
    np.save(tmp_path / "x.npy", iris.data[rows])
    np.savez(tmp_path / "xy.npz", X=iris.data[rows], y=iris.target[rows])
    csv_in = tmp_path / "in.csv"
    info = json.loads((run_dir / "data.json").read_text())
    with csv_in.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(info["feature_names"])
        writer.writerows(iris.data[rows].tolist())
    outputs = {}
    for name in ("x.npy", "xy.npz", "in.csv"):
        out = tmp_path / f"{name}.out.csv"
        assert main(["predict", str(run_dir), "--input", str(tmp_path / name), "--output", str(out)]) == 0
        outputs[name] = out.read_text()
    assert outputs["x.npy"] == outputs["xy.npz"] == outputs["in.csv"]  # scaled as the CSV is
    assert len(outputs["x.npy"].splitlines()) == 4
    np.savez(tmp_path / "xy.npz", X=iris.data[rows], y=np.array(info["class_names"])[iris.target[rows]])
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", str(tmp_path / "xy.npz")]) == 0
    predicted = [row["prediction"] for row in csv.DictReader(outputs["in.csv"].splitlines())]
    right = sum(p == info["class_names"][t] for p, t in zip(predicted, iris.target[rows]))
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(right / 3)
    for bad, message in ((np.zeros((3, 5)), "inputs of shape (3, 5); the model takes (samples, 4)"),
                         (np.array(["a", "b"]), "need a numeric array, got <U1 (2,)")):
        np.save(tmp_path / "bad.npy", bad)
        assert main(["predict", str(run_dir), "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "o.csv")]) == 2
        assert f"error: {tmp_path / 'bad.npy'}: {message}" in capsys.readouterr().err
    np.savez(tmp_path / "nokey.npz", features=iris.data[rows])
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "nokey.npz"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "holds no array X (or x, inputs); found: features" in capsys.readouterr().err
