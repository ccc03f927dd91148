"""A recipe's own Dataset (``dataset: "module:Class"`` with ``data.args``): next to the recipe,
split by the recipe, loaded by workers in the trainer's order, and evaluated from the run folder."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from traincraft.cli import main
from traincraft.datasets import prepare
from traincraft.errors import DataError

MODULE = '''
import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    classes = ["low", "high"]
    main_process_loads = 0

    def __init__(self, n=60, dim=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is None:
            Blobs.main_process_loads += 1
        return {"features": self.x[i], "labels": self.y[i]}


class PerSplit(Dataset):
    def __init__(self, split, n=10):
        self.split, self.n = split, {"train": n, "val": 4, "test": None}[split]

    def __new__(cls, split, n=10):
        return None if split == "test" else super().__new__(cls)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3,), float(i)), torch.tensor([float(i)])


class NoClasses(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(2), torch.tensor(i % 2)
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    name = f"own_data_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    return tmp_path, name


def test_a_dataset_class_with_args_trains_in_workers_and_evaluates_from_its_run_folder(project, monkeypatch, capsys):
    folder, module = project
    recipe = {"name": "own", "seed": 0,
              "data": {"dataset": f"{module}:Blobs", "args": {"n": 80, "dim": 4}, "split": {"val": 0.25, "test": 0.25},
                       "num_workers": 2, "batch_size": 16},
              "model": "mlp", "train": {"max_epochs": 2}, "metrics": ["accuracy"]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(folder)
    assert main(["fit", "recipe.yaml", "--run-dir", "run", "--no-progress"]) == 0
    # The first sample sizes the model; every batch is loaded by the workers.
    assert sys.modules[module].Blobs.main_process_loads == 1
    info = json.loads((folder / "run" / "data.json").read_text())
    assert info["sizes"] == {"train": 40, "val": 20, "test": 20}
    assert info["class_names"] == ["low", "high"] and info["input_shape"] == [4]
    results = json.loads((folder / "run" / "results.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "run"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


def test_a_dataset_that_takes_split_is_called_per_split_and_the_missing_one_carved(project):
    _, module = project
    data = prepare(f"{module}:PerSplit", args={"n": 20}, split={"val": 0.0, "test": 0.25})
    assert (len(data.train), len(data.val), len(data.test)) == (15, 4, 5)
    assert data.task == "regression" and data.input_shape == (3,) and data.output_size == 1
    assert sorted(data.train.indices + data.test.indices) == list(range(20))  # carved from train, seeded


@pytest.mark.parametrize("call, message", [
    (dict(dataset="{m}:NoClasses", task="classification"),
     "dataset '{m}:NoClasses': classification needs the number of classes: give the Dataset a `classes` list"),
    (dict(dataset="{m}:Blobs", args={"colour": "red"}),
     "dataset '{m}:Blobs' with data.args {{'colour': 'red'}}: Blobs.__init__() got an unexpected keyword argument 'colour'"),
    (dict(dataset="digits", args={"n": 3}), "data.args go to a dataset named 'package.module:Name', not to 'digits'"),
])
def test_mistakes_are_one_line(project, call, message):
    _, module = project
    call = {k: (v.format(m=module) if isinstance(v, str) else v) for k, v in call.items()}
    with pytest.raises(DataError) as caught:
        prepare(call.pop("dataset"), split={"val": 0, "test": 0}, **call)
    assert str(caught.value).startswith(message.format(m=module))
