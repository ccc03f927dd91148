"""traincraft init, list and schema (traincraft.cli.info), and --version."""

import json

import pytest

from traincraft.cli import main


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


def test_init_takes_the_examples_name_of_a_template(tmp_path, capsys):
    from pathlib import Path

    target = tmp_path / "d.yaml"
    assert main(["init", "diabetes", "-o", str(target)]) == 0
    examples = Path(__file__).parents[2] / "examples"
    assert target.read_text() == (examples / "diabetes.yaml").read_text()
    assert main(["init", "diabetis", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "unknown template 'diabetis' (did you mean 'diabetes'" in capsys.readouterr().err
    assert main(["fit", "diabetes", "train.max_epochs=0"]) == 2  # read as the template, then checked
    assert capsys.readouterr().err.strip() == "error: recipe error at train.max_epochs: must be greater than 0, got 0"


def test_every_example_that_is_a_template_is_its_copy():
    from pathlib import Path

    from traincraft.recipe import template_file

    examples = Path(__file__).parents[2] / "examples"
    for example in sorted(examples.glob("*.yaml")):
        template = template_file(example.stem)
        if template is not None:
            assert template.read_text() == example.read_text(), example.name


def test_list_schedules_and_the_models_beyond_the_built_in_ones(capsys):
    from traincraft.schedules.table import names

    assert main(["list", "schedules"]) == 0
    assert capsys.readouterr().out == f"schedules: {', '.join(names())}\n"
    assert main(["list", "models"]) == 0
    assert capsys.readouterr().out == "models: cnn, gru, linear, lstm, mlp, torchvision:NAME, timm:NAME, module:Class\n"
    assert main(["list", "templates"]) == 0
    assert capsys.readouterr().out == "templates: quickstart, regression (= diabetes), sunspots\n"
