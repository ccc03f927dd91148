"""traincraft lr-find (traincraft.cli.lr_find): the command, and the edit of the recipe file's
optimizer.lr behind --apply that keeps every other line."""

from __future__ import annotations

import re

import pytest
import yaml

import traincraft as tc
from traincraft.cli import main
from traincraft.cli.lr_find import apply_lr, set_recipe_lr

RECIPE = """\
# a comment that must survive
name: iris-lr
data:
  dataset: iris
  split: {val: 0.2, test: 0.2}
  batch_size: 16
model: {name: mlp, hidden_sizes: [16]}   # small
optimizer:
  name: adamw
  lr: 1.0e-2     # to be found
  weight_decay: 1.0e-4
train:
  max_epochs: 3
"""


def lr_find_main(argv):
    """``traincraft lr-find ...`` as the command line runs it (under its error policy)."""
    return main(["lr-find", *argv])


@pytest.mark.parametrize(
    "text, line",
    [
        (RECIPE, "  lr: 3.0e-03     # to be found\n"),
        ("name: a\noptimizer: {name: sgd, lr: 0.1, momentum: 0.9}  # flow\n",
         "optimizer: {name: sgd, lr: 3.0e-03, momentum: 0.9}  # flow\n"),
        ("optimizer: {name: sgd}\n", "optimizer: {name: sgd, lr: 3.0e-03}\n"),
        ("optimizer: sgd   # plain\nseed: 1\n", "optimizer: {name: sgd, lr: 3.0e-03}   # plain\n"),
        ("optimizer:\n  name: sgd\n  momentum: 0.9\nseed: 1\n", "  lr: 3.0e-03\n"),
        ("name: a\n", "optimizer: {lr: 3.0e-03}\n"),
    ],
)
def test_set_recipe_lr_changes_only_the_lr(text, line):
    new = set_recipe_lr(text, "3.0e-03")
    assert line in new.splitlines(keepends=True)
    before, after = yaml.safe_load(text), yaml.safe_load(new)
    optimizer = before.get("optimizer")
    optimizer = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer or {})
    assert after == {**before, "optimizer": {**optimizer, "lr": 0.003}}


def test_apply_lr_keeps_every_other_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    _, value = apply_lr(path, 0.0123456)
    assert value == "1.2e-02"
    old, new = RECIPE.splitlines(), path.read_text().splitlines()
    assert [i for i, (a, b) in enumerate(zip(old, new)) if a != b] == [9] and len(old) == len(new)
    assert tc.load_recipe(path).optimizer.lr == 0.012


def test_lr_find_command_prints_plots_and_applies(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    assert lr_find_main([str(path), "data.batch_size=8", "--steps", "30", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "steepest descent:" in out and "valley:" in out and "plot: lr_find.png" in out
    assert (tmp_path / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    written = re.search(r"wrote optimizer.lr: (\S+) \(valley\)", out).group(1)
    assert f"  lr: {written}     # to be found" in path.read_text()
    assert "data:\n  dataset: iris\n  split: {val: 0.2, test: 0.2}\n  batch_size: 16\n" in path.read_text()


def test_lr_find_command_apply_needs_a_file(capsys):
    assert lr_find_main(["quickstart", "--apply"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --apply writes into a recipe file") and err.count("\n") == 1
