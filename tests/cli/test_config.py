"""traincraft config, fit --print-config and fit --dry-run (traincraft.cli.config), and the
spellings of other tools for an override (traincraft.cli.spelling)."""

import sys
from pathlib import Path

import pytest
import yaml

from traincraft.cli import main
from traincraft.cli.spelling import RECIPE_KEYS, dashed_overrides
from traincraft.recipe import Recipe, load_recipe, load_yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import IRIS, write_recipe  # noqa: E402


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_config_prints_what_the_run_would_save(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a run would go: runs/ of the working folder
    recipe = write_recipe(tmp_path, {**IRIS, "schedule": {"name": "cosine", "eta_min": 1e-6}})
    (tmp_path / "small.yaml").write_text("train: {max_epochs: 1}\nschedule: {name: onecycle}\n")
    assert main(["config", str(recipe), str(tmp_path / "small.yaml"), "optimizer.eps=1e-8", "~early_stopping"]) == 0
    out = capsys.readouterr().out
    expected = load_recipe([recipe, tmp_path / "small.yaml"], ["optimizer.eps=1e-8", "~early_stopping"])
    assert out == expected.to_yaml()
    printed = load_recipe(load_yaml(out))
    assert printed.train.max_epochs == 1 and printed.schedule == {"name": "onecycle"}
    assert printed.optimizer.kwargs() == {"eps": 1e-8} and printed.early_stopping is None
    assert printed.train.precision == "32"  # every default filled in
    assert main(["fit", str(recipe), str(tmp_path / "small.yaml"), "optimizer.eps=1e-8", "~early_stopping",
                 "--print-config"]) == 0
    assert capsys.readouterr().out == out
    assert not (tmp_path / "runs").exists()


def test_config_given_prints_only_what_was_written(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["config", str(recipe), "train.max_epochs=7", "--given"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {**IRIS, "train": {"max_epochs": 7}}


@pytest.mark.parametrize("args, message", [
    (["config", "{tmp}/recipe.yaml", "{tmp}/nope.yaml"], "error: recipe file '{tmp}/nope.yaml' not found"),
    (["config", "{tmp}/recipe.yaml", "~missing.key"], "error: override '~missing.key': missing.key is not in the recipe"),
    (["config", "{tmp}/recipe.yaml", "+seed=1", "+seed=2"], "error: override '+seed=2': seed is in the recipe already (1)"),
    (["config", "{tmp}/recipe.yaml", "train.max_epochs=3", "{tmp}/recipe.yaml"],
     "give the recipe files first, then the overrides"),
    (["config", "{tmp}/recipe.yaml", "train.max_epochs=abc"],
     "error: recipe error at train.max_epochs: must be a valid integer, got 'abc'"),
    (["fit", "{tmp}/recipe.yaml", "--trainer.max_epochs=3", "--dry-run"],
     "error: recipe error at trainer: unknown key (did you mean 'train'"),
    (["fit", "{tmp}/recipe.yaml", "optimizer.eps=abc", "--dry-run"], "error: optimizer 'adamw': eps must be a number, got 'abc'"),
    (["fit", "{tmp}/recipe.yaml", "loss={name: focal, gamma: abc}", "--dry-run"],
     "error: loss 'focal': gamma must be a number, got 'abc'"),
])
def test_mistakes_are_one_line(tmp_path, capsys, args, message):
    write_recipe(tmp_path)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys)


def test_dry_run_builds_everything_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, {**IRIS, "schedule": {"name": "cosine", "warmup": 2}})
    assert main(["fit", str(recipe), "schedule.name=onecycle", "train.max_epochs=2", "--dry-run",
                 "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "iris: classification, train 90 / val 30 / test 30, input (4,), 3 classes"
    assert err[1] == "model:     mlp, 131 trainable parameters, on cpu"
    assert err[2:4] == ["loss:      cross_entropy", "optimizer: AdamW, lr 0.01, 2 parameter group(s)"]
    assert err[4] == "schedule:  onecycle; 6 steps per epoch, 12 steps in all"
    assert err[-1].startswith("dry run:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_dashed_overrides_are_read_as_overrides(tmp_path, capsys):
    assert dashed_overrides(["r.yaml", "--train.max_epochs=3", "--optimizer.lr", "1e-3", "--no-progress",
                             "--run-dir", "a.b", "--data.split.val", "--seed=3"]) == [
        "r.yaml", "train.max_epochs=3", "optimizer.lr=1e-3", "--no-progress", "--run-dir", "a.b",
        "data.split.val=", "--seed=3"]
    recipe = write_recipe(tmp_path)
    assert main(["config", str(recipe), "--train.max_epochs=3", "--optimizer.lr", "2e-3", "--given"]) == 0
    given = yaml.safe_load(capsys.readouterr().out)
    assert given["train"] == {"max_epochs": 3} and given["optimizer"]["lr"] == 2e-3


def test_an_option_that_is_a_recipe_key_is_answered_with_the_right_spelling(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    for argv, hint in ((["fit", str(recipe), "--seed=3"], "write seed=3"),
                       (["fit", str(recipe), "--seed", "3"], "write seed=3")):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        assert f"(recipe keys take no dashes: {hint})" in capsys.readouterr().err


def test_the_spelling_module_knows_every_top_level_key():
    assert set(RECIPE_KEYS) == set(Recipe.model_fields)
