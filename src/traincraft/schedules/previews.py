"""A schedule's LRs without training: :func:`preview`, :func:`key_points` and :func:`plot`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from traincraft.errors import TraincraftError
from traincraft.schedules.plan import ScheduleSpec, build
from traincraft.schedules.schedule import Schedule
from traincraft.schedules.torch_schedule import TorchSchedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def preview(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    *,
    base_lrs: Sequence[float] = (1.0,),
    metrics: Sequence[float] | None = None,
    max_steps: int | None = None,
    schedule_interval: str | None = None,
) -> list[list[float]]:
    """The LRs a run would use, without training.

    Args:
        spec: as for :func:`build`.
        steps_per_epoch: optimizer steps per epoch.
        epochs: epochs in the run.
        base_lrs: one base LR per parameter group.
        metrics: plateau only: the monitored figure of each epoch (without it plateau never cuts).
        max_steps: ends the run early, as the trainer's ``max_steps``.
        schedule_interval: as for :func:`build`.

    Returns:
        ``rows[s][g]``: the LR of group ``g`` for optimizer step ``s + 1``; ``total_steps + 1``
        rows, the last one the LR after the run's last step (no step uses it; the history's ``lr``
        of an epoch is the LR its last step used: ``rows[epoch * steps_per_epoch - 1]``).

    Example:
        >>> preview({"name": "step", "step_size": 2, "gamma": 0.5}, steps_per_epoch=3, epochs=1)
        [[1.0], [1.0], [0.5], [0.5]]
    """
    rows, _, _ = _drive(
        spec, steps_per_epoch, epochs, base_lrs, metrics, max_steps, schedule_interval
    )
    return rows


def key_points(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    *,
    base_lr: float = 1.0,
    metrics: Sequence[float] | None = None,
    max_steps: int | None = None,
) -> list[tuple[str, int, float]]:
    """The turning points of a run, for a preview table: ``(what, step, lr)``.

    ``what`` is ``"start"``, ``"end of warm-up"``, ``"milestone"`` (a decay, restart, peak or a
    plateau cut), ``"start of cool-down"`` or ``"end"``; ``lr`` is group 0's LR from that step on
    (at ``"end"``: after the last step).

    Example:
        >>> key_points({"name": "multistep", "milestones": ["2ep"]}, 10, 4)
        [('start', 0, 1.0), ('milestone', 20, 0.1), ('end', 40, 0.1)]
    """
    rows, schedule, cuts = _drive(
        spec, steps_per_epoch, epochs, (base_lr,), metrics, max_steps, None
    )
    total = len(rows) - 1
    points: list[tuple[str, int]] = [("start", 0)]
    if isinstance(schedule, Schedule):
        plan = schedule._plan
        if plan.warmup:
            points.append(("end of warm-up", plan.warmup.steps))
        points += [("milestone", s) for s in schedule._milestones()]
        points += [("milestone", s) for s in cuts]
        if plan.cooldown:
            points.append(("start of cool-down", total - plan.cooldown.steps))
    points = sorted({(s, what) for what, s in points if 0 <= s < total}, key=lambda p: p[0])
    out = [(what, s, rows[s][0]) for s, what in points]
    return [*out, ("end", total, rows[total][0])]


def _drive(
    spec: ScheduleSpec,
    steps_per_epoch: int,
    epochs: int,
    base_lrs: Sequence[float],
    metrics: Sequence[float] | None,
    max_steps: int | None,
    schedule_interval: str | None,
) -> tuple[list[list[float]], Schedule | TorchSchedule, list[int]]:
    """Run a schedule on a stand-in optimizer as the trainer would: its LRs, and the steps after
    which plateau cut them."""
    steps_per_epoch, epochs = int(steps_per_epoch), int(epochs)
    if steps_per_epoch <= 0 or epochs <= 0:
        raise TraincraftError(
            f"a preview needs steps_per_epoch and epochs > 0, got {steps_per_epoch} and {epochs}"
        )
    total = steps_per_epoch * epochs
    if max_steps is not None:
        total = min(total, int(max_steps))
    values = _metric_values(metrics, math.ceil(total / steps_per_epoch))
    optimizer = _stand_in_optimizer(base_lrs)
    schedule = build(
        spec,
        optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        schedule_interval=schedule_interval,
    )
    cuts: list[int] = []
    rows: list[list[float]] = []
    schedule.start()
    for t in range(1, total + 1):
        rows.append(schedule.lrs())
        optimizer.step()  # no gradients, no update: it keeps torch's step-order check quiet
        schedule.step_end(t)
        if t % steps_per_epoch == 0 or t == total:
            epoch = math.ceil(t / steps_per_epoch)
            if schedule.monitor is None:
                schedule.epoch_end(epoch, {})
            elif values is not None and schedule.epoch_end(
                epoch, {schedule.monitor: values[epoch - 1]}
            ):
                cuts.append(t)
    rows.append(schedule.lrs())
    return rows, schedule, cuts


def _metric_values(metrics: Sequence[float] | None, epochs: int) -> list[float] | None:
    if metrics is None:
        return None
    values = [float(v) for v in metrics]
    if len(values) < epochs:
        raise TraincraftError(
            f"the metric sequence has {len(values)} values but the preview spans {epochs} epochs; "
            "give one value per epoch"
        )
    return values


def _stand_in_optimizer(base_lrs: Sequence[float]) -> torch.optim.Optimizer:
    # SGD with momentum, so that schedules that cycle momentum can be previewed.
    if isinstance(base_lrs, numbers.Real):
        base_lrs = [float(base_lrs)]
    groups = [
        {
            "params": [torch.zeros(1, requires_grad=True)],
            "lr": float(lr),
            "initial_lr": float(lr),
            "name": f"group{i}",
        }
        for i, lr in enumerate(base_lrs)
    ]
    if not groups:
        raise TraincraftError("base_lrs needs at least one learning rate")
    return torch.optim.SGD(groups, lr=float(base_lrs[0]), momentum=0.9)


def plot(
    lrs: Sequence[Sequence[float]] | Sequence[float],
    *,
    steps_per_epoch: int | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """A figure of learning rate against optimizer step (epochs on the top axis).

    Args:
        lrs: :func:`preview`'s rows (one LR per group per step), or one LR per step.
        steps_per_epoch: adds an epoch axis on top.
        title: the figure's title.
        path: where to save it (the format follows the suffix; written atomically).
        labels: one legend label per group (default ``group 0``, ``group 1``, ...).

    Returns:
        The matplotlib ``Figure`` (Agg canvas: no window, no global pyplot state).

    Example:
        >>> fig = plot(preview("cosine", 10, 5), steps_per_epoch=10, path="lr.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [[float(v)] if isinstance(v, numbers.Real) else [float(x) for x in v] for v in lrs]
    columns = list(zip(*rows)) if rows else []
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, column in enumerate(columns):
        label = labels[i] if labels is not None and i < len(labels) else f"group {i}"
        ax.plot(range(len(column)), column, label=label, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    if steps_per_epoch:
        spe = float(steps_per_epoch)
        top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
    if title:
        ax.set_title(title)
    if len(columns) > 1:
        ax.legend()
    if path is not None:
        from traincraft.files import atomic_write

        path = Path(path)
        fmt = path.suffix.lstrip(".").lower() or "png"
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=100))
    from traincraft.inline import inline

    return inline(fig)  # shown as a picture in a notebook
