import pytest
import yaml

from traincraft.recipe import (
    Recipe,
    RecipeError,
    apply_override,
    json_schema,
    load_recipe,
    template_names,
)

MINIMAL = {"data": {"dataset": "iris"}, "model": "mlp"}


def test_defaults_are_filled_in_and_round_trip_through_yaml(tmp_path):
    recipe = load_recipe(MINIMAL)
    assert recipe.optimizer.name == "adamw" and recipe.optimizer.lr == 1e-3
    assert recipe.train.max_epochs == 10 and recipe.data.batch_size == 32
    assert recipe.model.name == "mlp" and recipe.early_stopping is None
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again.model_dump() == recipe.model_dump()


def test_every_template_loads():
    assert {"quickstart", "sunspots", "regression"} <= set(template_names())
    for name in template_names():
        assert isinstance(load_recipe(name), Recipe)
    assert load_recipe(None).name == "quickstart"


def test_overrides_are_read_as_yaml_and_create_sections():
    recipe = load_recipe(
        MINIMAL,
        ["optimizer.lr=3e-4", "train.max_epochs=5", "metrics=[mae, rmse]", "model.hidden_sizes=[8, 4]",
         "early_stopping.patience=3", "data.split.test=0"],
    )
    assert recipe.optimizer.lr == 3e-4 and recipe.train.max_epochs == 5
    assert recipe.metrics == ["mae", "rmse"]
    assert recipe.model.kwargs() == {"hidden_sizes": [8, 4]}
    assert recipe.early_stopping.patience == 3 and recipe.data.split.test == 0


def test_model_and_optimizer_may_be_plain_names_and_still_take_overrides():
    recipe = load_recipe({"data": {"dataset": "iris"}, "model": "mlp", "optimizer": "sgd"},
                         ["optimizer.momentum=0.9"])
    assert recipe.optimizer.name == "sgd" and recipe.optimizer.kwargs() == {"momentum": 0.9}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.lr=-1"], "recipe error at optimizer.lr: must be greater than 0, got -1"),
        (["optimzer.lr=1"], "recipe error at optimzer: unknown key (did you mean 'optimizer'?)"),
        (["train.max_epoch=3"], "recipe error at train.max_epoch: unknown key (did you mean 'max_epochs'"),
        (["train.precision=fp8"], "recipe error at train.precision: must be '32', 'bf16' or 'fp16', got 'fp8'"),
        (["data.split.val=1.5"], "recipe error at data.split.val: must be less than 1, got 1.5"),
        (["train.max_epochs=3=4"], "recipe error at train.max_epochs: must be a valid integer"),
        (["lr"], "override 'lr': expected key.path=value"),
        (["seed.x=1"], "recipe error at seed: must be a valid integer, got {'x': 1}"),
    ],
)
def test_recipe_mistakes_get_one_line_naming_the_key(overrides, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(MINIMAL, overrides)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_section_and_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe error at data: this key is required"):
        load_recipe({"model": "mlp"})
    with pytest.raises(RecipeError, match="recipe file 'quickstrat' not found \\(did you mean 'quickstart'\\?\\)"):
        load_recipe("quickstrat")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: iris\nmodel: mlp\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+, column \d+ is not valid YAML"):
        load_recipe(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="expected a mapping of sections, got list"):
        load_recipe(listed)


def test_relative_data_paths_resolve_against_the_recipe_folder(tmp_path):
    from traincraft.recipe import base_dir

    path = tmp_path / "sub" / "r.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(MINIMAL))
    assert base_dir(load_recipe(path)) == path.parent.resolve()


def test_an_override_below_a_plain_value_is_refused():
    with pytest.raises(RecipeError, match="override 'name.x=1': name is 'run', not a section"):
        load_recipe({**MINIMAL, "name": "run"}, ["name.x=1"])


def test_apply_override_sets_nested_keys():
    raw = {"a": {"b": 1}}
    apply_override(raw, "a.c.d=[1, 2]")
    assert raw == {"a": {"b": 1, "c": {"d": [1, 2]}}}


def test_json_schema_lists_the_sections():
    schema = json_schema()
    assert {"data", "model", "loss", "optimizer", "train", "early_stopping", "metrics", "logging"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False


def test_finetune_sections_are_checked_and_reach_the_trainer():
    from traincraft.run import trainer_kwargs

    raw = {"data": {"dataset": "digits"}, "model": "cnn",
           "finetune": {"freeze": ["conv1.*"], "unfreeze": [{"at": "2ep", "params": "conv1.*", "lr_mult": 0.1}],
                        "layer_decay": 0.8},
           "ema": {"decay": 0.99}, "swa": {"start": "50%", "lr": 0.01}}
    kwargs = trainer_kwargs(load_recipe(raw))
    assert kwargs["finetune"] == {"strict": False, "skip": [], "freeze": ["conv1.*"], "train_bn": False,
                                  "unfreeze": [{"at": "2ep", "params": "conv1.*", "lr_mult": 0.1}],
                                  "layer_decay": 0.8}
    assert kwargs["ema"] == {"decay": 0.99, "warmup": True, "every": 1, "evaluate": True}
    assert kwargs["swa"]["start"] == "50%" and kwargs["swa"]["lr"] == 0.01
    with pytest.raises(RecipeError, match="finetune.frezee"):
        load_recipe({**raw, "finetune": {"frezee": ["x"]}})
    with pytest.raises(RecipeError, match="finetune.layer_decay"):
        load_recipe({**raw, "finetune": {"layer_decay": 1.5}})
    with pytest.raises(RecipeError, match="ema.decay"):
        load_recipe({**raw, "ema": {"decay": 1.0}})


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\noptimizer: {name: adamw, lr: 1.0e-2, lr: 5.0}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: line 2: key 'lr' is given twice in the same section "
                                          r"\(first on line 2\); keep one"):
        load_recipe(path)
    path.write_text("train: {max_epochs: 3}\nseed: 1\ntrain: {max_epochs: 9}\n")
    with pytest.raises(RecipeError, match=r"line 3: key 'train' is given twice .*first on line 1"):
        load_recipe(path)


def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nmetrics: *a8\n")
    with pytest.raises(RecipeError, match="expands to more than 100,000 values") as caught:
        load_recipe(path)
    assert len(str(caught.value)) < 300
    with pytest.raises(RecipeError) as caught:  # a wrong but small value: its repr is cut
        load_recipe({"metrics": [["x" * 500] * 50]})
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "is not a text file"),
    (b"_base_dir: /etc\nname: x\n", "_base_dir is written by traincraft into a run folder's recipe.yaml"),
])
def test_a_binary_file_and_a_base_dir_of_its_own_are_refused(tmp_path, content, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_numbers_read_as_yaml_1_2_and_python_read_them(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {dataset: iris}\nmodel: mlp\noptimizer: {name: adam, lr: 3e-4, eps: 1e-8}\n"
                    "schedule: {name: cosine, eta_min: 1e-6}\n")
    recipe = load_recipe(path, ["optimizer.weight_decay=1E-2", "train.clip_grad_norm=5e0"])
    assert recipe.optimizer.lr == 3e-4 and recipe.optimizer.kwargs()["eps"] == 1e-8
    assert recipe.schedule["eta_min"] == 1e-6 and recipe.optimizer.weight_decay == 0.01
    assert recipe.train.clip_grad_norm == 5.0
    assert load_recipe(path, ["name=run1e5"]).name == "run1e5"  # not a number: stays text


@pytest.mark.parametrize("override, message", [
    ("train.max_epochs=abc", "recipe error at train.max_epochs: must be a valid integer, got 'abc'"),
    ("train.max_epochs='3'", "recipe error at train.max_epochs: must be a valid integer, got '3'"),
    ("train.max_epochs=2.5", "recipe error at train.max_epochs: must be a valid integer, got 2.5"),
    ("optimizer.lr='1e-3'", "recipe error at optimizer.lr: must be a valid number, got '1e-3'"),
    ("data.split.val=true", "recipe error at data.split.val: must be a valid number, got True"),
    ("train.compile=1", "recipe error at train.compile: must be a valid boolean, got 1"),
    ("early_stopping.patience=ten", "recipe error at early_stopping.patience: must be a valid integer, got 'ten'"),
    ("tune.trials='20'", "recipe error at tune.trials: must be a valid integer, got '20'"),
])
def test_a_value_that_is_no_number_where_one_belongs_is_one_line(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe({**MINIMAL, "tune": {"space": {"seed": {"int": [0, 3]}}}}, [override])
    assert str(caught.value) == message


def test_numbers_in_every_form_reach_the_recipe():
    recipe = load_recipe(MINIMAL, ["train.max_epochs=1e3", "data.batch_size=1_024", "optimizer.lr=.5",
                                   "loss={name: focal, gamma: 2e0}", "train.precision=32", "tune.timeout=30m",
                                   "+tune.space={seed: {int: [0, 3]}}"])
    assert recipe.train.max_epochs == 1000 and type(recipe.train.max_epochs) is int
    assert recipe.data.batch_size == 1024 and recipe.optimizer.lr == 0.5
    assert recipe.loss == {"name": "focal", "gamma": 2.0} and recipe.train.precision == "32"
    assert recipe.tune.timeout == 1800.0


def test_a_run_folder_recipe_with_text_that_looks_numeric_reads_back(tmp_path):
    recipe = load_recipe({**MINIMAL, "name": "1e5", "metrics": ["accuracy"]})
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path).name == "1e5"
