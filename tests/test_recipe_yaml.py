"""Recipe YAML (traincraft.recipe_yaml): numbers as YAML 1.2 and Python read them, text that
merely looks numeric kept as text when quoted, and a writer whose output reads back equal."""

import math

import pytest
import yaml

from traincraft.recipe_yaml import RecipeError, dump_yaml, load_yaml


@pytest.mark.parametrize("text, expected", [
    ("1e-8", 1e-8), ("2e0", 2.0), (".5", 0.5), ("-.5e3", -500.0), ("3E+4", 30000.0), ("1.", 1.0),
    ("1_000", 1000), ("1_000.5", 1000.5), ("+1", 1), ("-7", -7), ("010", 10), ("0x1f", 31),
    ("0o17", 15), ("0b101", 5), ("1.5", 1.5), ("0", 0),
])
def test_numbers_read_as_python_reads_them(text, expected):
    value = load_yaml(text)
    assert value == expected and type(value) is type(expected)
    assert load_yaml(f"x: {text}") == {"x": expected}


@pytest.mark.parametrize("text", ["'1e-8'", '"2e0"', "1:30", "1__0", "_1", "1_", "12abc", "1e", "e5", "inf",
                                  "nan", "0x", "1e-8x", "1.2.3"])
def test_text_that_is_no_number_stays_text(text):
    assert isinstance(load_yaml(text), str)


def test_infinities_and_nan_are_yaml_s_own():
    assert load_yaml(".inf") == math.inf and load_yaml("-.Inf") == -math.inf and math.isnan(load_yaml(".NaN"))


def test_the_global_safe_loader_is_left_as_it_was():
    assert yaml.safe_load("x: 1e-8") == {"x": "1e-8"}  # PyYAML's YAML 1.1, for everyone else


def test_written_recipes_read_back_equal():
    value = {"name": "1e5", "tag": "1_0", "code": "010", "eps": 1e-8, "big": 1e16, "time": "1:30",
             "flag": "yes", "none": "null", "n": 3, "neg": -0.5, "list": [1e-3, "2e0"]}
    text = dump_yaml(value)
    assert load_yaml(text) == value
    assert "name: '1e5'" in text and "flag: 'yes'" in text


def test_a_bad_explicit_number_is_a_yaml_error():
    with pytest.raises(yaml.YAMLError, match="is not a number"):
        load_yaml("!!int 1:30")


def test_a_key_given_twice_is_refused():
    with pytest.raises(RecipeError, match="key 'lr' is given twice"):
        load_yaml("{lr: 1e-3, lr: 2e-3}")


def test_the_files_a_run_writes_of_its_recipe_read_back_as_written():
    from traincraft.recipe import load_recipe
    from traincraft.run import given_recipe_text

    recipe = load_recipe({"name": "1e5", "data": {"dataset": "iris"}, "model": {"name": "mlp"}})
    given = load_yaml(given_recipe_text(recipe))
    assert given["name"] == "1e5" and given["data"] == {"dataset": "iris"}
