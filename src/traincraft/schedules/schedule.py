"""The :class:`Schedule` the trainer drives: a resolved plan applied to an optimizer's groups."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from traincraft.durations import round_half_up
from traincraft.errors import TraincraftError
from traincraft.schedules.ramps import cool_value, warm_factor

if TYPE_CHECKING:
    from traincraft.schedules.plan import Plan


class Schedule:
    """Applies a resolved schedule to an optimizer's parameter groups. Build it with :func:`build`.

    Each group's LR at step ``t`` is the schedule's function of its base LR (``initial_lr``) and
    ``t``; a warm-up before it and a cool-down after it, when given. Only plateau keeps state
    beyond the step count.

    Attributes:
        name: the schedule's registered name.
        restore_best_on_reduce: plateau only: the trainer reloads the best weights when
            :meth:`epoch_end` returns True.
        monitor: the figure plateau watches (None for other schedules).

    Example:
        >>> s = build({"name": "step", "step_size": "2ep", "gamma": 0.5}, opt,
        ...           steps_per_epoch=10, total_steps=100)
        >>> s.start()
        >>> for t in range(1, 101):
        ...     opt.step()
        ...     s.step_end(t)
    """

    def __init__(self, plan: Plan, optimizer: torch.optim.Optimizer):
        self.name = plan.name
        self._plan = plan
        self._optimizer = optimizer
        self._base = [_base_lr(group) for group in optimizer.param_groups]
        self._use_beta1 = "betas" in optimizer.defaults
        # the state a monitored figure drives (plateau's cuts), for the schedules that have one
        state = plan.info.metric_state
        self._state = state(plan.args, self._base) if state is not None else None
        self.monitor: str | None = self._state.monitor.monitor if self._state else None
        self.restore_best_on_reduce = bool(plan.args[0].get("restore_best_on_reduce", False))
        self._step = 0
        self._lrs = self._lrs_at(0)
        self._momenta = self._momenta_at(0)
        self._constant = plan.info.static and plan.warmup is None and plan.cooldown is None
        # A phase that sets the LRs after the schedule's own values, to the end of the run
        # (SWA's anneal): the schedule stays the one writer of group["lr"].
        self.phase: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ what the trainer calls

    def start(self) -> None:
        """Set every group's LR (and momentum when cycled) for the first step of a run."""
        self._step = 0
        if self._state is not None:
            self._state.reset()
        self._apply(0)

    def step_end(self, step: int) -> None:
        """After optimizer step number ``step`` (steps taken so far): set the next step's LRs."""
        self._step = step
        if not self._constant:
            self._apply(step)
        elif self.phase is not None:  # else nothing changes per step: the hot loop stays free of it
            self.phase(step)

    def take_over(self, phase: Callable[[int], None]) -> None:
        """From now on ``phase(step)`` sets the LRs, after the schedule's own values, whenever
        the schedule sets them (after each step, at a plateau's cut, a rollback, an unfreeze):
        SWA's anneal is such a phase. It applies at once. Not part of the state: its owner
        hands it over again on a resume."""
        self.phase = phase
        self._apply(self._step)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """After validation. Plateau reads its figure from ``metrics`` and may cut the LRs.

        Returns:
            True when plateau has just cut an LR (the trainer then reloads the best weights if
            :attr:`restore_best_on_reduce`); always False for other schedules.

        Raises:
            TraincraftError: plateau's monitored figure is not in ``metrics`` (the message lists
                the reported names).
        """
        if self._state is None:
            return False
        try:
            value = self._state.monitor.value_from(metrics)
        except TraincraftError as err:
            raise TraincraftError(f"schedule {self.name!r}: {err}") from None
        warmup = self._plan.warmup
        cut = self._state.update(
            value, in_warmup=warmup is not None and self._step <= warmup.steps
        )
        if cut:
            self._apply(self._step)
        return cut

    def lrs(self) -> list[float]:
        """The current LR of each parameter group."""
        return list(self._lrs)

    def momenta(self) -> list[float] | None:
        """The current momentum (or beta1) of each group when the schedule cycles it, else None."""
        return None if self._momenta is None else list(self._momenta)

    def scale(self, factor: float) -> None:
        """Multiply every group's base LR by ``factor`` from now on (a rollback after a
        non-finite step); the schedule's shape is unchanged."""
        self._base = [b * factor for b in self._base]
        if self._state is not None:
            self._state.lrs = [lr * factor for lr in self._state.lrs]
        self._apply(self._step)

    def add_group(self, group: dict[str, Any]) -> None:
        """Take in a parameter group added to the optimizer during the run (an unfreeze): it
        follows the schedule from now on, on the same clock, relative to its own base LR.

        LR-valued arguments (``max_lr``, ``eta_min``, ...) and plateau's cuts so far are those of
        the first group scaled by the ratio of the base LRs, so the new group keeps its ratio to
        the others at every step.
        """
        base = _base_lr(group)
        ratio = base / self._base[0] if self._base[0] else 1.0
        args = dict(self._plan.args[0])
        for key in self._plan.info.lr_valued:
            if args.get(key) is not None:
                args[key] = args[key] * ratio
        self._plan.args.append(args)
        self._base.append(base)
        if self._state is not None:
            self._state.add_group(ratio, base, args)
        self._apply(self._step)

    def state_dict(self) -> dict[str, Any]:
        """Plain types: the step count, the base LRs and plateau's counters."""
        return {
            "name": self.name,
            "step": self._step,
            "base": list(self._base),
            "plateau": self._state.state_dict() if self._state else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a saved run: the next LRs are those of the saved step."""
        if state.get("name") != self.name:
            raise TraincraftError(
                f"the checkpoint's schedule is {state.get('name')!r} but this run's is "
                f"{self.name!r}; resume with the same schedule"
            )
        self._step = int(state["step"])
        if "base" in state:
            self._base = [float(b) for b in state["base"]]
        if self._state is not None and state.get("plateau") is not None:
            self._state.load_state_dict(state["plateau"])
        self._apply(self._step)

    # ------------------------------------------------------------------ values

    def _apply(self, t: int) -> None:
        self._lrs = self._lrs_at(t)
        self._momenta = self._momenta_at(t)
        for i, group in enumerate(self._optimizer.param_groups):
            _set(group, "lr", self._lrs[i])
            if self._momenta is not None:
                if self._use_beta1:
                    group["betas"] = (self._momenta[i], *group["betas"][1:])
                else:
                    group["momentum"] = self._momenta[i]
        if self.phase is not None:
            self.phase(t)

    def _lrs_at(self, t: int) -> list[float]:
        return [self._value(t, g, self._inner_lr) for g in range(len(self._base))]

    def _momenta_at(self, t: int) -> list[float] | None:
        if self._plan.momentum_fn is None:
            return None
        return [self._value(t, g, self._inner_momentum, ramp=False) for g in range(len(self._base))]

    def _value(
        self, t: int, g: int, inner: Callable[[int, int], float], ramp: bool = True
    ) -> float:
        plan = self._plan
        w = plan.warmup.steps if plan.warmup else 0
        if t < w:
            # warm-up: a rising factor of the schedule's first value
            start = inner(0, g)
            return warm_factor(plan.warmup, t) * start if ramp else start
        if plan.cooldown is not None:
            cool_start = plan.run.total - plan.cooldown.steps
            if t > cool_start:
                # cool-down: from the schedule's value where it starts to end_factor × base LR
                start = inner(cool_start - w, g)
                if not ramp:
                    return start
                return cool_value(
                    plan.cooldown, t - cool_start, start, plan.cooldown.factor * self._base[g]
                )
        return inner(t - w, g)  # the schedule itself, on its own clock

    def _clock(self, tau: int) -> int:
        if self._plan.run.interval == "step":
            return tau
        return tau // self._plan.run.steps_per_epoch

    def _inner_lr(self, tau: int, g: int) -> float:
        if self._state is not None:
            return self._state.lrs[g]
        return self._plan.fn(self._clock(tau), self._base[g], **self._plan.args[g])

    def _inner_momentum(self, tau: int, g: int) -> float:
        assert self._plan.momentum_fn is not None
        return self._plan.momentum_fn(self._clock(tau), self._base[g], **self._plan.args[g])

    # ------------------------------------------------------------------ for previews

    def _milestones(self) -> list[int]:
        """Optimizer steps where the schedule turns (decays, restarts, peaks), for previews."""
        plan = self._plan
        finder = plan.info.turning_points
        if finder is None or not plan.span:
            return []
        w = plan.warmup.steps if plan.warmup else 0
        per = 1 if plan.run.interval == "step" else plan.run.steps_per_epoch
        return [w + round_half_up(m * per) for m in finder(plan.args[0], plan.span) if 0 < m < plan.span]

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, lrs={self._lrs})"


def _base_lr(group: dict[str, Any]) -> float:
    # torch's schedulers fill initial_lr in the same way; traincraft's optimizers already have it.
    value = group.setdefault("initial_lr", group["lr"])
    if isinstance(value, torch.Tensor):
        value = value.clone()
        group["initial_lr"] = value
    return float(value)  # once, when the schedule is built


def _set(group: dict[str, Any], key: str, value: float) -> None:
    # A tensor LR (capturable optimizers) is filled in place, as torch's schedulers do.
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value
