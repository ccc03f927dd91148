"""traincraft schedule: a recipe's schedule previewed from the command line."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from traincraft import schedules
from traincraft.cli import main
from traincraft.cli.schedule import _table
from traincraft.errors import TraincraftError


def preview_main(argv: list[str]) -> int:
    """``traincraft schedule ...`` as the command line runs it (under its error policy)."""
    return main(["schedule", *argv])


def fake_recipe(schedule: Any = None, **train: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        schedule=schedule,
        data=types.SimpleNamespace(batch_size=32),
        train=types.SimpleNamespace(
            **{"max_epochs": 4, "max_steps": None, "accumulate": 1, **train}
        ),
        optimizer=types.SimpleNamespace(
            lr=0.01, param_groups=[{"params": "head.*", "lr_mult": 10}]
        ),
    )


def test_preview_main_prints_points_and_writes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import traincraft.recipe
    import traincraft.run

    recipe = fake_recipe({"name": "cosine", "warmup": "1ep"}, accumulate=3)
    monkeypatch.setattr(traincraft.recipe, "load_recipe", lambda source, overrides=(): recipe)
    # 1000 samples, batch 32 -> 32 batches; accumulate 3 -> 11 optimizer steps per epoch
    data = types.SimpleNamespace(train=(torch.zeros(1000, 2), torch.zeros(1000)))
    monkeypatch.setattr(traincraft.run, "prepare_data", lambda r: data)
    csv, png = tmp_path / "lr.csv", tmp_path / "lr.png"
    code = preview_main(["r.yaml", "--plot", str(png), "--csv", str(csv)])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 epochs × 11 steps per epoch = 44 optimizer steps" in out
    assert re.search(r"end of warm-up\s+11\s+1\.00\s+0\.1\b", out)  # head group: 0.01 × 10
    assert re.search(r"end\s+44\s+4\.00\s+0\b", out)
    lines = csv.read_text().splitlines()
    assert lines[0] == "step,epoch,lr,lr/head.*,lr/default"
    assert len(lines) == 46
    assert lines[12].split(",")[:2] == ["11", "1.0"]
    assert lines[12].split(",")[2:] == ["0.1", "0.1", "0.01"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_preview_main_metric_file_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import traincraft.recipe

    recipe = fake_recipe({"name": "plateau", "patience": 0})
    monkeypatch.setattr(traincraft.recipe, "load_recipe", lambda source, overrides=(): recipe)
    metric = tmp_path / "loss.txt"
    metric.write_text("1.0\n0.9\n\n0.95\n0.8\n")
    assert (
        preview_main(["r.yaml", "--steps-per-epoch", "5", "--metric", str(metric)]) == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"milestone\s+15\s+3\.00\s+0\.01\b", out)  # cut after the bad third epoch

    metric.write_text("1.0\nlow\n")
    assert (
        preview_main(["r.yaml", "--steps-per-epoch", "5", "--metric", str(metric)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --metric") and "line 2: 'low' is not a number" in err
    assert (
        preview_main(
            [
                "r.yaml",
                "--steps-per-epoch",
                "5",
                "--epochs",
                "9",
                "--metric",
                str(tmp_path / "none.txt"),
            ]
        )
        == 2
    )
    assert "cannot read it" in capsys.readouterr().err
    with pytest.raises(TraincraftError):
        preview_main(
            ["r.yaml", "--steps-per-epoch", "5", "--metric", str(tmp_path / "none.txt"), "--debug"]
        )


def test_preview_main_on_a_real_recipe_without_a_schedule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from traincraft.recipe import load_recipe
    from traincraft.run import prepare_data

    code = preview_main(["quickstart", "schedule=null", "train.accumulate=2", "--epochs", "3"])
    out = capsys.readouterr().out
    assert code == 0
    n_train = len(prepare_data(load_recipe("quickstart")).train[1])
    spe = math.ceil(math.ceil(n_train / 64) / 2)
    assert f"3 epochs × {spe} steps per epoch = {3 * spe} optimizer steps" in out
    assert re.search(rf"end\s+{3 * spe}\s+3\.00\s+0\.003\b", out)


def test_preview_table_elides_long_milestone_lists() -> None:
    points = schedules.key_points({"name": "cyclic", "max_lr": 2.0, "step_size_up": 2}, 10, 10)
    assert len(points) == 51  # start, 49 turning points, end
    lines = _table(points, 10).splitlines()
    assert len(lines) == 1 + 24 + 1
    assert lines[13] == "... 27 more"
    assert lines[1].split() == ["start", "0", "0.00", "1"]
    assert lines[-1].split() == ["end", "100", "10.00", "1"]


def test_command_preview_main_leaves_mistakes_to_the_command_lines_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import traincraft.recipe
    from traincraft.cli import schedule as command

    recipe = fake_recipe({"name": "plateau", "patience": 0})
    monkeypatch.setattr(traincraft.recipe, "load_recipe", lambda source, overrides=(): recipe)
    with pytest.raises(TraincraftError, match="--metric .*cannot read it"):
        command.preview_main(["r.yaml", "--steps-per-epoch", "5", "--metric", str(tmp_path / "x")])


def test_command_parser_and_help_load_no_torch() -> None:
    probe = (
        "import contextlib, io, sys\n"
        "from traincraft.cli import schedule as command\n"
        "command._preview_parser().format_help()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        command.preview_main(['--help'])\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0\n"
        "print(sorted({'torch', 'numpy', 'matplotlib'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_recipe_steps_per_epoch_counts_optimizer_steps() -> None:
    import traincraft.run
    from traincraft.cli.schedule import _recipe_steps_per_epoch

    recipe = fake_recipe(accumulate=3)
    data = types.SimpleNamespace(train=(torch.zeros(1000, 2), torch.zeros(1000)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traincraft.run, "prepare_data", lambda r: data)
        assert _recipe_steps_per_epoch(recipe) == 11  # 32 batches of 32, 3 per optimizer step
