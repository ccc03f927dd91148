"""SWA's anneal is a phase of the schedule: the schedule stays the one writer of the LR, so no
write of the schedule's own (an epoch-interval scheduler, a plateau's cut) slips between SWA's."""

from __future__ import annotations

import torch
from torch import nn

import traincraft as tc
from traincraft.callbacks.swa import swa_lr


class StepLRs(tc.Callback):
    """The LR each optimizer step used, as the trainer records it once (TrainState.lrs)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_step(self, trainer) -> None:
        self.lrs.append(trainer.state.lrs[0])


def test_the_anneal_holds_at_every_step_when_the_schedule_writes_at_epoch_ends():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    record = StepLRs()
    trainer = tc.Trainer(
        nn.Linear(3, 1), loss="mse", optimizer="sgd", lr=0.1, batch_size=8, max_epochs=4, progress=False,
        seed=0, schedule={"name": lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "interval": "epoch"},
        swa={"start": 4, "lr": 0.01, "anneal": 4}, callbacks=[record],
    )
    trainer.fit((x, x.sum(1, keepdim=True)))
    # 4 steps per epoch; SWA begins after step 4, from the LR then (0.1): the epoch-end step of
    # the torch scheduler (0.1 -> 0.05) does not reach step 5.
    expected = [0.1] * 4 + [swa_lr(s - 5, 0.1, 0.01, 4, "cos") for s in range(5, 17)]
    assert record.lrs == expected
    assert [row["lr"] for row in trainer.history.epochs] == [expected[3], expected[7], expected[11], expected[15]]
