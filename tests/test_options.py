"""The Trainer's grouped arguments: each group reaches its owner, every recipe default equals its
owner's default, the flat names of earlier releases still work (with a warning), and a typo in a
group is one line naming the closest key."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft import optim, options
from traincraft.callbacks.checkpoint import Checkpoint
from traincraft.callbacks.early_stopping import EarlyStopping
from traincraft.callbacks.ema import EMA
from traincraft.callbacks.swa import SWA
from traincraft.finetune.plan import Finetuning
from traincraft.penalties import Penalty
from traincraft.recipe import (
    TRAIN_GROUPS,
    CheckpointSection,
    DataSection,
    EarlyStoppingSection,
    EMASection,
    FinetuneSection,
    OptimizerSection,
    SWASection,
    TrainSection,
)
from traincraft.step import NonFinitePolicy, Stepper

OWNERS = {
    "step": (Stepper, options.Runtime),
    "nonfinite": (NonFinitePolicy,),
    "penalty": (Penalty,),
    "processes": (options.Processes,),
    "data": (options.DataOptions,),
}


def defaults(*owners) -> dict:
    found = {}
    for owner in owners:
        for name, p in inspect.signature(owner).parameters.items():
            if p.default is not inspect.Parameter.empty:
                found[name] = p.default
    return found


def section_default(section, name):
    field = section.model_fields[name]
    return field.get_default(call_default_factory=True)


def test_every_train_key_reaches_one_group_and_its_default_is_the_owners():
    grouped = {key for keys in TRAIN_GROUPS.values() for key in keys}
    own = {"max_epochs", "max_steps", "device"}  # the Trainer's own arguments
    assert grouped | own == set(TrainSection.model_fields)
    assert not grouped & own
    for group, keys in TRAIN_GROUPS.items():
        owner_defaults = defaults(*OWNERS[group])
        for key, name in keys.items():
            assert name in owner_defaults, (group, name)
            assert section_default(TrainSection, key) == owner_defaults[name], (key, group, name)
    trainer_defaults = defaults(tc.Trainer)
    for key in own:
        assert section_default(TrainSection, key) == trainer_defaults[key], key


def test_every_other_section_default_is_its_owners():
    trainer_defaults = defaults(tc.Trainer)
    build_defaults = defaults(optim.build)
    assert section_default(OptimizerSection, "name") == trainer_defaults["optimizer"]
    assert section_default(OptimizerSection, "lr") == trainer_defaults["lr"] == build_defaults["lr"]
    for key in options.OPTIMIZER_BUILD_KEYS:
        assert section_default(OptimizerSection, key) == build_defaults[key], key
    assert section_default(DataSection, "batch_size") == trainer_defaults["batch_size"]
    for section, owner, skipped in (
        (EarlyStoppingSection, EarlyStopping, ()), (CheckpointSection, Checkpoint, ()),
        (FinetuneSection, Finetuning, ("init_from",)), (EMASection, EMA, ()), (SWASection, SWA, ()),
    ):
        owner_defaults = defaults(owner)
        for key in section.model_fields:
            if key in skipped:
                continue
            assert key in owner_defaults, (section.__name__, key)
            expected = owner_defaults[key]
            value = section_default(section, key)
            assert value == expected or (not value and not expected), (section.__name__, key, value, expected)


def test_the_constructor_takes_about_twenty_arguments():
    params = [p for p in inspect.signature(tc.Trainer).parameters.values() if p.kind is not p.VAR_KEYWORD]
    assert len(params) - 1 <= 23  # the model aside


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, generator=g)
    return x, x.sum(1, keepdim=True)


OLD = dict(weight_decay=0.05, accumulate=2, clip_grad_norm=0.5, l2=1e-3, penalty_exclude="auto",
           on_nonfinite="skip", shuffle=False, deterministic=False, gc_every=7, dist_timeout=60.0)
NEW = dict(optimizer={"name": "adamw", "weight_decay": 0.05}, step={"accumulate": 2, "clip_grad_norm": 0.5,
           "deterministic": False, "gc_every": 7}, penalty={"l2": 1e-3, "exclude": "auto"},
           nonfinite="skip", data={"shuffle": False}, processes={"timeout": 60.0})


def test_flat_names_of_earlier_releases_warn_and_train_exactly_as_the_groups():
    with pytest.warns(DeprecationWarning) as caught:
        old = tc.Trainer(model(), loss="mse", max_epochs=2, batch_size=8, progress=False, seed=0, **OLD)
    said = {str(w.message) for w in caught}
    assert "Trainer(accumulate=...) is deprecated: write step={'accumulate': ...}" in said
    assert "Trainer(weight_decay=...) is deprecated: write optimizer={'weight_decay': ...}" in said
    assert "Trainer(on_nonfinite=...) is deprecated: write nonfinite={'policy': ...}" in said
    assert len(caught) == len(OLD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grouped form warns about nothing
        new = tc.Trainer(model(), loss="mse", max_epochs=2, batch_size=8, progress=False, seed=0, **NEW)
    for trainer in (old, new):
        assert trainer.stepper.accumulate == 2 and trainer.stepper.clip_grad_norm == 0.5
        assert trainer.nonfinite.policy == "skip" and trainer.runtime.gc_every == 7
        assert trainer.penalty.l2 == 1e-3 and trainer.processes.timeout == 60.0
        assert not trainer.data_options.shuffle
        assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.05, 0.0}
    old.fit(data())
    new.fit(data())
    for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()):
        assert torch.equal(a, b)


def test_report_and_schedule_interval_flat_names_still_work(tmp_path):
    def scheduler(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    with pytest.warns(DeprecationWarning, match=r"Trainer\(report=\.\.\.\) is deprecated: write loggers=\[\.\.\., 'report'\]"):
        old = tc.Trainer(model(), loss="mse", max_epochs=2, progress=False, seed=0, run_dir=tmp_path / "a",
                         report=True, schedule=scheduler, schedule_interval="epoch")
    new = tc.Trainer(model(), loss="mse", max_epochs=2, progress=False, seed=0, run_dir=tmp_path / "b",
                     loggers=["report"], schedule={"name": scheduler, "interval": "epoch"})
    old.fit(data())
    new.fit(data())
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "b" / "report.html").is_file()
    assert [r["lr"] for r in old.history.epochs] == [r["lr"] for r in new.history.epochs] == [1e-3, 5e-4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(step={"acumulate": 2}), "step: unknown key 'acumulate' (did you mean 'accumulate', 'compile'?)"),
    (dict(penalty={"l3": 1.0}), "penalty: unknown key 'l3' (did you mean 'l1', 'l2'?)"),
    (dict(nonfinite={"policy": "skip", "evry": 3}), "nonfinite: unknown key 'evry' (did you mean 'every'?)"),
    (dict(processes={"timout": 3}), "processes: unknown key 'timout' (did you mean 'timeout'?)"),
    (dict(data={"val_splt": 0.2}), "data: unknown key 'val_splt' (did you mean 'val_split'?)"),
    (dict(acumulate=2), "Trainer() got an unknown argument 'acumulate' (did you mean 'accumulate', 'compile'?)"),
    (dict(step=3), "step must be a dict of its keyword arguments, got 3"),
    (dict(nonfinite="explode"), "on_nonfinite must be one of raise, skip, rollback, got 'explode'"),
])
def test_a_wrong_group_key_is_one_line_naming_the_closest(kwargs, message):
    with pytest.raises(tc.TraincraftError) as caught:
        tc.Trainer(model(), loss="mse", progress=False, **kwargs)
    assert str(caught.value) == message


def test_an_optimizer_dict_keeps_its_class_keys_and_build_keys_apart():
    trainer = tc.Trainer(model(), loss="mse", progress=False, lr=0.1,
                         optimizer={"name": "sgd", "momentum": 0.9, "weight_decay": 0.01,
                                    "param_groups": [{"params": "0.*", "lr_mult": 0.5}]})
    groups = trainer.optimizer.param_groups
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert {g["momentum"] for g in groups} == {0.9}
    assert sorted({g["lr"] for g in groups}) == [0.05, 0.1]
    assert {g["weight_decay"] for g in groups} == {0.01, 0.0}
    # A dict without a name is the default optimizer's keys.
    trainer = tc.Trainer(model(), loss="mse", progress=False, optimizer={"betas": (0.8, 0.9)})
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.optimizer.param_groups[0]["betas"] == (0.8, 0.9)
