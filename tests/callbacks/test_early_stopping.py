"""EarlyStopping driven by a fake trainer and scripted per-epoch figures.

What it says per epoch is a note in the epoch's progress line (``epoch_note``: ``*`` for a new
best, ``(patience 2/8)``), recorded here as ``trainer.notes``; what it logs is the stop and the
restore of the best weights."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from traincraft.callbacks.early_stopping import EarlyStopping
from traincraft.errors import TraincraftError
from traincraft.state import TrainState

NAN, INF = math.nan, math.inf
STOP, DIVERGE = "stopping_threshold", "divergence_threshold"


def restored_line(epoch: int, value: str) -> str:
    return f"EarlyStopping: restored the best weights, from epoch {epoch} (val_loss {value})"


def make_trainer(model: nn.Module | None = None) -> SimpleNamespace:
    logs: list[str] = []
    return SimpleNamespace(
        state=TrainState(), model=model or nn.Linear(2, 1), log=logs.append, logs=logs, notes=[]
    )


def set_weights(model: nn.Module, epoch: int) -> None:
    """Give the Linear model weights that name the epoch they were trained in."""
    with torch.no_grad():
        model.weight.fill_(float(epoch))
        model.bias.fill_(-float(epoch))


def fit(
    stop: EarlyStopping,
    values: Sequence[float],
    trainer: SimpleNamespace | None = None,
    name: str = "val_loss",
    end: bool = True,
) -> SimpleNamespace:
    """One fit: each epoch sets the weights to the epoch number and reports the next value."""
    trainer = trainer or make_trainer()
    stop.on_fit_start(trainer)
    for value in values:
        epoch = trainer.state.epoch + 1
        set_weights(trainer.model, epoch)
        trainer.state.epoch = epoch  # epochs completed, as the trainer counts them
        trainer.state.metrics = {"train_loss": 9.0, name: value}
        stop.on_validation_end(trainer)
        trainer.notes.append(stop.epoch_note(epoch))  # what the epoch's line says of it
        if trainer.state.should_stop:
            break
    if end:
        end_fit(stop, trainer)
    return trainer


def end_fit(stop: EarlyStopping, trainer: SimpleNamespace) -> None:
    """As Trainer.fit ends: the final weights offered go in, then on_fit_end."""
    offer = stop.final_weights(trainer)
    if offer is not None:
        offer[1]()
    stop.on_fit_end(trainer)


def weight_epoch(trainer: SimpleNamespace) -> float:
    """Which epoch's weights the model holds (weight = epoch, bias = -epoch)."""
    weight, bias = trainer.model.weight.detach(), trainer.model.bias.detach()
    assert torch.all(weight == weight.flatten()[0]) and torch.all(bias == -weight.flatten()[0])
    return float(weight.flatten()[0])


# ---- patience --------------------------------------------------------------------------------


def test_patience_stops_at_the_right_epoch_with_exact_messages() -> None:
    stop = EarlyStopping(patience=3)
    trainer = fit(stop, [1.0, 0.9, 0.95, 0.93, 0.91, 0.5])
    assert trainer.state.epoch == 5
    assert trainer.state.stop_reason == "early_stopping"
    assert (stop.best_epoch, stop.best_value, stop.wait, stop.stopped_epoch) == (2, 0.9, 3, 5)
    assert trainer.notes == ["*", "*", "(patience 1/3)", "(patience 2/3)", "(patience 3/3)"]
    assert trainer.logs == [
        "EarlyStopping: no improvement in val_loss for 3 validations at epoch 5; "
        "stopping (best 0.9000 at epoch 2)",
        restored_line(2, "0.9000"),
    ]
    assert weight_epoch(trainer) == 2.0


def test_improvement_resets_the_counter() -> None:
    stop = EarlyStopping(patience=3)
    trainer = fit(stop, [1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8, 0.1])
    assert trainer.state.epoch == 7
    assert stop.best_epoch == 4
    assert trainer.notes == [
        "*", "(patience 1/3)", "(patience 2/3)", "*", "(patience 1/3)", "(patience 2/3)", "(patience 3/3)",
    ]


def test_each_validation_is_a_note_in_the_epoch_line_not_a_line_of_its_own() -> None:
    trainer = fit(EarlyStopping(patience=10), [0.4211, 0.4016, 0.5])
    assert trainer.notes == ["*", "*", "(patience 1/10)"]
    assert trainer.logs == [restored_line(2, "0.4016")]  # the best (epoch 2) is not the last


def test_no_stop_within_patience_and_best_restored_after_max_epochs() -> None:
    stop = EarlyStopping(patience=5)
    trainer = fit(stop, [3.0, 1.0, 2.0, 2.5])  # the loop runs out of epochs
    assert not trainer.state.should_stop and trainer.state.stop_reason is None
    assert stop.wait == 2 and stop.stopped_epoch is None
    assert weight_epoch(trainer) == 2.0
    assert trainer.logs[-1] == restored_line(2, "1.0000")


# ---- min_delta -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "delta_mode", "stopped", "best_epoch"),
    [
        ([1.0, 0.75], "abs", True, 1),  # 0.75 = 1.0 - 0.25: not strictly better
        ([1.0, 0.7499], "abs", False, 2),  # just past the delta
        ([1.0, 0.76], "abs", True, 1),  # better, but by less than the delta
        ([2.0, 1.5], "rel", True, 1),  # 2.0 - |2.0| * 0.25 = 1.5
        ([2.0, 1.4999], "rel", False, 2),
        ([-2.0, -2.5], "rel", True, 1),  # -2.0 - |-2.0| * 0.25 = -2.5
        ([-2.0, -2.5001], "rel", False, 2),
        ([-2.0, -1.9], "rel", True, 1),  # b * (1 - d) would wrongly call -1.5 the bar
    ],
)
def test_min_delta(values: list[float], delta_mode: str, stopped: bool, best_epoch: int) -> None:
    stop = EarlyStopping(patience=1, min_delta=0.25, min_delta_mode=delta_mode)
    trainer = fit(stop, values)
    assert trainer.state.should_stop is stopped
    assert trainer.state.epoch == 2
    assert stop.best_epoch == best_epoch
    assert stop.best_value == values[best_epoch - 1]


def test_mode_max() -> None:
    stop = EarlyStopping(monitor="val_accuracy", patience=2)
    trainer = fit(stop, [0.5, 0.6, 0.6, 0.55, 0.99], name="val_accuracy")
    assert stop.mode == "max"
    assert trainer.state.epoch == 4 and trainer.state.stop_reason == "early_stopping"
    assert (stop.best_epoch, stop.best_value) == (2, 0.6)
    assert trainer.notes == ["*", "*", "(patience 1/2)", "(patience 2/2)"]
    assert weight_epoch(trainer) == 2.0


def test_explicit_mode_overrides_the_name() -> None:
    stop = EarlyStopping(monitor="val_loss", mode="max", patience=1)
    trainer = fit(stop, [1.0, 2.0, 1.5])
    assert trainer.state.epoch == 3 and stop.best_epoch == 2


# ---- start_from ------------------------------------------------------------------------------


def test_start_from_holds_the_counter_until_that_epoch() -> None:
    stop = EarlyStopping(patience=2, start_from=4)
    trainer = fit(stop, [1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert trainer.state.epoch == 5  # epochs 2 and 3 do not count; 4 and 5 do
    assert trainer.notes == ["*", "(patience 0/2)", "(patience 0/2)", "(patience 1/2)", "(patience 2/2)"]


def test_start_from_still_tracks_the_best() -> None:
    stop = EarlyStopping(patience=2, start_from=3)
    trainer = fit(stop, [1.0, 0.5, 2.0, 2.0, 2.0])
    assert trainer.state.epoch == 4
    assert (stop.best_epoch, stop.best_value) == (2, 0.5)
    assert weight_epoch(trainer) == 2.0


@pytest.mark.parametrize("start_from", [0, 1])
def test_start_from_zero_or_one_changes_nothing(start_from: int) -> None:
    trainer = fit(EarlyStopping(patience=1, start_from=start_from), [1.0, 2.0, 0.1])
    assert trainer.state.epoch == 2


def test_start_from_holds_thresholds_but_not_non_finite() -> None:
    stop = EarlyStopping(patience=50, start_from=3, stopping_threshold=0.1)
    trainer = fit(stop, [0.05, 0.04, 0.03, 0.02])
    assert trainer.state.epoch == 3 and trainer.state.stop_reason == "stopping_threshold"
    stop = EarlyStopping(patience=50, start_from=3, divergence_threshold=5.0)
    trainer = fit(stop, [1.0, 6.0, 7.0, 1.0])
    assert trainer.state.epoch == 3 and trainer.state.stop_reason == "divergence_threshold"
    stop = EarlyStopping(patience=50, start_from=5)
    trainer = fit(stop, [1.0, NAN, 0.5])
    assert trainer.state.epoch == 2 and trainer.state.stop_reason == "non_finite"


# ---- non-finite ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_stops_at_once_and_restores_the_best(bad: float) -> None:
    stop = EarlyStopping(patience=10)
    trainer = fit(stop, [1.0, 0.8, bad, 0.1])
    assert trainer.state.epoch == 3 and trainer.state.stop_reason == "non_finite"
    assert (stop.best_epoch, stop.best_value, stop.stopped_epoch) == (2, 0.8, 3)
    assert trainer.logs[-2] == (
        f"EarlyStopping: val_loss is {bad} at epoch 3; stopping (best 0.8000 at epoch 2)"
    )
    assert weight_epoch(trainer) == 2.0


def test_non_finite_counts_as_no_improvement_without_check_finite() -> None:
    stop = EarlyStopping(patience=2, check_finite=False)
    trainer = fit(stop, [1.0, NAN, -INF, 0.5])
    assert trainer.state.epoch == 3 and trainer.state.stop_reason == "early_stopping"
    assert (stop.best_epoch, stop.best_value) == (1, 1.0)


def test_never_finite_restores_nothing() -> None:
    stop = EarlyStopping(patience=10)
    trainer = fit(stop, [NAN, 1.0])
    assert trainer.state.epoch == 1 and trainer.state.stop_reason == "non_finite"
    assert stop.best_epoch is None and stop.best_value is None
    assert trainer.logs == [
        "EarlyStopping: val_loss is nan at epoch 1; stopping (no best yet)",
        "EarlyStopping: val_loss never improved (no finite value); "
        "the model keeps its last weights",
    ]
    assert weight_epoch(trainer) == 1.0


# ---- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "values", "epoch", "reason"),
    [
        ("val_loss", {STOP: 0.5}, [1.0, 0.6, 0.5, 0.1], 3, STOP),
        ("val_loss", {STOP: 0.5}, [1.0, 0.51, 0.49, 0.1], 3, STOP),
        ("val_acc", {STOP: 0.95}, [0.5, 0.9, 0.95, 1.0], 3, STOP),
        ("val_loss", {DIVERGE: 5.0}, [1.0, 5.0, 5.01, 0.1], 3, DIVERGE),
        ("val_acc", {DIVERGE: 0.1}, [0.5, 0.1, 0.09, 0.9], 3, DIVERGE),
    ],
)
def test_thresholds(name: str, kwargs: dict, values: list[float], epoch: int, reason: str) -> None:
    stop = EarlyStopping(monitor=name, patience=50, **kwargs)
    trainer = fit(stop, values, name=name)
    assert trainer.state.epoch == epoch and trainer.state.stop_reason == reason


def test_threshold_messages() -> None:
    trainer = fit(EarlyStopping(patience=50, stopping_threshold=0.5), [1.0, 0.5])
    assert trainer.logs == [  # the best is the last epoch: no word about restoring it
        "EarlyStopping: val_loss 0.5000 reached stopping_threshold 0.5000 at epoch 2; "
        "stopping (best 0.5000 at epoch 2)"
    ]
    trainer = fit(EarlyStopping(patience=50, divergence_threshold=3.0), [1.0, 4.0])
    assert trainer.logs[-2] == (
        "EarlyStopping: val_loss 4.0000 went past divergence_threshold 3.0000 at epoch 2; "
        "stopping (best 1.0000 at epoch 1)"
    )
    assert weight_epoch(trainer) == 1.0


def test_divergence_is_reported_before_patience() -> None:
    trainer = fit(EarlyStopping(patience=1, divergence_threshold=3.0), [1.0, 4.0])
    assert trainer.state.stop_reason == "divergence_threshold"


# ---- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val_loss", "min"), ("val_accuracy", "max"), ("train_mae", "min"), ("val_f1", "max")],
)
def test_inferred_modes(monitor: str, mode: str) -> None:
    assert EarlyStopping(monitor=monitor).mode == mode


def test_bad_arguments() -> None:
    with pytest.raises(TraincraftError, match="cannot tell whether 'val_custom' should go up"):
        EarlyStopping(monitor="val_custom")
    with pytest.raises(TraincraftError, match="mode must be one of 'min', 'max', got 'down'"):
        EarlyStopping(mode="down")
    with pytest.raises(TraincraftError, match="patience must be an integer >= 1, got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(TraincraftError, match="start_from must be an integer >= 0, got -1"):
        EarlyStopping(start_from=-1)
    with pytest.raises(TraincraftError, match="min_delta must be a finite number >= 0"):
        EarlyStopping(min_delta=-1e-3)
    with pytest.raises(TraincraftError, match="stopping_threshold must be a finite number"):
        EarlyStopping(stopping_threshold=NAN)
    with pytest.raises(TraincraftError, match="must lie below divergence_threshold"):
        EarlyStopping(stopping_threshold=2.0, divergence_threshold=1.0)
    with pytest.raises(TraincraftError, match="must lie above divergence_threshold"):
        EarlyStopping(monitor="val_acc", stopping_threshold=0.5, divergence_threshold=0.9)


def test_missing_monitor_raises_at_the_first_check() -> None:
    stop = EarlyStopping(monitor="val_acc")
    trainer = make_trainer()
    stop.on_fit_start(trainer)
    trainer.state.epoch = 1
    trainer.state.metrics = {"train_loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.9}
    with pytest.raises(TraincraftError) as err:
        stop.on_validation_end(trainer)
    assert str(err.value) == (
        "monitor 'val_acc' is not among the reported figures "
        "(did you mean 'val_accuracy', 'val_loss'?); reported: train_loss, val_accuracy, val_loss"
    )


def test_history_attributes() -> None:
    stop = EarlyStopping(monitor="val_accuracy", patience=3)
    assert (stop.monitor, stop.mode, stop.best_epoch, stop.best_value) == (
        "val_accuracy",
        "max",
        None,
        None,
    )
    fit(stop, [0.25, 0.75, 0.5], name="val_accuracy")
    row = {"epoch": stop.best_epoch, "monitor": stop.monitor, "value": stop.best_value}
    assert row == {"epoch": 2, "monitor": "val_accuracy", "value": 0.75}


def test_verbose_false_keeps_only_the_stop_line() -> None:
    stop = EarlyStopping(patience=1, verbose=False)
    trainer = fit(stop, [1.0, 0.5, 0.7])
    assert trainer.logs == [
        "EarlyStopping: no improvement in val_loss for 1 validations at epoch 3; "
        "stopping (best 0.5000 at epoch 2)",
    ]
    assert trainer.notes == ["", "", ""]
    assert weight_epoch(trainer) == 2.0  # restored all the same, without a word


def test_restoring_the_last_epoch_says_nothing() -> None:
    stop = EarlyStopping(patience=3)
    trainer = fit(stop, [1.0, 0.9, 0.8])
    assert trainer.logs == [] and trainer.notes == ["*", "*", "*"]
    assert weight_epoch(trainer) == 3.0


def test_a_new_best_that_misses_the_baseline_shows_both() -> None:
    trainer = fit(EarlyStopping(patience=3, baseline=0.5), [1.0, 0.9, 0.4])
    assert trainer.notes == ["* (patience 1/3)", "* (patience 2/3)", "*"]


# ---- restore and snapshot ----------------------------------------------------------------------


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def train_one_epoch(model: nn.Module, generator: torch.Generator) -> None:
    """A real step: moves weights and the BatchNorm running statistics and counter."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3, generator=generator) * 3 + 1
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_restore_puts_back_the_exact_best_weights_and_buffers() -> None:
    model = bn_model()
    trainer = make_trainer(model)
    stop = EarlyStopping(patience=10)
    gen = torch.Generator().manual_seed(1)
    expected: dict[int, dict[str, torch.Tensor]] = {}
    stop.on_fit_start(trainer)
    for epoch, value in enumerate([1.0, 0.7, 0.5, 0.6, 0.55, 0.8], start=1):
        train_one_epoch(model, gen)
        expected[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.state.epoch = epoch
        trainer.state.metrics = {"val_loss": value}
        stop.on_validation_end(trainer)
    # the live weights are epoch 6's, and differ from epoch 3's everywhere that moved
    for key in ("0.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert not torch.equal(model.state_dict()[key], expected[3][key])
    end_fit(stop, trainer)
    restored = model.state_dict()
    assert restored.keys() == expected[3].keys()
    for key, tensor in expected[3].items():
        assert restored[key].dtype == tensor.dtype
        assert torch.equal(restored[key], tensor), key
    assert int(restored["1.num_batches_tracked"]) == 3
    assert trainer.logs[-1] == restored_line(3, "0.5000")


def test_snapshot_is_a_detached_cpu_copy_not_an_alias() -> None:
    model = bn_model()
    trainer = make_trainer(model)
    stop = EarlyStopping(patience=10)
    gen = torch.Generator().manual_seed(2)
    stop.on_fit_start(trainer)
    train_one_epoch(model, gen)
    at_best = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.state.epoch = 1
    trainer.state.metrics = {"val_loss": 0.5}
    stop.on_validation_end(trainer)
    snapshot = stop.state_dict()["best_weights"]
    live = model.state_dict()
    for key, tensor in snapshot.items():
        assert tensor.device.type == "cpu" and not tensor.requires_grad
        assert tensor.untyped_storage().data_ptr() != live[key].untyped_storage().data_ptr()
    # training further, in place, must not reach the snapshot
    for _ in range(3):
        train_one_epoch(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for key, tensor in at_best.items():
        assert torch.equal(snapshot[key], tensor), key
        assert not torch.equal(model.state_dict()[key], tensor), key


def test_exception_still_restores_the_best() -> None:
    # the trainer calls on_fit_end from a finally block; here training "crashes" after epoch 3
    stop = EarlyStopping(patience=10)
    trainer = fit(stop, [1.0, 0.5, 0.9], end=False)
    set_weights(trainer.model, 99)  # half-trained weights of the failed epoch
    end_fit(stop, trainer)
    assert weight_epoch(trainer) == 2.0


def test_restore_best_false_keeps_the_last_weights_and_no_copy() -> None:
    stop = EarlyStopping(patience=2, restore_best=False)
    trainer = fit(stop, [1.0, 2.0, 3.0])
    assert trainer.state.stop_reason == "early_stopping"
    assert weight_epoch(trainer) == 3.0
    assert stop.state_dict()["best_weights"] is None
    assert not any("restored" in line for line in trainer.logs)


# ---- state and resume --------------------------------------------------------------------------


def checkpoint_round_trip(obj: object) -> object:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint file would go."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_mid_run_continues_exactly_like_an_uninterrupted_run() -> None:
    values = [1.0, 0.8, 0.85, 0.7, 0.75, 0.76, 0.77, 0.1]
    kwargs = {"patience": 3, "min_delta": 0.01}

    whole = EarlyStopping(**kwargs)
    full = fit(whole, values)
    assert full.state.epoch == 7 and whole.best_epoch == 4

    first = EarlyStopping(**kwargs)
    part = fit(first, values[:5], end=False)  # a checkpoint is taken after epoch 5
    saved = checkpoint_round_trip(
        {
            "callback": first.state_dict(),
            "state": part.state.state_dict(),
            "model": part.model.state_dict(),
        }
    )
    assert saved["callback"]["wait"] == 1 and saved["callback"]["best_epoch"] == 4

    resumed = EarlyStopping(**kwargs)
    resumed.load_state_dict(saved["callback"])
    trainer = make_trainer()
    trainer.model.load_state_dict(saved["model"])
    trainer.state.load_state_dict(saved["state"])
    fit(resumed, values[5:], trainer=trainer)  # on_fit_start must keep the loaded state

    assert trainer.state.epoch == full.state.epoch
    assert trainer.state.stop_reason == full.state.stop_reason == "early_stopping"
    assert (resumed.best_epoch, resumed.best_value, resumed.wait) == (
        whole.best_epoch,
        whole.best_value,
        whole.wait,
    )
    assert trainer.logs == full.logs[-len(trainer.logs) :]
    assert trainer.notes == full.notes[-len(trainer.notes) :] == ["(patience 2/3)", "(patience 3/3)"]
    for key, tensor in full.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[key], tensor)
    assert weight_epoch(trainer) == 4.0


def test_a_new_fit_without_loaded_state_starts_fresh() -> None:
    stop = EarlyStopping(patience=2)
    fit(stop, [1.0, 2.0, 3.0])
    assert stop.stopped_epoch == 3
    # with the old best (1.0) kept, 5.0 would not be an improvement
    trainer = fit(stop, [5.0, 6.0, 7.0])
    assert (stop.best_epoch, stop.best_value, stop.stopped_epoch) == (1, 5.0, 3)
    assert trainer.notes[0] == "*"


def test_load_state_dict_refuses_a_different_monitor() -> None:
    state = EarlyStopping(monitor="val_loss").state_dict()
    with pytest.raises(TraincraftError, match="use the same monitor and mode"):
        EarlyStopping(monitor="val_accuracy").load_state_dict(state)


def keras_stop_epoch(values: Sequence[float], patience: int, baseline: float | None, min_delta: float = 0.0):
    """Keras 3's ``EarlyStopping.on_epoch_end`` for mode "min", transcribed: the epoch (from 1)
    at which it stops, or None."""
    best, wait = math.inf, 0
    for epoch, current in enumerate(values):
        wait += 1
        if current - min_delta < best:
            best = current
            if baseline is None or current - min_delta < baseline:
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1
    return None


@pytest.mark.parametrize("values, baseline", [
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 0.3),   # improves every epoch, never reaches the baseline
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 0.75),  # reaches it at epoch 4
    ([0.5, 0.6, 0.7, 0.4, 0.45, 0.46, 0.47, 0.48], 0.42),
    ([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], None),
    ([0.9, 0.95, 0.85, 0.99, 0.98, 0.97, 0.8], 0.86),
])
@pytest.mark.parametrize("patience", [1, 2, 3])
def test_baseline_stops_where_keras_does(values, baseline, patience):
    stop = EarlyStopping(patience=patience, baseline=baseline, verbose=False)
    trainer = fit(stop, values)
    expected = keras_stop_epoch(values, patience, baseline)
    assert (stop.stopped_epoch if trainer.state.should_stop else None) == expected


@pytest.mark.parametrize("name", ["val_hinge", "squared_hinge", "categorical_hinge", "val_kld", "val_logcosh",
                                  "binary_crossentropy", "val_huber", "val_poisson", "msle"])
def test_loss_like_keras_metrics_go_down(name):
    assert EarlyStopping(name).mode == "min"
