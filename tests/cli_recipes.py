"""The small recipe that the command-line tests train (tests/cli/ and test_run_lifecycle.py)."""

from pathlib import Path

import yaml

from traincraft.cli import main

IRIS = {
    "name": "iris-test",
    "data": {"dataset": "iris", "split": {"val": 0.2, "test": 0.2}, "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "loss": "cross_entropy",
    "optimizer": {"name": "adamw", "lr": 0.01},
    "train": {"max_epochs": 3},
    "early_stopping": {"patience": 5},
    "metrics": ["accuracy"],
}

# A module of the user's own with one model class, for the tests of imports next to a recipe.
NET_MODULE = (
    "import torch\n"
    "class Net(torch.nn.Module):\n"
    "    def __init__(self, input_shape, output_size):\n"
    "        super().__init__()\n"
    "        self.layer = torch.nn.Linear(input_shape[0], output_size)\n"
    "    def forward(self, x):\n"
    "        return self.layer(x)\n"
)


def write_recipe(folder: Path, recipe=IRIS, name="recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit(tmp_path, *args, recipe=IRIS):
    run_dir = tmp_path / "run"
    code = main(["fit", str(write_recipe(tmp_path, recipe)), *args, "--run-dir", str(run_dir), "--no-progress"])
    return code, run_dir
