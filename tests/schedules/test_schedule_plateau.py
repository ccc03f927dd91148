"""Plateau: ReduceLROnPlateau's cuts, decided by the monitored figure."""

from __future__ import annotations

import pytest
from schedule_oracles import BASE, assert_close, build, make_optimizer, our_run, torch_run
from torch.optim import lr_scheduler as tls

from traincraft import schedules
from traincraft.errors import TraincraftError


def test_plateau_matches_reduce_lr_on_plateau() -> None:
    metrics = [1.0, 0.8, 0.79995, 0.81, 0.85, 0.7, 0.7, 0.71, 0.72, 0.73, 0.74, 0.6]
    spec = {
        "name": "plateau",
        "patience": 1,
        "factor": 0.5,
        "cooldown": 1,
        "min_lr": [0.01, 0.01, 0.015],
        "threshold": 1e-3,
    }
    theirs, _ = torch_run(
        lambda o: tls.ReduceLROnPlateau(
            o, patience=1, factor=0.5, cooldown=1, min_lr=[0.01, 0.01, 0.015], threshold=1e-3
        ),
        3,
        len(metrics),
        "epoch",
        metrics=metrics,
    )
    ours, _, _ = our_run(spec, 3, len(metrics), metrics=metrics)
    assert_close(ours, theirs)
    assert ours[-1] != ours[0]  # the sequence really cut the LR, down to the floors
    assert ours[-1][2] == 0.015
    assert_close(schedules.preview(spec, 3, len(metrics), base_lrs=BASE, metrics=metrics), theirs)


def test_plateau_abs_threshold_max_mode_matches_torch() -> None:
    metrics = [0.5, 0.6, 0.605, 0.61, 0.62, 0.62, 0.7, 0.69, 0.69, 0.69]
    spec = {
        "name": "plateau",
        "monitor": "val_accuracy",
        "patience": 2,
        "factor": 0.2,
        "threshold": 0.01,
        "threshold_mode": "abs",
    }
    theirs, _ = torch_run(
        lambda o: tls.ReduceLROnPlateau(
            o, mode="max", patience=2, factor=0.2, threshold=0.01, threshold_mode="abs"
        ),
        2,
        len(metrics),
        "epoch",
        metrics=metrics,
    )
    ours, _, schedule = our_run(spec, 2, len(metrics), metrics=metrics, monitor="val_accuracy")
    assert schedule.monitor == "val_accuracy"
    assert_close(ours, theirs)
    assert ours[-1] != ours[0]


def test_plateau_counts_no_bad_epochs_during_warmup() -> None:
    spec = {"name": "plateau", "patience": 0, "factor": 0.5, "warmup": "3ep"}
    worse = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # gets worse every epoch
    rows = schedules.preview(spec, 5, 6, metrics=worse)
    # epochs 1-3 are warm-up: no cut although patience is 0
    assert rows[15] == [1.0]
    assert rows[20] == [0.5]  # epoch 4: first bad epoch after warm-up -> cut
    assert rows[25] == [0.25]
    assert rows[30] == [0.125]


def test_plateau_restore_best_flag_and_cut_signal() -> None:
    opt = make_optimizer()
    s = schedules.build(
        {"name": "plateau", "patience": 1, "restore_best_on_reduce": True},
        opt,
        steps_per_epoch=4,
        total_steps=40,
    )
    assert s.restore_best_on_reduce is True
    s.start()
    cuts = [
        s.epoch_end(e, {"val_loss": v, "train_loss": 0.0})
        for e, v in enumerate([1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.8], start=1)
    ]
    assert cuts == [False, False, True, False, False, True, False]
    assert s.lrs() == pytest.approx([0.001, 0.0005, 0.0002])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    other = schedules.build("cosine", make_optimizer(), steps_per_epoch=4, total_steps=40)
    assert other.restore_best_on_reduce is False
    assert other.epoch_end(1, {}) is False


def test_plateau_cooldown_wrapper_needs_the_dict_form() -> None:
    opt = make_optimizer()
    kw = {"steps_per_epoch": 10, "total_steps": 100}
    s = schedules.build({"name": "plateau", "cooldown": {"duration": "10%"}}, opt, **kw)
    assert s._plan.cooldown.steps == 10 and s._plan.args[0]["cooldown"] == 0
    s = schedules.build({"name": "plateau", "cooldown": 2}, opt, **kw)
    assert s._plan.cooldown is None and s._plan.args[0]["cooldown"] == 2
    with pytest.raises(TraincraftError, match=r"write cooldown: \{duration: '10%'\}"):
        schedules.build({"name": "plateau", "cooldown": "10%"}, opt, **kw)


def test_plateau_monitor_never_reported_lists_the_reported_names() -> None:
    s = build({"name": "plateau", "monitor": "val_los", "mode": "min"})
    s.start()
    with pytest.raises(TraincraftError) as err:
        s.epoch_end(1, {"train_loss": 0.5, "val_loss": 0.4})
    message = str(err.value)
    assert message.startswith(
        "schedule 'plateau': monitor 'val_los' is not among the reported figures"
    )
    assert "did you mean 'val_loss'" in message and "reported: train_loss, val_loss" in message
    s = build("plateau")
    with pytest.raises(TraincraftError, match="give validation data, or monitor 'train_loss'"):
        s.epoch_end(1, {"train_loss": 0.5})
