"""Checkpoints and exact resume: kill it anywhere, resume, get the same model."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
    unwrap_key,
)

WORKER = Path(__file__).parent / "resume_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def worker(run_dir, *args):
    return [sys.executable, str(WORKER), str(run_dir), *args]


def trace(run_dir):
    return [line.split(",") for line in (run_dir / "lrs.txt").read_text().splitlines()]


def outcome(run_dir):
    return load_weights(run_dir / "final.safetensors"), json.loads((run_dir / "history.json").read_text())


def kill_when(proc, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_run(reference, resumed, resumed_from_step):
    weights_a, history_a = outcome(reference)
    weights_b, history_b = outcome(resumed)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), "weights differ"
    assert history_a == history_b
    # the LR each step used: the killed run's steps up to the checkpoint, then the resumed ones
    before = [row for row in trace(resumed) if int(row[0]) <= resumed_from_step]
    seen, stitched = set(), []
    for row in before + [row for row in trace(resumed) if int(row[0]) > resumed_from_step]:
        if row[0] not in seen:
            seen.add(row[0])
            stitched.append(row)
    assert stitched == trace(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    subprocess.run(worker(run_dir, "--pause", "0"), check=True, env=ENV, capture_output=True, timeout=300)
    return run_dir


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(reference, tmp_path):
    total = len(trace(reference))
    target = random.Random().randint(5, total - 2)
    proc = subprocess.Popen(worker(tmp_path, "--every-n-steps", "2"), env=ENV, stderr=subprocess.PIPE)
    last = tmp_path / "checkpoints" / "last.ckpt"
    kill_when(proc, lambda: last.exists() and (tmp_path / "lrs.txt").exists()
              and len(trace(tmp_path)) >= target)
    assert not (tmp_path / "final.safetensors").exists()
    step = load_checkpoint(last)["state"]["step"]
    resumed = subprocess.run(worker(tmp_path, "--resume", "--every-n-steps", "2"), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {last}" in resumed.stderr
    assert_same_run(reference, tmp_path, step)


def test_sigkill_between_epochs_then_resume_is_bitwise_identical(reference, tmp_path):
    proc = subprocess.Popen(worker(tmp_path), env=ENV, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.csv"
    # metrics.csv reaches the disk just before its epoch's checkpoint (a checkpoint never knows
    # of files not written): once it shows 3 epochs, epoch 2's checkpoint is in place.
    kill_when(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 4)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state"]
    assert state["batch_in_epoch"] == 0 and state["epoch"] >= 2
    subprocess.run(worker(tmp_path, "--resume"), check=True, env=ENV, capture_output=True, timeout=300)
    assert_same_run(reference, tmp_path, state["step"])


def small_trainer(run_dir, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    kwargs.setdefault("max_epochs", 4)
    return tc.Trainer(model, loss="mse", batch_size=8, run_dir=run_dir, seed=0, progress=False, **kwargs)


def data(n=48):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    return (X[:32], X[:32].sum(1, keepdim=True)), (X[32:], X[32:].sum(1, keepdim=True))


def test_checkpoint_holds_everything_and_only_safe_types(tmp_path):
    train, val = data()
    small_trainer(tmp_path, callbacks=[tc.EarlyStopping(patience=9, verbose=False)]).fit(train, val=val)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # weights_only=True inside
    assert {"model", "optimizer", "schedule", "stepper", "callbacks", "state", "history", "rng",
            "epoch_sums", "metrics", "traincraft", "seed"} <= set(state)
    assert {"EarlyStopping", "Checkpoint"} <= set(state["callbacks"])
    assert state["state"]["epoch"] == 4 and len(state["history"]["epochs"]) == 4
    assert set(state["rng"]) >= {"python", "numpy", "torch"}


def test_small_tensors_are_packed_and_come_back_equal_each_in_its_own_storage(tmp_path):
    big = torch.randn(200, 100)  # 80 kB: stored as itself
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.randn(4), "big": big, "t": torch.randn(4, 3).t()},
        "scalars": [torch.tensor(3.0), torch.tensor(7), torch.tensor(True), torch.zeros(0, 5)],
        "mixed": (torch.arange(5, dtype=torch.uint8), {"h": torch.randn(2, dtype=torch.float64)}, "x", 3),
        "half": torch.randn(3, dtype=torch.bfloat16),
    }
    path = save_checkpoint(state, tmp_path / "a.ckpt")
    loaded = load_checkpoint(path)

    def pairs(a, b):
        if isinstance(a, torch.Tensor):
            yield a, b
        elif isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                yield from pairs(a[k], b[k])
        elif isinstance(a, (list, tuple)):
            assert type(a) is type(b) and len(a) == len(b)
            for x, y in zip(a, b):
                yield from pairs(x, y)
        else:
            assert a == b

    assert loaded.pop("format") == 2
    tensors = list(pairs(state, loaded))
    assert len(tensors) == 11
    for want, got in tensors:
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
        assert got.untyped_storage().nbytes() == want.nbytes  # not a view into a shared buffer
    # One record per dtype for the ten small tensors (six dtypes), one for the big one.
    import zipfile

    records = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    assert len(records) == 6 + 1


def test_a_checkpoint_of_the_first_format_still_loads(tmp_path):
    # Format 1 stored every tensor on its own and python's random state as a tuple of ints.
    old = tmp_path / "old.ckpt"
    words = random.getstate()
    torch.save({"format": 1, "model": {"w": torch.ones(2)}, "rng": {"python": words}}, old)
    state = load_checkpoint(old)
    assert torch.equal(state["model"]["w"], torch.ones(2)) and state["rng"]["python"] == words


def test_the_random_state_round_trips_through_a_checkpoint(tmp_path):
    import numpy as np

    from traincraft.seeding import rng_state, seed_everything, set_rng_state

    seed_everything(5)
    path = save_checkpoint({"rng": rng_state()}, tmp_path / "r.ckpt")
    first = (random.random(), float(torch.rand(())), np.random.rand())
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), float(torch.rand(())), np.random.rand()) == first


def test_best_weights_and_best_json(tmp_path):
    train, val = data()
    trainer = small_trainer(tmp_path, callbacks=[tc.EarlyStopping(patience=9, verbose=False)])
    history = trainer.fit(train, val=val)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] == history.best["epoch"] and best["value"] == history.best["value"]
    assert best["monitor"] == "val_loss"
    saved = load_weights(tmp_path / "best.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())  # restored best


def test_best_weights_are_those_of_the_best_epoch_even_when_written_later(tmp_path):
    # best.safetensors is written at most every 2 s: the version written at the end of fit
    # must hold the weights as they were when that epoch was best, not the live ones.
    train, val = data()
    seen = {}

    class RecordThenSpoil(tc.Callback):
        def on_validation_end(self, trainer):
            seen[trainer.state.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        def on_epoch_end(self, trainer):
            if trainer.state.epoch >= 2:  # from now on every epoch validates worse
                with torch.no_grad():
                    for p in trainer.model.parameters():
                        p.add_(10.0)

    small_trainer(tmp_path, callbacks=[RecordThenSpoil()]).fit(train, val=val)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] == 2
    saved = load_weights(tmp_path / "best.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in seen[2].items())


def test_retention_keeps_the_newest_and_the_top_k(tmp_path):
    train, val = data()
    small_trainer(tmp_path, max_epochs=6, checkpoint={"every_n_steps": 1, "keep_last": 3, "save_top_k": 2}).fit(
        train, val=val
    )
    folder = tmp_path / "checkpoints"
    steps = sorted(p.name for p in folder.glob("step-*.ckpt"))
    assert steps == ["step-00000022.ckpt", "step-00000023.ckpt", "step-00000024.ckpt"]
    assert torch.equal(load_checkpoint(folder / "last.ckpt")["rng"]["torch"],
                       load_checkpoint(folder / "step-00000024.ckpt")["rng"]["torch"])
    rows = [json.loads(json.dumps(r)) for r in load_checkpoint(folder / "last.ckpt")["history"]["epochs"]]
    best_two = sorted(rows, key=lambda r: r["val_loss"])[:2]
    assert sorted(p.name for p in folder.glob("top-*.ckpt")) == sorted(
        f"top-epoch-{r['epoch']:04d}.ckpt" for r in best_two
    )


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"format": 1, "model": {}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.ckpt was refused: it holds Python objects"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_damaged_checkpoint_is_named_and_resume_falls_back(tmp_path, capsys):
    train, val = data()
    small_trainer(tmp_path, checkpoint={"every_n_steps": 2, "keep_last": 3}).fit(train, val=val)
    last = tmp_path / "checkpoints" / "last.ckpt"
    kept = sorted((tmp_path / "checkpoints").glob("step-*.ckpt"))
    # The kept step files are copies of their own (not links): damage to one spares the others.
    assert len({p.stat().st_ino for p in [last, *kept]}) == len(kept) + 1
    assert load_checkpoint(kept[-1])["state"]["step"] == load_checkpoint(last)["state"]["step"]
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"last.ckpt is damaged \(truncated or garbled\)"):
        load_checkpoint(last)
    kept[-1].write_bytes(b"")
    messages = []
    path, state = find_resume_checkpoint(tmp_path, warn=messages.append)
    assert path == kept[-2]
    assert len(messages) == 2 and all(m.startswith("warning:") for m in messages)
    assert "last.ckpt is damaged" in messages[0] and kept[-1].name in messages[1]
    garbled = tmp_path / "garbled.ckpt"
    garbled.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbled.ckpt is damaged"):
        load_checkpoint(garbled)


def test_a_resumed_run_keeps_exactly_the_newest_checkpoints(tmp_path):
    # Each checkpoint lists itself among the kept ones, so a run resumed from it deletes the
    # right older files and no step file is left behind.
    train, val = data()
    small_trainer(tmp_path, max_epochs=3).fit(train, val=val)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000008.ckpt", "step-00000012.ckpt"]
    small_trainer(tmp_path, max_epochs=5).fit(train, val=val, resume=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000016.ckpt", "step-00000020.ckpt"]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert state["callbacks"]["Checkpoint"]["kept"] == ["step-00000016.ckpt", "step-00000020.ckpt"]


def test_resume_with_more_epochs_trains_further(tmp_path):
    train, val = data()
    small_trainer(tmp_path, max_epochs=2).fit(train, val=val)
    longer = small_trainer(tmp_path, max_epochs=4)
    history = longer.fit(train, val=val, resume=tmp_path)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4] and longer.state.step == 16
    again = small_trainer(tmp_path, max_epochs=4)
    assert len(again.fit(train, val=val, resume=tmp_path)) == 4 and again.state.step == 16  # done: no more


def test_weights_keys_are_unwrapped(tmp_path):
    assert unwrap_key("module._orig_mod.layer.weight") == "layer.weight"
    model = nn.Linear(2, 1)
    wrapped = nn.Module()
    wrapped.module = model
    save_weights(wrapped, tmp_path / "w.safetensors")
    assert set(load_weights(tmp_path / "w.safetensors")) == {"weight", "bias"}
    save_checkpoint({"model": {"module.weight": torch.ones(1)}}, tmp_path / "c.ckpt")
    assert set(load_weights(tmp_path / "c.ckpt")) == {"weight"}


def write_iris_recipe(folder, **train):
    import yaml

    recipe = {"name": "iris", "data": {"dataset": "iris", "batch_size": 16}, "model": {"name": "mlp"},
              "train": {"max_epochs": 3, **train}, "early_stopping": {"patience": 5, "verbose": False}}
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_resume_refuses_a_changed_recipe_but_allows_longer_training(tmp_path, capsys):
    from traincraft.cli import main

    recipe = write_iris_recipe(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["fit", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert main(["fit", str(recipe), "optimizer.lr=0.1", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the recipe differs from the run's in optimizer.lr: 0.001 -> 0.1" in err and "--allow-changes" in err
    assert main(["resume", str(run_dir), "train.max_epochs=5", "--no-progress"]) == 0
    assert len(json.loads(json.dumps(load_checkpoint(run_dir / "checkpoints/last.ckpt")["history"]["epochs"]))) == 5
    assert main(["fit", str(recipe), "optimizer.lr=0.1", "train.max_epochs=6", "--resume", str(run_dir),
                 "--allow-changes", "--no-progress"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 6


def test_ctrl_c_leaves_a_checkpoint_that_resumes(tmp_path):
    recipe = write_iris_recipe(tmp_path, max_epochs=100000)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "traincraft", "fit", str(recipe), "--run-dir", str(run_dir),
                             "--no-progress"], env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"resume with: traincraft resume {run_dir}" in err
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state"]
    assert state["stop_reason"] == "interrupted"


@pytest.mark.parametrize("how", ["raw pickle", "torch.save"])
def test_a_pickle_payload_is_one_line_that_never_advises_an_unsafe_load(tmp_path, how):
    import pickle

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    if how == "raw pickle":
        evil.write_bytes(pickle.dumps({"state_dict": {"w": Payload()}}))
    else:
        torch.save({"state_dict": {"w": Payload()}}, evil)
    said = {"raw pickle": "evil.pt is damaged, or not a torch.save file of tensors and plain types (a raw pickle?)",
            "torch.save": "evil.pt was refused: it holds Python objects other than tensors"}[how]
    for load in (load_checkpoint, lambda p: tc.Trainer(nn.Linear(2, 1), loss="mse", init_from=p, progress=False)):
        with pytest.raises(CheckpointError) as caught:
            load(evil)
        message = str(caught.value)
        assert said in message
        assert "\n" not in message and "weights_only" not in message
    data_recipe = {"data": {"dataset": str(evil)}, "model": "mlp", "loss": "mse"}
    with pytest.raises(tc.TraincraftError, match=said.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")) as caught:
        tc.Trainer.from_recipe(data_recipe, progress=False)
    assert "\n" not in str(caught.value)
    assert not marker.exists()
