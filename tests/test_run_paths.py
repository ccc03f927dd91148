"""Run folders that travel (traincraft.run_paths): a run folder's recipe.yaml records where its
relative paths resolve relative to itself and as it was, so a moved run folder still finds its
data, or says every place it looked."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from traincraft.cli import main
from traincraft.recipe import load_recipe
from traincraft.run_paths import base_dir_line, data_paths, places, run_base_dir

RECIPE = {
    "name": "iris-csv",
    "data": {"dataset": "data/iris.csv", "target": "species", "split": {"val": 0.2, "test": 0.2},
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [8]},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "train": {"max_epochs": 2},
    "metrics": ["accuracy"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sklearn.datasets import load_iris

    root = tmp_path_factory.mktemp("travel")
    project = root / "project"
    (project / "data").mkdir(parents=True)
    data = load_iris(as_frame=True)
    iris = data.frame.rename(columns={"target": "species"})
    iris["species"] = [data.target_names[t] for t in iris["species"]]
    iris.to_csv(project / "data" / "iris.csv", index=False)
    (project / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    run = project / "runs" / "a"
    assert main(["fit", str(project / "recipe.yaml"), "--run-dir", str(run), "--no-progress"]) == 0
    return root, project, run


def evaluate(run, capsys):
    capsys.readouterr()
    code = main(["evaluate", str(run)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err.strip()


def test_the_run_recipe_records_its_base_relative_to_itself_and_as_it_was(trained):
    _, project, run = trained
    first = (run / "recipe.yaml").read_text().splitlines()[0]
    assert yaml.safe_load(first)["_base_dir"] == {"from_run": "../..", "recorded": str(project.resolve())}
    assert str(load_recipe(run / "recipe.yaml")._base_dir) == str(project.resolve())


def test_a_moved_project_finds_its_data_next_to_the_run(trained, tmp_path, capsys):
    root, project, run = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved)
    shutil.move(str(project / "data"), str(root / "data-away"))  # the recorded place has no data now
    try:
        code, figures, _ = evaluate(moved / "runs" / "a", capsys)
    finally:
        shutil.move(str(root / "data-away"), str(project / "data"))
    assert code == 0
    assert figures["accuracy"] == json.loads((run / "results.json").read_text())["test"]["accuracy"]
    assert str(load_recipe(moved / "runs" / "a" / "recipe.yaml")._base_dir) == str(moved)


def test_a_run_folder_moved_alone_finds_the_data_where_it_was(trained, tmp_path, capsys):
    _, _, run = trained
    shutil.copytree(run, tmp_path / "a")
    code, figures, _ = evaluate(tmp_path / "a", capsys)
    assert code == 0 and figures["accuracy"] == json.loads((run / "results.json").read_text())["test"]["accuracy"]


def test_data_carried_inside_the_run_folder_is_found(trained, tmp_path, capsys):
    _, project, run = trained
    carried = tmp_path / "a"
    shutil.copytree(run, carried)
    shutil.copytree(project / "data", carried / "data")
    text = (carried / "recipe.yaml").read_text().replace(str(project.resolve()), str(tmp_path / "gone"))
    (carried / "recipe.yaml").write_text(text)
    assert evaluate(carried, capsys)[0] == 0
    assert str(load_recipe(carried / "recipe.yaml")._base_dir) == str(carried)


def test_data_found_nowhere_names_every_place_looked(trained, tmp_path, capsys):
    _, project, run = trained
    lost = tmp_path / "deep" / "a"
    shutil.copytree(run, lost)
    text = (lost / "recipe.yaml").read_text().replace(str(project.resolve()), str(tmp_path / "gone"))
    (lost / "recipe.yaml").write_text(text)
    looked = f"{tmp_path}, {tmp_path / 'gone'}, {lost}"
    message = (f"error: {lost}: the run's data (data/iris.csv) is not found relative to any of {looked}; "
               "put it (or a link to it) under one of them")
    code, _, err = evaluate(lost, capsys)
    assert code == 2 and err == message
    assert main(["resume", str(lost), "train.max_epochs=3", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == message
    capsys.readouterr()
    out = tmp_path / "p.csv"  # predicting needs no data of the run's
    source = tmp_path / "in.csv"
    info = json.loads((lost / "data.json").read_text())
    source.write_text(",".join(info["feature_names"]) + "\n5.1,3.5,1.4,0.2\n")
    assert main(["predict", str(lost), "--input", str(source), "--output", str(out)]) == 0


def test_an_older_run_folder_with_an_absolute_base_still_reads(trained, tmp_path, capsys):
    _, project, run = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    lines = (old / "recipe.yaml").read_text().splitlines(keepends=True)
    lines[0] = f"_base_dir: {json.dumps(str(project.resolve()))}  # where relative paths resolve\n"
    (old / "recipe.yaml").write_text("".join(lines))
    assert evaluate(old, capsys)[0] == 0


def test_places_and_choice(tmp_path):
    run = tmp_path / "p" / "runs" / "n" / "t"
    line = base_dir_line(tmp_path / "p", run)
    entry = yaml.safe_load(line)["_base_dir"]
    assert entry == {"from_run": "../../..", "recorded": str((tmp_path / "p").resolve())}
    assert places(run, entry) == [tmp_path / "p", run]  # the same place once
    assert places(run, "/old/abs") == [Path("/old/abs"), run]
    (run / "data").mkdir(parents=True)
    (run / "data" / "x.csv").write_text("")
    raw = {"data": {"dataset": "data/x.csv"}}
    assert run_base_dir(run, entry, raw) == str(run)  # only the run folder holds data/x.csv
    (tmp_path / "p" / "data").mkdir()
    (tmp_path / "p" / "data" / "x.csv").write_text("")
    assert run_base_dir(run, entry, raw) == str(tmp_path / "p")


@pytest.mark.parametrize("dataset, paths", [
    ("digits", []),
    ("mymod:load", []),
    ("x.csv", ["x.csv"]),
    ("/abs/x.csv", []),
    ("sub/x.npz", ["sub/x.npz"]),
    ({"images": "pics"}, ["pics"]),
    ({"images": {"train": "a", "val": "b"}}, ["a", "b"]),
    ({"inputs": "x.npy", "targets": "y.npy"}, ["x.npy", "y.npy"]),
    (None, []),
])
def test_data_paths(dataset, paths):
    assert data_paths(dataset) == paths
