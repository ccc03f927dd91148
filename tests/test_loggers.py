"""Loggers by name; TensorBoard read back with TensorBoard's reader, MLflow with MLflow's client."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft import loggers
from traincraft.errors import TraincraftError, UnknownNameError
from traincraft.report import RunReport

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (extra: tensorboard)"
)
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (extra: mlflow)"
)


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 3, generator=g)
    y = (X[:, 0] - 2 * X[:, 1] > 0).long()
    return (X[:64], y[:64]), (X[64:], y[64:])


class GradNorms(tc.Callback):
    """The oracle: the total gradient norm of every step, computed here with torch."""

    def __init__(self):
        self.norms = {}

    def on_before_step(self, trainer):
        grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
        self.norms[trainer.state.step + 1] = torch.linalg.vector_norm(torch.cat(grads)).item()


def fit(run_dir, callbacks, *, max_epochs=3, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    kwargs = {"loss": "cross_entropy", "metrics": ["accuracy"], "optimizer": "sgd", "lr": 0.1,
              "batch_size": 16, "max_epochs": max_epochs, "seed": 0, "device": "cpu", "progress": False,
              "shuffle": False, "run_dir": run_dir, "checkpoint": False, **kwargs}
    trainer = tc.Trainer(model, callbacks=callbacks, **kwargs)
    train, val = data()
    return trainer, trainer.fit(train, val=val)


# --------------------------------------------------------------------------- by name


def test_build_by_name():
    assert loggers.build(["csv"], "runs/x") == []
    assert loggers.build(["csv"], None) == []
    with pytest.raises(UnknownNameError, match="did you mean 'tensorboard'"):
        loggers.build(["tensorbord"], "runs/x")
    with pytest.raises(TraincraftError, match="writes into the run folder: give run_dir"):
        loggers.build(["mlflow"], None)
    own = loggers.CSVLogger("runs/x")
    assert loggers.build([own], "runs/x") == [own]


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_package_fails_when_built_naming_the_extra(name, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == name else real(mod, *a))
    with pytest.raises(TraincraftError) as err:
        loggers.build([name], tmp_path)
    assert str(err.value) == (
        f"logger {name!r} needs the {name} package, which is not installed: pip install 'traincraft[{name}]'"
    )
    assert not any(tmp_path.iterdir())  # nothing was started


def test_log_every_n_steps_must_be_positive(tmp_path):
    with pytest.raises(TraincraftError, match="log_every_n_steps must be >= 1"):
        loggers._FigureLogger(tmp_path, 0)


# --------------------------------------------------------------------------- TensorBoard


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return events, {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@needs_tensorboard
@pytest.mark.parametrize("clip", [None, 1e6], ids=["computed-by-the-logger", "from-the-clipping"])
def test_tensorboard_steps_epochs_and_hparams(tmp_path, clip):
    oracle = GradNorms()
    board = loggers.TensorBoardLogger(tmp_path, log_every_n_steps=2)
    trainer, history = fit(tmp_path, [oracle, board], clip_grad_norm=clip,
                           schedule={"name": "step", "step_size": 3, "gamma": 0.5})
    events, tags = scalars(tmp_path / "tensorboard")
    steps = list(range(2, 13, 2))  # 4 steps per epoch, 3 epochs
    assert [s for s, _ in tags["step/loss"]] == steps
    assert [s for s, _ in tags["step/grad_norm"]] == steps
    assert [v for _, v in tags["step/grad_norm"]] == pytest.approx([oracle.norms[s] for s in steps], rel=1e-5)
    # The LR the step used: 0.1 × 0.5^((step - 1) // 3)
    assert [v for _, v in tags["step/lr"]] == pytest.approx([0.1 * 0.5 ** ((s - 1) // 3) for s in steps], rel=1e-6)
    # Equal batches: the two logged means of an epoch average to the epoch's exact loss.
    for epoch, row in enumerate(history, start=0):
        pair = [v for s, v in tags["step/loss"] if epoch * 4 < s <= epoch * 4 + 4]
        assert sum(pair) / 2 == pytest.approx(row["train_loss"], rel=1e-5)
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert tags[f"epoch/{name}"] == [(4 * (i + 1), pytest.approx(r[name], rel=1e-6)) for i, r in enumerate(history)]
    best = min(r["val_loss"] for r in history)
    assert tags["hparam/best_val_loss"][0][1] == pytest.approx(best, rel=1e-6)
    assert tags["hparam/final_val_accuracy"][0][1] == pytest.approx(history[-1]["val_accuracy"], rel=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["optimizer"].string_value == "SGD" and hparams["batch_size"].number_value == 16
    # The settings that are set (no max_steps, no clipping unless asked), the model's and data's size.
    assert set(hparams) == {"model", "loss", "optimizer", "lr", "weight_decay", "batch_size", "max_epochs",
                            "accumulate", "precision", "schedule", "seed", "parameters", "train_samples",
                            "val_samples", *(["clip_grad_norm"] if clip else [])}
    assert (hparams["parameters"].number_value, hparams["train_samples"].number_value) == (3 * 8 + 8 + 8 * 2 + 2, 64)


@needs_tensorboard
def test_tensorboard_reads_nothing_from_the_device_between_logging_steps(tmp_path):
    """The same number of host reads with the logger (logging past the end) as without it."""
    def reads(callbacks, run_dir):
        with counting_reads() as counts:
            fit(run_dir, callbacks, max_epochs=2)
        return counts

    without = reads([], tmp_path / "a")
    with_logger = reads([loggers.TensorBoardLogger(tmp_path / "b", log_every_n_steps=1000)], tmp_path / "b")
    every_step = reads([loggers.TensorBoardLogger(tmp_path / "c", log_every_n_steps=1)], tmp_path / "c")
    assert with_logger == without
    assert sum(every_step.values()) > sum(without.values())  # the counter does see the logger's reads


@contextlib.contextmanager
def counting_reads():
    counts = {"item": 0, "__float__": 0, "tolist": 0, "cpu": 0}
    originals = {name: getattr(torch.Tensor, name) for name in counts}

    def counted(name):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in counts:
            setattr(torch.Tensor, name, counted(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    # One store for the module: creating MLflow's tables takes seconds.
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@needs_mlflow
def test_mlflow_params_metrics_by_step_and_artifacts(tmp_path, tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder

    logger = loggers.MLflowLogger(tmp_path, log_every_n_steps=2, tracking_uri=tracking_uri, experiment="tests")
    _, history = fit(tmp_path, [RunReport(tmp_path), logger], checkpoint=True)
    client = MlflowClient(tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert run.data.params["lr"] == "0.1" and run.data.params["optimizer"] == "SGD"
    val_loss = client.get_metric_history(logger.run_id, "epoch/val_loss")
    assert [(m.step, m.value) for m in sorted(val_loss, key=lambda m: m.step)] == [
        (4 * (i + 1), pytest.approx(r["val_loss"], rel=1e-12)) for i, r in enumerate(history)
    ]
    assert sorted(m.step for m in client.get_metric_history(logger.run_id, "step/loss")) == list(range(2, 13, 2))
    assert run.data.metrics["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in history), rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"best.safetensors", "report.html", "metrics.csv", "summary.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(logger.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/accuracy.png", "plots/lr.png"}
    beside_the_store = Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts"
    assert (next(beside_the_store.rglob("report.html"))).read_bytes() == (tmp_path / "report.html").read_bytes()
    assert not (tmp_path / "mlruns").exists()


@needs_mlflow
def test_mlflow_marks_a_failed_run(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    class Boom(tc.Callback):
        def on_epoch_end(self, trainer):
            raise RuntimeError("boom")

    logger = loggers.MLflowLogger(tmp_path, tracking_uri=tracking_uri, experiment="tests")
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, [Boom(), logger])
    assert MlflowClient(tracking_uri).get_run(logger.run_id).info.status == "FAILED"


@needs_mlflow
def test_mlflow_store_is_local_unless_a_tracking_uri_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = loggers.MLflowLogger(tmp_path)
    assert logger.uri() == "sqlite:///" + str((tmp_path / "mlruns" / "mlflow.db").resolve())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert logger.uri() == "http://tracking.example:5000"
    assert loggers.MLflowLogger(tmp_path, tracking_uri="sqlite:///x.db").uri() == "sqlite:///x.db"
    assert json.loads(json.dumps(logger.state_dict())) == {"run_id": None}


# --------------------------------------------------------------------------- what the user chose

POINTS_RECIPE = {
    "name": "points",
    "data": {"dataset": "points.npz", "task": "classification", "batch_size": 16,
             "split": {"val": 0.25, "test": 0.0}},
    "model": {"name": "mlp", "hidden_sizes": [8]},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "train": {"max_epochs": 2},
    "early_stopping": {"patience": 3, "verbose": True},  # verbose: true is the default
    "metrics": ["accuracy"],
}
# What the recipe sets to something other than a default, each section's name, and the facts.
CHOSEN = {
    "name": "points", "data.dataset": "points.npz", "data.task": "classification", "data.batch_size": 16,
    "data.split.val": 0.25, "data.split.test": 0.0, "model.name": "mlp", "model.hidden_sizes": "[8]",
    "optimizer.name": "adamw", "optimizer.lr": 0.01, "train.max_epochs": 2, "early_stopping.patience": 3,
    "metrics": '["accuracy"]',
}


def points_recipe(folder, logging):
    import numpy as np

    X = np.random.default_rng(0).normal(size=(80, 3)).astype("float32")
    np.savez(folder / "points.npz", X=X, y=(X[:, 0] > 0).astype("int64"))
    return {**POINTS_RECIPE, "data": {**POINTS_RECIPE["data"], "dataset": str(folder / "points.npz")},
            "logging": logging}


def test_chosen_keys_are_the_same_from_the_recipe_and_from_the_runs_resolved_copy(tmp_path):
    from traincraft.recipe import load_recipe

    recipe = load_recipe(POINTS_RECIPE)
    assert loggers.chosen_keys(recipe) == CHOSEN
    resolved = tmp_path / "recipe.yaml"
    resolved.write_text(recipe.to_yaml())  # every default spelled out, as a run folder keeps it
    assert loggers.chosen_keys(load_recipe(resolved)) == CHOSEN
    assert loggers.chosen_keys(load_recipe({**POINTS_RECIPE, "ema": {}}))["ema"] is True


@needs_tensorboard
@needs_mlflow
def test_hparams_and_params_are_what_the_recipe_chose_and_mlflow_says_nothing(tmp_path, capfd):
    from mlflow.tracking import MlflowClient
    from tensorboard.plugins.hparams import plugin_data_pb2

    store = "sqlite:///" + str(tmp_path / "store" / "mlflow.db")  # a new store: MLflow creates its tables
    (tmp_path / "store").mkdir()
    recipe = points_recipe(tmp_path, ["csv", "tensorboard", {"name": "mlflow", "tracking_uri": store}])
    trainer = tc.Trainer.from_recipe(recipe, run_dir=tmp_path / "run", progress="lines")
    capfd.readouterr()
    trainer.fit()
    err = capfd.readouterr().err
    assert "INFO" not in err and "mlflow" not in err  # MLflow's own log lines stay out
    assert [line.split("  ")[0].rsplit(" ", 1)[0] for line in err.splitlines() if line.startswith("epoch")] == [
        "epoch 1/2", "epoch 2/2"]  # each with its time
    parameters = sum(p.numel() for p in trainer.model.parameters())
    expected = {**CHOSEN, "data.dataset": recipe["data"]["dataset"], "parameters": parameters,
                "train_samples": 60, "val_samples": 20, "logging": json.dumps(recipe["logging"])}

    events, _ = scalars(tmp_path / "run" / "tensorboard")
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    shown = {k: (v.string_value if v.HasField("string_value") else v.bool_value if v.HasField("bool_value")
                 else v.number_value) for k, v in hparams.items()}
    assert set(shown) == set(expected), set(shown) ^ set(expected)
    assert shown == pytest.approx(expected)

    (logged,) = [c for c in trainer.callbacks if isinstance(c, loggers.MLflowLogger)]
    params = MlflowClient(store).get_run(logged.run_id).data.params
    assert params == {k: str(v) for k, v in expected.items()}
