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
