"""Overrides and composed recipe files (traincraft.overrides, load_recipe): set, add (+key),
delete (~key), a new name starts a section afresh, later files win; each mistake one line."""

import pytest
import yaml

from traincraft.overrides import apply_overrides, merge
from traincraft.recipe import RecipeError, load_recipe

COSINE = {"data": {"dataset": "iris"}, "model": {"name": "mlp", "hidden_sizes": [8]},
          "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
          "schedule": {"name": "cosine", "eta_min": 1e-6, "warmup": "5%"}}


def applied(raw, *overrides):
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a copy
    apply_overrides(raw, overrides)
    return raw


def test_a_new_name_starts_the_section_afresh_keeping_what_every_name_takes():
    raw = applied(COSINE, "schedule.name=onecycle", "optimizer.name=adamw", "model.name=cnn")
    assert raw["schedule"] == {"name": "onecycle", "warmup": "5%"}
    assert raw["optimizer"] == {"name": "adamw", "lr": 0.1, "weight_decay": 1e-4}
    assert raw["model"] == {"name": "cnn"}
    assert load_recipe(COSINE, ["schedule.name=onecycle"]).schedule == {"name": "onecycle", "warmup": "5%"}


def test_the_same_name_keeps_the_arguments_and_overrides_of_the_command_stay():
    assert applied(COSINE, "schedule.name=Cosine")["schedule"] == COSINE["schedule"] | {"name": "Cosine"}
    raw = applied(COSINE, "schedule.pct_start=0.2", "schedule.name=onecycle")
    assert raw["schedule"] == {"name": "onecycle", "warmup": "5%", "pct_start": 0.2}


def test_add_delete_and_bare_section_names():
    raw = applied({**COSINE, "loss": "cross_entropy"}, "+seed=3", "~schedule.eta_min", "~optimizer.momentum=0.9",
                  "+loss.label_smoothing=0.1", "++train.max_epochs=2", "~model")
    assert raw["seed"] == 3 and raw["train"] == {"max_epochs": 2} and "model" not in raw
    assert raw["schedule"] == {"name": "cosine", "warmup": "5%"}
    assert raw["optimizer"] == {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4}
    assert raw["loss"] == {"name": "cross_entropy", "label_smoothing": 0.1}
    assert applied({"model": "mlp"}, "~model.name") == {"model": {}}


@pytest.mark.parametrize("override, message", [
    ("~missing.key", "override '~missing.key': missing.key is not in the recipe, so there is nothing to delete"),
    ("~optimizer.nesterov", "optimizer.nesterov is not in the recipe, so there is nothing to delete"),
    ("~optimizer.momentum=0.5", "optimizer.momentum is 0.9, not 0.5; write ~optimizer.momentum to delete it"),
    ("+optimizer.lr=0.01", "override '+optimizer.lr=0.01': optimizer.lr is in the recipe already (0.1); "
                           "to change it write optimizer.lr=0.01"),
    ("+model.name=cnn", "model.name is in the recipe already ('mlp')"),
    ("+seed", "override '+seed': expected key.path=value (+key.path=value adds, ~key.path deletes)"),
    ("a..b=1", "override 'a..b=1': 'a..b' is not a key path"),
    ("=3", "override '=3': expected key.path=value"),
    ("optimizer.lr=[1, 2", "override 'optimizer.lr=[1, 2': the value is not valid YAML"),
    ("optimizer.lr.x=1", "override 'optimizer.lr.x=1': optimizer.lr is 0.1, not a section"),
])
def test_override_mistakes_get_one_line(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(COSINE, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_key_set_plainly_gets_did_you_mean():
    with pytest.raises(RecipeError, match=r"recipe error at train.max_epoch: unknown key \(did you mean 'max_epochs'"):
        load_recipe(COSINE, ["train.max_epoch=3"])


def test_merge_is_by_section_later_wins_and_a_new_name_starts_afresh():
    later = {"train": {"max_epochs": 3}, "schedule": {"name": "onecycle", "pct_start": 0.2},
             "optimizer": {"lr": 0.01}, "model": "cnn", "metrics": ["accuracy"]}
    merged = merge({**COSINE, "train": {"max_epochs": 9, "l2": 0.1}, "metrics": ["mae", "rmse"]}, later)
    assert merged["train"] == {"max_epochs": 3, "l2": 0.1}
    assert merged["schedule"] == {"name": "onecycle", "warmup": "5%", "pct_start": 0.2}
    assert merged["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    assert merged["model"] == "cnn" and merged["metrics"] == ["accuracy"]
    assert COSINE["schedule"]["name"] == "cosine"  # the arguments are left as they were
    assert merge({"model": "mlp"}, {"model": {"hidden_sizes": [4]}}) == {"model": {"name": "mlp", "hidden_sizes": [4]}}
    assert merge({"early_stopping": {"patience": 3}}, {"early_stopping": None}) == {"early_stopping": None}


def test_recipe_files_compose_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(COSINE))
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "small.yaml").write_text("train: {max_epochs: 2}\nschedule: {name: onecycle}\n")
    (tmp_path / "more.yaml").write_text("train: {max_epochs: 4}\noptimizer: {momentum: 0.5}\n")
    recipe = load_recipe([tmp_path / "base.yaml", tmp_path / "small" / "small.yaml", tmp_path / "more.yaml"],
                         ["optimizer.lr=1e-2"])
    assert recipe.train.max_epochs == 4 and recipe.schedule == {"name": "onecycle", "warmup": "5%"}
    assert recipe.optimizer.lr == 0.01 and recipe.optimizer.kwargs() == {"momentum": 0.5}
    from traincraft.recipe import base_dir

    assert base_dir(recipe) == tmp_path.resolve()  # the first file's folder
    assert load_recipe(["quickstart", tmp_path / "more.yaml"]).train.max_epochs == 4


def test_a_missing_second_file_is_one_line(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(COSINE))
    with pytest.raises(RecipeError) as caught:
        load_recipe([tmp_path / "base.yaml", tmp_path / "nope.yaml"])
    assert str(caught.value).startswith(f"recipe file '{tmp_path / 'nope.yaml'}' not found")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(RecipeError, match="list.yaml: expected a mapping of sections, got list"):
        load_recipe([tmp_path / "base.yaml", tmp_path / "list.yaml"])
