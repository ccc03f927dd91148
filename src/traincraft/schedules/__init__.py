"""Learning-rate schedules: closed forms of the optimizer step; warm-up, cool-down, plateau.

Every schedule is a small pure function ``fn(t, initial_lr, **args) -> lr`` of the schedule's
clock ``t`` (optimizer steps, or whole epochs when its durations are given in epochs) and a
parameter group's base learning rate. Each schedule is one row of :data:`SCHEDULES` (its function,
its defaults, its duration arguments, its check, ...); :func:`build` resolves a spec against a
run's length and returns a :class:`Schedule`, which writes the values into the optimizer's
parameter groups.

The numbers are torch's own: each function is the closed form of its
``torch.optim.lr_scheduler`` counterpart (``_get_closed_form_lr`` where torch has one), so a run
matches torch's scheduler stepped the same way.

The package, one concern per module: ``functions`` (the closed forms), ``table`` (one row per
schedule), ``arguments`` (checks, defaults from the run), ``ramps`` (warm-up, cool-down),
``plan`` (:func:`build`), ``schedule`` (:class:`Schedule`), ``plateau`` (its cuts),
``torch_schedule`` (a torch scheduler of your own), ``previews`` (:func:`preview`,
:func:`key_points`, :func:`plot`); ``traincraft schedule`` is :mod:`traincraft.cli.schedule`. Durations
(``500``, ``"3ep"``, ``"10%"``) are read by :mod:`traincraft.durations`.

Names are loaded on first use, so importing the package (or ``traincraft schedule --help``)
costs no torch.

Example:
    >>> from traincraft import schedules
    >>> schedule = schedules.build({"name": "cosine", "warmup": "5%", "eta_min": 1e-6}, optimizer,
    ...                            steps_per_epoch=100, total_steps=3000)
    >>> schedule.start()                   # the LR of the first step
    >>> optimizer.step(); schedule.step_end(1)
    >>> rows = schedules.preview("cosine", steps_per_epoch=10, epochs=3)   # no training
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SCHEDULES": "traincraft.schedules.table",
    "ScheduleInfo": "traincraft.schedules.table",
    "names": "traincraft.schedules.table",
    "ScheduleSpec": "traincraft.schedules.plan",
    "build": "traincraft.schedules.plan",
    "Schedule": "traincraft.schedules.schedule",
    "TorchSchedule": "traincraft.schedules.torch_schedule",
    "key_points": "traincraft.schedules.previews",
    "plot": "traincraft.schedules.previews",
    "preview": "traincraft.schedules.previews",
    "Duration": "traincraft.durations",
    "duration_steps": "traincraft.durations",
    "parse_duration": "traincraft.durations",
}

__all__ = [
    "SCHEDULES",
    "Duration",
    "Schedule",
    "ScheduleInfo",
    "ScheduleSpec",
    "TorchSchedule",
    "build",
    "duration_steps",
    "key_points",
    "names",
    "parse_duration",
    "plot",
    "preview",
]

if TYPE_CHECKING:
    from traincraft.durations import Duration, duration_steps, parse_duration
    from traincraft.schedules.plan import ScheduleSpec, build
    from traincraft.schedules.previews import key_points, plot, preview
    from traincraft.schedules.schedule import Schedule
    from traincraft.schedules.table import SCHEDULES, ScheduleInfo, names
    from traincraft.schedules.torch_schedule import TorchSchedule


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'traincraft.schedules' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
