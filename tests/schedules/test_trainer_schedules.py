"""The schedule inside the loop: counted in optimizer steps, logged, plateau, restore on reduce."""

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft import schedules
from traincraft.errors import TraincraftError


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    return X, X.sum(1, keepdim=True)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


class LRs(tc.Callback):
    """The LR each optimizer step used, per group."""

    def __init__(self):
        self.seen = []

    def on_before_step(self, trainer):
        self.seen.append([g["lr"] for g in trainer.optimizer.param_groups])


def fit(spec, callbacks=(), **kwargs):
    kwargs.setdefault("max_epochs", 4)
    kwargs.setdefault("batch_size", 5)
    trainer = tc.Trainer(model(), loss="mse", lr=0.1, schedule=spec, callbacks=list(callbacks),
                         progress=False, device="cpu", seed=0, **kwargs)
    return trainer, trainer.fit(data(), val=data(10, 1))


def test_every_step_uses_the_previewed_lr_counted_in_optimizer_steps():
    spec = {"name": "cosine", "warmup": "1ep", "eta_min": 0.001}
    lrs = LRs()
    trainer, history = fit(spec, [lrs], accumulate=3)  # 8 micro-batches -> 3 steps per epoch
    assert trainer.state.steps_per_epoch == 3 and len(lrs.seen) == 12
    expected = schedules.preview(spec, steps_per_epoch=3, epochs=4, base_lrs=[0.1, 0.1])
    assert [row[0] for row in lrs.seen] == pytest.approx([row[0] for row in expected[:12]], rel=1e-12)
    # the history's lr is the one the epoch's last step used
    assert [r["lr"] for r in history.epochs] == pytest.approx([lrs.seen[i][0] for i in (2, 5, 8, 11)])


def test_groups_with_different_lrs_are_logged_each():
    groups = [{"params": "0.*", "lr_mult": 0.1}]
    _, history = fit({"name": "step", "step_size": "1ep", "gamma": 0.5}, param_groups=groups)
    row = history[1]
    names = [k for k in row if k.startswith("lr/")]
    assert set(names) == {"lr/0.*", "lr/0.*/no_decay", "lr/default", "lr/default/no_decay"}
    assert row["lr/0.*"] == pytest.approx(0.1 * 0.1 * 0.5)  # epoch 2 runs at gamma^1
    assert row["lr/default"] == pytest.approx(0.1 * 0.5)


def test_plateau_cuts_and_restores_the_best_weights():
    restored = []

    class Spy(tc.EarlyStopping):
        def restore_best_weights(self, trainer):
            restored.append(trainer.state.epoch)
            return super().restore_best_weights(trainer)

    # validation targets of the opposite sign: val_loss gets worse from the first epoch on
    X, y = data()
    spec = {"name": "plateau", "monitor": "val_loss", "patience": 1, "factor": 0.5,
            "restore_best_on_reduce": True}
    trainer = tc.Trainer(model(), loss="mse", lr=0.05, optimizer="sgd", schedule=spec, max_epochs=6,
                         batch_size=5, callbacks=[Spy(patience=100, verbose=False)], progress=False, seed=0)
    history = trainer.fit((X, y), val=(X, -y))
    lrs = [r["lr"] for r in history.epochs]
    assert lrs[0] == 0.05 and min(lrs) < 0.05
    assert restored[:-1], "the best weights were reloaded when the LR was cut"


def test_restore_best_on_reduce_without_early_stopping_is_refused():
    spec = {"name": "plateau", "monitor": "val_loss", "restore_best_on_reduce": True}
    with pytest.raises(TraincraftError, match="needs EarlyStopping"):
        fit(spec)


def test_a_plateau_monitor_that_is_never_reported_names_the_reported_ones():
    with pytest.raises(TraincraftError, match="val_accuracy"):
        fit({"name": "plateau", "monitor": "val_accuracy"})


def test_a_torch_scheduler_brought_by_the_user_steps_per_epoch():
    lrs = LRs()
    fit(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), [lrs],
        schedule_interval="epoch", max_epochs=3)
    firsts = [lrs.seen[i][0] for i in (0, 8, 16)]
    assert firsts == pytest.approx([0.1, 0.05, 0.025])


def test_recipe_schedule_section_reaches_the_trainer():
    recipe = tc.load_recipe("quickstart", ["schedule={name: step, step_size: 2ep, gamma: 0.5}"])
    assert recipe.schedule == {"name": "step", "step_size": "2ep", "gamma": 0.5}
    from traincraft.run import trainer_kwargs

    assert trainer_kwargs(recipe)["schedule"] == recipe.schedule
