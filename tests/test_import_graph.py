"""Which modules importing traincraft loads: the import graph, not times.

Each check runs in a fresh interpreter, since this test process has imported everything already.
``import traincraft`` loads no torch at all (its names load on first use), the command line's help
loads neither torch nor any optional package, and the trainer loads torch but none of the packages
that only some features need.
"""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = ("matplotlib", "optuna", "tensorboard", "mlflow", "sklearn", "statsmodels")
NOT_FOR_TRAINING = (*OPTIONAL, "scipy", "pandas")
TRAINING_NAMES = ("Trainer", "EarlyStopping", "ProgressBar", "CSVLogger", "History", "TrainState")

PROBE = """
import json, sys
loaded = []
for step in json.loads(sys.argv[1]):
    exec(step)
    loaded.append(sorted({name.partition(".")[0] for name in sys.modules}))
print(json.dumps(loaded))
"""

HELP = """
import contextlib, io
from traincraft.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit as stop:
        assert stop.code == 0, stop.code
"""


def top_level_modules_after(*steps: str) -> list[set[str]]:
    """Run ``steps`` in order in a fresh interpreter; the top-level modules loaded after each."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [set(names) for names in json.loads(result.stdout)]


def test_import_traincraft_loads_no_torch() -> None:
    (loaded,) = top_level_modules_after("import traincraft")
    assert "traincraft" in loaded
    heavy = loaded & {"torch", "numpy", *OPTIONAL}
    assert not heavy, f"import traincraft loaded {sorted(heavy)}"


def subcommands() -> list[str]:
    import argparse

    from traincraft.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


# `traincraft schedule` hands its arguments to a parser that lives in traincraft.schedules, which
# imports torch: its help may load torch (the optional packages still not).
HELP_MAY_LOAD_TORCH = {"schedule"}


def test_command_line_help_loads_no_torch_nor_optional_packages() -> None:
    # One interpreter for all, so modules accumulate: the commands allowed torch come last.
    names = sorted(subcommands(), key=lambda name: (name in HELP_MAY_LOAD_TORCH, name))
    commands = [["--help"], ["--version"], *([name, "--help"] for name in names)]
    assert ["fit", "--help"] in commands and ["tune", "--help"] in commands
    after = top_level_modules_after(*(HELP.format(argv=argv) for argv in commands))
    torch_loaded_by = None
    for argv, loaded in zip(commands, after, strict=True):
        if "torch" in loaded and torch_loaded_by is None:
            torch_loaded_by = argv
        heavy = loaded & set(OPTIONAL)
        assert not heavy, f"traincraft {' '.join(argv)} loaded {sorted(heavy)}"
    assert torch_loaded_by is None or torch_loaded_by[0] in HELP_MAY_LOAD_TORCH, torch_loaded_by


def test_the_trainer_loads_torch_and_nothing_only_some_features_need() -> None:
    (loaded,) = top_level_modules_after("import traincraft.trainer")
    assert "torch" in loaded
    extra = loaded & set(NOT_FOR_TRAINING)
    assert not extra, f"import traincraft.trainer loaded {sorted(extra)}"


def test_public_training_names_load_nothing_only_some_features_need() -> None:
    after = top_level_modules_after(*(f"from traincraft import {name}" for name in TRAINING_NAMES))
    for name, loaded in zip(TRAINING_NAMES, after, strict=True):
        extra = loaded & set(NOT_FOR_TRAINING)
        assert not extra, f"from traincraft import {name} loaded {sorted(extra)}"


def test_every_public_name_loads_no_optional_package() -> None:
    # Recipes, losses, metrics, optimizers, schedules, built-in datasets and models: scikit-learn,
    # statsmodels and matplotlib wait until a data set or a plot is asked for.
    (loaded,) = top_level_modules_after(
        "import traincraft\nfor name in traincraft.__all__:\n    getattr(traincraft, name)"
    )
    extra = loaded & set(OPTIONAL)
    assert not extra, f"the public names loaded {sorted(extra)}"
