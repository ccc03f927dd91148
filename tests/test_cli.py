import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from traincraft.cli import main

IRIS = {
    "name": "iris-test",
    "data": {"dataset": "iris", "split": {"val": 0.2, "test": 0.2}, "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "loss": "cross_entropy",
    "optimizer": {"name": "adamw", "lr": 0.01},
    "train": {"max_epochs": 3},
    "early_stopping": {"patience": 5},
    "metrics": ["accuracy"],
}


def write_recipe(folder: Path, recipe=IRIS, name="recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit(tmp_path, *args, recipe=IRIS):
    run_dir = tmp_path / "run"
    code = main(["fit", str(write_recipe(tmp_path, recipe)), *args, "--run-dir", str(run_dir), "--no-progress"])
    return code, run_dir


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
    assert len(rows) == 2 and set(rows[0]) == {"prediction", *[f"prob_{c}" for c in info["class_names"]]}
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


def test_init_writes_a_template_that_fits(tmp_path, capsys):
    target = tmp_path / "sun.yaml"
    assert main(["init", "sunspots", "-o", str(target)]) == 0
    assert "lookback" in target.read_text() and target.read_text().startswith("#")
    assert main(["init", "sunspots", "-o", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["init", "sunspot", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean 'sunspots'" in capsys.readouterr().err


def test_list_and_schema_and_version(capsys):
    assert main(["list", "losses"]) == 0
    assert "cross_entropy" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("datasets:", "losses:", "metrics:", "models:", "optimizers:", "templates:"):
        assert kind in out
    assert main(["schema"]) == 0
    assert "data" in json.loads(capsys.readouterr().out)["properties"]
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "nope.yaml"], "error: recipe file 'nope.yaml' not found"),
        (["fit", "quickstart", "optimizer.lr=-1"], "error: recipe error at optimizer.lr: must be greater than 0, got -1"),
        (["fit", "quickstart", "optimzer.lr=1"], "error: recipe error at optimzer: unknown key (did you mean 'optimizer'?)"),
        (["fit", "quickstart", "loss=cross_entropi", "--run-dir", "{tmp}/r"], "error: unknown loss 'cross_entropi' (did you mean 'cross_entropy'"),
        (["fit", "quickstart", "data.dataset=digts", "--run-dir", "{tmp}/r"], "error: unknown dataset 'digts' (did you mean 'digits'"),
        (["evaluate", "{tmp}"], "is not a run folder: recipe.yaml is missing"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_debug_shows_the_traceback(tmp_path):
    from traincraft.recipe import RecipeError

    with pytest.raises(RecipeError):
        main(["fit", "quickstart", "optimizer.lr=-1", "--debug"])


def run_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "traincraft", *args], capture_output=True, text=True, env=env, **kwargs)


def test_help_has_examples_and_imports_no_torch():
    code = (
        "import sys; from traincraft.cli import build_parser; "
        "build_parser().format_help(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = run_cli("fit", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "traincraft fit recipe.yaml" in result.stdout


def test_ctrl_c_writes_what_is_done_and_exits_130(tmp_path):
    recipe = {**IRIS, "train": {"max_epochs": 100000}, "early_stopping": None}
    path = write_recipe(tmp_path, recipe)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
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


def test_overrides_may_follow_options(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["fit", str(recipe), "--no-progress", "train.max_epochs=1", "--run-dir", str(run_dir),
                 "metrics=[accuracy]"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 1
    with pytest.raises(SystemExit):
        main(["fit", str(recipe), "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_hostile_paths_and_files_get_one_line(tmp_path, capsys):
    assert main(["fit", str(write_recipe(tmp_path, {**IRIS, "train": {"max_epochs": 1}})), "--run-dir",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    run_dir = tmp_path / "run"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n5,3,1,0.2 \xe9\n"
                      .encode("latin-1"))
    infinite = tmp_path / "inf.csv"
    infinite.write_text("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n5,3,inf,0.2\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    capsys.readouterr()
    cases = [
        (["predict", str(run_dir), "--input", str(latin), "--output", str(tmp_path / "p.csv")], "is not UTF-8 text"),
        (["predict", str(run_dir), "--input", str(infinite), "--output", str(tmp_path / "p.csv")],
         "column 'petal length (cm)': 'inf' is not a finite number"),
        (["predict", str(run_dir), "--input", str(infinite), "--output", str(tmp_path)], "is a folder"),
        (["init", "-o", str(tmp_path / "no" / "dir" / "r.yaml")], "does not exist"),
        (["fit", str(write_recipe(tmp_path, {**IRIS, "name": "../../escaped"}, "up.yaml")), "--no-progress"],
         "recipe error at name: a run name is a plain folder name"),
        (["fit", str(write_recipe(tmp_path, {**IRIS, "name": ""}, "empty.yaml")), "--no-progress"],
         "a run name is a plain folder name"),
        (["fit", str(write_recipe(tmp_path, IRIS, "ok.yaml")), "--run-dir", str(a_file), "--no-progress"], "is a file"),
        (["fit", str(write_recipe(tmp_path, IRIS, "ok.yaml")), "seed=-5", "--no-progress"], "recipe error at seed"),
    ]
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err and err[-1].startswith("error: ") and message in err[-1], (argv, err)
        assert not any("Traceback" in line for line in err)
    assert not (tmp_path.parent / "escaped").exists()


def test_the_installed_command_imports_modules_of_the_current_folder(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, input_shape, output_size):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(input_shape[0], output_size)\n"
        "    def forward(self, x):\n"
        "        return self.layer(x)\n"
    )
    write_recipe(tmp_path, {**IRIS, "model": {"name": "mynets:Net"}, "train": {"max_epochs": 1}})
    command = Path(sys.executable).with_name("traincraft")
    if not command.is_file():
        pytest.skip("traincraft is not installed as a command next to this python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for argv in (["fit", "recipe.yaml", "--run-dir", "run", "--no-progress"], ["evaluate", "run"]):
        done = subprocess.run([str(command), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr


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
