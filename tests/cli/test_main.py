"""The traincraft command as a whole (traincraft.cli): parsing, help, the one error policy (one
line and exit code 2 for a mistake, --debug for the traceback) and the installed script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from traincraft.cli import main

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import IRIS, NET_MODULE, write_recipe  # noqa: E402


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "nope.yaml"], "error: recipe file 'nope.yaml' not found"),
        (["fit", "quickstart", "optimizer.lr=-1"], "error: recipe error at optimizer.lr: must be greater than 0, got -1"),
        (["fit", "quickstart", "optimzer.lr=1"], "error: recipe error at optimzer: unknown key (did you mean 'optimizer'?)"),
        (["fit", "quickstart", "loss=cross_entropi", "--run-dir", "{tmp}/r"], "error: unknown loss 'cross_entropi' (did you mean 'cross_entropy'"),
        (["fit", "quickstart", "data.dataset=digts", "--run-dir", "{tmp}/r"], "error: unknown dataset 'digts' (did you mean 'digits'"),
        (["evaluate", "{tmp}"], "is not a run folder (no data.json, metrics.csv or checkpoints/) and holds no runs"),
        (["evaluate", "{tmp}/nowhere"], "error: run folder {tmp}/nowhere does not exist"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_debug_shows_the_traceback(tmp_path):
    from traincraft.recipe import RecipeError

    with pytest.raises(RecipeError):
        main(["fit", "quickstart", "optimizer.lr=-1", "--debug"])


def run_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
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
    (tmp_path / "mynets.py").write_text(NET_MODULE)
    write_recipe(tmp_path, {**IRIS, "model": {"name": "mynets:Net"}, "train": {"max_epochs": 1}})
    command = Path(sys.executable).with_name("traincraft")
    if not command.is_file():
        pytest.skip("traincraft is not installed as a command next to this python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for argv in (["fit", "recipe.yaml", "--run-dir", "run", "--no-progress"], ["evaluate", "run"]):
        done = subprocess.run([str(command), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr


def test_pass_through_commands_run_under_the_same_error_policy(tmp_path, capsys, monkeypatch):
    # A pass-through command that leaves its errors to main(): one line and 2, --debug the traceback,
    # Ctrl-C 130.
    from traincraft.cli import PASSTHROUGH
    from traincraft.errors import TraincraftError

    (tmp_path / "bare_command.py").write_text(
        "from traincraft.errors import TraincraftError\n"
        "def run(argv):\n"
        "    if argv[0] == 'stop':\n"
        "        raise KeyboardInterrupt\n"
        "    raise TraincraftError(f'bad {argv[0]}')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PASSTHROUGH, "bare", "bare_command:run")
    assert main(["bare", "thing"]) == 2
    assert capsys.readouterr().err == "error: bad thing\n"
    with pytest.raises(TraincraftError):
        main(["bare", "thing", "--debug"])
    assert main(["bare", "stop"]) == 130
