"""The run a command's RUN_DIR names (traincraft.runfolder.find_run, cli.runs.run_folder): a run
folder as given, or the newest run of a folder of runs that holds what the command needs."""

import pytest

from traincraft.cli import main
from traincraft.errors import TraincraftError
from traincraft.runfolder import find_run


def make_run(folder, *files):
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text("name: x\n")
    (folder / "data.json").write_text("{}")
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    return folder


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs" / "quickstart"
    make_run(runs / "20261206-010000", "best.safetensors", "checkpoints/last.ckpt", "metrics.csv")
    make_run(runs / "20261206-020000", "best.safetensors", "metrics.csv")  # checkpoint=False
    make_run(runs / "20261206-020000-2", "metrics.csv")  # killed before any weights
    make_run(runs / "20261206-030000")  # just started
    (runs / "notes").mkdir()  # not a run
    (runs / "README.txt").write_text("")
    return runs


@pytest.mark.parametrize("needs, newest", [
    ("weights", "20261206-020000"),
    ("checkpoint", "20261206-010000"),
    ("metrics", "20261206-020000-2"),
])
def test_a_folder_of_runs_means_its_newest_run_that_has_what_is_needed(runs, needs, newest):
    found, note = find_run(runs, needs=needs)
    assert found == runs / newest
    assert note == f"{runs} holds runs: using the newest, {runs / newest}"


def test_a_run_folder_is_itself_even_without_what_is_needed(runs):
    run = runs / "20261206-030000"
    assert find_run(run, needs="checkpoint") == (run, None)
    assert find_run(str(run)) == (run, None)


def test_runs_ordered_by_start_time_in_their_names(tmp_path):
    runs = tmp_path / "r"
    for name in ("20261206-020000-10", "20261206-020000-9", "20261206-020000", "20261205-230000-3"):
        make_run(runs / name, "best.safetensors")
    assert find_run(runs)[0] == runs / "20261206-020000-10"  # -10 after -9, not as text


@pytest.mark.parametrize("what, make, message", [
    ("missing", None, "run folder {p} does not exist"),
    ("a file", "file", "{p} is a file, not a run folder"),
    ("empty", "dir", "{p} is not a run folder (no data.json, metrics.csv or checkpoints/) and holds no runs"),
    ("no weights", "runs", "{p} holds 2 runs, none with saved weights (best.safetensors or a checkpoint)"),
])
def test_unhappy_run_folders_get_one_line(tmp_path, what, make, message):
    path = tmp_path / "x"
    if make == "file":
        path.write_text("")
    elif make == "dir":
        path.mkdir()
    elif make == "runs":
        make_run(path / "a", "metrics.csv")
        make_run(path / "b")
    with pytest.raises(TraincraftError) as caught:
        find_run(path)
    assert str(caught.value) == message.format(p=path)


def test_a_recipe_next_to_the_runs_does_not_make_a_run(tmp_path):
    make_run(tmp_path / "runs" / "20261206-010000", "best.safetensors")
    (tmp_path / "runs" / "recipe.yaml").write_text("name: x\n")  # the user's recipe, beside its runs
    assert find_run(tmp_path / "runs")[0] == tmp_path / "runs" / "20261206-010000"


def test_an_override_in_place_of_the_run_folder_is_explained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["resume", "train.max_epochs=5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: run folder train.max_epochs=5 does not exist (the run folder comes first: "
        "traincraft COMMAND RUN_DIR key=value)")


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "--input", "x.csv", "--output", "o.csv"],
                                     ["export"], ["report"], ["resume"]])
def test_every_command_that_takes_a_run_folder_says_a_missing_one_does_not_exist(tmp_path, capsys, command):
    missing = tmp_path / "runs" / "nothing"
    name, *rest = command
    assert main([name, str(missing), *rest]) == 2
    assert capsys.readouterr().err.strip() == f"error: run folder {missing} does not exist"


def test_resume_of_a_python_run_without_recipe_says_how_to_resume_it(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("")
    assert main(["resume", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run} holds a run without recipe.yaml (trained in Python?): resume it in Python, "
        f"trainer.fit(..., resume={str(run)!r})")
