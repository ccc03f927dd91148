"""One run of a schedule, by torch and by us: the oracles the schedule tests share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from traincraft import schedules

BASE = (0.1, 0.05, 0.02)  # three parameter groups with different base LRs


def make_optimizer(kind: str = "sgd", base: Sequence[float] = BASE) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in base]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=base[0])
    if kind == "adagrad":
        return torch.optim.Adagrad(groups, lr=base[0])
    return torch.optim.SGD(groups, lr=base[0], momentum=0.9)


def momentum_of(opt: torch.optim.Optimizer) -> list[float]:
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


def torch_run(
    factory: Callable[[torch.optim.Optimizer], Any],
    spe: int,
    epochs: int,
    interval: str,
    *,
    optimizer: str = "sgd",
    metrics: Sequence[float] | None = None,
) -> tuple[list[list[float]], list[list[float]]]:
    """Step torch's scheduler as a training loop does; the LRs (and momenta) in force before every
    step, and after the last one."""
    opt = make_optimizer(optimizer)
    scheduler = factory(opt)
    rows, moms = [], []
    for t in range(1, spe * epochs + 1):
        rows.append([float(g["lr"]) for g in opt.param_groups])
        moms.append(momentum_of(opt))
        opt.step()
        if interval == "step":
            scheduler.step()
        elif t % spe == 0:
            if metrics is None:
                scheduler.step()
            else:
                scheduler.step(metrics[t // spe - 1])
    rows.append([float(g["lr"]) for g in opt.param_groups])
    moms.append(momentum_of(opt))
    return rows, moms


def our_run(
    spec: Any,
    spe: int,
    epochs: int,
    *,
    optimizer: str = "sgd",
    metrics: Sequence[float] | None = None,
    monitor: str = "val_loss",
) -> tuple[list[list[float]], list[list[float]], schedules.Schedule]:
    """The same loop with a traincraft Schedule on a real optimizer."""
    opt = make_optimizer(optimizer)
    schedule = schedules.build(spec, opt, steps_per_epoch=spe, total_steps=spe * epochs)
    schedule.start()
    rows, moms = [], []
    for t in range(1, spe * epochs + 1):
        rows.append([float(g["lr"]) for g in opt.param_groups])
        assert rows[-1] == schedule.lrs()
        moms.append(momentum_of(opt))
        opt.step()
        schedule.step_end(t)
        if t % spe == 0:
            figures = {} if metrics is None else {monitor: metrics[t // spe - 1]}
            schedule.epoch_end(t // spe, figures)
    rows.append([float(g["lr"]) for g in opt.param_groups])
    moms.append(momentum_of(opt))
    return rows, moms, schedule


def assert_close(ours: list[list[float]], theirs: list[list[float]], rel: float = 1e-9) -> None:
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=rel, abs=0.0), f"step {t}: {a} != {b}"


def build(spec: Any, **kw: Any) -> Any:
    kw = {"steps_per_epoch": 10, "total_steps": 100, **kw}
    return schedules.build(spec, make_optimizer(kw.pop("optimizer", "sgd")), **kw)
