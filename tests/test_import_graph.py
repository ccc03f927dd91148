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

OPTIONAL = ("matplotlib", "optuna", "tensorboard", "sklearn", "statsmodels")
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


def test_the_version_needs_no_torch() -> None:
    (loaded,) = top_level_modules_after("import traincraft; traincraft.__version__")
    assert "torch" not in loaded


COMMANDS = [
    ["--help"],
    ["fit", "--help"],
    ["evaluate", "--help"],
    ["predict", "--help"],
    ["init", "--help"],
    ["list", "--help"],
    ["schema", "--help"],
    ["--version"],
]


def test_command_line_help_loads_no_torch_nor_optional_packages() -> None:
    steps = [HELP.format(argv=argv) for argv in COMMANDS]
    after = top_level_modules_after(*steps)
    for argv, loaded in zip(COMMANDS, after, strict=True):
        heavy = loaded & {"torch", *OPTIONAL}
        assert not heavy, f"traincraft {' '.join(argv)} loaded {sorted(heavy)}"


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
