"""A torch scheduler of your own, stepped at its interval."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from schedule_oracles import BASE, assert_close, make_optimizer, momentum_of, torch_run
from torch.optim import lr_scheduler as tls

from traincraft import schedules
from traincraft.errors import TraincraftError


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_callable_torch_scheduler_is_stepped_at_its_interval(interval: str) -> None:
    def make(opt: torch.optim.Optimizer) -> Any:
        return tls.StepLR(opt, step_size=3, gamma=0.5)

    theirs, _ = torch_run(make, 4, 5, interval)
    rows = schedules.preview(make, 4, 5, base_lrs=BASE, schedule_interval=interval)
    assert_close(rows, theirs)


def test_callable_defaults_to_epoch_and_reports_momenta() -> None:
    opt = make_optimizer()
    s = schedules.build(
        lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=20),
        opt,
        steps_per_epoch=4,
        total_steps=20,
        schedule_interval="step",
    )
    assert isinstance(s, schedules.TorchSchedule)
    s.start()
    for t in range(1, 6):
        opt.step()
        s.step_end(t)
    assert s.momenta() == momentum_of(opt)
    assert s.lrs() == [g["lr"] for g in opt.param_groups]
    state = s.state_dict()
    opt2 = make_optimizer()
    again = schedules.build(
        lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=20),
        opt2,
        steps_per_epoch=4,
        total_steps=20,
        schedule_interval="step",
    )
    again.load_state_dict(state)
    opt.step()
    opt2.step()
    s.step_end(6)
    again.step_end(6)
    assert again.lrs() == s.lrs()
    default = schedules.build(
        lambda o: tls.StepLR(o, 1), make_optimizer(), steps_per_epoch=4, total_steps=20
    )
    assert default.interval == "epoch"
    assert default.momenta() is None


def test_callable_must_return_a_scheduler() -> None:
    with pytest.raises(TraincraftError, match="returned int, not a torch LRScheduler"):
        schedules.build(lambda o: 3, make_optimizer(), steps_per_epoch=4, total_steps=20)
    with pytest.raises(TraincraftError, match="use schedule=\\{'name': 'plateau'"):
        schedules.build(
            lambda o: tls.ReduceLROnPlateau(o), make_optimizer(), steps_per_epoch=4, total_steps=20
        )


def test_a_torch_scheduler_with_tensor_lrs_is_recorded_step_by_step():
    import traincraft as tc

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    X, y = torch.randn(16, 2), torch.randn(16, 1)

    def make(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: torch.tensor(0.5) ** step)

    trainer = tc.Trainer(model, loss="mse", lr=1.0, optimizer="sgd", batch_size=8, max_epochs=3,
                         schedule=make, schedule_interval="step", progress=False, seed=0)
    history = trainer.fit((X, y))
    assert [row["lr"] for row in history.epochs] == [0.5, 0.125, 0.03125]  # the last step of each epoch
