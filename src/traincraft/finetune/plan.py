"""Unfreezing during a run: which frozen parameters join training, when, and at which LR.

Two forms, which may be combined:

* ``unfreeze``: a list of ``{"at": DURATION, "params": GLOB | [GLOBS], "lr_mult": FLOAT}``;
* ``gradual``: ``{"groups": [GLOBS, GLOBS, ...], "every": DURATION}`` unfreezes one group after
  another, the first after ``start`` (default: ``every``), the next ``every`` later (ULMFiT's
  gradual unfreezing lists the groups from the output backwards).

Durations are optimizer steps (``200``), epochs (``"2ep"``) or a share of the run (``"25%"``).
An event at step ``s`` happens after optimizer step ``s``: step ``s + 1`` trains the new
parameters. The trainer adds them to the live optimizer as new parameter groups, and the schedule
takes the groups in from then on (:meth:`traincraft.schedules.Schedule.add_group`).

Example:
    >>> plan = UnfreezePlan(unfreeze=[{"at": "2ep", "params": "conv*", "lr_mult": 0.1}])
    >>> plan.resolve(steps_per_epoch=10, total_steps=100)
    >>> [(e.step, e.params, e.lr_mult) for e in plan.events]
    [(20, ('conv*',), 0.1)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traincraft.errors import TraincraftError, did_you_mean, expect_number

_EVENT_KEYS = ("at", "params", "lr_mult")
_GRADUAL_KEYS = ("groups", "every", "start", "lr_mult")


@dataclass(frozen=True)
class UnfreezeEvent:
    """One unfreezing: after ``step`` optimizer steps, ``params`` (globs) join training."""

    step: int
    params: tuple[str, ...]
    lr_mult: float | None  # None: the multiplier the parameter-group rules give (e.g. layer decay)
    label: str  # where it was written: "unfreeze[0]", "gradual[2]"


@dataclass(frozen=True)
class _Spec:
    at: Any
    params: tuple[str, ...]
    lr_mult: float | None
    label: str


class UnfreezePlan:
    """The run's unfreezing events, in order, and how many have happened (for exact resume).

    Args:
        unfreeze: ``[{"at": "2ep", "params": ["layer4.*"], "lr_mult": 0.1}, ...]``.
        gradual: ``{"groups": [["layer4.*"], "layer3.*"], "every": "1ep", "start": "1ep",
            "lr_mult": 0.1 | [per group]}``.
    """

    def __init__(
        self,
        unfreeze: Sequence[Mapping[str, Any]] | None = None,
        gradual: Mapping[str, Any] | None = None,
    ):
        self._specs = [*_event_specs(unfreeze or []), *_gradual_specs(gradual)]
        self.events: list[UnfreezeEvent] = []
        self.done = 0  # events applied so far, in order

    def __bool__(self) -> bool:
        return bool(self._specs)

    def resolve(self, *, steps_per_epoch: int, total_steps: int) -> None:
        """Turn the durations into optimizer steps of this run (events sorted by step)."""
        from traincraft.durations import duration_steps

        def steps(value: Any, where: str) -> int:
            return duration_steps(value, where, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

        events = []
        for spec in self._specs:
            at = spec.at
            if isinstance(at, _Offset):
                step = steps(at.start, "gradual.start") + at.i * steps(at.every, "gradual.every")
            else:
                step = steps(at, f"{spec.label}.at")
            events.append(UnfreezeEvent(step, spec.params, spec.lr_mult, spec.label))
        self.events = sorted(events, key=lambda e: e.step)  # stable: ties keep their order

    @property
    def next_step(self) -> float:
        """The step of the next event not applied yet (infinity when none is left)."""
        return self.events[self.done].step if self.done < len(self.events) else math.inf

    def pop_due(self, step: int) -> list[UnfreezeEvent]:
        """The events due after ``step`` optimizer steps that have not been applied; marks them done."""
        due = []
        while self.done < len(self.events) and self.events[self.done].step <= step:
            due.append(self.events[self.done])
            self.done += 1
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done = int(state["done"])


def _event_specs(raw: Any) -> list[_Spec]:
    if isinstance(raw, Mapping) or not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TraincraftError(
            f"unfreeze must be a list of {{at, params, lr_mult}} entries, got {raw!r}"
        )
    specs = []
    for i, entry in enumerate(raw):
        label = f"unfreeze[{i}]"
        _check_keys(entry, _EVENT_KEYS, label, required=("at", "params"))
        specs.append(_Spec(entry["at"], _globs(entry["params"], f"{label}.params"),
                           _mult(entry.get("lr_mult"), label), label))
    return specs


def _gradual_specs(raw: Any) -> list[_Spec]:
    if raw is None:
        return []
    _check_keys(raw, _GRADUAL_KEYS, "gradual", required=("groups", "every"))
    groups = raw["groups"]
    if isinstance(groups, str) or not isinstance(groups, Sequence) or not groups:
        raise TraincraftError(
            f"gradual.groups must be a list of globs (or of lists of globs), output side first, "
            f"got {groups!r}"
        )
    mults = raw.get("lr_mult")
    if isinstance(mults, Sequence) and not isinstance(mults, str):
        if len(mults) != len(groups):
            raise TraincraftError(
                f"gradual.lr_mult has {len(mults)} values for {len(groups)} groups; give one per "
                "group or a single value"
            )
    else:
        mults = [mults] * len(groups)
    every = _check_duration(raw["every"], "gradual.every")
    start = _check_duration(raw.get("start", raw["every"]), "gradual.start")
    specs = []
    for i, (group, mult) in enumerate(zip(groups, mults)):
        label = f"gradual[{i}]"
        specs.append(_Spec(_Offset(start, every, i), _globs(group, f"gradual.groups[{i}]"),
                           _mult(mult, label), label))
    return specs


@dataclass(frozen=True)
class _Offset:
    """``start + i × every``, kept symbolic until the run's length is known."""

    start: Any
    every: Any
    i: int


def _check_duration(value: Any, where: str) -> Any:
    from traincraft.durations import parse_duration

    parse_duration(value, where)  # raises with the accepted forms
    return value


def _check_keys(entry: Any, allowed: Sequence[str], where: str, required: Sequence[str]) -> None:
    if not isinstance(entry, Mapping):
        raise TraincraftError(f"{where} must be a mapping with keys {', '.join(allowed)}; got {entry!r}")
    for key in entry:
        if key not in allowed:
            raise TraincraftError(
                f"{where}: unknown key {key!r}{did_you_mean(str(key), allowed)}; "
                f"keys: {', '.join(allowed)}"
            )
    for key in required:
        if key not in entry:
            raise TraincraftError(f"{where} needs {key!r}")


def _globs(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TraincraftError(f"{where} must be a glob on parameter or module names, or a list of them; got {value!r}")


def _mult(value: Any, where: str) -> float | None:
    if value is None:
        return None
    mult = expect_number(value, f"{where}.lr_mult")
    if not mult > 0:
        raise TraincraftError(f"{where}.lr_mult must be > 0, got {value}")
    return mult


_FINETUNE_KEYS = ("init_from", "strict", "skip", "freeze", "train_bn", "unfreeze", "gradual", "lr_mult", "layer_decay")


class Finetuning:
    """A trainer's fine-tuning settings, applied to its model before the optimizer is built:
    start weights, frozen parts, the unfreezing plan and the LR rules (``lr_mult``,
    ``layer_decay``). ``messages`` holds the lines the trainer shows (what was loaded, frozen).

    Example:
        >>> ft = Finetuning(model, init_from="runs/digits/best.safetensors", freeze=["conv*"],
        ...                 unfreeze=[{"at": "2ep", "params": "conv*", "lr_mult": 0.1}])
    """

    def __init__(
        self,
        model: Any,
        *,
        init_from: Any = None,
        strict: bool = False,
        skip: Sequence[str] = (),
        freeze: Sequence[str] | str = (),
        train_bn: bool = False,
        unfreeze: Sequence[Mapping[str, Any]] | None = None,
        gradual: Mapping[str, Any] | None = None,
        lr_mult: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
        new: Sequence[str] | None = None,
        **unknown: Any,
    ):
        from traincraft.finetune.blocks import layer_decay_rules, lr_mult_rules
        from traincraft.finetune.freezing import Freezer
        from traincraft.finetune.weights import load_initial_weights, not_loaded

        for key in unknown:
            raise TraincraftError(
                f"finetune: unknown key {key!r}{did_you_mean(key, _FINETUNE_KEYS)}; "
                f"keys: {', '.join(_FINETUNE_KEYS)}"
            )
        self.messages: list[str] = []
        fresh = not_loaded(model)  # a model's own weights: file (torchvision, timm) left these as built
        if init_from is not None:
            report = load_initial_weights(model, init_from, strict=strict, skip=skip)
            self.messages.append(report.summary())
            fresh = report.left_as_built()
        elif skip:
            raise TraincraftError("finetune.skip names weights not to load, but init_from is not set")
        # A resumed run is told which tensors were new when it started (its weights are not read).
        self.new: set[str] = set(new) if new is not None else fresh
        patterns = [freeze] if isinstance(freeze, str) else list(freeze)
        # Weights init_from did not load (a new head) are never frozen: they would stay random.
        self.freezer = Freezer(model, patterns, train_bn=train_bn, keep=self.new) if patterns else None
        if self.freezer is not None:
            self.messages.append(self.freezer.summary())
            if not any(p.requires_grad for p in model.parameters()):
                raise TraincraftError(
                    f"finetune.freeze {patterns} freezes every parameter, leaving nothing to train. With "
                    "init_from, the weights it does not load (a new head) stay trainable; without it, "
                    "freeze the layers by name (e.g. ['backbone.*'])"
                )
        self.plan = UnfreezePlan(unfreeze, gradual)
        if self.plan and self.freezer is None:
            raise TraincraftError("finetune.unfreeze/gradual need finetune.freeze: nothing is frozen to unfreeze")
        self.rules: list[dict[str, Any]] = []
        if lr_mult:
            self.rules += lr_mult_rules(lr_mult)
        if layer_decay is not None:
            decay = expect_number(layer_decay, "finetune.layer_decay")
            if not 0 < decay <= 1:
                raise TraincraftError(f"finetune.layer_decay must be in (0, 1], got {layer_decay}")
            self.rules += layer_decay_rules(model, decay)

    def group_rules(self, model: Any, before: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """The generated LR rules that take a trainable parameter now, the first matching rule
        taking it (after the rules ``before``, the user's own). The optimizer refuses rules that
        take nothing; all of them serve the groups that unfreezing adds."""
        import fnmatch

        rules = [*before, *self.rules]
        taken: set[int] = set()
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            for i, rule in enumerate(rules):
                if any(fnmatch.fnmatchcase(name, g) for g in _globs(rule["params"], "rule")):
                    taken.add(i)
                    break
        return [rule for i, rule in enumerate(self.rules) if i + len(before) in taken]

    def unfreeze(self, patterns: Sequence[str]) -> list[tuple[str, Any]]:
        """Make the frozen parameters matching ``patterns`` trainable; the newly trainable ones."""
        assert self.freezer is not None
        return self.freezer.unfreeze(list(patterns))
