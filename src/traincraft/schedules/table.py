"""The schedules, one row each: everything the rest of the package knows about a schedule.

A row (:class:`ScheduleInfo`) holds a schedule's function, its defaults, which of its arguments
are durations, its check, its momentum companion, its turning points, ...; the code that builds,
applies and previews schedules reads the row and never tests a schedule's name. Adding a schedule
is its function (in :mod:`~traincraft.schedules.functions`) plus one row in :data:`SCHEDULES`.

Example:
    >>> from traincraft.schedules.table import SCHEDULES
    >>> SCHEDULES.lookup("CosineAnnealingLR").name
    'cosine'
    >>> SCHEDULES.lookup("cosin")
    Traceback (most recent call last):
    UnknownNameError: unknown schedule 'cosin' (did you mean 'cosine', ...?)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from traincraft.errors import unknown_name
from traincraft.schedules import arguments as a
from traincraft.schedules import functions as f
from traincraft.schedules.plateau import PlateauState

__all__ = ["SCHEDULES", "WRAPPER_KEYS", "ScheduleInfo", "ScheduleTable", "names"]

# Keys every schedule takes besides its own arguments.
WRAPPER_KEYS = ("warmup", "cooldown", "interval")


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule: its function and every fact about it that the rest of the code needs.

    Attributes:
        name: the name a spec uses (``"cosine"``).
        fn: ``fn(t, initial_lr, **args) -> lr``, a pure function of the schedule's clock ``t``;
            its keyword-only parameters are the schedule's arguments.
        doc: one line for listings (``"torch CosineAnnealingLR"``).
        aliases: other names that find it (torch's class name in lower case, ...); lookups
            also ignore case and dashes.
        defaults: values of the arguments a spec may leave out; an argument without one is
            required. May also hold a wrapper key (warm-up) the schedule has by default.
        durations: arguments that are one duration (``500``, ``"3ep"``, ``"10%"``), read on the
            schedule's clock. When every duration a spec gives is in epochs, the clock is epochs.
        duration_lists: arguments that are an increasing list of durations (milestones).
        check: ``check(label, args, span, unit)``, see :mod:`~traincraft.schedules.arguments`;
            None when any value will do.
        run_defaults: arguments whose None means a length taken from the run:
            ``{argument: default(run, span, warmup_steps, key)}``.
        per_group: arguments that, as in torch, take one value for every parameter group or a
            list of one value per group.
        lr_valued: the per-group arguments that are learning rates: for a group added mid-run
            (an unfreeze) they are scaled by the ratio of its base LR to the first group's.
        momentum_fn: ``fn(t, initial_lr, **args) -> momentum`` (or Adam's beta1) for a schedule
            that cycles it while its ``cycle_momentum`` argument is true; None otherwise.
        turning_points: ``fn(args, span) -> [t, ...]``, where the schedule turns on its clock
            (decays, restarts, peaks), marked by previews; None when it has none.
        metric_state: the class that keeps the state a monitored figure drives (plateau's
            cuts), built from the groups' arguments and base LRs; None for a schedule that is a
            function of the step alone.
        own_cooldown: what the schedule's own ``cooldown`` argument is, when it has one
            (plateau's epochs to wait after a cut): an end-of-run cool-down must then be written
            as a dict, ``{duration: ...}``.
        static: the LR never changes with the step (constant): without a warm-up or cool-down,
            the per-step update is skipped.
    """

    name: str
    fn: Callable[..., float]
    doc: str = ""
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    durations: tuple[str, ...] = ()
    duration_lists: tuple[str, ...] = ()
    check: a.Check | None = None
    run_defaults: Mapping[str, a.RunDefault] = field(default_factory=dict)
    per_group: tuple[str, ...] = ()
    lr_valued: tuple[str, ...] = ()
    momentum_fn: Callable[..., float] | None = None
    turning_points: Callable[[dict[str, Any], float], list[float]] | None = None
    metric_state: type | None = None
    own_cooldown: str = ""
    static: bool = False

    def __post_init__(self) -> None:
        # Rows are shared by every build: read-only mappings, so no build can change another's.
        object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "run_defaults", types.MappingProxyType(dict(self.run_defaults)))


class ScheduleTable:
    """The rows by name, with aliases. Unknown names raise with the closest valid names.

    Example:
        >>> table = ScheduleTable([ScheduleInfo("flat", lambda t, initial_lr: initial_lr)])
        >>> "flat" in table, table.names()
        (True, ['flat'])
    """

    kind = "schedule"

    def __init__(self, rows: Iterable[ScheduleInfo] = ()):
        self._rows: dict[str, ScheduleInfo] = {}
        self._aliases: dict[str, str] = {}
        for row in rows:
            self.add(row)

    def add(self, row: ScheduleInfo) -> None:
        """Register a schedule. Its name and aliases must be new."""
        taken = [n for n in (row.name, *row.aliases) if n in self._rows or n in self._aliases]
        if taken:
            raise ValueError(f"schedule names already taken: {', '.join(taken)}")
        self._rows[row.name] = row
        for alias in row.aliases:
            self._aliases[alias] = row.name

    def remove(self, name: str) -> ScheduleInfo:
        """Unregister a schedule (with its aliases); returns its row."""
        row = self._rows.pop(self.canonical(name))
        for alias in row.aliases:
            del self._aliases[alias]
        return row

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (case and dashes ignored)."""
        key = str(name).strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        if key not in self._rows:
            raise unknown_name(self.kind, name, [*self._rows, *self._aliases])
        return key

    def lookup(self, name: str) -> ScheduleInfo:
        """The row of a name or alias."""
        return self._rows[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower().replace("-", "_")
        return self._aliases.get(key, key) in self._rows

    def __iter__(self) -> Iterator[ScheduleInfo]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)

    def names(self) -> list[str]:
        """Registered names, without aliases, sorted."""
        return sorted(self._rows)

    def aliases(self) -> dict[str, str]:
        """``alias -> name``."""
        return dict(self._aliases)


# --------------------------------------------------------------------------- the table

SCHEDULES = ScheduleTable(
    [
        ScheduleInfo("constant", f.constant, "the base LR", aliases=("none",), static=True),
        ScheduleInfo(
            "step",
            f.step,
            "torch StepLR",
            aliases=("steplr",),
            defaults={"gamma": 0.1},
            durations=("step_size",),
            check=a.check_step,
            turning_points=f.step_milestones,
        ),
        ScheduleInfo(
            "multistep",
            f.multistep,
            "torch MultiStepLR",
            aliases=("multisteplr", "multi_step"),
            defaults={"gamma": 0.1},
            duration_lists=("milestones",),
            check=a.check_multistep,
            turning_points=f.multistep_milestones,
        ),
        ScheduleInfo(
            "exponential",
            f.exponential,
            "torch ExponentialLR",
            aliases=("exponentiallr",),
            check=a.check_exponential,
        ),
        ScheduleInfo(
            "cosine",
            f.cosine,
            "torch CosineAnnealingLR",
            aliases=("cosineannealinglr", "cosine_annealing"),
            defaults={"T_max": None, "eta_min": 0.0},
            durations=("T_max",),
            check=a.check_cosine,
            run_defaults={"T_max": a.whole_run},
            per_group=("eta_min",),
            lr_valued=("eta_min",),
            turning_points=f.cosine_milestones,
        ),
        ScheduleInfo(
            "cosine_restarts",
            f.cosine_restarts,
            "torch CosineAnnealingWarmRestarts",
            aliases=("cosineannealingwarmrestarts", "sgdr"),
            defaults={"T_mult": 1, "eta_min": 0.0},
            durations=("T_0",),
            check=a.check_cosine_restarts,
            per_group=("eta_min",),
            lr_valued=("eta_min",),
            turning_points=f.cosine_restarts_milestones,
        ),
        ScheduleInfo(
            "onecycle",
            f.onecycle,
            "torch OneCycleLR",
            aliases=("onecyclelr", "one_cycle"),
            defaults={
                "total": None,
                "max_lr": None,
                "pct_start": 0.3,
                "anneal_strategy": "cos",
                "div_factor": 25.0,
                "final_div_factor": 1e4,
                "three_phase": False,
                "cycle_momentum": True,
                "base_momentum": 0.85,
                "max_momentum": 0.95,
            },
            durations=("total",),
            check=a.check_onecycle,
            run_defaults={"total": a.whole_run},
            per_group=("max_lr", "base_momentum", "max_momentum"),
            lr_valued=("max_lr",),
            momentum_fn=f.onecycle_momentum,
            turning_points=f.onecycle_milestones,
        ),
        ScheduleInfo(
            "cyclic",
            f.cyclic,
            "torch CyclicLR",
            aliases=("cycliclr",),
            defaults={
                "base_lr": None,
                "step_size_up": 2000,
                "step_size_down": None,
                "mode": "triangular",
                "gamma": 1.0,
                "cycle_momentum": True,
                "base_momentum": 0.8,
                "max_momentum": 0.9,
            },
            durations=("step_size_up", "step_size_down"),
            check=a.check_cyclic,
            per_group=("max_lr", "base_lr", "base_momentum", "max_momentum"),
            lr_valued=("max_lr", "base_lr"),
            momentum_fn=f.cyclic_momentum,
            turning_points=f.cyclic_milestones,
        ),
        ScheduleInfo(
            "polynomial",
            f.polynomial,
            "torch PolynomialLR",
            aliases=("polynomiallr", "poly"),
            defaults={"total": None, "power": 1.0},
            durations=("total",),
            check=a.check_polynomial,
            run_defaults={"total": a.whole_run},
            turning_points=f.total_milestones,
        ),
        ScheduleInfo(
            "linear",
            f.linear,
            "torch LinearLR",
            aliases=("linearlr",),
            defaults={"total": None, "start_factor": 1.0, "end_factor": 0.0},
            durations=("total",),
            check=a.check_linear,
            run_defaults={"total": a.whole_run},
            turning_points=f.total_milestones,
        ),
        ScheduleInfo(
            "inverse_sqrt",
            f.inverse_sqrt,
            "1/sqrt decay",
            aliases=("rsqrt",),
            defaults={"timescale": None},
            durations=("timescale",),
            check=a.check_inverse_sqrt,
            run_defaults={"timescale": a.warmup_or_tenth},
        ),
        ScheduleInfo(
            "warmup_stable_decay",
            f.warmup_stable_decay,
            "warm-up, stable, decay",
            aliases=("wsd",),
            defaults={
                "warmup": "5%",
                "total": None,
                "decay": "20%",
                "decay_kind": "linear",
                "end_factor": 0.0,
            },
            durations=("total", "decay"),
            check=a.check_warmup_stable_decay,
            run_defaults={"total": a.whole_run},
            turning_points=f.warmup_stable_decay_milestones,
        ),
        ScheduleInfo(
            "lambda",
            f.lambda_,
            "torch LambdaLR",
            aliases=("lambdalr",),
            per_group=("lr_lambda",),
        ),
        ScheduleInfo(
            "multiplicative",
            f.multiplicative,
            "torch MultiplicativeLR",
            aliases=("multiplicativelr",),
            per_group=("lr_lambda",),
        ),
        ScheduleInfo(
            "plateau",
            f.plateau,
            "torch ReduceLROnPlateau",
            aliases=("reducelronplateau", "reduce_on_plateau"),
            defaults={
                "monitor": "val_loss",
                "mode": None,
                "factor": 0.1,
                "patience": 10,
                "threshold": 1e-4,
                "threshold_mode": "rel",
                "cooldown": 0,
                "min_lr": 0.0,
                "eps": 1e-8,
                "restore_best_on_reduce": False,
            },
            check=a.check_plateau,
            per_group=("min_lr",),
            lr_valued=("min_lr",),
            metric_state=PlateauState,
            own_cooldown="ReduceLROnPlateau's epochs to wait after a cut (an integer)",
        ),
    ]
)


def names() -> list[str]:
    """The schedule names, sorted (aliases such as ``"steplr"`` also work)."""
    return SCHEDULES.names()
