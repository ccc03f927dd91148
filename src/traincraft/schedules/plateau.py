"""ReduceLROnPlateau's state: the cuts that the monitored figure decides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traincraft.callbacks.monitor import Monitor


class PlateauState:
    """ReduceLROnPlateau's counters, with the improvement test of :class:`Monitor`.

    The state of a schedule that the monitored figure drives (a row's ``metric_state``): the
    :class:`~traincraft.schedules.schedule.Schedule` feeds it each epoch's figure and reads its
    ``lrs``. Built from the resolved arguments of each parameter group and their base LRs.
    """

    def __init__(self, args: list[dict[str, Any]], base_lrs: list[float]):
        first = args[0]
        self.monitor = Monitor(
            first["monitor"],
            first["mode"],
            min_delta=first["threshold"],
            min_delta_mode=first["threshold_mode"],
        )
        self.factor, self.patience = float(first["factor"]), int(first["patience"])
        self.cooldown, self.eps = int(first["cooldown"]), float(first["eps"])
        self.min_lrs = [float(a["min_lr"]) for a in args]
        self.base_lrs = list(base_lrs)
        self.reset()

    def reset(self) -> None:
        self.monitor.reset()
        self.lrs = list(self.base_lrs)
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def update(self, value: float, in_warmup: bool) -> bool:
        """torch's ReduceLROnPlateau.step, in its order; True when an LR was cut."""
        if self.monitor.update(value):
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if in_warmup:
            self.num_bad_epochs = 0  # a warm-up epoch is never a bad epoch
            return False
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs <= self.patience:
            return False
        self.cooldown_counter = self.cooldown
        self.num_bad_epochs = 0
        return self._cut()

    def _cut(self) -> bool:
        cut = False
        for i, old in enumerate(self.lrs):
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:  # torch ignores cuts smaller than eps
                self.lrs[i] = new
                cut = True
        return cut

    def add_group(self, ratio: float, base_lr: float, args: Mapping[str, Any]) -> None:
        """A group added mid-run: ``args`` are its arguments (``min_lr`` already scaled)."""
        self.base_lrs.append(base_lr)
        self.lrs.append(self.lrs[0] * ratio)  # the cuts so far apply to the new group too
        self.min_lrs.append(float(args["min_lr"]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict(),
            "lrs": list(self.lrs),
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.lrs = [float(v) for v in state["lrs"]]
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
