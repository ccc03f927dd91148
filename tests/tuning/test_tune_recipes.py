"""The recipes a study keeps: a study whose base recipe changed is not continued (unless
allowed), and best.yaml is the recipe the best trial trained with."""

import copy
import json

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from tune_helpers import BASE, recipe  # noqa: E402

from traincraft.cli import main  # noqa: E402
from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.recipe import changed_keys, load_recipe  # noqa: E402
from traincraft.tuning.outputs import write_best_yaml  # noqa: E402
from traincraft.tuning.recipes import base_changes, base_recipe, check_base  # noqa: E402
from traincraft.tuning.study import tune  # noqa: E402

LR = {"optimizer.lr": {"loguniform": [3.0e-2, 1.0e-1]}}


def plain(raw):
    return {k: v for k, v in raw.items() if k != "tune"}


def with_epochs(epochs, **tune_keys):
    base = copy.deepcopy(BASE)
    base["train"]["max_epochs"] = epochs
    return recipe(LR, base=base, **tune_keys)


def sqlite(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


# ------------------------------------------------------------------------ the base recipe


def test_the_base_recipe_is_resolved_and_leaves_out_the_searched_keys():
    searched = ["optimizer.lr", "model.hidden_sizes", "model.dropout"]
    base = base_recipe(plain(recipe(LR)), searched)
    assert "lr" not in base["optimizer"] and base["optimizer"]["name"] == "adamw"
    assert "hidden_sizes" not in base["model"] and base["model"]["name"] == "mlp"
    assert base["train"]["max_epochs"] == 3 and "tune" not in base
    # Resolved: a default written out is the same recipe as one left out.
    spelled = plain(recipe(LR))
    spelled["seed"] = 0
    spelled["train"]["accumulate"] = 1
    assert base_recipe(spelled, searched) == base


def test_only_keys_outside_the_searched_ones_are_changes():
    old = load_recipe(plain(recipe(LR))).model_dump(mode="json")
    new = copy.deepcopy(old)
    new["optimizer"]["lr"] = 0.5
    new["schedule"] = {"name": "cosine", "warmup": 2}
    new["train"]["max_epochs"] = 9
    assert base_changes(old, new, ["optimizer.lr", "schedule"]) == {"train.max_epochs": (3, 9)}
    assert set(base_changes(old, new, [])) == {"optimizer.lr", "schedule", "train.max_epochs"}


def test_check_base_names_every_changed_key_in_one_line():
    study = optuna.create_study(study_name="s")
    assert check_base(study, plain(recipe(LR)), list(LR), allow_changes=False) == {}
    changed = plain(recipe(LR))
    changed["train"]["max_epochs"] = 5
    changed["data"]["batch_size"] = 8
    changed["optimizer"]["lr"] = 0.5  # searched: not a change
    with pytest.raises(TraincraftError) as caught:
        check_base(study, changed, list(LR), allow_changes=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "study 's' was run with another base recipe "
        "(data.batch_size: 16 -> 8; train.max_epochs: 3 -> 5): "
    )
    assert "--allow-changes" in message
    # Allowed: the changes are returned and the study remembers the new base.
    allowed = check_base(study, changed, list(LR), allow_changes=True)
    assert allowed == {"data.batch_size": (16, 8), "train.max_epochs": (3, 5)}
    assert check_base(study, changed, list(LR), allow_changes=False) == {}


def test_changing_the_space_is_not_a_change_of_the_base():
    study = optuna.create_study(study_name="s")
    raw = plain(recipe(LR))
    check_base(study, raw, ["optimizer.lr", "data.batch_size"], allow_changes=False)
    # data.batch_size is no longer searched but fixed: narrowing the space continues the study.
    assert check_base(study, raw, ["optimizer.lr"], allow_changes=False) == {}
    assert study.user_attrs["searched_keys"] == ["optimizer.lr"]
    # Searching a key that was fixed widens the space: also no change.
    assert check_base(study, raw, ["optimizer.lr", "train.max_epochs"], allow_changes=False) == {}


# ------------------------------------------------------------------------ real studies


def test_a_changed_base_recipe_stops_the_study_before_any_trial(tmp_path):
    folder = tmp_path / "study"
    tune(with_epochs(2, trials=2), storage=sqlite(tmp_path), study_dir=folder, plots=False)
    with pytest.raises(TraincraftError, match=r"\(train.max_epochs: 2 -> 3\)"):
        tune(with_epochs(3, trials=4), storage=sqlite(tmp_path), study_dir=folder, plots=False)
    study = optuna.load_study(study_name="iris-tune-test", storage=sqlite(tmp_path))
    assert len(study.trials) == 2
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0", "trial-1"]
    # The same base recipe, with more trials and another sampler seed, continues it.
    study = tune(with_epochs(2, trials=3, seed=7), storage=sqlite(tmp_path), study_dir=folder,
                 plots=False)
    assert len(study.trials) == 3


def test_the_command_refuses_in_one_line_and_continues_with_allow_changes(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(with_epochs(3, trials=2), sort_keys=False))
    folder = tmp_path / "study"
    common = [str(path), "--storage", sqlite(tmp_path), "--study-dir", str(folder), "--no-progress"]
    assert main(["tune", *common]) == 0
    capsys.readouterr()

    # The base recipe changes (here by an override): refused, naming the key.
    assert main(["tune", *common, "train.max_epochs=1", "--trials", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("error: study 'iris-tune-test' was run with another base recipe "
                          "(train.max_epochs: 3 -> 1)")
    assert not (folder / "trial-2").exists()

    assert main(["tune", *common, "train.max_epochs=1", "--trials", "3", "--allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "continued with another base recipe (train.max_epochs: 3 -> 1), as allowed" in err
    study = optuna.load_study(study_name="iris-tune-test", storage=sqlite(tmp_path))
    assert [t.user_attrs["epochs"] for t in study.trials] == [3, 3, 1]
    best = study.best_trial
    assert best.number in (0, 1)  # three epochs beat one: the best trained 3, the base now says 1

    written = load_recipe(folder / "best.yaml")
    trained = load_recipe(folder / f"trial-{best.number}" / "recipe.yaml")
    assert written.train.max_epochs == 3
    assert written.optimizer.lr == best.params["optimizer.lr"]
    assert changed_keys(trained, written) == {}

    # best.yaml trains the best trial again, to the same figure.
    again = tmp_path / "again"
    assert main(["fit", str(folder / "best.yaml"), "--run-dir", str(again), "--no-progress"]) == 0
    value = json.loads((again / "best.json").read_text())["value"]
    assert value == pytest.approx(best.value, abs=1e-9, rel=0)


def test_best_yaml_of_a_trial_that_kept_no_recipe_is_the_recipe_with_its_values(tmp_path):
    study = optuna.create_study(study_name="s")
    distribution = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            params={"optimizer.lr": 0.01},
            distributions={"optimizer.lr": distribution},
            value=0.5,
            user_attrs={"values": {"optimizer.lr": 0.01}},
        )
    )
    write_best_yaml(study, plain(recipe(LR)), tmp_path)
    written = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert written == {**plain(recipe(LR)), "optimizer": {"name": "adamw", "lr": 0.01}}
