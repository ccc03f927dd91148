"""A torch ``LRScheduler`` of your own, driven like a traincraft schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from traincraft.errors import TraincraftError


class TorchSchedule:
    """A torch ``LRScheduler`` of your own, stepped after every optimizer step or every epoch.

    Example:
        >>> def make(opt):
        ...     return torch.optim.lr_scheduler.StepLR(opt, step_size=3)
        >>> s = build(make, opt, steps_per_epoch=10, total_steps=100, schedule_interval="epoch")
    """

    restore_best_on_reduce = False
    monitor: str | None = None

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler, interval: str):
        self.name = type(scheduler).__name__
        self.scheduler = scheduler
        self.interval = interval
        self.phase: Callable[[int], None] | None = None  # see Schedule.take_over
        self._step = 0

    def take_over(self, phase: Callable[[int], None]) -> None:
        """From now on ``phase(step)`` sets the LRs after torch's scheduler (see
        :meth:`traincraft.schedules.schedule.Schedule.take_over`). It applies at once."""
        self.phase = phase
        phase(self._step)

    def _after_write(self) -> None:
        if self.phase is not None:
            self.phase(self._step)

    def start(self) -> None:
        """Nothing to do: torch's scheduler set the first step's LRs when it was built."""

    def step_end(self, step: int) -> None:
        self._step = step
        if self.interval == "step":
            self.scheduler.step()
        self._after_write()

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        if self.interval == "epoch":
            self.scheduler.step()
            self._after_write()
        return False

    def lrs(self) -> list[float]:
        return [float(lr) for lr in self.scheduler.get_last_lr()]

    def momenta(self) -> list[float] | None:
        if not getattr(self.scheduler, "cycle_momentum", False):
            return None
        groups = self.scheduler.optimizer.param_groups
        return [float(g["betas"][0]) if "betas" in g else float(g["momentum"]) for g in groups]

    def scale(self, factor: float) -> None:
        """Multiply the scheduler's base LRs and the current LRs by ``factor``."""
        self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]
        for group in self.scheduler.optimizer.param_groups:
            group["lr"] *= factor
        self._after_write()

    def add_group(self, group: dict[str, Any]) -> None:
        raise TraincraftError(
            f"unfreezing adds parameter groups during the run, which the torch scheduler "
            f"{self.name} cannot take; use a traincraft schedule by name (e.g. "
            "{'name': 'cosine', 'warmup': '5%'})"
        )

    def state_dict(self) -> dict[str, Any]:
        """torch's own state dict (whatever the scheduler keeps in it)."""
        return {"name": self.name, "torch": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state["torch"]))


def build_torch(
    factory: Callable[..., Any], optimizer: torch.optim.Optimizer, interval: str
) -> TorchSchedule:
    label = getattr(factory, "__name__", type(factory).__name__)
    scheduler = factory(optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TraincraftError(
            f"schedule callable {label!r} returned ReduceLROnPlateau, which needs the monitored "
            "figure: use schedule={'name': 'plateau', 'monitor': 'val_loss', ...} (same arguments)"
        )
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TraincraftError(
            f"schedule callable {label!r} returned {type(scheduler).__name__}, not a torch "
            "LRScheduler; it is called with the optimizer"
        )
    return TorchSchedule(scheduler, interval)
