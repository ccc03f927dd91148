import math
import os
import re
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import traincraft as tc
from traincraft.errors import DataError, ModelError, ShapeError, TraincraftError


def quiet(model, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("seed", 0)
    return tc.Trainer(model, **kwargs)


def regression_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return X, y


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


class Frozen(nn.Module):
    """Predicts 0 for every sample: with L1 loss the per-sample loss is the target itself."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, 1))

    def forward(self, x):
        return x @ self.w


def test_epoch_loss_is_exact_over_samples_not_a_mean_of_batch_means():
    X, y = torch.ones(10, 1), torch.arange(10.0).unsqueeze(1)  # per-sample loss 0, 1, ..., 9
    trainer = quiet(Frozen(), loss="l1", optimizer="sgd", lr=1e-12, batch_size=4, max_epochs=1, shuffle=False)
    history = trainer.fit((X, y), val=(X, y))
    assert history[0]["train_loss"] == pytest.approx(4.5, abs=1e-6)  # mean of batch means: 5.1667
    assert history[0]["val_loss"] == 4.5
    assert trainer.evaluate((X, y)) == {"loss": 4.5}


def test_training_reduces_the_loss_and_history_has_the_usual_columns():
    X, y = regression_data()
    trainer = quiet(mlp(), loss="mse", lr=1e-2, max_epochs=15, batch_size=16, metrics=["mae", "rmse"])
    history = trainer.fit((X[:48], y[:48]), val=(X[48:], y[48:]))
    assert len(history) == 15 and history.stop_reason == "max_epochs"
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 4
    row = history[-1]
    assert list(row)[:5] == ["epoch", "step", "lr", "train_loss", "train_mae"]
    assert {"val_loss", "val_mae", "val_rmse", "seconds"} <= set(row)
    assert row["epoch"] == 15 and row["step"] == 15 * 3
    assert row["val_rmse"] == pytest.approx(math.sqrt(row["val_loss"]), rel=1e-6)
    assert history.best["monitor"] == "val_loss"
    assert history.best["value"] == min(r["val_loss"] for r in history.epochs)
    columns = history.as_dict()
    assert columns["epoch"] == list(range(1, 16))


def test_same_seed_gives_bitwise_identical_weights_and_history_with_dropout_and_shuffle():
    X, y = regression_data()

    def run(seed):
        trainer = quiet(mlp(dropout=0.3), loss="mse", max_epochs=3, batch_size=8, seed=seed)
        history = trainer.fit((X, y), val=(X[:16], y[:16]))
        return trainer.model.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]

    (w1, h1), (w2, h2), (w3, _) = run(1), run(1), run(2)
    assert h1 == h2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)


def test_numpy_tensors_dataset_and_tensordataset_train_identically():
    X, y = regression_data(40)

    class Pairs(Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return X[i], y[i]

    results = []
    for data in [(X, y), (X.numpy().astype(np.float64), y.numpy()), Pairs(), TensorDataset(X, y)]:
        trainer = quiet(mlp(), loss="mse", max_epochs=2, batch_size=8)
        trainer.fit(data)
        results.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    for other in results[1:]:
        assert torch.allclose(results[0], other, atol=1e-6)


def test_a_dataloader_is_used_as_it_is():
    X, y = regression_data(40)
    loader = DataLoader(TensorDataset(X, y), batch_size=10)
    trainer = quiet(mlp(), loss="mse", max_epochs=2, batch_size=999)
    history = trainer.fit(loader)
    assert history[-1]["step"] == 8  # 4 batches of the loader's own size per epoch


def test_tuple_and_dict_inputs_are_unpacked_into_the_model():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 1), nn.Linear(3, 1)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    left, right, y = torch.randn(12, 2), torch.randn(12, 3), torch.randn(12, 1)
    quiet(Two(), loss="mse", max_epochs=1).fit(((left, right), y))
    trainer = quiet(Two(), loss="mse", max_epochs=1)
    trainer.fit(({"left": left, "right": right}, y))
    assert trainer.predict({"left": left, "right": right}).shape == (12, 1)


def test_val_split_is_seeded_and_reported():
    X, y = regression_data(50)
    trainer = quiet(mlp(), loss="mse", max_epochs=1, val_split=0.2, batch_size=10)
    history = trainer.fit((X, y))
    assert "val_loss" in history[0]
    assert history[0]["step"] == 4  # 40 training samples / 10


def test_validation_evaluate_and_predict_run_in_eval_and_inference_mode():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return self.lin(x)

    X, y = regression_data(8)
    trainer = quiet(Spy(), loss="mse", max_epochs=1, batch_size=8)
    trainer.fit((X, y), val=(X, y))
    assert seen == [(True, False), (False, True)]
    seen.clear()
    trainer.evaluate((X, y))
    trainer.predict(X)
    assert seen == [(False, True), (False, True)]
    assert trainer.model.training  # training mode restored


def test_predict_concatenates_outputs_in_order():
    X, _ = regression_data(25)
    trainer = quiet(mlp(), loss="mse", batch_size=7)
    out = trainer.predict(X)
    assert out.shape == (25, 1)
    with torch.no_grad():
        assert torch.allclose(out, trainer.model.eval()(X), atol=1e-6)


def test_n1_prediction_with_n_target_is_aligned_not_broadcast():
    X, y = regression_data(32)
    flat = quiet(mlp(), loss="mse", max_epochs=2, batch_size=8)
    flat.fit((X, y.squeeze(1)))  # target (N,), prediction (N, 1)
    column = quiet(mlp(), loss="mse", max_epochs=2, batch_size=8)
    column.fit((X, y))
    for a, b in zip(flat.model.parameters(), column.model.parameters()):
        assert torch.equal(a, b)


def test_a_shape_mismatch_raises_before_the_first_step():
    X = torch.randn(16, 3)
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet(model, loss="mse", max_epochs=1)
    with pytest.raises(ShapeError, match=r"\(.*2\).*\(.*3\)|\(.*3\).*\(.*2\)"):
        trainer.fit((X, torch.randn(16, 3)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_error_in_the_models_forward_names_the_batch_shapes():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x)

    trainer = quiet(Broken(), loss="mse", batch_size=5)
    with pytest.raises(ModelError, match=r"inputs float32\[5, 3\]: RuntimeError: mat1 and mat2"):
        trainer.fit((torch.randn(10, 3), torch.randn(10, 1)))


def test_unsupported_and_empty_data_get_clear_errors():
    trainer = quiet(mlp(), loss="mse")
    with pytest.raises(DataError, match="unsupported type str; accepted: a tuple"):
        trainer.fit("train.csv")
    with pytest.raises(DataError, match="empty data"):
        trainer.fit((torch.randn(0, 3), torch.randn(0, 1)))


def test_l1_and_l2_penalties_skip_biases_and_norms_and_are_logged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    X, y = regression_data(16)
    trainer = quiet(model, loss="mse", optimizer="sgd", lr=1e-12, l1=0.01, l2=0.1, max_epochs=1, batch_size=16)
    weights = [model[0].weight, model[2].weight]
    expected = sum(0.01 * w.abs().sum() + 0.1 * w.pow(2).sum() for w in weights).item()
    history = trainer.fit((X, y))
    assert history[0]["train_penalty"] == pytest.approx(expected, rel=1e-5)
    assert trainer.penalty.names == ["0.weight", "2.weight"]


def test_penalty_gradient_equals_the_hand_written_one():
    X, y = regression_data(16)
    by_hand = mlp()
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    loss = nn.functional.mse_loss(by_hand(X), y)
    weights = [by_hand[0].weight, by_hand[3].weight]
    (loss + 0.01 * sum(w.abs().sum() for w in weights) + 0.1 * sum(w.pow(2).sum() for w in weights)).backward()
    opt.step()
    ours = mlp()
    quiet(ours, loss="mse", optimizer="sgd", lr=0.1, weight_decay=0.0, l1=0.01, l2=0.1,
          max_epochs=1, batch_size=16, shuffle=False).fit((X, y))
    for a, b in zip(by_hand.parameters(), ours.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_early_stopping_restores_the_best_weights_whatever_ended_training():
    X, y = regression_data(64)
    snapshots = {}

    class Record(tc.Callback):
        def on_epoch_end(self, trainer):
            snapshots[trainer.state.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    stopper = tc.EarlyStopping(monitor="val_loss", patience=100, verbose=False)
    trainer = quiet(mlp(), loss="mse", lr=0.05, optimizer="sgd", max_epochs=8, batch_size=8,
                    callbacks=[stopper, Record()])
    # validation targets of the opposite sign: the better the fit, the worse val_loss gets
    history = trainer.fit((X[:48], y[:48]), val=(X[48:], -y[48:]))
    assert history.stop_reason == "max_epochs"
    best_epoch = min(history.epochs, key=lambda r: r["val_loss"])["epoch"]
    assert best_epoch < 8
    assert history.best == {"epoch": best_epoch, "monitor": "val_loss", "value": stopper.best_value}
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, snapshots[best_epoch][key])


def test_callback_events_come_in_the_documented_order():
    events = []

    class Recorder(tc.Callback):
        pass

    for name in ("on_fit_start", "on_epoch_start", "on_before_step", "on_step_end",
                 "on_validation_end", "on_epoch_end", "on_fit_end"):
        setattr(Recorder, name, lambda self, trainer, name=name: events.append(name))
    X, y = regression_data(8)
    quiet(mlp(), loss="mse", max_epochs=2, batch_size=4, callbacks=[Recorder()]).fit((X, y), val=(X, y))
    epoch = ["on_epoch_start"] + ["on_before_step", "on_step_end"] * 2 + ["on_validation_end", "on_epoch_end"]
    assert events == ["on_fit_start", *epoch, *epoch, "on_fit_end"]


def test_max_steps_stops_mid_epoch_with_exact_counters():
    X, y = regression_data(40)
    trainer = quiet(mlp(), loss="mse", max_epochs=10, max_steps=7, batch_size=10)
    history = trainer.fit((X, y), val=(X, y))
    assert trainer.state.step == 7 and history.stop_reason == "max_steps"
    assert [r["step"] for r in history.epochs] == [4, 7]
    assert trainer.state.samples_seen == 70


def test_accumulation_counts_optimizer_steps_and_matches_the_big_batch():
    X, y = regression_data(50)
    small = quiet(mlp(), loss="mse", optimizer="sgd", lr=0.05, max_epochs=2, batch_size=5,
                  accumulate=3, shuffle=False)
    small.fit((X, y))
    assert small.state.steps_per_epoch == 4  # ceil(10 micro-batches / 3)
    assert small.state.step == 8
    big = quiet(mlp(), loss="mse", optimizer="sgd", lr=0.05, max_epochs=2, batch_size=15, shuffle=False)
    big.fit((X, y))  # 15, 15, 15, 5: the same windows as 3 × 5 with a partial last window of 1 × 5
    for a, b in zip(small.model.parameters(), big.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    X, y = regression_data(16)
    quiet(mlp(), loss="mse", max_epochs=2, batch_size=8, progress=True).fit((X, y))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Training on cpu: 81 trainable parameters; 16 train samples; 2 steps per epoch")
    # The monitored figure first (no validation data: train_loss, * a new best), lr after it.
    assert re.match(r"epoch 1/2 [0-9.]+s  train_loss ", err[1]) and err[1].endswith(" *  lr 0.001")
    assert err[2].startswith("epoch 2/2") and len(err) == 3


def test_progress_false_prints_nothing(capsys):
    X, y = regression_data(16)
    quiet(mlp(), loss="mse", max_epochs=2, batch_size=8).fit((X, y))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_no_host_sync_per_step(monkeypatch):
    calls = {"item": 0}
    original_item = torch.Tensor.item

    def counting_item(self):
        calls["item"] += 1
        return original_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    X, y = regression_data(400)
    trainer = quiet(mlp(), loss="mse", metrics=["mae", "rmse"], max_epochs=2, batch_size=4)
    trainer.fit((X, y), val=(X[:40], y[:40]))
    assert trainer.state.step == 200
    assert calls["item"] <= 2 * 12  # a handful per epoch, none per step


def test_ctrl_c_stops_after_the_current_step_and_returns():
    class Interrupt(tc.Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    X, y = regression_data(80)
    trainer = quiet(mlp(), loss="mse", max_epochs=5, batch_size=8, callbacks=[Interrupt()])
    history = trainer.fit((X, y))
    assert history.stop_reason == "interrupted" and trainer.state.step == 3
    assert len(history) == 0  # the partial epoch is not recorded
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_run_dir_holds_metrics_csv_and_weights(tmp_path):
    X, y = regression_data(16)
    trainer = quiet(mlp(), loss="mse", max_epochs=3, batch_size=8, run_dir=tmp_path)
    trainer.fit((X, y), val=(X, y))
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,lr,train_loss,val_loss") and len(lines) == 4
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_deterministic_turns_on_torchs_deterministic_algorithms():
    X, y = regression_data(8)
    try:
        quiet(mlp(), loss="mse", max_epochs=1, deterministic=True).fit((X, y))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TraincraftError, match="model must be a torch.nn.Module, got str"):
        tc.Trainer("resnet", loss="mse")
    with pytest.raises(TraincraftError, match="batch_size must be > 0, got 0"):
        quiet(mlp(), loss="mse", batch_size=0)
    with pytest.raises(ValueError, match="did you mean"):
        quiet(mlp(), loss="cross_entropi")
    with pytest.raises(TraincraftError, match="fit\\(\\) needs training data"):
        quiet(mlp(), loss="mse").fit()


def test_device_auto_is_cpu_without_an_accelerator():
    trainer = tc.Trainer(mlp(), loss="mse", device="auto", progress=False)
    if not torch.cuda.is_available():
        assert trainer.device == torch.device("cpu")
    assert next(trainer.model.parameters()).device.type == trainer.device.type


def test_classification_with_accuracy_and_label_smoothing():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 2, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # 3 classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3))
    trainer = quiet(model, loss={"name": "cross_entropy", "label_smoothing": 0.1}, metrics=["accuracy"],
                    lr=1e-2, max_epochs=30, batch_size=16)
    trainer.fit((X, y))
    figures = trainer.evaluate((X, y))
    predicted = trainer.predict(X).argmax(1)
    assert figures["accuracy"] == (predicted == y).sum().item() / len(y)
    assert figures["accuracy"] > 0.9


def test_garbage_is_collected_at_fixed_steps_and_epoch_ends_and_automatic_collection_comes_back(monkeypatch):
    import gc

    import traincraft.trainer as trainer_module

    X, y = regression_data(n=64)
    seen = []

    class Watch(tc.Callback):
        def on_step_end(self, trainer):
            seen.append(("enabled", gc.isenabled()))

    real = gc.collect
    monkeypatch.setattr(trainer_module.gc, "collect", lambda generation=2: seen.append(("collect", generation)) or real(generation))
    trainer = quiet(mlp(), loss="mse", batch_size=8, max_epochs=2, gc_every=3, callbacks=[Watch()])
    assert gc.isenabled()
    trainer.fit((X, y))
    assert gc.isenabled()  # as it was
    assert ("enabled", True) not in seen and seen.count(("enabled", False)) == 16
    collects = [i for i, event in enumerate(seen) if event[0] == "collect"]
    assert all(seen[i] == ("collect", 1) for i in collects)
    # After steps 3, 6, 9, 12, 15 (before their on_step_end) and after each epoch (8 and 16 steps).
    done_before = [sum(1 for e in seen[:i] if e[0] == "enabled") for i in collects]
    assert done_before == [2, 5, 8, 8, 11, 14, 16]

    seen.clear()
    quiet(mlp(), loss="mse", batch_size=8, max_epochs=1, gc_every=None, callbacks=[Watch()]).fit((X, y))
    assert ("enabled", False) not in seen and not any(e[0] == "collect" for e in seen)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ModelError):
        quiet(nn.Sequential(nn.Linear(3, 1), Broken()), loss="mse", batch_size=8).fit((X, y))
    assert gc.isenabled()  # after an error too

    gc.disable()  # a program that manages collection itself keeps it off
    try:
        quiet(mlp(), loss="mse", batch_size=8, max_epochs=1).fit((X, y))
        assert not gc.isenabled()
    finally:
        gc.enable()


class GcFlagDataset(Dataset):
    """Each sample's input says whether automatic garbage collection is on where it was made."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        import gc

        return torch.tensor([float(gc.isenabled())]), torch.tensor([0.0])


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen = []

    def forward(self, x):
        self.seen.extend(x[:, 0].tolist())
        return self.layer(x)


@pytest.mark.parametrize("workers", [0, 1])
def test_dataloader_workers_forked_during_fit_collect_their_own_garbage(workers):
    model = Recorder()
    loader = DataLoader(GcFlagDataset(), batch_size=4, num_workers=workers)
    quiet(model, loss="mse", max_epochs=1).fit(loader)
    # In the training process collection is the trainer's (off); a forked worker has it back.
    assert model.seen == [float(workers == 1)] * 8


@pytest.mark.parametrize("kwargs, message", [
    ({"max_epochs": 1.5}, "max_epochs must be a whole number, got 1.5"),
    ({"batch_size": 8.5}, "batch_size must be a whole number"),
    ({"accumulate": True}, "accumulate must be a whole number"),
    ({"seed": -5}, "seed must be between 0 and 2\\*\\*63 - 1, got -5"),
    ({"seed": 1e23}, "seed must be between 0 and 2\\*\\*63 - 1"),
    ({"seed": 0.5}, "seed must be a whole number"),
])
def test_counts_and_seeds_are_checked_in_one_line(kwargs, message):
    with pytest.raises(TraincraftError, match=message):
        tc.Trainer(nn.Linear(2, 1), loss="mse", progress=False, **kwargs)


def test_data_that_is_not_numbers_or_not_finite_is_named():
    import numpy as np

    X = torch.randn(20, 2)
    t = tc.Trainer(nn.Linear(2, 1), loss="mse", progress=False, max_epochs=1)
    with pytest.raises(DataError, match=r"train target: numpy array of dtype <U1 \(not numbers\)"):
        t.fit((X, np.array(list("ab") * 10)))
    bad = X.clone()
    bad[7, 1], bad[12, 0] = float("nan"), float("inf")
    with pytest.raises(DataError, match=r"train inputs: 2 values are NaN or inf, in 2 samples \(the first: sample 7\)"):
        t.fit((bad, torch.randn(20, 1)))
    with pytest.raises(DataError, match=r"val target: 1 values are NaN or inf"):
        t.fit((X, torch.randn(20, 1)), val=(X, torch.tensor([[float("nan")]] * 1 + [[0.0]] * 19)))
    with pytest.raises(DataError, match=r"predict inputs: 2 values are NaN or inf"):
        t.predict(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint": {"every_n_step": 5}}, r"checkpoint: unknown key 'every_n_step' \(did you mean 'every_n_steps'"),
    ({"ema": {"decy": 0.9}}, r"ema: unknown key 'decy' \(did you mean 'decay'\?\)"),
    ({"swa": {"strat": "50%"}}, r"swa: unknown key 'strat' \(did you mean 'start'"),
])
def test_a_misspelled_key_of_a_strategy_gets_the_closest_one(tmp_path, kwargs, message):
    with pytest.raises(TraincraftError, match=message):
        tc.Trainer(nn.Linear(2, 1), loss="mse", progress=False, run_dir=tmp_path, **kwargs)
