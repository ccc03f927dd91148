"""Data larger than memory: ``.npy`` inputs memory-mapped, batches gathered from the map in the
trainer's seeded order, training exactly as on the same arrays in memory; the map's pages are
handed back as batches go, so resident memory stays bounded (the 4 GiB figure is in bench/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft import mapped
from traincraft.datasets import prepare
from traincraft.errors import DataError


def write(tmp_path, n=200, features=6, classification=True):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x.sum(1) > 0).astype(np.int64) if classification else x[:, :2].sum(1, keepdims=True).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return x, y


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def test_a_mapped_set_trains_exactly_as_the_same_arrays_in_memory(tmp_path):
    x, y = write(tmp_path)
    data = prepare({"inputs": str(tmp_path / "x.npy"), "targets": str(tmp_path / "y.npy")},
                   split={"val": 0.2, "test": 0.1}, scale="none", seed=3, task="classification")
    assert isinstance(data.train, mapped.MappedSplit) and isinstance(data.train.inputs, np.memmap)
    assert (len(data.train), len(data.val), len(data.test)) == (140, 40, 20)
    assert sorted(np.concatenate([data.train.rows, data.val.rows, data.test.rows]).tolist()) == list(range(200))
    assert data.class_names == ["0", "1"] and data.input_shape == (6,)
    in_memory = {k: (torch.from_numpy(x[s.rows]), torch.from_numpy(y[s.rows]))
                 for k, s in (("train", data.train), ("val", data.val))}

    def fit(train, val):
        trainer = tc.Trainer(model(), loss="cross_entropy", batch_size=16, max_epochs=2, seed=0, progress=False,
                             metrics=["accuracy"])
        history = trainer.fit(train, val=val)
        return trainer, history

    ours, our_history = fit(data.train, data.val)
    theirs, their_history = fit(*in_memory.values())
    for a, b in zip(ours.model.state_dict().values(), theirs.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in our_history.epochs]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in their_history.epochs]


def resident_mib() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_an_epoch_over_the_file_keeps_resident_memory_to_a_batch(tmp_path):
    rows, width = 16384, 1024  # 64 MiB of float32
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    x[:] = np.arange(rows, dtype=np.float32)[:, None]
    x.flush()
    del x
    np.save(tmp_path / "y.npy", np.zeros(rows, dtype=np.int64))
    data = prepare({"inputs": str(tmp_path / "x.npy"), "targets": str(tmp_path / "y.npy")},
                   split={"val": 0.0, "test": 0.0}, scale="none", task="classification")
    before = resident_mib()
    seen = []
    for inputs, _ in mapped.MappedBatches(data.train, 256, shuffle=True, seed=1).epoch(0):
        seen.append(inputs[:, 0].long())
        assert torch.equal(inputs, inputs[:, :1].expand(-1, width))  # whole rows, each its own
        assert resident_mib() - before < 16  # a few batches of 1 MiB, never the file
    assert sorted(torch.cat(seen).tolist()) == list(range(rows))


@pytest.mark.parametrize("spec, kwargs, message", [
    ({"inputs": "x.npy", "targets": "y.npy"}, {}, "a memory-mapped data set is used as stored: set data.scale: none"),
    ({"inputs": "x.npy"}, {"scale": "none"}, "dataset: a memory-mapped data set needs {{inputs: x.npy, targets: y.npy}}"),
    ({"inputs": "y.npy", "targets": "y.npy"}, {"scale": "none"}, "inputs {tmp}/y.npy: need a numeric array of shape (samples, ...)"),
    ({"inputs": "x.npy", "targets": "short.npy"}, {"scale": "none"}, "dataset '{tmp}/x.npy': 200 inputs but 3 targets"),
])
def test_mistakes_are_one_line(tmp_path, spec, kwargs, message):
    write(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros(3))
    spec = {k: str(tmp_path / v) for k, v in spec.items()}
    with pytest.raises(DataError) as caught:
        prepare(spec, split={"val": 0, "test": 0}, **kwargs)
    assert str(caught.value).startswith(message.format(tmp=tmp_path))
