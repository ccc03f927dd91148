"""The epoch lines: their fields' order, numbers for people, wrapping at field boundaries, and
what a real Trainer prints with them (early stopping folded in, one lr)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.callbacks.epoch_line import INDENT, epoch_fields, lr_field, wrap
from traincraft.callbacks.progress import ProgressBar, in_notebook
from traincraft.errors import TraincraftError
from traincraft.formatting import format_figure, format_seconds, is_rate, significant

ROW = {
    "epoch": 7, "step": 140, "lr": 0.0003, "lr/backbone": 3e-5, "lr/head": 0.0003, "momentum": 0.9,
    "train_loss": 0.412345, "train_loss/ce": 0.4, "train_penalty": 0.0123, "grad_norm": 1.23456,
    "train_accuracy": 0.91234, "val_loss": 0.5012, "val_accuracy": 0.8875, "val_f1": 0.5, "seconds": 12.34,
}


# ---- fields -----------------------------------------------------------------------------------


def test_the_monitored_and_validation_figures_come_first_then_training_then_one_lr():
    fields = epoch_fields(ROW, max_epochs=40, monitor="val_accuracy", note="*")
    assert fields == [
        "epoch  7/40 12.3s",
        "val_accuracy 88.75% *",
        "val_loss 0.5012",
        "val_f1 50.00%",
        "train_loss 0.4123",
        "train_loss/ce 0.4",
        "train_penalty 0.0123",
        "train_accuracy 91.23%",
        "grad_norm 1.235",
        "lr 3e-05..0.0003",
        "momentum 0.9",
    ]


def test_a_training_figure_monitored_comes_first_too():
    row = {"epoch": 2, "lr": 0.1, "train_loss": 0.25, "seconds": 0.5}
    assert epoch_fields(row, max_epochs=5, monitor="train_loss", note="(patience 1/3)") == [
        "epoch 2/5 0.50s", "train_loss 0.25 (patience 1/3)", "lr 0.1",
    ]


@pytest.mark.parametrize(("row", "expected"), [
    ({"lr": 0.001}, "lr 0.001"),
    ({"lr": 0.001, "lr/a": 0.001, "lr/b": 0.001, "lr/c": 0.001, "lr/d": 0.001, "lr/e": 0.001}, "lr 0.001"),
    ({"lr": 1e-4, "lr/a": 1e-4, "lr/b": 1e-5, "lr/c": 1e-3}, "lr 1e-05..0.001"),
    ({"lr": 0.00123456, "lr/a": 0.00123456, "lr/b": 0.00123411}, "lr 0.00123"),  # equal as shown
    ({"train_loss": 1.0}, ""),
])
def test_lr_is_one_column_when_groups_share_it_and_a_range_otherwise(row, expected):
    assert lr_field(row) == expected


# ---- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "shown"), [
    ("val_loss", 0.65754799, "0.6575"),
    ("val_loss", 1.95454, "1.955"),
    ("val_loss", 1234.56, "1235"),
    ("val_mse", 123456.0, "1.235e+05"),
    ("train_loss", 0.0000123456, "1.235e-05"),
    ("val_accuracy", 0.97333, "97.33%"),
    ("val_accuracy", 1.0, "100.00%"),
    ("val_balanced_accuracy", 0.5, "50.00%"),
    ("val_average_precision", 0.123456, "12.35%"),
    ("val_dice_loss", 0.25, "0.25"),  # a loss, not a rate
    ("val_r2", 0.81234, "0.8123"),  # not a share of anything
    ("val_accuracy", float("nan"), "nan"),
    ("val_loss", float("inf"), "inf"),
])
def test_figures_are_written_for_people(name, value, shown):
    assert format_figure(name, value) == shown


def test_rates_seconds_and_significant_digits():
    assert [is_rate(n) for n in ("val_acc", "train_f1", "auroc", "iou", "top1_error", "mcc")] == [
        True, True, True, True, False, False,
    ]
    assert [format_seconds(s) for s in (0.346, 12.34, 185, 7384)] == ["0.35s", "12.3s", "3m05s", "2h03m"]
    assert significant(0.000538782, 3) == "0.000539"


# ---- wrapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [40, 80, 100, 160])
def test_lines_wrap_between_fields_and_are_shorter_than_the_terminal(width):
    fields = epoch_fields(ROW, max_epochs=40, monitor="val_loss", note="(patience 2/8)")
    lines = wrap(fields, width)
    assert all(len(line) < width for line in lines)
    assert all(line.startswith(INDENT) for line in lines[1:]) and not lines[0].startswith(" ")
    assert "  ".join(line.strip() for line in lines) == "  ".join(fields)  # every field whole, in order
    if width == 80:
        assert lines == [
            "epoch  7/40 12.3s  val_loss 0.5012 (patience 2/8)  val_accuracy 88.75%",
            "    val_f1 50.00%  train_loss 0.4123  train_loss/ce 0.4  train_penalty 0.0123",
            "    train_accuracy 91.23%  grad_norm 1.235  lr 3e-05..0.0003  momentum 0.9",
        ]


def test_unwrapped_is_one_line_and_a_field_longer_than_a_line_stands_alone():
    assert wrap(["a 1", "b 2"], None) == ["a 1  b 2"]
    long = "x" * 50
    assert wrap(["epoch 1/2", long, "lr 0.1"], 30) == ["epoch 1/2", INDENT + long, INDENT + "lr 0.1"]


# ---- a real Trainer ------------------------------------------------------------------------------


def train(capsys, *, progress="lines", patience=1, epochs=6, verbose=True, val=True):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 3, generator=g)
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    callbacks = [tc.EarlyStopping(patience=patience, verbose=verbose)] if patience else []
    trainer = tc.Trainer(model, loss="cross_entropy", metrics=["accuracy"], lr=0.5, optimizer="sgd",
                         max_epochs=epochs, batch_size=16, seed=0, device="cpu", progress=progress,
                         callbacks=callbacks)
    capsys.readouterr()
    history = trainer.fit((X[:64], y[:64]), val=(X[64:], y[64:]) if val else None)
    return trainer, history, capsys.readouterr().err.splitlines()


def test_each_epoch_is_one_line_with_early_stopping_folded_in(capsys):
    trainer, history, err = train(capsys, patience=1, epochs=30)
    stopper = trainer.early_stopping
    epochs = [line for line in err if line.startswith("epoch ")]
    assert len(epochs) == len(history) == stopper.stopped_epoch  # no line about improvements or counters
    assert not any("improved" in line or "counter" in line for line in err)
    best_so_far = float("inf")
    for line, row in zip(epochs, history):
        value = row["val_loss"]
        note = "*" if value < best_so_far else "(patience 1/1)"
        best_so_far = min(best_so_far, value)
        assert line.startswith(f"epoch {row['epoch']:>2}/30 {format_seconds(row['seconds'])}  val_loss "
                               f"{format_figure('val_loss', value)} {note}  "
                               f"val_accuracy {format_figure('val_accuracy', row['val_accuracy'])}  train_loss ")
    # What early stopping says of the last epoch comes after that epoch's line.
    last = err.index(epochs[-1])
    assert err[last + 1].startswith(f"EarlyStopping: no improvement in val_loss for 1 validations at epoch {len(history)}")
    assert err[last + 2] == (f"EarlyStopping: restored the best weights, from epoch {stopper.best_epoch} "
                             f"(val_loss {stopper.best_value:.4f})")


def test_verbose_false_shows_no_bookkeeping_and_no_restore_line(capsys):
    _, history, err = train(capsys, patience=1, epochs=30, verbose=False)
    epochs = [line for line in err if line.startswith("epoch ")]
    assert len(epochs) == len(history)
    assert not any("*" in line or "patience" in line for line in epochs)
    assert not any("restored" in line for line in err)


def test_without_early_stopping_the_best_so_far_is_marked(capsys):
    _, history, err = train(capsys, patience=0, epochs=4, val=False)
    epochs = [line for line in err if line.startswith("epoch ")]
    best = float("inf")
    for line, row in zip(epochs, history):
        monitored = line.split("  ")[1]  # epochs 1-4 of 4: no padding
        assert monitored.startswith("train_loss ")  # no validation data: the training loss
        assert monitored.endswith(" *") == (row["train_loss"] < best)
        best = min(best, row["train_loss"])


def test_progress_false_says_nothing_per_epoch_and_bad_values_are_one_line(capsys):
    _, _, err = train(capsys, progress=False, patience=0, epochs=2)
    assert err == []
    with pytest.raises(TraincraftError, match="progress must be one of 'auto', 'lines', got 'bars'"):
        tc.Trainer(nn.Linear(2, 1), loss="mse", progress="bars")


def test_parameter_groups_with_their_own_lrs_make_one_lr_range(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    rules = [{"params": "0.*", "lr_mult": 0.1, "name": "first"}, {"params": "2.*", "name": "last"}]
    trainer = tc.Trainer(model, loss="cross_entropy", lr=0.01, optimizer={"name": "sgd", "param_groups": rules},
                         max_epochs=1, batch_size=16, device="cpu", progress="lines", seed=0)
    capsys.readouterr()
    trainer.fit((torch.randn(32, 3), torch.randint(0, 2, (32,))))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]
    assert [f for f in line.split("  ") if f.startswith("lr")] == ["lr 0.001..0.01"]


def test_outside_a_kernel_there_is_no_notebook_and_a_file_gets_lines(tmp_path):
    assert not in_notebook()
    with open(tmp_path / "log.txt", "w") as handle:
        bar = ProgressBar(stream=handle)
        assert bar.front_end() == "lines" and bar.width() is None
        assert ProgressBar(stream=handle, mode="lines").front_end() == "lines"
